"""Verdicts from an engine layer list: which quantized nodes run at low precision, which Q/DQ pairs fused.

The engines here are written by hand in the shape TensorRT-RTX reports them (compute layers plus
generated `kgen` kernels, metadata naming the ONNX nodes); tests/verify/test_verify_rtx.py checks
the same logic against real builds.
"""

from trtq.tensorrt.enginelog import EngineLayer, TensorInfo
from trtq.verify.check import check_layers, is_compute, runs_in
from trtq.verify.graph import QdqGraph, QdqPair, QuantizedNode


def layer(name: str, type_: str, inputs: tuple[str, ...], metadata: tuple[str, ...], constants: tuple[str, ...] = ()):
    return EngineLayer(name, type_, tuple(TensorInfo(f"i{k}", (1,), t) for k, t in enumerate(inputs)),
                       tuple(TensorInfo(f"c{k}", (1,), t) for k, t in enumerate(constants)), (), metadata)


def node(name: str, op: str = "Conv", precision: str = "int8", unquantized: tuple[int, ...] = ()) -> QuantizedNode:
    quantized = tuple(i for i in (0, 1) if i not in unquantized)
    return QuantizedNode(name, op, precision, quantized, unquantized, tuple(f"{name}_in{i}_DQ" for i in quantized))


def pair(tensor: str, consumers: tuple[str, ...]) -> QdqPair:
    return QdqPair(tensor, f"{tensor}_Q", (f"{tensor}_DQ",), "activation", "int8", consumers)


def test_runs_in_and_compute_types():
    assert runs_in(("Int8",)) == "int8" and runs_in(("Int8", "Int8")) == "int8"
    assert runs_in(("FP8",)) == "fp8" and runs_in(("Int8", "Half")) == "fp16" and runs_in(("Float",)) == "fp32"
    assert all(map(is_compute, ("correlation", "gemm", "deconv", "runtime_fusion", "CaskConvolution")))
    assert not any(map(is_compute, ("kgen", "maxpool", "reformat")))


def test_compute_layer_decides_and_qkv_share_one_gemm():
    graph = QdqGraph((node("conv"), node("q", "MatMul"), node("k", "MatMul"), node("v", "MatMul")), (),
                     {"conv": "Conv", "q": "MatMul", "k": "MatMul", "v": "MatMul", "relu": "Relu"})
    layers = [
        layer("__myl_MulMinMaxRounCast_0", "kgen", ("Float",), ("x_Q", "conv")),  # the input's quantization
        layer("conv_myl0_1", "correlation", ("Int8",), ("conv", "conv_in0_DQ"), ("Int8", "Float")),
        layer("__myl_MulAddRelu_2", "kgen", ("Float",), ("conv", "relu")),  # bias + ReLU epilogue, in float
        layer("q+k+v_myl0_3", "gemm", ("Int8",), ("q", "k", "v"), ("Int8",)),
    ]
    verdicts, _ = check_layers(graph, layers)
    by = {v.node: v for v in verdicts}
    assert by["conv"].ok and by["conv"].engine_layer == "conv_myl0_1" and by["conv"].runs_in == "int8"
    assert all(by[n].engine_layer == "q+k+v_myl0_3" and by[n].ok for n in "qkv")
    assert by["k"].fused_with == ("q", "v")


def test_float_layers_get_a_reason():
    graph = QdqGraph((node("up", "ConvTranspose"), node("fc", "Gemm"), node("mm", "MatMul", unquantized=(0,)),
                      node("gone"), node("tiny", "MatMul")), (),
                     {"up": "ConvTranspose", "fc": "Gemm", "mm": "MatMul", "gone": "Conv", "tiny": "MatMul"})
    layers = [
        layer("up_myl0_0", "deconv", ("Float", "Float"), ("up",)),
        layer("fc_myl0_1", "gemm", ("Half",), ("fc",)),
        layer("mm_myl0_2", "gemm", ("Float",), ("mm",)),
        layer("__myl_MulSum_3", "kgen", ("Float",), ("tiny",)),
    ]
    problems = ["(foreignNode) Converting conv weight scales to fp32.", "Layer fc: no INT8 implementation; using FP16"]
    by = {v.node: v for v in check_layers(graph, layers, problems, track="rtx")[0]}
    assert not by["up"].ok and "ConvTranspose" in by["up"].reason and by["up"].reason_source == "trtq"
    assert by["fc"].runs_in == "fp16" and by["fc"].reason == problems[1] and by["fc"].reason_source == "log"
    assert "input 0 has no Q/DQ" in by["mm"].reason
    assert by["gone"].runs_in == "absent" and by["gone"].engine_layer is None
    assert "generated kernel __myl_MulSum_3 (kgen);" in by["tiny"].reason
    # the ConvTranspose note is about TensorRT-RTX: another backend gets no invented reason
    other = {v.node: v for v in check_layers(graph, layers, (), track="11")[0]}
    assert other["up"].reason == "the build log gives no reason" and other["up"].reason_source is None


def test_pairs_fuse_when_their_readers_read_quantized_data():
    """    a -Q/DQ-> conv (INT8)         fused: its reader runs in INT8
        skip -Q/DQ-> add (kgen reads Int8; the Q ran in another kernel)    fused
        p -Q/DQ-> pool (kgen does Q, DQ and the Mean itself: float)       not fused
        u -Q/DQ-> up (deconv in float)                                    not fused"""
    graph = QdqGraph((node("conv"), node("up", "ConvTranspose")),
                     (pair("a", ("conv",)), pair("skip", ("add",)), pair("p", ("pool",)), pair("u", ("up",))),
                     {"conv": "Conv", "up": "ConvTranspose", "add": "Add", "pool": "GlobalAveragePool"})
    layers = [
        layer("conv_myl0_0", "correlation", ("Int8",), ("conv", "a_DQ")),
        layer("__myl_AddRelu_1", "kgen", ("Int8", "Float"), ("conv", "add", "skip_DQ")),
        layer("__myl_MinMaxRounCastCastMulMean_2", "kgen", ("Int8", "Float"), ("p_Q", "p_DQ", "pool")),
        layer("up_myl0_3", "deconv", ("Float", "Float"), ("up",)),
        layer("__myl_MinMaxRounCastCastMul_4", "kgen", ("Float",), ("u_Q", "u_DQ")),
    ]
    pairs = {p.tensor: p for p in check_layers(graph, layers, track="rtx")[1]}
    assert pairs["a"].fused and pairs["skip"].fused
    assert not pairs["p"].fused and "GlobalAveragePool" in pairs["p"].reason and "averages in float" in pairs["p"].reason
    assert not pairs["u"].fused and "runs in fp32" in pairs["u"].reason and pairs["u"].float_readers == ("up",)
    assert pairs["p"].float_readers == ("pool",) and pairs["a"].float_readers == ()
    assert pairs["u"].engine_layers == ("__myl_MinMaxRounCastCastMul_4",)


def test_a_turing_build_says_why_nothing_runs_in_int8():
    graph = QdqGraph((node("conv"),), (), {"conv": "Conv"})
    layers = [layer("conv_myl0_0", "correlation", ("Half",), ("conv",))]
    verdict = check_layers(graph, layers, compute_capabilities=("7.5",))[0][0]
    assert not verdict.ok and "compute capability 7.5 (Turing)" in verdict.reason and verdict.reason_source == "trtq"
    assert check_layers(graph, layers, compute_capabilities=("8.9",))[0][0].reason == "the build log gives no reason"
