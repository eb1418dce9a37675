"""Q/DQ placement follows TensorRT's rules on tiny models (see tests/support/tiny_models.py for the graphs)."""

import pytest
from tiny_models import attention_block, gemm_matmul_net, residual_conv_net

from trtq.errors import TrtqError
from trtq.model import normalize_model
from trtq.quantize import plan_placement
from trtq.quantize.placement import MHA_INT8_MAX_SEQ, attention_matmuls, long_attention


def _targets(model, **kwargs):
    placement = plan_placement(normalize_model(model), **kwargs)
    return placement, {t.tensor: t for t in placement.targets}


def test_conv_inputs_weights_skip_and_pool_are_quantized():
    placement, targets = _targets(residual_conv_net())
    # activations: conv inputs (input, r1, r2, pool), maxpool input (r3), and r1 again as Add skip
    assert set(placement.activation_tensors) == {"input", "r1", "r2", "r3", "pool"}
    assert set(placement.weight_tensors) == {"w1", "w2", "w3", "wh"}
    # the Add's skip input (r1, index 1) reads the same DQ as conv2's input; c3 (from conv3) is not quantized
    assert ("add", 1) in targets["r1"].consumers and ("conv2", 0) in targets["r1"].consumers
    assert "c3" not in targets
    # biases, outputs and the sigmoid input are never quantized
    assert not {"b1", "b2", "b3", "bh", "scores", "logits"} & set(targets)


def test_weights_per_output_channel_activations_per_tensor():
    _, targets = _targets(residual_conv_net())
    assert all(targets[w].axis == 0 for w in ("w1", "w2", "w3", "wh"))
    assert all(targets[a].axis is None for a in ("input", "r1", "r2", "r3", "pool"))


def test_gemm_and_matmul_axes():
    _, targets = _targets(gemm_matmul_net())
    assert targets["gw"].axis == 0  # Gemm transB=1: W is [N, K]
    assert targets["mw"].axis == 1  # MatMul W is [K, N]
    # activation-activation MatMul: both inputs quantized per tensor
    assert targets["xr"].kind == "activation" and targets["xt"].kind == "activation"
    assert "gb" not in targets


def test_exclude_nodes_by_regex_and_ops():
    placement, targets = _targets(residual_conv_net(), exclude_nodes=["^conv_h"], exclude_ops=["MaxPool"])
    assert set(placement.excluded_nodes) == {"conv_head", "maxpool"}
    assert "wh" not in targets and "pool" not in targets and "r3" not in targets
    # excluded nodes' outputs are left out of the cache so implicit builds keep them in high precision
    assert "logits" not in placement.cache_tensors and "pool" not in placement.cache_tensors


def test_cache_skips_score_inputs():
    placement, _ = _targets(residual_conv_net())
    assert "logits" not in placement.cache_tensors  # feeds the Sigmoid
    assert "scores" not in placement.cache_tensors
    assert {"input", "r1", "r2", "r3", "pool"} <= set(placement.cache_tensors)
    # fused away in TensorRT: conv outputs read only by their Relu or residual Add, the Add read by its Relu
    assert not {"c1", "c2", "c3", "sum"} & set(placement.cache_tensors)


def test_already_quantized_model_is_refused():
    from trtq.quantize import insert_qdq

    model = normalize_model(residual_conv_net())
    placement = plan_placement(model)
    quantized = insert_qdq(model, placement, {t: 1.0 for t in placement.activation_tensors})
    with pytest.raises(TrtqError, match="already contains quantization node"):
        plan_placement(quantized)


def test_a_model_from_onnxruntime_quantize_dynamic_is_refused(tmp_path):
    """onnxruntime's dynamic quantization writes ConvInteger fed by DynamicQuantizeLinear (ddddocr ships one),
    which has no Conv left to quantize and which TensorRT cannot parse: refused by name, not quantized to nothing."""
    import onnx
    from onnxruntime.quantization import quantize_dynamic

    onnx.save(residual_conv_net(), tmp_path / "fp32.onnx")
    quantize_dynamic(tmp_path / "fp32.onnx", tmp_path / "dynamic.onnx", op_types_to_quantize=["Conv"])
    dynamic = onnx.load(tmp_path / "dynamic.onnx")
    assert {"ConvInteger", "DynamicQuantizeLinear"} <= {n.op_type for n in dynamic.graph.node}
    assert "QuantizeLinear" not in {n.op_type for n in dynamic.graph.node}
    with pytest.raises(TrtqError, match=r"already contains quantization node .*\((ConvInteger|DynamicQuantizeLinear)\)"):
        plan_placement(normalize_model(dynamic))


def test_bad_regex_is_a_user_error():
    with pytest.raises(TrtqError, match="not a valid regular expression"):
        _targets(residual_conv_net(), exclude_nodes=["conv("])


def test_cache_scope_qdq_covers_int8_layers_only_all_covers_everything():
    """conv1 -> erf -> mul(0.5) -> conv2 -> out: only conv inputs/outputs are INT8 layer boundaries.

        x -> conv1 -> c1 -> erf -> e -> mul(half) -> m -> conv2 -> out
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.ones((8, 8, 1, 1), np.float32), n) for n in ("w1", "w2")]
    inits.append(numpy_helper.from_array(np.array(0.5, np.float32), "half"))
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
        helper.make_node("Erf", ["c1"], ["e"], name="erf"),
        helper.make_node("Mul", ["e", "half"], ["m"], name="mul"),
        helper.make_node("Conv", ["m", "w2"], ["out"], name="conv2"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2, 4, 4])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    qdq, _ = _targets(model)
    everything, _ = _targets(model, cache_scope="all")
    assert set(qdq.cache_tensors) == {"x", "c1", "m", "out"}
    assert set(everything.cache_tensors) == {"x", "c1", "e", "m", "out"}
    with pytest.raises(TrtqError, match="--cache-scope"):
        _targets(model, cache_scope="some")


def test_identity_nodes_do_not_hide_fusions():
    """PaddlePaddle-style exports put an Identity after most layers; TensorRT removes them first,
    so the residual conv fuses with Add and Relu and the INT8 layer's output is the Relu's.

        x -> conv1 -> c1 -> add(x) -> a -> Identity -> ai -> relu -> r -> Identity -> ri -> conv2 -> out
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.ones((8, 8, 1, 1), np.float32), n) for n in ("w1", "w2")]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
        helper.make_node("Add", ["c1", "x"], ["a"], name="add"),
        helper.make_node("Identity", ["a"], ["ai"], name="id1"),
        helper.make_node("Relu", ["ai"], ["r"], name="relu"),
        helper.make_node("Identity", ["r"], ["ri"], name="id2"),
        helper.make_node("Conv", ["ri", "w2"], ["out"], name="conv2"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 4, 4])], initializer=inits)
    placement, targets = _targets(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert {"x", "ri"} <= set(targets)
    assert "c1" not in placement.cache_tensors and "a" not in placement.cache_tensors
    assert "r" in placement.cache_tensors


def _squeeze_excitation(bias_as_add: bool):
    """A PaddleOCR-style squeeze-excitation block (MobileNetV3; paddle2onnx writes each conv's bias as an
    Add of a reshaped constant):

        x -> conv (8 -> 8, 3x3) -> c -> GlobalAveragePool -> p -> se1 (1x1, 8 -> 2) -> [+ Reshape(b1)] -> Relu -> s
          s -> se2 (1x1, 2 -> 8) -> [+ Reshape(b2)] -> HardSigmoid -> g;  c * g -> out
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("w0", (8, 8, 3, 3)), ("w1", (2, 8, 1, 1)), ("w2", (8, 2, 1, 1)),
                                 ("b1", (2,)), ("b2", (8,)))]
    inits += [numpy_helper.from_array(np.array([1, n, 1, 1], np.int64), f"shape{n}") for n in (2, 8)]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["p"], name="gap")]
    for index, (src, weight, bias, channels, act, out) in enumerate(
            (("p", "w1", "b1", 2, "Relu", "s"), ("s", "w2", "b2", 8, "HardSigmoid", "g")), start=1):
        if bias_as_add:
            nodes += [helper.make_node("Conv", [src, weight], [f"se{index}_c"], name=f"se{index}"),
                      helper.make_node("Reshape", [bias, f"shape{channels}"], [f"{bias}_r"], name=f"{bias}_reshape"),
                      helper.make_node("Add", [f"se{index}_c", f"{bias}_r"], [f"se{index}_a"], name=f"se{index}_add")]
        else:
            nodes.append(helper.make_node("Conv", [src, weight, bias], [f"se{index}_a"], name=f"se{index}"))
        nodes.append(helper.make_node(act, [f"se{index}_a"], [out], name=f"act{index}"))
    nodes.append(helper.make_node("Mul", ["c", "g"], ["out"], name="scale"))
    graph = helper.make_graph(nodes, "se", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 6, 6])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_bias_added_as_a_reshaped_constant_is_no_residual():
    """paddle2onnx's Add(conv, Reshape(bias)) is a bias add: quantizing its constant input as a residual skip
    put Q/DQ pairs on biases (TensorRT-RTX then ran the Add in float; found by `trtq verify` on PP-OCR's classifier)."""
    placement, targets = _targets(_squeeze_excitation(bias_as_add=True))
    assert not {"b1_r", "b2_r", "b1", "b2"} & set(targets)
    assert all(consumer[0] not in ("se1_add", "se2_add") for t in placement.targets for consumer in t.consumers)


@pytest.mark.parametrize("bias_as_add", [False, True])
def test_a_conv_summing_two_products_stays_in_high_precision(bias_as_add):
    """se2 sums 2 products per output (2 input channels, 1x1): INT8 saves nothing, and TensorRT-RTX folds it
    into a float pointwise kernel; se1 sums 8 and is quantized."""
    placement, targets = _targets(_squeeze_excitation(bias_as_add))
    assert "se2" in placement.excluded_nodes and "w2" not in targets and "s" not in targets
    assert {"w0", "w1", "x", "p"} <= set(targets) and "se1" not in placement.excluded_nodes


def test_residual_qdq_quantizes_both_inputs_of_transformer_residual_adds():
    default, plain = _targets(attention_block())
    placement, targets = _targets(attention_block(), residual=True)
    for add in ("residual1", "residual2"):  # stream + branch: both read a DQ
        assert sum(add in [c[0] for c in t.consumers] for t in targets.values()) == 2, add
        assert not any(add in [c[0] for c in t.consumers] for t in plain.values())
    assert ("residual1", 0) in targets["x"].consumers and ("residual1", 1) in targets["ob"].consumers
    assert ("residual2", 0) in targets["r1"].consumers and ("residual2", 1) in targets["fb"].consumers
    # bias Adds, the softmax input and LayerNorm inputs stay as they were
    assert not any(c[0] in ("o_bias", "fc_bias", "softmax", "ln1", "ln2", "ln3") for t in targets.values() for c in t.consumers)
    assert set(placement.targets) >= set(default.targets) and len(placement.targets) == len(default.targets) + 4


def test_residual_qdq_leaves_convolution_residuals_fusible():
    default, _ = _targets(residual_conv_net())
    residual, _ = _targets(residual_conv_net(), residual=True)
    assert residual.targets == default.targets  # the conv branch of the Add stays unquantized (TensorRT fuses it)


def test_attention_matmuls_and_their_key_length():
    model = normalize_model(attention_block())
    assert attention_matmuls(model) == (("scores", "context"),)
    assert long_attention(model, {"x": (1, MHA_INT8_MAX_SEQ, 8)}) == {}
    assert long_attention(model, {"x": (2, 600, 8)}) == {"scores": 600, "context": 600}
    assert long_attention(normalize_model(residual_conv_net()), {"input": (1, 3, 16, 16)}) == {}


def _object_queries():
    """A DETR-style first decoder layer: the object queries are zeros shaped like the batch plus a learned
    embedding, so the query projection never reads the input data (TensorRT computes it at build time):

        x [N,4,8] -> Shape -> Gather(0) -> Unsqueeze -> Concat([n, 4, 8]) -> ConstantOfShape(0) -> zeros
        q = (zeros + embed [4,8]) -> MatMul(wq [8,8]) -> qp      (data free)
        x -> MatMul(wx [8,8]) -> xp;  out = Add(qp, xp)            (reads x)
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("embed", (4, 8)), ("wq", (8, 8)), ("wx", (8, 8)))]
    inits += [numpy_helper.from_array(np.array(0, np.int64), "zero"), numpy_helper.from_array(np.array([0], np.int64), "axis0"),
              numpy_helper.from_array(np.array([4, 8], np.int64), "rest")]
    nodes = [helper.make_node("Shape", ["x"], ["shape"], name="shape"),
             helper.make_node("Gather", ["shape", "zero"], ["n"], name="batch", axis=0),
             helper.make_node("Unsqueeze", ["n", "axis0"], ["n1"], name="unsqueeze"),
             helper.make_node("Concat", ["n1", "rest"], ["dims"], name="dims", axis=0),
             helper.make_node("ConstantOfShape", ["dims"], ["zeros"], name="zeros",
                              value=numpy_helper.from_array(np.zeros(1, np.float32))),
             helper.make_node("Add", ["zeros", "embed"], ["q"], name="queries"),
             helper.make_node("MatMul", ["q", "wq"], ["qp"], name="q_proj"),
             helper.make_node("MatMul", ["x", "wx"], ["xp"], name="x_proj"),
             helper.make_node("Add", ["qp", "xp"], ["out"], name="sum")]
    graph = helper.make_graph(nodes, "queries", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4, 8])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_layer_that_never_reads_the_input_data_stays_in_high_precision():
    """DETR's first decoder layer projects zeros + a learned embedding: TensorRT folds it at build time, so its
    Q/DQ pairs only round (TensorRT-RTX built such q/k/v projections as GEMMs without runtime inputs; found by
    `trtq verify` on transformers' DETR). A layer reading the input is quantized as before."""
    placement, targets = _targets(_object_queries())
    assert "q_proj" in placement.excluded_nodes and not {"q", "wq"} & set(targets)
    assert {"x", "wx"} <= set(targets) and "x_proj" not in placement.excluded_nodes


def test_excluding_one_of_two_summed_convolutions_needs_only_calibrated_ranges():
    """A RepVGG-style block (RT-DETR's encoder): two convolutions of one input, summed.

        x [1,16,8,8] -> conv_a 3x3 (16->16) -> a --+
                     -> conv_b 1x1 (16->16) -> b --+-> add -> y

    All in INT8, the pair goes on b (conv_a fuses the Add); with conv_a kept out it moves to a. --target
    re-plans on ranges calibrated for the first placement, which has none for a: there the Add gets no pair
    (it stopped the search with a missing range before).
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "wa"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
         helper.make_node("Conv", ["x", "wb"], ["b"], name="conv_b"),
         helper.make_node("Add", ["a", "b"], ["y"], name="add")], "repvgg",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8, 8])],
        [numpy_helper.from_array(rng.standard_normal((16, 16, 3, 3)).astype(np.float32), "wa"),
         numpy_helper.from_array(rng.standard_normal((16, 16, 1, 1)).astype(np.float32), "wb")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    base, targets = _targets(model)
    assert set(base.activation_tensors) == {"x", "b"}
    _, targets = _targets(model, exclude_nodes=["conv_a"])
    assert "a" in targets  # planned afresh (calibrated for this placement), the pair moves to a
    replanned, targets = _targets(model, exclude_nodes=["conv_a"], ranged=base.activation_tensors)
    assert set(replanned.activation_tensors) == {"x"} and ("add", 0) not in {c for t in targets.values()
                                                                             for c in t.consumers}
