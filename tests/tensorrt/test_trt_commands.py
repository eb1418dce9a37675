"""The trtexec command lines, spelled as trtexec 10.x (samples/common/sampleOptions.cpp) spells its flags."""

from __future__ import annotations

import pytest

from trtq.errors import TrtqError
from trtq.tensorrt.commands import (
    DlaOptions,
    format_command,
    parse_size_mib,
    trtexec_bench_argv,
    trtexec_build_argv,
    trtexec_build_commands,
    trtexec_inspect_argv,
    trtexec_run_argv,
)
from trtq.tensorrt.ioformats import parse_io_formats
from trtq.tensorrt.profiles import ProfileShape


def test_the_quantize_commands_per_version():
    commands = trtexec_build_commands("m.int8.onnx", "m.int8.cache", "m.int8.engine", {"images": (1, 3, 640, 640)},
                                      original_onnx="m.onnx")
    assert commands == {
        "tensorrt-11": "trtexec --onnx=m.int8.onnx --saveEngine=m.int8.engine --shapes=images:1x3x640x640",
        "tensorrt-10-strongly-typed": "trtexec --onnx=m.int8.onnx --saveEngine=m.int8.engine --stronglyTyped "
                                      "--shapes=images:1x3x640x640",
        "tensorrt-10-implicit": "trtexec --onnx=m.onnx --saveEngine=m.int8.engine --int8 --calib=m.int8.cache "
                                "--shapes=images:1x3x640x640",
    }


def test_quantize_commands_without_shapes_workspace_and_timing_cache():
    commands = trtexec_build_commands("m.int8.onnx", "m.int8.cache", "m.int8.engine", None,
                                      workspace_mib=4096, timing_cache="timing.cache")
    assert set(commands) == {"tensorrt-11", "tensorrt-10-strongly-typed"}  # no FP32 model: no implicit line
    assert commands["tensorrt-11"] == ("trtexec --onnx=m.int8.onnx --saveEngine=m.int8.engine "
                                       "--memPoolSize=workspace:4096M --timingCacheFile=timing.cache")


def test_dynamic_profile_uses_min_opt_max():
    profile = {"x": ProfileShape((1, 3, 64, 64), (4, 3, 64, 64), (8, 3, 64, 64)),
               "mask": ProfileShape((1, 64), (4, 64), (8, 64))}
    argv = trtexec_build_argv("m.onnx", "m.engine", "tensorrt-11", profile=profile)
    assert argv[3:] == ["--minShapes=x:1x3x64x64,mask:1x64", "--optShapes=x:4x3x64x64,mask:4x64",
                        "--maxShapes=x:8x3x64x64,mask:8x64"]


def test_implicit_with_fp16_layer_precisions_and_dla():
    argv = trtexec_build_argv(
        "m.onnx", "m.int8.engine", "tensorrt-10-implicit", calib_cache="m.int8.cache",
        layer_precisions={"/model.24/m.0/Conv": "fp16", "node_of_scores": "fp32"},
        dla=DlaOptions(0, gpu_fallback=True),
        input_formats=parse_io_formats("int8:dla_hwc4"),
        output_formats=parse_io_formats("fp16:chw16"),
    )
    assert format_command(argv) == (
        "trtexec --onnx=m.onnx --saveEngine=m.int8.engine --int8 --fp16 --calib=m.int8.cache "
        "--precisionConstraints=obey --layerPrecisions=/model.24/m.0/Conv:fp16,node_of_scores:fp32 "
        "--inputIOFormats=int8:dla_hwc4 --outputIOFormats=fp16:chw16 --useDLACore=0 --allowGPUFallback"
    )


def test_implicit_fp16_flag_and_standalone_dla():
    argv = trtexec_build_argv(
        "m.onnx", "m.engine", "tensorrt-10-implicit", calib_cache="c", fp16=True, dla=DlaOptions(1, standalone=True),
        input_formats=parse_io_formats("fp16:dla_linear"), output_formats=parse_io_formats("fp16:dla_linear"),
    )
    assert argv[3:6] == ["--int8", "--fp16", "--calib=c"]
    assert argv[-2:] == ["--useDLACore=1", "--buildDLAStandalone"]


def test_strongly_typed_10_with_dla():
    argv = trtexec_build_argv("m.int8.onnx", "m.engine", "tensorrt-10-strongly-typed", dla=DlaOptions(0))
    assert argv == ["trtexec", "--onnx=m.int8.onnx", "--saveEngine=m.engine", "--stronglyTyped", "--useDLACore=0"]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"mode": "tensorrt-10-implicit"}, "needs a calibration cache"),
        ({"mode": "tensorrt-11", "calib_cache": "c"}, "exist only for implicit"),
        ({"mode": "tensorrt-10-strongly-typed", "fp16": True}, "exist only for implicit"),
        ({"mode": "tensorrt-11", "layer_precisions": {"a": "fp16"}}, "only for implicit TensorRT 10"),
        ({"mode": "tensorrt-11", "dla": DlaOptions(0)}, "DLA with TensorRT 10.x only"),
        ({"mode": "tensorrt-10-implicit", "calib_cache": "c", "dla": DlaOptions(0, standalone=True)},
         "--dla-standalone needs --input-io-formats"),
        ({"mode": "tensorrt-10-implicit", "calib_cache": "c", "layer_precisions": {"a,b": "fp16"}},
         "cannot express"),
    ],
)
def test_impossible_combinations_are_refused(kwargs, fragment):
    mode = kwargs.pop("mode")
    with pytest.raises(TrtqError, match=fragment):
        trtexec_build_argv("m.onnx", "m.engine", mode, **kwargs)


def test_standalone_rejects_formats_dla_cannot_read_and_gpu_fallback():
    with pytest.raises(TrtqError, match=r"fp32:chw is not a format a standalone DLA loadable accepts"):
        trtexec_build_argv("m.onnx", "m.engine", "tensorrt-10-implicit", calib_cache="c",
                           dla=DlaOptions(0, standalone=True), input_formats=parse_io_formats("fp32:chw"),
                           output_formats=parse_io_formats("fp16:chw16"))
    with pytest.raises(TrtqError, match="cannot be combined"):
        DlaOptions(0, gpu_fallback=True, standalone=True)
    with pytest.raises(TrtqError, match="numbered from 0"):
        DlaOptions(-1)


def test_unknown_mode_is_a_bug():
    with pytest.raises(ValueError):
        trtexec_build_argv("m.onnx", "m.engine", "tensorrt-9")


def test_paths_with_spaces_are_quoted():
    command = format_command(trtexec_build_argv("my model.onnx", "out dir/m.engine", "tensorrt-11"))
    assert command == "trtexec '--onnx=my model.onnx' '--saveEngine=out dir/m.engine'"


def test_run_bench_inspect_commands():
    assert trtexec_run_argv("m.engine", {"x": (1, 3)}, "o.json") == [
        "trtexec", "--loadEngine=m.engine", "--iterations=1", "--warmUp=0", "--duration=0", "--exportOutput=o.json",
        "--shapes=x:1x3"]
    assert trtexec_bench_argv("m.engine", cuda_graph=True) == [
        "trtexec", "--loadEngine=m.engine", "--warmUp=200", "--duration=3", "--percentile=90,95,99", "--useCudaGraph"]
    assert trtexec_inspect_argv("m.engine", "l.json") == [
        "trtexec", "--loadEngine=m.engine", "--skipInference", "--dumpLayerInfo", "--exportLayerInfo=l.json"]


@pytest.mark.parametrize(("text", "mib"), [("4G", 4096), ("4GiB", 4096), ("512M", 512), ("1024", 1024),
                                           ("0.5G", 512), ("2048k", 2), ("4T", 4 * 1024 * 1024), ("1024T", 1024**3)])
def test_parse_size_mib(text, mib):
    assert parse_size_mib(text) == mib


@pytest.mark.parametrize(("text", "why"), [("lots", "not a size"), ("4P", "not a size"), ("0.1M", "below 1 MiB"),
                                           ("inf", "not a size"), ("nan", "not a size"), ("-inf", "not a size"),
                                           ("1025T", "over 1 PiB"), ("1e30G", "over 1 PiB")])
def test_parse_size_mib_rejects(text, why):
    """A workspace that is no finite number of MiB, or more than any GPU has (the cap: 1 PiB), is an error:
    inf and nan raised OverflowError/ValueError, and 1e30G printed a 37-digit --memPoolSize."""
    with pytest.raises(TrtqError, match=f"--workspace '{text}' .*{why}"):
        parse_size_mib(text)
