"""Version branching with the TensorRT version as input (no TensorRT needed)."""

from __future__ import annotations

import sys
import warnings

import pytest

from trtq.errors import TrtqError
from trtq.formats.cache import format_cache
from trtq.tensorrt.build import (
    BuildOptions,
    build_mode,
    calibration_algorithm,
    validate_options,
)
from trtq.tensorrt.commands import DlaOptions
from trtq.tensorrt.ioformats import parse_io_formats
from trtq.tensorrt.version import (
    RTX_PIP,
    capabilities,
    installed_version,
    parse_version,
    require_tensorrt,
    runs_rtx_engines,
    supports,
)


@pytest.mark.parametrize(
    ("version", "track", "implicit"),
    [((10, 0, 1), "10", True), ((10, 13, 3), "10", True), ((11, 4, 0), "11", False), ((12, 1), "11", False)],
)
def test_capabilities_follow_the_release_line(version, track, implicit):
    caps = capabilities(version)
    assert caps.track == track
    assert caps.implicit_int8 is implicit
    assert caps.weak_typing_flags is implicit  # BuilderFlag.FP16/INT8 exist only before 11
    assert caps.precision_constraints is implicit
    assert caps.calibration_profile is implicit
    assert caps.strongly_typed_flag is implicit  # 11 is always strongly typed; the flag matters on 10
    assert caps.dla is implicit


def test_versions_before_10_are_refused_with_the_version():
    with pytest.raises(TrtqError, match=r"TensorRT 8\.6\.1 is installed"):
        capabilities((8, 6, 1))


@pytest.mark.parametrize(("text", "parsed"), [("10.13.3.9", (10, 13, 3)), ("11.4.0.106", (11, 4, 0)), ("10.0", (10, 0, 0))])
def test_parse_version(text, parsed):
    assert parse_version(text) == parsed


def test_parse_version_rejects_garbage():
    with pytest.raises(TrtqError, match=r"not MAJOR.MINOR.PATCH"):
        parse_version("unknown")


def test_supports_marks_and_validates():
    @supports("10")
    def f() -> int:
        return 1

    assert f() == 1 and f.__trt_tracks__ == ("10",)
    with pytest.raises(ValueError):
        supports("9")
    with pytest.raises(ValueError):
        supports()


def test_without_tensorrt_the_error_names_the_commands(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # find_spec() then reports "not installed"
    assert installed_version() is None
    with pytest.raises(TrtqError) as info:
        require_tensorrt("build m.engine", ["trtexec --onnx=m.onnx"])
    assert info.value.message.startswith("TensorRT is not installed")
    assert info.value.message.endswith("  trtexec --onnx=m.onnx")


TEN, ELEVEN = capabilities((10, 13, 3)), capabilities((11, 4, 0))


def test_build_mode_per_version():
    assert build_mode(TEN, implicit=False) == "tensorrt-10-strongly-typed"
    assert build_mode(TEN, implicit=True) == "tensorrt-10-implicit"
    assert build_mode(ELEVEN, implicit=False) == "tensorrt-11"


def test_implicit_on_11_says_it_was_removed_in_one_sentence():
    with pytest.raises(TrtqError) as info:
        validate_options(ELEVEN, BuildOptions(implicit=True), "int8")
    message = info.value.message
    assert "removed in TensorRT 11" in message and "trtq quantize" in message
    assert message.count(". ") == 0 and message.endswith(".")
    validate_options(TEN, BuildOptions(implicit=True), "int8")


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (BuildOptions(fp16=True), "--fp16 applies only to implicit"),
        (BuildOptions(layer_precisions={"conv": "fp16"}), "Per-layer precisions apply only to implicit"),
        (BuildOptions(calibration_cache="m.cache"), "calibration cache applies only"),
    ],
)
def test_weak_typing_options_need_implicit(options, fragment):
    for caps in (TEN, ELEVEN):
        with pytest.raises(TrtqError, match=fragment):
            validate_options(caps, options, "int8")


def test_dla_only_on_10():
    dla = DlaOptions(0, gpu_fallback=True)
    with pytest.raises(TrtqError, match=r"DLA engines with TensorRT 10.x only"):
        validate_options(ELEVEN, BuildOptions(dla=dla), "int8")
    validate_options(TEN, BuildOptions(dla=dla), "int8")
    validate_options(TEN, BuildOptions(implicit=True, dla=dla), "int8")


def test_dla_needs_int8_or_fp16():
    with pytest.raises(TrtqError, match="neither Q/DQ nodes nor FP16"):
        validate_options(TEN, BuildOptions(dla=DlaOptions(0)), "fp32")
    validate_options(TEN, BuildOptions(dla=DlaOptions(0)), "fp16")


def test_dla_standalone_needs_dla_formats():
    standalone = DlaOptions(0, standalone=True)
    with pytest.raises(TrtqError, match="--dla-standalone needs --input-io-formats"):
        validate_options(TEN, BuildOptions(implicit=True, dla=standalone), "int8")
    ok = BuildOptions(implicit=True, dla=standalone, input_formats=parse_io_formats("int8:dla_hwc4"),
                      output_formats=parse_io_formats("fp16:chw16", "--output-io-formats"))
    validate_options(TEN, ok, "int8")


def test_cache_header_picks_the_calibrator_and_warns_on_version(tmp_path):
    cache = tmp_path / "m.int8.cache"
    cache.write_bytes(format_cache({"x": 1.0}, "10.13.3", "max"))
    options = BuildOptions(implicit=True, calibration_cache=str(cache))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert calibration_algorithm(options, TEN) == "minmax"
    with pytest.warns(UserWarning, match="version code 101303"):
        assert calibration_algorithm(options, capabilities((10, 3, 0))) == "minmax"
    cache.write_bytes(format_cache({"x": 1.0}, "10.13.3", "entropy"))
    assert calibration_algorithm(options, TEN) == "entropy"


def test_tensorrt_rtx_capabilities():
    rtx = capabilities((1, 7, 1), backend="tensorrt-rtx")
    assert rtx.track == "rtx" and rtx.backend == "tensorrt-rtx" and rtx.product == "TensorRT-RTX 1.7.1"
    assert rtx.builds_without_gpu and rtx.compute_capability_targets
    assert not (rtx.implicit_int8 or rtx.weak_typing_flags or rtx.strongly_typed_flag or rtx.precision_constraints
                or rtx.calibration_profile or rtx.dla)
    assert capabilities((10, 13, 3)).product == "TensorRT 10.13.3" and not capabilities((11, 4, 0)).builds_without_gpu
    with pytest.raises(ValueError):
        capabilities((1, 7, 1), backend="tensorrt-lite")


def test_compute_capabilities_tensorrt_rtx_runs_on():
    assert all(runs_rtx_engines(cc) for cc in ((7, 5), (8, 0), (8, 6), (8, 9), (12, 0), (12, 1)))
    assert not any(runs_rtx_engines(cc) for cc in ((9, 0), (10, 0), (7, 0), (8, 7)))


def test_without_tensorrt_rtx_the_error_gives_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt_rtx_bindings", None)
    assert installed_version("tensorrt-rtx") is None
    with pytest.raises(TrtqError) as info:
        require_tensorrt("verify m.onnx", [], backend="tensorrt-rtx")
    assert info.value.message == (
        "TensorRT-RTX is not installed in this Python environment, so trtq cannot verify m.onnx; install it with "
        f"`{RTX_PIP}` (or `pip install 'trtq[verify]'`).")
    with pytest.raises(TrtqError, match="--backend 'tensorrt-lite' is not one of tensorrt, tensorrt-rtx"):
        installed_version("tensorrt-lite")
