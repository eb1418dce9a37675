"""`trtq build/run/bench/inspect` without TensorRT: one sentence, the trtexec command, exit code 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_models import residual_conv_net, save

from trtq.cli import main


@pytest.fixture(autouse=True)
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as if not installed, also on machines that have it


@pytest.fixture
def model(tmp_path):
    """residual_conv_net with a dynamic batch: input [N,3,16,16] -> ... -> scores [N,4,8,8]."""
    return save(residual_conv_net(batch="N"), tmp_path / "m.onnx")


def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_not_installed(err: str, *fragments: str) -> None:
    first = err.splitlines()[0]
    assert first.startswith("trtq: error: TensorRT is not installed in this Python environment, so trtq cannot ")
    assert first.endswith("the equivalent trtexec command is:")
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def test_build_strongly_typed(model, capsys, tmp_path):
    code, out, err = run(["build", model, "--shape", "input:2x3x16x16", "--workspace", "1G"], capsys)
    assert code == 2 and out == ""
    engine = tmp_path / "m.fp32.engine"
    assert_not_installed(
        err,
        f"tensorrt-11: trtexec --onnx={model} --saveEngine={engine} --shapes=input:2x3x16x16 --memPoolSize=workspace:1024M",
        f"tensorrt-10-strongly-typed: trtexec --onnx={model} --saveEngine={engine} --stronglyTyped",
    )
    assert not engine.exists()


def test_build_implicit_for_jetson(model, capsys, tmp_path):
    (tmp_path / "calib").mkdir()
    code, _, err = run(["build", model, "--implicit", "--calib", str(tmp_path / "calib"), "--shape", "input:1x3x16x16",
                        "--layer-precisions", "conv_head:fp16", "--dla-core", "0", "--gpu-fallback",
                        "--input-io-formats", "fp16:chw16"], capsys)
    assert code == 2
    assert_not_installed(
        err,
        f"tensorrt-10-implicit: trtexec --onnx={model} --saveEngine={tmp_path}/m.int8.fp16chw16in.engine --int8 "
        f"--fp16 --calib={tmp_path}/m.int8.fp16chw16in.calib.cache --precisionConstraints=obey --layerPrecisions=conv_head:fp16 "
        "--shapes=input:1x3x16x16 --inputIOFormats=fp16:chw16 --useDLACore=0 --allowGPUFallback",
    )
    assert "tensorrt-11" not in err


def test_run_bench_inspect(capsys, tmp_path):
    engine = str(tmp_path / "m.int8.engine")
    np.savez(tmp_path / "d.npz", input=np.zeros((1, 3, 16, 16), np.float32))
    code, _, err = run(["run", engine, "--data", str(tmp_path / "d.npz")], capsys)
    assert code == 2
    assert_not_installed(err, f"trtexec --loadEngine={engine} --iterations=1")
    code, _, err = run(["bench", engine, "--shape", "input:4x3x16x16", "--cuda-graph"], capsys)
    assert code == 2
    assert_not_installed(err, f"trtexec --loadEngine={engine} --warmUp=200 --duration=3 --percentile=90,95,99 "
                              "--shapes=input:4x3x16x16 --useCudaGraph")
    code, _, err = run(["inspect", engine], capsys)
    assert code == 2
    assert_not_installed(err, f"trtexec --loadEngine={engine} --skipInference --dumpLayerInfo")


def test_compare_with_an_engine_needs_tensorrt(model, capsys, tmp_path):
    # the engine runs where TensorRT is installed; here it is not: one sentence, before any data is read twice
    import numpy as np

    np.save(tmp_path / "d.npy", np.zeros((2, 3, 16, 16), np.float32))
    engine = str(tmp_path / "m.int8.engine")
    code, _, err = run(["compare", model, engine, "--data", str(tmp_path / "d.npy"), "--quiet"], capsys)
    assert code == 2
    assert_not_installed(err, f"trtexec --loadEngine={engine} --iterations=1")


def test_print_trtexec_needs_no_tensorrt(model, capsys):
    code, out, err = run(["build", model, "--print-trtexec", "--min-shape", "input:1x3x16x16", "--opt-shape",
                          "input:4x3x16x16", "--max-shape", "input:8x3x16x16"], capsys)
    assert code == 0 and err == ""
    assert "# tensorrt-10-strongly-typed\ntrtexec" in out
    assert "--minShapes=input:1x3x16x16 --optShapes=input:4x3x16x16 --maxShapes=input:8x3x16x16" in out


def test_user_errors_come_before_the_tensorrt_check(model, capsys):
    code, _, err = run(["build", model, "--input-io-formats", "fp16:nchw"], capsys)
    assert code == 2 and "has format 'nchw', which is not one of chw, chw2" in err
    code, _, err = run(["build", model, "--gpu-fallback"], capsys)
    assert code == 2 and "need --dla-core" in err
    code, _, err = run(["build", model, "--calib", "data/"], capsys)
    assert code == 2 and "add --implicit" in err
    folder = str(Path(model).parent)  # data that exists: the error is about the layer precisions
    code, _, err = run(["build", model, "--implicit", "--calib", folder, "--shape", "input:1x3x16x16",
                        "--layer-precisions", "nope:fp16"], capsys)
    assert code == 2 and "names node 'nope', which is not a node" in err


def test_print_trtexec_reads_the_cache_it_names(model, capsys, tmp_path):
    """A cache TensorRT's calibrator wrote (internal layer names too) passes; one that lacks the inputs of
    some INT8 layers gets a warning naming them; --ranges and an implicit line's default cache must exist."""
    from trtq.formats.cache import format_cache

    full = tmp_path / "trt.cache"
    full.write_bytes(format_cache({"input": 1.0, "r1": 1.0, "r2": 1.0, "pool": 1.0, "(Unnamed Layer* 3) [Shuffle]_output": 1.0}))
    code, out, err = run(["build", model, "--print-trtexec", "--implicit", "--calib", str(full)], capsys)
    assert code == 0 and f"--calib={full}" in out and err == ""
    partial = tmp_path / "partial.cache"
    partial.write_bytes(format_cache({"input": 1.0, "pool": 1.0}))
    code, out, err = run(["build", model, "--print-trtexec", "--implicit", "--calib", str(partial), "--json"], capsys)
    assert code == 0 and "has no scale for 2 of the 4 inputs" in err and err.startswith("trtq: warning: ")
    assert "has no scale for 2 of the 4 inputs" in json.loads(out)["warnings"][0]
    code, _, err = run(["build", model, "--print-trtexec", "--implicit"], capsys)
    assert code == 2 and "m.int8.cache does not exist and no --calib FILE.cache was given" in err
    code, _, err = run(["build", model, "--print-trtexec", "--ranges", str(tmp_path / "none.json")], capsys)
    assert code == 2 and "Ranges file" in err and "does not exist" in err and "Traceback" not in err
