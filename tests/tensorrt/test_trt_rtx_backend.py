"""`--backend tensorrt-rtx`: real ahead-of-time builds with TensorRT-RTX (no GPU needed) through the same
build path as TensorRT 10/11, and the compute-capability requirement of run and bench.

The builds are skipped with the reason where TensorRT-RTX is not installed; the rest needs no TensorRT.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trtq import api
from trtq.cli import main
from trtq.errors import TrtqError
from trtq.tensorrt import rtx
from trtq.tensorrt.build import BuildOptions, build_engine
from trtq.tensorrt.commands import DlaOptions, trtexec_build_argv
from trtq.tensorrt.profiles import ProfileShape
from trtq.tensorrt.rtx import open_rtx_device, parse_compute_capabilities
from trtq.tensorrt.sidecar import EngineSidecar, engine_backend, sidecar_path

DIGITS = Path(__file__).resolve().parents[2] / "examples" / "digits"


@pytest.fixture
def qdq_digits(tmp_path) -> Path:
    result = api.quantize(DIGITS / "digits_cnn.onnx", DIGITS / "calib", progress=False,
                          data=api.DataOptions(preset="none", limit=16),
                          options=api.QuantizeOptions(output_dir=str(tmp_path)))
    return Path(result.onnx_path)


def _needs_rtx() -> None:
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed (pip install -e '.[verify]')")


def test_cli_builds_an_rtx_engine_without_a_gpu(qdq_digits, capsys):
    _needs_rtx()
    assert main(["build", str(qdq_digits), "--backend", "tensorrt-rtx", "--shape", "image:4x1x32x32", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    engine = qdq_digits.with_name("digits_cnn.int8.engine")
    assert result["engine_path"] == str(engine) and engine.stat().st_size > 10_000
    assert result["mode"] == "tensorrt-rtx" and result["builder"] == "TensorRT-RTX 1.7.1.116"
    assert result["gpu_name"] == "ahead of time for compute capability 8.0, 8.6, 8.9 and 12.x"
    assert result["trtexec_command"] == (f"tensorrt_rtx --onnx={qdq_digits} --saveEngine={engine} "
                                         "--shapes=image:4x1x32x32")
    sidecar = EngineSidecar.load(sidecar_path(engine))
    assert sidecar.mode == "tensorrt-rtx" and sidecar.gpu_name == "" and sidecar.precision == "int8"
    assert sidecar.profile["image"]["opt"] == [4, 1, 32, 32]
    assert engine_backend(engine) == "tensorrt-rtx" and engine_backend(engine, "tensorrt") == "tensorrt"


def test_dynamic_profile_and_compute_capability_targets(qdq_digits):
    _needs_rtx()
    options = BuildOptions(backend="tensorrt-rtx", compute_capabilities=("8.9", "12.0"), output=str(
        qdq_digits.with_name("dyn.engine")), min_shapes={"image": (1, 1, 32, 32)}, opt_shapes={"image": (8, 1, 32, 32)},
        max_shapes={"image": (32, 1, 32, 32)})
    result = build_engine(qdq_digits, options)
    assert result.gpu_name == "ahead of time for compute capability 8.9, 12.0"
    sidecar = EngineSidecar.load(result.sidecar_path)
    assert sidecar.build_options["compute_capabilities"] == ["8.9", "12.0"]
    assert sidecar.profile["image"] == {"min": [1, 1, 32, 32], "opt": [8, 1, 32, 32], "max": [32, 1, 32, 32]}


def test_rtx_refuses_what_it_does_not_have(qdq_digits, capsys):
    _needs_rtx()
    assert main(["build", str(qdq_digits), "--backend", "tensorrt-rtx", "--implicit", "--calib",
                 str(qdq_digits.with_name("digits_cnn.int8.cache"))]) == 2
    assert "TensorRT-RTX builds strongly typed networks only" in capsys.readouterr().err
    with pytest.raises(TrtqError, match="builds strongly typed networks only"):
        build_engine(qdq_digits, BuildOptions(backend="tensorrt-rtx", dla=DlaOptions(0)))


def test_a_model_the_rtx_parser_rejects(tmp_path):
    _needs_rtx()
    from onnx import TensorProto, helper, save

    graph = helper.make_graph([helper.make_node("Mystery", ["x"], ["y"], name="odd", domain="example.custom")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.custom", 1)]),
         tmp_path / "odd.onnx")
    with pytest.raises(TrtqError, match=r"^TensorRT-RTX's ONNX parser rejected .*odd\.onnx at node odd \(Mystery\)"):
        build_engine(tmp_path / "odd.onnx", BuildOptions(backend="tensorrt-rtx"))
    assert not (tmp_path / "odd.fp32.engine").exists()


def test_run_and_bench_need_a_gpu_tensorrt_rtx_runs_on(qdq_digits, capsys, monkeypatch):
    """On a Hopper GPU (9.0), and with no GPU at all, run and bench stop with the requirement (exit 2)."""
    _needs_rtx()
    build_engine(qdq_digits, BuildOptions(backend="tensorrt-rtx", shapes={"image": (1, 1, 32, 32)}))
    engine = qdq_digits.with_name("digits_cnn.int8.engine")

    def no_gpu(name: str) -> None:
        raise TrtqError("No CUDA device is reachable from Python here.", "install torch with CUDA.")

    for device, expected in ((lambda name: _FakeGpu("NVIDIA H200", (9, 0)), "but this GPU (NVIDIA H200) is 9.0"),
                             (no_gpu, "and no CUDA device is reachable from Python here, so trtq cannot ")):
        monkeypatch.setattr(rtx, "open_backend", device)
        for argv in (["run", str(engine), "--data", str(DIGITS / "val"), "--preset", "none"], ["bench", str(engine)]):
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert "TensorRT-RTX runs engines on GPUs of compute capability 8.0, 8.6, 8.9 and 12.x" in err
            assert expected in err and "Traceback" not in err


class _FakeGpu:
    def __init__(self, name: str, capability: tuple[int, int]) -> None:
        self.name, self.capability = name, capability

    def device_name(self) -> str:
        return self.name

    def compute_capability(self) -> tuple[int, int]:
        return self.capability


@pytest.mark.parametrize(("gpu", "capability", "runs"), [("NVIDIA H200", (9, 0), False), ("NVIDIA B200", (10, 0), False),
                                                         ("NVIDIA GeForce RTX 4090", (8, 9), True),
                                                         ("NVIDIA GeForce RTX 5090", (12, 0), True),
                                                         ("NVIDIA A100", (8, 0), True)])
def test_the_compute_capability_requirement(monkeypatch, gpu, capability, runs):
    monkeypatch.setattr(rtx, "open_backend", lambda name: _FakeGpu(gpu, capability))
    if runs:
        assert open_rtx_device("auto", "run m.engine").device_name() == gpu
        return
    with pytest.raises(TrtqError) as info:
        open_rtx_device("auto", "run m.engine")
    assert info.value.message == (
        "TensorRT-RTX runs engines on GPUs of compute capability 8.0, 8.6, 8.9 and 12.x (7.5 for engines built for "
        f"it), but this GPU ({gpu}) is {capability[0]}.{capability[1]}, so trtq cannot run m.engine here.")


def test_compute_capability_option():
    assert parse_compute_capabilities("8.9") == ("8.9",)
    assert parse_compute_capabilities("sm89,12.0, 86") == ("8.9", "12.0", "8.6")
    assert parse_compute_capabilities(None) == ()
    with pytest.raises(TrtqError, match=r"--compute-capability '9.0' is not one TensorRT-RTX builds for"):
        parse_compute_capabilities("9.0")
    with pytest.raises(TrtqError, match="--compute-capability chooses the GPUs a TensorRT-RTX engine is built for"):
        build_engine(DIGITS / "digits_cnn.onnx", BuildOptions(compute_capabilities=("8.9",)))


def test_the_tensorrt_rtx_command_line():
    profile = {"x": ProfileShape((1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8))}
    assert trtexec_build_argv("m.onnx", "m.engine", "tensorrt-rtx", profile=profile, workspace_mib=64) == [
        "tensorrt_rtx", "--onnx=m.onnx", "--saveEngine=m.engine", "--minShapes=x:1x3x8x8", "--optShapes=x:4x3x8x8",
        "--maxShapes=x:8x3x8x8"]


def test_build_gives_placeholder_dims_distinct_names_in_the_copy_the_builder_gets(tmp_path, capsys):
    """paddle2onnx names every dynamic dim '?': x [1, 3, ?, ?] -> Relu -> y. TensorRT reads dims of one name
    as one dim, so a 4x6 build failed; `build` (like `verify`) hands the builder a copy with distinct names,
    says so, and leaves the file as it was."""
    _needs_rtx()
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "?", "?"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, "?", "?"])])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    before = path.read_bytes()
    assert main(["build", str(path), "--backend", "tensorrt-rtx", "--shape", "x:1x3x4x6", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert Path(result["engine_path"]).stat().st_size > 0
    assert result["notes"] == ["2 dynamic input dims shared the placeholder name '?', which TensorRT reads as one "
                               "dim; renamed x_dim2, x_dim3 in the copy handed to the builder (the file is unchanged, "
                               "and the tensorrt_rtx equivalent reads it as it is)"]
    assert EngineSidecar.load(sidecar_path(Path(result["engine_path"]))).profile["x"]["opt"] == [1, 3, 4, 6]
    assert path.read_bytes() == before
