"""Each torch op implementation against onnxruntime on a one-node model.

Every case is one node: "data" inputs are graph inputs (values the executor keeps on the
device), "const" inputs are initializers (host values for shape-like inputs), so both the data
path and the host path of the executor are exercised.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from trtq.torch import OnnxModule

RNG = np.random.default_rng(0)


def f32(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def one_node(op: str, data: dict[str, np.ndarray], const: dict[str, np.ndarray], order: list[str],
             attrs: dict | None = None, outputs: int = 1, opset: int = 17) -> onnx.ModelProto:
    """A model with one `op` node reading `order` (names from data/const, "" for an omitted input)."""
    outs = [f"y{i}" for i in range(outputs)]
    node = helper.make_node(op, order, outs, name="node", **(attrs or {}))
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for n, v in data.items()]
    inits = [numpy_helper.from_array(v, n) for n, v in const.items()]
    graph = helper.make_graph([node], "one", inputs, [helper.make_value_info(o, onnx.TypeProto()) for o in outs],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


def check(model: onnx.ModelProto, data: dict[str, np.ndarray], atol: float = 1e-5, expect_fallback: bool = False) -> None:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, data)
    module = OnnxModule(model)
    for _ in range(2):  # the second run uses the cached host (static) values
        got = module.run({k: torch.from_numpy(v) for k, v in data.items()})
    for name, ref in zip(module.output_names, expected):
        out = got[name].numpy()
        assert out.shape == ref.shape, (name, out.shape, ref.shape)
        assert out.dtype == ref.dtype, (name, out.dtype, ref.dtype)
        if ref.dtype.kind == "f":
            np.testing.assert_allclose(out, ref, atol=atol, rtol=1e-5)
        else:
            np.testing.assert_array_equal(out, ref)
    assert bool(module.fallback_nodes) == expect_fallback, module.fallback_nodes


X = f32(2, 3, 5, 6)
POS = np.abs(X) + 0.1

# (id, op, data inputs, const inputs, input order, attributes, outputs, opset)
CASES = [
    ("relu", "Relu", {"x": X}, {}, ["x"], {}, 1, 17),
    ("sigmoid", "Sigmoid", {"x": X}, {}, ["x"], {}, 1, 17),
    ("tanh", "Tanh", {"x": X}, {}, ["x"], {}, 1, 17),
    ("erf", "Erf", {"x": X}, {}, ["x"], {}, 1, 17),
    ("sqrt", "Sqrt", {"x": POS}, {}, ["x"], {}, 1, 17),
    ("log", "Log", {"x": POS}, {}, ["x"], {}, 1, 17),
    ("exp", "Exp", {"x": X}, {}, ["x"], {}, 1, 17),
    ("leaky", "LeakyRelu", {"x": X}, {}, ["x"], {"alpha": 0.2}, 1, 17),
    ("hardswish", "HardSwish", {"x": X * 4}, {}, ["x"], {}, 1, 17),
    ("hardsigmoid", "HardSigmoid", {"x": X * 4}, {}, ["x"], {"alpha": 0.25, "beta": 0.4}, 1, 17),
    ("elu", "Elu", {"x": X}, {}, ["x"], {"alpha": 0.7}, 1, 17),
    ("selu", "Selu", {"x": X}, {}, ["x"], {}, 1, 17),
    ("softplus", "Softplus", {"x": X}, {}, ["x"], {}, 1, 17),
    ("gelu_tanh", "Gelu", {"x": X}, {}, ["x"], {"approximate": "tanh"}, 1, 20),
    ("prelu", "PRelu", {"x": X}, {"s": f32(3, 1, 1)}, ["x", "s"], {}, 1, 17),
    ("clip11", "Clip", {"x": X}, {"lo": np.float32(-0.5), "hi": np.float32(0.7)}, ["x", "lo", "hi"], {}, 1, 17),
    ("clip_min_only", "Clip", {"x": X}, {"lo": np.float32(-0.5)}, ["x", "lo"], {}, 1, 17),
    ("clip6", "Clip", {"x": X}, {}, ["x"], {"min": -0.3, "max": 0.3}, 1, 6),
    ("add_bcast", "Add", {"x": X}, {"b": f32(3, 1, 1)}, ["x", "b"], {}, 1, 17),
    ("div_int", "Div", {}, {"a": i64(7, -7, 9), "b": i64(2, 2, -4)}, ["a", "b"], {}, 1, 17),
    ("pow", "Pow", {"x": POS}, {"e": np.float32(1.5)}, ["x", "e"], {}, 1, 17),
    ("mod_fmod", "Mod", {"x": X}, {"m": np.float32(0.4)}, ["x", "m"], {"fmod": 1}, 1, 17),
    ("max3", "Max", {"x": X, "y": f32(2, 3, 5, 6)}, {"z": f32(6)}, ["x", "y", "z"], {}, 1, 17),
    ("mean", "Mean", {"x": X, "y": f32(2, 3, 5, 6)}, {}, ["x", "y"], {}, 1, 17),
    ("where", "Where", {"c": X > 0, "x": X}, {"y": f32(1)}, ["c", "x", "y"], {}, 1, 17),
    ("less", "Less", {"x": X}, {"y": np.float32(0.1)}, ["x", "y"], {}, 1, 17),
    ("not", "Not", {"c": X > 0}, {}, ["c"], {}, 1, 17),
    ("cast_int", "Cast", {"x": X * 3}, {}, ["x"], {"to": TensorProto.INT64}, 1, 17),
    ("conv_pads", "Conv", {"x": X}, {"w": f32(4, 3, 3, 3), "b": f32(4)}, ["x", "w", "b"], {"pads": [1, 1, 1, 1]}, 1, 17),
    ("conv_asym", "Conv", {"x": X}, {"w": f32(4, 3, 3, 2)}, ["x", "w"], {"pads": [0, 1, 2, 0], "strides": [2, 1]}, 1, 17),
    ("conv_same", "Conv", {"x": X}, {"w": f32(6, 1, 3, 3)}, ["x", "w"],
     {"auto_pad": "SAME_UPPER", "group": 3, "strides": [2, 2]}, 1, 17),
    ("conv_dil", "Conv", {"x": f32(1, 2, 9, 9)}, {"w": f32(2, 2, 3, 3)}, ["x", "w"], {"dilations": [2, 2]}, 1, 17),
    ("conv1d", "Conv", {"x": f32(2, 3, 11)}, {"w": f32(4, 3, 3)}, ["x", "w"], {"pads": [1, 1]}, 1, 17),
    ("convT", "ConvTranspose", {"x": X}, {"w": f32(3, 2, 4, 4), "b": f32(2)}, ["x", "w", "b"],
     {"strides": [2, 2], "pads": [1, 1, 1, 1]}, 1, 17),
    ("convT_outpad", "ConvTranspose", {"x": X}, {"w": f32(3, 2, 3, 3)}, ["x", "w"],
     {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}, 1, 17),
    ("convT_asym", "ConvTranspose", {"x": X}, {"w": f32(3, 2, 3, 3)}, ["x", "w"],
     {"strides": [2, 2], "pads": [0, 1, 1, 0]}, 1, 17),
    ("gemm_tb", "Gemm", {"a": f32(4, 6)}, {"b": f32(5, 6), "c": f32(5)}, ["a", "b", "c"], {"transB": 1}, 1, 17),
    ("gemm_alpha", "Gemm", {"a": f32(6, 4)}, {"b": f32(6, 5), "c": f32(4, 5)}, ["a", "b", "c"],
     {"transA": 1, "alpha": 0.5, "beta": 2.0}, 1, 17),
    ("matmul_batched", "MatMul", {"a": f32(2, 3, 4, 5), "b": f32(3, 5, 2)}, {}, ["a", "b"], {}, 1, 17),
    ("einsum", "Einsum", {"a": f32(2, 3, 4), "b": f32(2, 4, 5)}, {}, ["a", "b"], {"equation": "bij,bjk->bik"}, 1, 17),
    ("batchnorm", "BatchNormalization", {"x": X}, {"s": f32(3), "b": f32(3), "m": f32(3), "v": np.abs(f32(3)) + 0.5},
     ["x", "s", "b", "m", "v"], {"epsilon": 1e-3}, 1, 17),
    ("instnorm", "InstanceNormalization", {"x": X}, {"s": f32(3), "b": f32(3)}, ["x", "s", "b"], {}, 1, 17),
    ("layernorm", "LayerNormalization", {"x": X}, {"s": f32(6), "b": f32(6)}, ["x", "s", "b"], {"axis": -1}, 1, 17),
    ("layernorm_2axes", "LayerNormalization", {"x": X}, {"s": f32(5, 6)}, ["x", "s"], {"axis": 2}, 1, 17),
    ("groupnorm21", "GroupNormalization", {"x": f32(2, 4, 3, 3)}, {"s": f32(4), "b": f32(4)}, ["x", "s", "b"],
     {"num_groups": 2}, 1, 21),
    ("softmax13", "Softmax", {"x": X}, {}, ["x"], {"axis": 1}, 1, 17),
    ("softmax11", "Softmax", {"x": X}, {}, ["x"], {"axis": 2}, 1, 11),
    ("logsoftmax", "LogSoftmax", {"x": X}, {}, ["x"], {}, 1, 17),
    ("maxpool", "MaxPool", {"x": X}, {}, ["x"], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, 1, 17),
    ("maxpool_ceil", "MaxPool", {"x": X}, {}, ["x"], {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}, 1, 17),
    ("maxpool_asym", "MaxPool", {"x": X}, {}, ["x"], {"kernel_shape": [2, 2], "pads": [0, 0, 1, 1]}, 1, 17),
    ("avgpool", "AveragePool", {"x": X}, {}, ["x"], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, 1, 17),
    ("avgpool_incl", "AveragePool", {"x": X}, {}, ["x"],
     {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1, "strides": [2, 2]}, 1, 17),
    ("gap", "GlobalAveragePool", {"x": X}, {}, ["x"], {}, 1, 17),
    ("gmp", "GlobalMaxPool", {"x": X}, {}, ["x"], {}, 1, 17),
    ("lrn", "LRN", {"x": X}, {}, ["x"], {"size": 3, "alpha": 1e-3}, 1, 17),
    ("reshape", "Reshape", {"x": X}, {"s": i64(0, -1, 6)}, ["x", "s"], {}, 1, 17),
    ("flatten", "Flatten", {"x": X}, {}, ["x"], {"axis": 2}, 1, 17),
    ("transpose", "Transpose", {"x": X}, {}, ["x"], {"perm": [0, 2, 3, 1]}, 1, 17),
    ("squeeze", "Squeeze", {"x": f32(2, 1, 3, 1)}, {"a": i64(1, -1)}, ["x", "a"], {}, 1, 17),
    ("squeeze11", "Squeeze", {"x": f32(2, 1, 3, 1)}, {}, ["x"], {"axes": [3]}, 1, 11),
    ("unsqueeze", "Unsqueeze", {"x": f32(2, 3)}, {"a": i64(0, -1)}, ["x", "a"], {}, 1, 17),
    ("concat", "Concat", {"x": X, "y": f32(2, 1, 5, 6)}, {}, ["x", "y"], {"axis": 1}, 1, 17),
    ("split_sizes", "Split", {"x": X}, {"s": i64(2, 4)}, ["x", "s"], {"axis": 3}, 2, 17),
    ("split_equal", "Split", {"x": X}, {}, ["x"], {"axis": 1}, 3, 17),
    ("split18_num", "Split", {"x": f32(7, 2)}, {}, ["x"], {"axis": 0, "num_outputs": 3}, 3, 18),
    ("slice", "Slice", {"x": X}, {"s": i64(1, -4), "e": i64(3, 100), "a": i64(1, 3)}, ["x", "s", "e", "a"], {}, 1, 17),
    ("slice_step", "Slice", {"x": X}, {"s": i64(-1, 0), "e": i64(-100, 5), "a": i64(3, 2), "st": i64(-2, 2)},
     ["x", "s", "e", "a", "st"], {}, 1, 17),
    ("gather", "Gather", {"x": X}, {"i": i64(2, -1, 0)}, ["x", "i"], {"axis": 3}, 1, 17),
    ("gather_scalar", "Gather", {"x": X}, {"i": np.array(1, dtype=np.int64)}, ["x", "i"], {"axis": 1}, 1, 17),
    ("gather_elements", "GatherElements", {"x": f32(3, 4)}, {"i": np.array([[0, 3], [1, -1], [2, 0]], dtype=np.int64)},
     ["x", "i"], {"axis": 1}, 1, 17),
    ("gather_nd", "GatherND", {"x": f32(3, 4, 2)}, {"i": np.array([[0, 1], [2, 3]], dtype=np.int64)}, ["x", "i"], {}, 1, 17),
    ("scatter_nd", "ScatterND", {"x": f32(4, 3), "u": f32(2, 3)}, {"i": np.array([[1], [3]], dtype=np.int64)},
     ["x", "i", "u"], {}, 1, 17),
    ("scatter_elements", "ScatterElements", {"x": f32(3, 4), "u": f32(3, 1)}, {"i": np.array([[1], [0], [3]], dtype=np.int64)},
     ["x", "i", "u"], {"axis": 1}, 1, 17),
    ("expand", "Expand", {"x": f32(3, 1)}, {"s": i64(2, 1, 4)}, ["x", "s"], {}, 1, 17),
    ("tile", "Tile", {"x": f32(2, 3)}, {"r": i64(2, 2)}, ["x", "r"], {}, 1, 17),
    ("pad_const", "Pad", {"x": X}, {"p": i64(0, 0, 1, 2, 0, 0, 3, 0), "v": np.float32(1.5)}, ["x", "p", "v"], {}, 1, 17),
    ("pad_reflect", "Pad", {"x": X}, {"p": i64(0, 0, 1, 2, 0, 0, 2, 1)}, ["x", "p"], {"mode": "reflect"}, 1, 17),
    ("pad_edge", "Pad", {"x": X}, {"p": i64(0, 0, 1, 2, 0, 0, 2, 1)}, ["x", "p"], {"mode": "edge"}, 1, 17),
    ("pad_crop", "Pad", {"x": X}, {"p": i64(0, 0, -1, 0, 0, 0, 0, -2)}, ["x", "p"], {}, 1, 17),
    ("range", "Range", {}, {"a": np.float32(1.0), "b": np.float32(4.0), "c": np.float32(0.5)}, ["a", "b", "c"], {}, 1, 17),
    ("topk", "TopK", {"x": f32(3, 7)}, {"k": i64(3)}, ["x", "k"], {"axis": 1}, 2, 17),
    ("topk_smallest", "TopK", {"x": f32(5, 4)}, {"k": i64(2)}, ["x", "k"], {"axis": 0, "largest": 0}, 2, 17),
    ("reduce_mean18", "ReduceMean", {"x": X}, {"a": i64(2, 3)}, ["x", "a"], {"keepdims": 1}, 1, 18),
    ("reduce_mean13", "ReduceMean", {"x": X}, {}, ["x"], {"axes": [1], "keepdims": 0}, 1, 13),
    ("reduce_sum13", "ReduceSum", {"x": X}, {"a": i64(-1)}, ["x", "a"], {"keepdims": 0}, 1, 13),
    ("reduce_max_all", "ReduceMax", {"x": X}, {}, ["x"], {"keepdims": 0}, 1, 18),
    ("reduce_l2", "ReduceL2", {"x": X}, {"a": i64(1)}, ["x", "a"], {}, 1, 18),
    ("reduce_prod", "ReduceProd", {"x": f32(2, 3, 4)}, {"a": i64(0, 2)}, ["x", "a"], {}, 1, 18),
    ("argmax_last", "ArgMax", {"x": np.array([[1, 3, 3], [2, 2, 0]], dtype=np.float32)}, {}, ["x"],
     {"axis": 1, "select_last_index": 1}, 1, 17),
    ("argmin", "ArgMin", {"x": f32(3, 4)}, {}, ["x"], {"axis": 0, "keepdims": 0}, 1, 17),
    ("cumsum_rev_excl", "CumSum", {"x": f32(3, 4)}, {"a": np.array(1, dtype=np.int64)}, ["x", "a"],
     {"exclusive": 1, "reverse": 1}, 1, 17),
    ("d2s_dcr", "DepthToSpace", {"x": f32(1, 8, 2, 3)}, {}, ["x"], {"blocksize": 2}, 1, 17),
    ("d2s_crd", "DepthToSpace", {"x": f32(1, 8, 2, 3)}, {}, ["x"], {"blocksize": 2, "mode": "CRD"}, 1, 17),
    ("s2d", "SpaceToDepth", {"x": f32(1, 2, 4, 6)}, {}, ["x"], {"blocksize": 2}, 1, 17),
    ("onehot", "OneHot", {}, {"i": i64(0, 2, -1), "d": np.array(4, dtype=np.int64), "v": np.array([0.0, 2.0], np.float32)},
     ["i", "d", "v"], {}, 1, 17),
    ("trilu", "Trilu", {"x": f32(4, 5)}, {"k": np.array(1, dtype=np.int64)}, ["x", "k"], {"upper": 0}, 1, 17),
    ("resize_nearest", "Resize", {"x": X}, {"s": np.array([1, 1, 2, 2], np.float32)}, ["x", "", "s"],
     {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}, 1, 17),
    ("resize_nearest_halfpix", "Resize", {"x": X}, {"s": np.array([1, 1, 3, 2], np.float32)}, ["x", "", "s"],
     {"mode": "nearest"}, 1, 17),
    ("resize_linear_sizes", "Resize", {"x": X}, {"z": i64(2, 3, 9, 7)}, ["x", "", "", "z"], {"mode": "linear"}, 1, 17),
    ("resize_linear_align", "Resize", {"x": X}, {"s": np.array([1, 1, 2, 2], np.float32)}, ["x", "", "s"],
     {"mode": "linear", "coordinate_transformation_mode": "align_corners"}, 1, 17),
    ("resize_cubic", "Resize", {"x": X}, {"s": np.array([1, 1, 2, 2], np.float32)}, ["x", "", "s"], {"mode": "cubic"}, 1, 17),
    ("upsample9", "Upsample", {"x": X}, {"s": np.array([1, 1, 2, 3], np.float32)}, ["x", "s"], {"mode": "nearest"}, 1, 9),
    ("qdq_per_tensor", "QuantizeLinear", {"x": X}, {"s": np.float32(0.02), "z": np.int8(0)}, ["x", "s", "z"], {}, 1, 17),
    ("dq_per_channel", "DequantizeLinear", {}, {"q": np.arange(-12, 12, dtype=np.int8).reshape(4, 6),
                                                "s": np.array([0.1, 0.2, 0.3, 0.4], np.float32)},
     ["q", "s"], {"axis": 0}, 1, 17),
    ("shape_slice15", "Shape", {"x": X}, {}, ["x"], {"start": 1, "end": -1}, 1, 17),
    ("size", "Size", {"x": X}, {}, ["x"], {}, 1, 17),
    ("constant_of_shape", "ConstantOfShape", {}, {"s": i64(2, 3)}, ["s"],
     {"value": numpy_helper.from_array(np.array([7], dtype=np.int64))}, 1, 17),
    ("constant_floats", "Constant", {}, {}, [], {"value_floats": [1.0, 2.5]}, 1, 17),
    ("identity", "Identity", {"x": X}, {}, ["x"], {}, 1, 17),
    ("dropout", "Dropout", {"x": X}, {}, ["x"], {}, 1, 17),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_op_matches_onnxruntime(case):
    _, op, data, const, order, attrs, outputs, opset = case
    check(one_node(op, data, const, order, attrs, outputs, opset), data)


def test_unimplemented_op_falls_back_to_onnxruntime():
    # Det has no torch implementation here: the node runs through onnxruntime and is reported.
    data = {"x": f32(3, 4, 4)}
    check(one_node("Det", data, {}, ["x"]), data, expect_fallback=True)


def test_unsupported_attributes_fall_back_at_run_time():
    # Resize linear with 'asymmetric' coordinates has no torch equivalent: onnxruntime runs it.
    data = {"x": X}
    model = one_node("Resize", data, {"s": np.array([1, 1, 2, 2], np.float32)}, ["x", "", "s"],
                     {"mode": "linear", "coordinate_transformation_mode": "asymmetric"})
    check(model, data, expect_fallback=True)


# GridSample (deformable attention: RT-DETR, Deformable DETR) and LSTM (CRNN recognisers): torch has their
# gradients, so `trtq finetune` works on models with them. Grids reach past [-1, 1] to exercise the padding.
GRID = RNG.uniform(-1.2, 1.2, (2, 4, 7, 2)).astype(np.float32)
GRID_CASES = [(mode, padding, align, opset) for mode, opset in (("bilinear", 16), ("nearest", 16), ("bicubic", 16),
                                                                 ("linear", 20), ("cubic", 20))
              for padding in ("zeros", "border", "reflection") for align in (0, 1)]


@pytest.mark.parametrize(("mode", "padding", "align", "opset"), GRID_CASES,
                         ids=[f"{m}-{p}-align{a}-opset{o}" for m, p, a, o in GRID_CASES])
def test_grid_sample_matches_onnxruntime(mode, padding, align, opset):
    data = {"x": X, "grid": GRID}
    model = one_node("GridSample", data, {}, ["x", "grid"],
                     {"mode": mode, "padding_mode": padding, "align_corners": align}, opset=opset)
    check(model, data, atol=1e-4)


SEQ, BATCH, IN, HID = 5, 3, 4, 6


def lstm_case(directions: int, bias: bool = True, state: bool = False, peepholes: bool = False,
              lengths: bool = False, layout: int = 0) -> tuple[dict, dict, list[str]]:
    """Data, constants and input order of an LSTM node: weights as initializers, the sequence (and
    initial state) as graph inputs."""
    x = f32(BATCH, SEQ, IN) if layout else f32(SEQ, BATCH, IN)
    const = {"w": f32(directions, 4 * HID, IN, scale=0.5), "r": f32(directions, 4 * HID, HID, scale=0.5)}
    data = {"x": x}
    order = ["x", "w", "r", "", "", "", "", ""]
    if bias:
        const["b"] = f32(directions, 8 * HID, scale=0.3)
        order[3] = "b"
    if lengths:
        const["lens"] = np.array([SEQ, 2, 4], np.int32)
        order[4] = "lens"
    if state:
        shape = (BATCH, directions, HID) if layout else (directions, BATCH, HID)
        data["h0"], data["c0"] = f32(*shape), f32(*shape)
        order[5], order[6] = "h0", "c0"
    if peepholes:
        const["p"] = f32(directions, 3 * HID, scale=0.3)
        order[7] = "p"
    while order and not order[-1]:
        order.pop()
    return data, const, order


LSTM_CASES = {
    "forward": (dict(directions=1), {"direction": "forward"}),
    "reverse": (dict(directions=1, state=True), {"direction": "reverse"}),
    "bidirectional": (dict(directions=2), {"direction": "bidirectional"}),
    "no-bias": (dict(directions=1, bias=False), {}),
    "peepholes": (dict(directions=1, peepholes=True, state=True), {}),
    "clip": (dict(directions=2), {"direction": "bidirectional", "clip": 0.5}),
    "lengths": (dict(directions=2, lengths=True, state=True), {"direction": "bidirectional"}),
}


@pytest.mark.parametrize("case", list(LSTM_CASES))
def test_lstm_matches_onnxruntime(case):
    shape, attrs = LSTM_CASES[case]
    data, const, order = lstm_case(**shape)
    model = one_node("LSTM", data, const, order, {"hidden_size": HID, **attrs}, outputs=3, opset=14)
    check(model, data, atol=1e-5)


def test_batch_first_lstm_is_the_sequence_first_one_transposed():
    """layout=1 ([batch, seq, ...]; onnxruntime's CPU LSTM refuses it): the same weights and data as a
    layout-0 node that onnxruntime runs, its outputs transposed."""
    data, const, order = lstm_case(directions=2, state=True, layout=1)
    attrs = {"hidden_size": HID, "direction": "bidirectional"}
    module = OnnxModule(one_node("LSTM", data, const, order, {**attrs, "layout": 1}, outputs=3, opset=14))
    y, y_h, y_c = module.run({k: torch.from_numpy(v) for k, v in data.items()}).values()
    seq_first = {"x": data["x"].transpose(1, 0, 2).copy(), "h0": data["h0"].transpose(1, 0, 2).copy(),
                 "c0": data["c0"].transpose(1, 0, 2).copy()}
    reference = ort.InferenceSession(one_node("LSTM", seq_first, const, order, attrs, outputs=3, opset=14)
                                     .SerializeToString(), providers=["CPUExecutionProvider"]).run(None, seq_first)
    np.testing.assert_allclose(y.numpy(), reference[0].transpose(2, 0, 1, 3), atol=1e-5)
    np.testing.assert_allclose(y_h.numpy(), reference[1].transpose(1, 0, 2), atol=1e-5)
    np.testing.assert_allclose(y_c.numpy(), reference[2].transpose(1, 0, 2), atol=1e-5)


def test_lstm_gradients_reach_its_weights():
    """What finetune needs: the loss of Y reaches W and R (onnxruntime would give no gradient)."""
    data, const, order = lstm_case(directions=2)
    module = OnnxModule(one_node("LSTM", data, const, order, {"hidden_size": HID, "direction": "bidirectional"},
                                 outputs=1, opset=14))
    for p in module.parameters():
        p.requires_grad_(True)
    (y,) = module.run({"x": torch.from_numpy(data["x"])}).values()
    y.square().sum().backward()
    grads = [p.grad for p in module.parameters()]
    assert len(grads) == 3 and all(g is not None and float(g.abs().sum()) > 0 for g in grads)
    assert not module.fallback_nodes
