"""More hostile invocations (a second, held-out style trial): each ends in one sentence and a fix
on stderr with exit code 2 and nothing written, or in a correct result. Each case names what it is about."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from tiny_models import gemm_matmul_net, residual_conv_net, save

import trtq
import trtq._io as io
from trtq.cli import main

SRC = str(Path(trtq.__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile_more")
    save(residual_conv_net(batch="N"), root / "net.onnx")
    np.save(root / "calib.npy", np.random.default_rng(0).standard_normal((6, 3, 16, 16)).astype(np.float32))
    return root


def _trtq(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    """trtq in its own process: a case that ends the process must not end the test run."""
    return subprocess.run([sys.executable, "-m", "trtq", *argv], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": SRC}, check=False)


HARD_EXITS = {
    "at_call.py": "import os\ndef load_data():\n    os._exit(0)\n",
    "at_import.py": "import os\nos._exit(0)\ndef load_data():\n    return []\n",
    "producing.py": """
        import os
        import numpy as np
        def load_data():
            yield {"input": np.zeros((1, 3, 16, 16), np.float32)}
            os._exit(0)
    """,
}


@pytest.mark.parametrize(("script", "message"), [
    ("at_call.py", r"load_data\(\) in .*at_call.py called os._exit\(0\), which would end trtq at once"),
    ("at_import.py", r"Data script .*at_import.py, while it was imported, called os._exit\(0\)"),
    ("producing.py", r"load_data\(\) in .*producing.py, producing item 1, called os._exit\(0\)"),
])
def test_a_data_script_that_calls_os_exit_is_an_error_not_a_silent_success(files, tmp_path, script, message):
    """os._exit(0) cannot be caught: without trtq replacing it while the script runs, trtq exits 0 with nothing written."""
    (tmp_path / script).write_text(textwrap.dedent(HARD_EXITS[script]))
    done = _trtq("quantize", str(files / "net.onnx"), "--calib", str(tmp_path / script), "--output-dir",
                 str(tmp_path / "out"), "--quiet", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("trtq: error: ") and "Traceback" not in done.stderr
    assert re.search(message, lines[0]), lines[0]
    assert "instead of calling os._exit()" in lines[1] or "__main__" in lines[1]
    assert not (tmp_path / "out").exists()


def test_a_data_script_whose_worker_processes_exit_still_works(files, tmp_path):
    """A forked multiprocessing worker ends with os._exit: that one must still end its own process."""
    script = tmp_path / "pool.py"
    script.write_text(textwrap.dedent("""
        import multiprocessing as mp
        import numpy as np
        def make(i):
            return np.full((3, 16, 16), i, np.float32)
        def load_data():
            with mp.get_context("fork").Pool(2) as pool:
                arrays = pool.map(make, range(4))
            yield {"input": np.stack(arrays)}
    """))
    done = _trtq("quantize", str(files / "net.onnx"), "--calib", str(script), "--output-dir", str(tmp_path / "out"),
                 "--json", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["samples"] == 4


def test_smooth_on_a_model_without_matmuls_says_so_and_writes_no_smoothed_model(files, tmp_path, capsys):
    """--smooth on a conv net used to write a no-op smoothing (and a second, identical model) without a word."""
    out = tmp_path / "out"
    assert main(["quantize", str(files / "net.onnx"), "--calib", str(files / "calib.npy"), "--smooth",
                 "--output-dir", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("trtq: warning: ")]
    assert len(warnings) == 1 and "--smooth has nothing to smooth in" in warnings[0], captured.err
    assert "has no MatMul or Gemm node; it is quantized unsmoothed" in warnings[0]
    result = json.loads(captured.out)
    assert result["smoothing"] is None and result["qdq_pairs"] > 0
    assert sorted(p.name for p in out.iterdir()) == ["net.int8.cache", "net.int8.json", "net.int8.onnx",
                                                     "trtq-quantize.json"]


def test_smooth_still_runs_where_there_is_a_matmul(tmp_path, capsys):
    model = save(gemm_matmul_net(), tmp_path / "mm.onnx")
    from onnx import load

    name = load(model).graph.input[0]
    dims = [d.dim_value or 4 for d in name.type.tensor_type.shape.dim]
    np.save(tmp_path / "x.npy", np.random.default_rng(1).standard_normal(dims).astype(np.float32))
    assert main(["quantize", model, "--calib", str(tmp_path / "x.npy"), "--smooth", "0.5", "--output-dir",
                 str(tmp_path / "out"), "--quiet", "--json"]) == 0, capsys.readouterr().err


@pytest.mark.parametrize(("name", "data", "message"), [
    ("text.npy", b"hello\n",
     r"text.npy is not a .npy file: it starts with b'hello\\n', where a .npy file starts with b'\\x93NUMPY'"),
    ("empty.npy", b"", r"empty.npy is empty \(0 bytes\), not a .npy file"),
    ("text.npz", b"a,b\n1,2\n", r"text.npz is not a .npz file: it starts with b'a,b\\n1,2\\n'"),
])
def test_a_data_file_that_is_not_numpy_names_what_it_is(files, tmp_path, capsys, name, data, message):
    """numpy's own message for a text file named .npy is about allow_pickle."""
    (tmp_path / name).write_bytes(data)
    assert main(["quantize", str(files / "net.onnx"), "--calib", str(tmp_path / name), "--output-dir",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "pickle" not in err and not (tmp_path / "out").exists()


def test_a_ranges_table_of_the_other_precision_says_so(files, tmp_path, capsys):
    """An FP8 table lacks the tensors INT8 quantizes: that is a precision mismatch, not 'another model'."""
    assert main(["quantize", str(files / "net.onnx"), "--calib", str(files / "calib.npy"), "--precision", "fp8",
                 "--output-dir", str(tmp_path / "fp8"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["quantize", str(files / "net.onnx"), "--ranges", str(tmp_path / "fp8" / "net.fp8.json"),
                 "--output-dir", str(tmp_path / "int8")]) == 2
    err = capsys.readouterr().err
    assert "was calibrated for --precision fp8, and this run quantizes to int8" in err
    assert "another model" not in err and "pass --precision fp8 to use this table" in err
    assert not (tmp_path / "int8").exists()


def test_a_commit_a_killed_run_left_is_rolled_back_by_the_next_command_with_one_warning(files, tmp_path, capsys):
    """The journal of a writer killed between its renames (made by hand here: the previous .onnx kept as
    a backup, the new one in place, the rest not yet renamed) is undone by the next quantize into the folder."""
    out = tmp_path / "out"
    assert main(["quantize", str(files / "net.onnx"), "--calib", str(files / "calib.npy"), "--output-dir", str(out),
                 "--quiet"]) == 0
    capsys.readouterr()
    before = {p.name for p in out.iterdir()}
    target, staged = out / "net.int8.onnx", out / ".net.int8.onnx.99999999-0123abcd.tmp"
    backup = out / ".net.int8.onnx.99999999-0123abcd.bak"
    staged.write_bytes(b"half of another run's model")
    os.link(target, backup)
    stat = staged.stat()
    (out / io.JOURNAL).write_text(json.dumps({"pid": 99999999, "command": "trtq quantize other.onnx", "done": False,
                                              "steps": [{"target": target.name, "backup": backup.name,
                                                         "staged": staged.name, "inode": [stat.st_dev, stat.st_ino]}]}))
    os.replace(staged, target)
    assert main(["inspect", str(files / "net.onnx"), "--quiet"]) == 0  # a reader leaves it alone
    assert (out / io.JOURNAL).exists()
    capsys.readouterr()
    assert main(["quantize", str(files / "net.onnx"), "--calib", str(files / "calib.npy"), "--output-dir",
                 str(out), "--quiet"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("trtq: warning: ")]
    assert len(warnings) == 1, warnings
    assert "an earlier run (process 99999999, `trtq quantize other.onnx`) was stopped while renaming" in warnings[0]
    assert "put back the previous net.int8.onnx" in warnings[0]
    after = {p.name for p in out.iterdir()}
    assert after == set(before) and not any(n.startswith(".") for n in after)


def test_a_scalar_array_is_called_a_single_number(files, tmp_path, capsys):
    np.save(tmp_path / "scalar.npy", np.float32(3))
    assert main(["quantize", str(files / "net.onnx"), "--calib", str(tmp_path / "scalar.npy"), "--output-dir",
                 str(tmp_path / "out")]) == 2
    assert "scalar.npy holds a single number; input 'input' needs Nx3x16x16." in capsys.readouterr().err


@pytest.mark.parametrize("output", ["{dir}", "{dir}/net.onnx"])
def test_build_refuses_an_output_that_is_a_folder_or_the_model(files, tmp_path, capsys, output):
    """The printed trtexec line (and a build) would have written the engine over the model, or to a folder."""
    model = tmp_path / "net.onnx"
    model.write_bytes((files / "net.onnx").read_bytes())
    assert main(["build", str(model), "--print-trtexec", "--output", output.format(dir=tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a directory; it names the engine file" in err or ("is the model" in err and "would overwrite it" in err)
    assert model.read_bytes() == (files / "net.onnx").read_bytes()


def test_a_result_the_terminal_cannot_encode_is_printed_escaped(files, tmp_path):
    """A Korean file name under LC_ALL=C/PYTHONIOENCODING=ascii crashed printing the result, after writing it."""
    folder = tmp_path / "모델 ü"
    folder.mkdir()
    (folder / "네트.onnx").write_bytes((files / "net.onnx").read_bytes())
    done = subprocess.run([sys.executable, "-m", "trtq", "quantize", str(folder / "네트.onnx"), "--calib",
                           str(files / "calib.npy"), "--quiet"], capture_output=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": SRC, "PYTHONIOENCODING": "ascii", "LC_ALL": "C"})
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert b"\\ub124\\ud2b8.int8.onnx" in done.stdout and b"Traceback" not in done.stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("stdout", ["closed", "full"])
def test_a_result_that_cannot_be_printed_is_one_sentence_naming_what_was_written(files, tmp_path, stdout):
    out = tmp_path / "out"
    argv = ["quantize", str(files / "net.onnx"), "--calib", str(files / "calib.npy"), "--output-dir", str(out),
            "--quiet"]
    with open("/dev/full", "w") as full:
        where = {"stdout": full} if stdout == "full" else {"stdout": subprocess.DEVNULL, "preexec_fn": lambda: os.close(1)}
        done = subprocess.run([sys.executable, "-m", "trtq", *argv], stderr=subprocess.PIPE, text=True, timeout=120,
                              check=False, env={**os.environ, "PYTHONPATH": SRC}, **where)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "trtq: error: Cannot print the result on standard output" in done.stderr
    assert f"note: this run had written {out / 'net.int8.onnx'}" in done.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
@pytest.mark.parametrize(("where", "message"), [
    ("model", r"Model file .*pipe.onnx is a named pipe, not an .onnx file"),
    ("calib", r"Data .*pipe.npy is a named pipe, not a file or folder"),
    ("ranges", r"Ranges file .*pipe.json is a named pipe, not a file"),
    ("image", r"Image .*images.pipe.png is a named pipe, not a file"),
])
def test_a_named_pipe_as_an_input_is_refused_not_waited_on(files, tmp_path, where, message):
    """Opening a named pipe to read waits for a writer: trtq hung for ever on one given as --calib or in an image folder."""
    images = tmp_path / "images"
    images.mkdir()
    pipe = {"model": tmp_path / "pipe.onnx", "calib": tmp_path / "pipe.npy", "ranges": tmp_path / "pipe.json",
            "image": images / "pipe.png"}[where]
    os.mkfifo(pipe)
    model = pipe if where == "model" else files / "net.onnx"
    data = ["--ranges", str(pipe)] if where == "ranges" else ["--calib", str(images if where == "image" else
                                                                              pipe if where == "calib" else files / "calib.npy")]
    done = _trtq("quantize", str(model), *data, "--output-dir", str(tmp_path / "out"), "--quiet", cwd=tmp_path)
    assert done.returncode == 2 and re.search(message, done.stderr), done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
@pytest.mark.parametrize(("option", "command"), [
    ("--labels", "compare"), ("--coco", "compare"), ("--postprocess", "compare"), ("--layer-precisions-from", "build"),
])
def test_a_named_pipe_given_to_a_file_option_is_refused_before_any_work(files, tmp_path, option, command):
    """The pipe checks of the model/data/ranges loaders did not cover the options read later (labels, COCO
    annotations, a postprocess script, a precisions JSON): those waited for a writer for ever."""
    pipe = tmp_path / "pipe.json"
    os.mkfifo(pipe)
    model = str(files / "net.onnx")
    argv = ([command, model, model, "--data", str(files / "calib.npy")] if command == "compare"
            else [command, model, "--output", str(tmp_path / "net.engine")])
    done = _trtq(*argv, option, str(pipe), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert f"trtq: error: {option} {pipe} is a named pipe, not a file trtq can read." in done.stderr


@pytest.mark.parametrize("call", ["quantize options", "quantize data", "compare data", "sensitivity options"])
def test_an_options_object_of_the_wrong_type_is_one_sentence(files, tmp_path, call):
    """api.quantize(..., options={...}) died with AttributeError: 'dict' object has no attribute 'exclude_nodes'."""
    from trtq import api
    from trtq.errors import TrtqError

    model, data = str(files / "net.onnx"), str(files / "calib.npy")
    run = {
        "quantize options": lambda: api.quantize(model, data, options={"output_dir": str(tmp_path)}),
        "quantize data": lambda: api.quantize(model, data, data="imagenet"),
        "compare data": lambda: api.compare(model, model, data, data={"preset": "imagenet"}),
        "sensitivity options": lambda: api.sensitivity(model, calib=data, options=["max"]),
    }[call]
    with pytest.raises(TrtqError, match=r"(options|data)= takes a trtq.api.(QuantizeOptions|DataOptions), not a "):
        run()
    assert list(tmp_path.iterdir()) == []


def test_a_thread_a_data_script_leaves_running_does_not_hang_trtq(files, tmp_path):
    """Python waits for non-daemon threads at exit: trtq wrote its outputs, then hung for ever."""
    script = tmp_path / "prefetch.py"
    script.write_text(textwrap.dedent("""
        import threading, time
        import numpy as np
        def load_data():
            threading.Thread(target=time.sleep, args=(10**6,), name="prefetch").start()
            yield {"input": np.zeros((2, 3, 16, 16), np.float32)}
    """))
    done = _trtq("quantize", str(files / "net.onnx"), "--calib", str(script), "--output-dir", str(tmp_path / "out"),
                 "--json", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["samples"] == 2
    assert "left thread 'prefetch' running; trtq exits without waiting for it" in done.stderr


def test_resume_without_a_checkpoint_fails_before_calibrating(files, tmp_path, capsys, monkeypatch):
    """--resume with no checkpoint in the folder was said only after the PTQ calibration (minutes on a big model)."""
    pytest.importorskip("torch")
    from trtq import api

    def no_calibration(*args, **kwargs):
        raise AssertionError("calibrated before checking --resume")

    monkeypatch.setattr(api, "calibrate_prepared", no_calibration)
    assert main(["finetune", str(files / "net.onnx"), "--calib", str(files / "calib.npy"), "--steps", "3", "--resume",
                 "--output-dir", str(tmp_path / "out"), "--quiet"]) == 2
    assert "--resume: there is no checkpoint" in capsys.readouterr().err
