"""The engine layer list TensorRT prints (build log 'Layers:' block / inspector ONELINE format) is read
into typed layers: name, type, runtime inputs, constants, outputs and the ONNX nodes in the metadata.

The lines are real TensorRT-RTX 1.7.1.116 output (digits example, a tiny BERT, PP-OCRv6 det),
shortened to the fields that matter; the last test uses datacenter TensorRT's combined field.
"""

from trtq.tensorrt.enginelog import (
    find_layer_block,
    parse_layer_block,
    parse_layer_line,
    parse_metadata,
)

CONV = (
    "Name: /features/features.3/conv1/conv1.0/Conv_myl0_4, LayerType: correlation, Inputs: [ { Name: "
    "__myln_k_arg__bb1_5_myl0, Dimensions: [1,16,16,16], Strides: [4096,1,256,16], StrideOrder: [3,0,2,1], "
    "Datatype: Int8, Format: (NHWC) Channel major format }], Constants: [ { Name: __mye2504dconst_myl0, Dimensions: "
    "[16,16,3,3], Strides: [144,1,48,16], StrideOrder: [3,0,2,1], Datatype: Int8, Format: (NHWC) Channel major format "
    "}, { Name: __mye2509dconst_myl0, Dimensions: [1,16,1,1], Strides: [16,1,16,16], StrideOrder: [3,0,2,1], "
    "Datatype: Float, Format: (NHWC) Channel major format }], Outputs: [ { Name: __myln_k_arg__bb1_6_myl0, Dimensions: "
    "[1,16,16,16], Strides: [4096,1,256,16], StrideOrder: [3,0,2,1], Datatype: Float, Format: (NHWC) Channel major "
    "format }], TacticName: __myelin_CASK_STUB, StreamId: 0, Metadata: [ONNX Layer: "
    "/features/features.3/conv1/conv1.0/Conv]\x1f[ONNX Layer: /features/features.2/MaxPool_output_0_DequantizeLinear]"
    "\x1f[ONNX Layer: onnx::Conv_76_DequantizeLinear]\x1f[ONNX Layer: onnx::Conv_76_QuantizeLinear]"
)
QKV = (
    "Name: /enc/q/MatMul+/enc/k/MatMul+/enc/v/MatMul_myl0_1, LayerType: gemm, Inputs: [ { Name: __myln_k_arg__bb1_4_myl0,"
    " Dimensions: [1,16,32], Strides: [512,32,1], StrideOrder: [2,1,0], Datatype: Int8, Format: (Linear) Row major "
    "linear format }], Constants: [ { Name: __mye12623_dconst_myl0, Dimensions: [1,32,96], Strides: [3072,96,1], "
    "StrideOrder: [2,1,0], Datatype: Int8, Format: (Linear) Row major linear format }], Outputs: [ { Name: "
    "__mye12628_myl0, Dimensions: [1,16,96], Strides: [1536,96,1], StrideOrder: [2,1,0], Datatype: Float, Format: "
    "(Linear) Row major linear format }], TacticName: __myelin_CASK_STUB, StreamId: 0, Metadata: [ONNX Layer: "
    "/enc/q/MatMul]\x1f[ONNX Layer: ln_DequantizeLinear]\x1f[ONNX Layer: /enc/k/MatMul]\x1f[ONNX Layer: /enc/v/MatMul]"
)
DECONV = (
    "Name: ConvTranspose.0_myl0_181, LayerType: deconv, Inputs: [ { Name: p2o.pd_op.relu.19.0.1_213_myl0, Dimensions: "
    "[1,24,16,16], Strides: [6144,1,384,24], StrideOrder: [3,0,2,1], Datatype: Float, Format: (NHWC) Channel major "
    "format }, { Name: p2o.pd_op.relu.19.0.1_13_myl0, Dimensions: [24,24,2,2], Strides: [96,1,48,24], StrideOrder: "
    "[3,0,2,1], Datatype: Float, Format: (NHWC) Channel major format }], Constants: [], Outputs: [ { Name: "
    "__myln_k_arg__bb1_214_myl0, Dimensions: [1,24,32,32], Strides: [24576,1,768,24], StrideOrder: [3,0,2,1], "
    "Datatype: Float, Format: (NHWC) Channel major format }], TacticName: __myelin_CASK_STUB, StreamId: 0, Metadata: "
    "[ONNX Layer: ConvTranspose.0]\x1f[ONNX Layer: Relu.19]\x1f[ONNX Layer: Add.218]"
)


def test_rtx_conv_line():
    layer = parse_layer_line(CONV)
    assert layer.name == "/features/features.3/conv1/conv1.0/Conv_myl0_4"
    assert layer.type == "correlation"
    assert layer.input_types == ("Int8",)
    assert layer.constant_types == ("Int8", "Float")
    assert layer.constants[0].dims == (16, 16, 3, 3)
    assert [t.datatype for t in layer.outputs] == ["Float"]
    assert layer.metadata == ("/features/features.3/conv1/conv1.0/Conv",
                              "/features/features.2/MaxPool_output_0_DequantizeLinear",
                              "onnx::Conv_76_DequantizeLinear", "onnx::Conv_76_QuantizeLinear")
    assert layer.tactic == "__myelin_CASK_STUB"
    assert layer.name_parts == ("/features/features.3/conv1/conv1.0/Conv",)


def test_fused_gemm_names_its_nodes():
    layer = parse_layer_line(QKV)
    assert layer.name_parts == ("/enc/q/MatMul", "/enc/k/MatMul", "/enc/v/MatMul")
    assert layer.input_types == ("Int8",) and layer.constant_types == ("Int8",)
    assert "/enc/v/MatMul" in layer.metadata


def test_two_runtime_inputs_and_empty_constants():
    layer = parse_layer_line(DECONV)
    assert layer.type == "deconv"
    assert layer.input_types == ("Float", "Float")
    assert layer.constants == ()
    assert layer.inputs[1].dims == (24, 24, 2, 2)


def test_block_ends_at_the_blank_line_before_the_io_tensors():
    block = "Layers:\n" + CONV + "\n" + QKV + "\n\nI/O Tensors:\n Name: image, IOMode: Input, DataType: Float\n"
    messages = ["Engine generation completed in 0.24 seconds.", block, "Adding 1 engine(s) to plan file."]
    layers = parse_layer_block(find_layer_block(messages))
    assert [layer.type for layer in layers] == ["correlation", "gemm"]
    assert find_layer_block(["no layers here"]) is None


def test_metadata_without_separator_and_with_odd_names():
    assert parse_metadata("[ONNX Layer: a][ONNX Layer: b, c]") == ("a", "b, c")
    assert parse_metadata("[ONNX Layer: x]\x1f[Other: y]") == ("x",)


def test_datacenter_format_datatype_field():
    line = ("Name: conv1 + relu1, LayerType: CaskConvolution, Inputs: [ { Name: input, Location: Device, Dimensions: "
            "[1,3,224,224], Format/Datatype: Thirty-two wide channel vectorized row major Int8 format }], Outputs: [ "
            "{ Name: x, Location: Device, Dimensions: [1,64,112,112], Format/Datatype: Row major linear FP32 format }], "
            "ParameterType: Convolution, TacticValue: 0x123, StreamId: 0, Metadata: [ONNX Layer: conv1]")
    layer = parse_layer_line(line)
    assert layer.type == "CaskConvolution"
    assert layer.input_types == ("Int8",)
    assert layer.outputs[0].datatype == "Float"
    assert layer.name_parts == ("conv1", "relu1")
    assert layer.tactic == "0x123"


def test_names_only_listing():
    layer = parse_layer_line("Name: conv1 + relu1")
    assert layer.name == "conv1 + relu1" and layer.type == "" and layer.inputs == ()
