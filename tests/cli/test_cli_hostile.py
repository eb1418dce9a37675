"""Hostile invocations of every command: bad models, data and options each end in one sentence and
a fix on stderr, exit code 2, no traceback and nothing written. Each case names what it is about."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tiny_models import residual_conv_net, save

from trtq.cli import main
from trtq.formats.cache import format_cache


def gather_model() -> onnx.ModelProto:
    """Token ids index an embedding table, as every transformer's first layer does.

        ids int64 [N,8] -> Gather(table [10,16]) -> e [N,8,16] -> MatMul(w [16,4]) -> out [N,8,4]
    """
    rng = np.random.default_rng(3)
    table = numpy_helper.from_array(rng.standard_normal((10, 16)).astype(np.float32), "table")
    weight = numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["e"], name="gather"),
         helper.make_node("MatMul", ["e", "w"], ["out"], name="mm")],
        "gather", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 8, 4])], initializer=[table, weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def batch_one_model() -> onnx.ModelProto:
    """A dynamic batch dim on the input, but a Reshape to a constant [1, 768] inside (a careless export).

        x [N,3,16,16] -> Reshape([1, 768]) -> f [1,768] -> MatMul(w [768,4]) -> out [N,4]
    """
    rng = np.random.default_rng(4)
    shape = numpy_helper.from_array(np.array([1, 768], np.int64), "shape")
    weight = numpy_helper.from_array(rng.standard_normal((768, 4)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["f"], name="reshape"),
         helper.make_node("MatMul", ["f", "w"], ["out"], name="mm")],
        "batch_one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4])], initializer=[shape, weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def broken_models(root: Path) -> None:
    """Model files that are not (valid, runnable) ONNX models."""
    (root / "empty.onnx").write_bytes(b"")
    (root / "folder.onnx").mkdir()
    (root / "text.onnx").write_text("hello, I am not a model\n")
    (root / "cut.onnx").write_bytes((root / "net.onnx").read_bytes()[:300])
    vector = numpy_helper.from_array(np.ones(3, np.float32), "c")
    no_inputs = helper.make_graph([helper.make_node("Relu", ["c"], ["y"], name="relu")], "g", [],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])], initializer=[vector])
    dangling = helper.make_graph([helper.make_node("Relu", ["nowhere"], ["y"], name="relu")], "g",
                                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    unknown = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"], name="odd")], "g",
                                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    weight = numpy_helper.from_array(np.ones((4, 3), np.float16), "w")
    half = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                             [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 4])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 3])], initializer=[weight])
    no_outputs = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
                                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])], [])
    shapeless = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    for name, graph in (("no_inputs", no_inputs), ("dangling", dangling), ("unknown_op", unknown), ("half", half),
                        ("no_outputs", no_outputs), ("shapeless", shapeless)):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.save(model, str(root / f"{name}.onnx"))
    np.save(root / "x3.npy", np.ones((4, 3), np.float32))


SCRIPTS = {
    "exit_call.py": "import sys\ndef load_data():\n    sys.exit(0)\n",
    "exit_import.py": "import sys\nsys.exit(3)\n",
    "exit_later.py": """
        import sys
        import numpy as np
        def load_data():
            yield {"input": np.zeros((1, 3, 16, 16), np.float32)}
            sys.exit(0)
    """,
    "raises.py": "def load_data():\n    raise OSError('the share is gone')\n",
    "generator_exit.py": "def load_data():\n    raise GeneratorExit\n",
    "not_dicts.py": "import numpy as np\ndef load_data():\n    yield np.zeros((1, 3, 16, 16), np.float32)\n",
    "wrong_key.py": "import numpy as np\ndef load_data():\n    yield {'image': np.zeros((1, 3, 16, 16), np.float32)}\n",
    "strings.py": "import numpy as np\ndef load_data():\n    yield {'input': np.full((1, 3, 16, 16), 'a')}\n",
    "ragged.py": "def load_data():\n    yield {'input': [[1.0, 2.0], [3.0]]}\n",
    "varying.py": """
        import numpy as np
        def load_data():
            yield {"input": np.zeros((1, 3, 16, 16), np.float32)}
            yield {"input": np.zeros((1, 3, 8, 8), np.float32)}
    """,
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    save(residual_conv_net(batch="N"), root / "net.onnx")
    save(gather_model(), root / "gather.onnx")
    save(batch_one_model(), root / "batch_one.onnx")
    rng = np.random.default_rng(0)
    np.save(root / "calib.npy", rng.standard_normal((6, 3, 16, 16)).astype(np.float32))
    np.savez(root / "arrays.npz", input=np.zeros((1, 3, 16, 16), np.float32))
    np.save(root / "ids_bad.npy", np.concatenate([np.full((3, 8), 5), np.full((1, 8), 50)]).astype(np.int64))
    broken_models(root)
    for name, body in SCRIPTS.items():
        (root / name).write_text(textwrap.dedent(body))
    (root / "images").mkdir()
    from PIL import Image

    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
    good = {name: 1.0 for name in ("input", "r1", "r2", "pool", "r3")}
    caches = {
        "good": format_cache(good),
        "empty": b"",
        "header_only": format_cache(good).splitlines(keepends=True)[0],
        "edited_header": format_cache(good).replace(b"TRT-101303", b"TRT-99"),
        "nan": format_cache(good).replace(b"3c010204", b"7fc00000"),
        "negative": format_cache(good).replace(b"3c010204", b"bc010204"),
        "cut_in_a_line": format_cache(good)[:-5],
        "garbage": b"this is not a cache\nat all\n",
        "other_model": format_cache({"/backbone/conv9/Conv_output_0": 1.0, "/head/Sigmoid_output_0": 2.0}),
        "no_layer_input": format_cache({"scores": 1.0}),
        "twice": format_cache(good) + b"input: 3c010204\n",
    }
    for name, data in caches.items():
        (root / f"{name}.cache").write_bytes(data)
    return root


def _q(*extra: str) -> list[str]:
    return ["quantize", "{root}/net.onnx", "--calib", "{root}/calib.npy", "--output-dir", "{root}/out", *extra]


def _build(*extra: str) -> list[str]:
    return ["build", "{root}/net.onnx", "--print-trtexec", *extra]


CASES = [
    # options accepted and ignored, or out of range
    ("percentile over 100", _q("--method", "percentile", "--percentile", "150"), r"--percentile: '150' is not a percentile in \(0, 100\]"),
    ("percentile without its method", _q("--percentile", "99.9"), "--percentile 99.9 applies only to --method percentile"),
    ("percentile nan", _q("--method", "percentile", "--percentile", "nan"), "is not a percentile"),
    ("limit 0", _q("--limit", "0"), "--limit: '0' is not a whole number >= 1"),
    ("scale 0", _q("--scale", "0"), "--scale: '0' is not a finite number > 0"),
    ("pad value 300", _q("--pad-value", "300"), "is not a pixel value from 0 to 255"),
    ("labels without task", _q("--labels", "{root}/images"), "--labels applies only with --task"),
    ("target data without target", _q("--target-data", "{root}/calib.npy"), "--target-data applies only with --target"),
    ("ranking without target", _q("--ranking", "exact"), "--ranking applies only with --target"),
    ("task without target", _q("--task", "classify"), "--task applies only with --target"),
    ("fp8 with a cache scope", _q("--precision", "fp8", "--cache-scope", "all"), "--cache-scope all applies only to the calibration cache"),
    ("fp8 with a cache version", _q("--precision", "fp8", "--trt-version", "10.0.1"), "--trt-version applies only"),
    ("classify with coco", _q("--target", "top1-drop<=1", "--task", "classify", "--coco", "{root}/x.json"), "--coco does not apply to --task classify"),
    ("integer dtype for a float input", ["quantize", "{root}/net.onnx", "--calib", "{root}/images", "--dtype", "int8"], "would round its values to integers"),
    ("compare batch 0", ["compare", "{root}/net.onnx", "{root}/net.onnx", "--data", "{root}/calib.npy", "--batch-size", "0"], "--batch-size: '0' is not a whole number >= 1"),
    ("compare batch -3", ["compare", "{root}/net.onnx", "{root}/net.onnx", "--data", "{root}/calib.npy", "--batch-size", "-3"], "is not a whole number >= 1"),
    ("sensitivity top -1", ["sensitivity", "{root}/net.onnx", "--calib", "{root}/calib.npy", "--top", "-1"], "--top: '-1' is not a whole number >= 0"),
    ("exact sensitivity batch 0", ["sensitivity", "{root}/net.onnx", "--calib", "{root}/calib.npy", "--method", "exact", "--batch-size", "0"], "--batch-size: '0'"),
    ("calib method with ranges", ["sensitivity", "{root}/net.onnx", "--ranges", "{root}/r.json", "--calib-method", "max"], "--calib-method applies only with --calib"),
    ("finetune steps 0", ["finetune", "{root}/net.onnx", "--calib", "{root}/calib.npy", "--steps", "0"], "--steps: '0' is not a whole number >= 1"),
    ("finetune negative lr", ["finetune", "{root}/net.onnx", "--calib", "{root}/calib.npy", "--lr", "-1"], "--lr: '-1' is not a finite number > 0"),
    ("finetune negative seed", ["finetune", "{root}/net.onnx", "--calib", "{root}/calib.npy", "--seed", "-1"], "--seed: '-1' is not a whole number >= 0"),
    ("finetune eval every 0", ["finetune", "{root}/net.onnx", "--calib", "{root}/calib.npy", "--eval-every", "0"], "--eval-every"),
    ("finetune method with ranges", ["finetune", "{root}/net.onnx", "--calib", "{root}/calib.npy", "--ranges", "{root}/r.json", "--method", "max"], "--method applies only to the PTQ calibration"),
    ("bench zero duration", ["bench", "{root}/m.engine", "--duration", "0"], "--duration: '0' is not a finite number > 0"),
    ("bench nan duration", ["bench", "{root}/m.engine", "--duration", "nan"], "is not a finite number > 0"),
    ("bench negative warm-up", ["bench", "{root}/m.engine", "--warmup", "-5"], "--warmup: '-5' is not a finite number >= 0"),
    ("unknown method", _q("--method", "best"), "invalid choice: 'best'"),
    ("two shapes for one input", _q("--shape", "input:1x3x16x16", "--shape", "input:2x3x16x16"), "is given two shapes"),
    ("empty cache version", _q("--trt-version", ""), "Option --trt-version is given an empty value"),
    # an empty value (an unset shell variable) is never taken for "not given"
    ("empty target", _q("--target", ""), "Option --target is given an empty value"),
    ("empty output dir", [*_q()[:-2], "--output-dir="], "Option --output-dir is given an empty value"),
    ("empty model path", ["inspect", " "], "Argument 2 of the command line is empty"),
    # top-k over a flattened feature map is no accuracy
    ("classify a map output", _q("--target", "top1-drop<=1", "--task", "classify"), "output 'scores' is Nx4x8x8"),
    ("classify a map output in compare", ["compare", "{root}/net.onnx", "{root}/net.onnx", "--data", "{root}/calib.npy", "--task", "classify"], "--task classify scores one vector"),
    ("ranges file of a build that does not exist", _build("--ranges", "{root}/none.json"), "Ranges file .* does not exist"),
    # build --print-trtexec validates what it prints
    ("dla core -1", _build("--dla-core", "-1"), "--dla-core: '-1' is not a whole number >= 0"),
    ("fp16 strongly typed", _build("--fp16"), "--fp16 applies only to implicit TensorRT 10 builds"),
    ("calib algorithm strongly typed", _build("--calib-algorithm", "minmax"), "--calib-algorithm applies only"),
    ("preset without data", _build("--preset", "imagenet"), "--preset applies only to calibration data"),
    ("min above max", _build("--min-shape", "input:4x3x16x16", "--max-shape", "input:1x3x16x16"), "needs min <= opt <= max"),
    ("shape of an unknown input", _build("--shape", "image:1x3x16x16"), "--shape names input 'image'"),
    ("shape of the wrong rank", _build("--shape", "input:1x3x16"), "has rank 3"),
    ("workspace inf", _build("--workspace", "inf"), "--workspace 'inf' is not a size"),
    ("workspace over 1 PiB", _build("--workspace", "2000T"), "--workspace '2000T' is over 1 PiB"),
    ("build shape over 2^31 elements", _build("--shape", "input:100000000x3x16x16"),
     "76,800,000,000 elements: over the 2,147,483,647"),
    ("verify range over 2^31 elements", ["verify", "{root}/net.onnx", "--min-shape", "input:1x3x16x16",
                                         "--max-shape", "input:100000000x3x16x16"],
     "--max-shape for input 'input' is 100000000x3x16x16"),
    ("verify record into a file", ["verify", "{root}/net.onnx", "--output-dir", "{root}/calib.npy"],
     "Cannot create output directory .*calib.npy: .* is not a directory"),
    ("report of a file", ["report", "{root}/calib.npy"], r"Report folder .*calib.npy is a file, not a folder"),
    ("implicit from samples", _build("--implicit", "--calib", "{root}/calib.npy"), "trtexec cannot calibrate from samples"),
    ("calib that does not exist", _build("--implicit", "--calib", "{root}/nope.cache"), "does not exist"),
    *[(f"cache: {name}", _build("--implicit", "--calib", f"{{root}}/{name}.cache"), message) for name, message in (
        ("empty", r"is empty \(0 bytes\)"),
        ("header_only", "has a header but no tensor scales"),
        ("edited_header", "which no TensorRT writes"),
        ("nan", "the scale nan, which is not a finite number"),
        ("negative", "the scale -0.00787.*, which is not a finite number >= 0"),
        ("cut_in_a_line", "expected '<tensor>: <8 hex digits>'"),
        ("garbage", "expected a header like"),
        ("other_model", "written for another model"),
        ("no_layer_input", "so no layer would run in INT8"),
        ("twice", "names tensor 'input' twice"),
    )],
    ("run with data that does not exist", ["run", "{root}/m.engine", "--data", "{root}/none.npz"], "--data .* does not exist"),
    ("run an .npz with preprocessing", ["run", "{root}/m.engine", "--data", "{root}/arrays.npz", "--preset", "yolo"], "--preset applies only to data read through"),
    # models that are not (runnable) ONNX
    ("empty model", ["inspect", "{root}/empty.onnx"], r"is empty \(0 bytes\)"),
    ("folder as model", ["inspect", "{root}/folder.onnx"], "is a folder, not an .onnx file"),
    ("text as model", ["inspect", "{root}/text.onnx"], "is not a readable ONNX model"),
    ("truncated model", [*_q()[:1], "{root}/cut.onnx", *_q()[2:]], "is not a readable ONNX model"),
    ("model without inputs", ["quantize", "{root}/no_inputs.onnx", "--calib", "{root}/x3.npy"], "has no graph inputs"),
    ("dangling node input", ["quantize", "{root}/dangling.onnx", "--calib", "{root}/x3.npy"], "onnxruntime .* cannot load .*dangling.onnx: .*'nowhere'"),
    ("unknown op", ["sensitivity", "{root}/unknown_op.onnx", "--calib", "{root}/x3.npy"], "cannot load .*No Op registered for NoSuchOp"),
    ("model without outputs", ["compare", "{root}/no_outputs.onnx", "{root}/no_outputs.onnx", "--data", "{root}/x3.npy"], "has no graph outputs"),
    ("float16 model", ["quantize", "{root}/half.onnx", "--calib", "{root}/x3.npy"], "computes in float16 .* trtq quantizes FP32 models"),
    ("input without dims", ["quantize", "{root}/shapeless.onnx", "--calib", "{root}/x3.npy"], "Input 'x' has no dims in the model"),
    ("verify an empty model", ["verify", "{root}/empty.onnx"], r"is empty \(0 bytes\)"),
    ("verify a folder", ["verify", "{root}/folder.onnx"], "is a folder, not an .onnx file"),
    ("verify a text file", ["verify", "{root}/text.onnx"], "is not a readable ONNX model"),
    ("verify min above max", ["verify", "{root}/net.onnx", "--min-shape", "input:4x3x16x16", "--max-shape", "input:1x3x16x16"], "needs min <= opt <= max"),
    # data the model fails on
    ("gather index out of range", ["quantize", "{root}/gather.onnx", "--calib", "{root}/ids_bad.npy"], r"fails in onnxruntime on sample 3 of .*ids_bad.npy \(input 'ids'\): Gather node 'gather': indices element out of data bounds"),
    ("gather in compare", ["compare", "{root}/gather.onnx", "{root}/gather.onnx", "--data", "{root}/ids_bad.npy"], "on sample 3 of"),
    ("batch 1 model at batch 4", ["quantize", "{root}/batch_one.onnx", "--calib", "{root}/calib.npy", "--shape", "x:4x3x16x16"], "on a batch of 4 samples .* but runs each of them alone"),
    # load_data() scripts
    *[(f"load_data: {name}", [*_q()[:3], f"{{root}}/{name}", *_q()[4:]], message) for name, message in (
        ("exit_call.py", r"load_data\(\) in .*exit_call.py called sys.exit\(0\)"),
        ("exit_import.py", r"while it was imported, called sys.exit\(3\)"),
        ("exit_later.py", r"producing item 1, called sys.exit\(0\)"),
        ("raises.py", "raised OSError: the share is gone"),
        ("generator_exit.py", r"load_data\(\) in .*generator_exit.py raised GeneratorExit"),
        ("not_dicts.py", "item 0 of load_data.* is a ndarray, not a dict"),
        ("wrong_key.py", "has no array for input 'input'"),
        ("strings.py", "not numbers"),
        ("ragged.py", "cannot be read as an array"),
        ("varying.py", "item 1 of load_data.* has samples of shape 3x8x8, expected 3x16x16"),
    )],
]


@pytest.mark.parametrize(("argv", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_one_sentence_exit_2_no_traceback_nothing_written(files, capsys, argv, message):
    args = [a.format(root=files) for a in argv]
    assert main(args) == 2
    captured = capsys.readouterr()
    err = re.sub(r"[^\n]*\r", "", captured.err)  # what a progress bar drew and then cleared
    lines = [line for line in err.splitlines() if not line.startswith("trtq: warning:")]
    assert lines[0].startswith("trtq: error: ") and lines[1].startswith("  fix: ") and len(lines) == 2, captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert re.search(message, lines[0]), lines[0]
    assert not (files / "out").exists() or not any((files / "out").iterdir())


def test_a_model_that_fixes_batch_1_is_compared_one_sample_at_a_time(files, capsys, tmp_path):
    model = str(files / "batch_one.onnx")
    assert main(["compare", model, model, "--data", str(files / "calib.npy"), "--output-dir", str(tmp_path),
                 "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["samples"] == 6 and out["outputs"][0]["name"] == "out"
    assert len(out["warnings"]) == 1 and "runs each of them alone" in out["warnings"][0]
    assert captured.err.count("trtq: warning: ") == 1 and "warnings.warn" not in captured.err


def test_warnings_are_one_line_without_their_source(files, capsys, tmp_path):
    raw = tmp_path / "raw.npy"
    np.save(raw, np.full((2, 3, 16, 16), 200.0, np.float32))  # looks like unnormalised 0..255 pixels
    assert main(["quantize", str(files / "net.onnx"), "--calib", str(raw), "--output-dir", str(tmp_path), "--quiet"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("trtq: warning: Input 'input' in ") and "looks like unnormalised" in err[0]


def test_ctrl_c_while_importing_the_commands(monkeypatch, capsys):
    from trtq import cli

    def interrupted(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.importlib, "import_module", interrupted)
    assert main(["inspect", "x.onnx"]) == 130
    err = capsys.readouterr().err
    assert err.startswith("trtq: interrupted") and "Traceback" not in err


_SRC = str(Path(__file__).resolve().parents[2] / "src")


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": _SRC}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, check=False,
                          timeout=120)


@pytest.mark.parametrize(("command_line", "argv0"), [(["-m", "trtq"], "-m"), (["-mtrtq"], "-m"),
                                                    (["/usr/local/bin/trtq"], "/usr/local/bin/trtq")])
def test_ctrl_c_while_the_command_starts_is_one_line_and_130(command_line, argv0):
    """From trtq's first line until the CLI's imports are done, Ctrl-C exits at once: a KeyboardInterrupt
    raised inside an import (numpy's, onnxruntime's) printed a traceback, or became a RuntimeError."""
    done = _python(f"""
        import os, signal, sys, time
        sys.orig_argv, sys.argv = [sys.executable, *{command_line!r}], [{argv0!r}]
        import trtq  # the command's first import; what follows stands for numpy's, onnx's...
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(30)
        print("not stopped")
    """)
    assert done.returncode == 130, done.stderr
    assert done.stderr == "trtq: interrupted while starting; no output was written.\n" and done.stdout == ""


def test_importing_trtq_leaves_a_library_users_ctrl_c_alone():
    done = _python("""
        import signal, sys
        sys.argv = ["my_script.py"]
        import trtq.api
        from trtq.cli import main
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        print("ok")
    """)
    assert done.stdout == "ok\n", done.stderr


def test_the_cli_takes_ctrl_c_over_once_its_imports_are_done():
    done = _python("""
        import signal, sys
        sys.orig_argv = [sys.executable, "-m", "trtq"]
        import trtq
        from trtq.cli import main
        assert main(["--version"]) == 0
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    """)
    assert done.returncode == 0, done.stderr


def test_an_endless_load_data_is_stopped_with_a_hint(files, capsys, monkeypatch, tmp_path):
    from trtq.data import scripts

    script = tmp_path / "endless.py"
    script.write_text("import numpy as np\ndef load_data():\n    while True:\n"
                      "        yield {'input': np.zeros((1, 3, 16, 16), np.float32)}\n")
    monkeypatch.setattr(scripts, "SCRIPT_MAX_SAMPLES", 300)
    monkeypatch.setattr(scripts, "SCRIPT_HINT_SECONDS", 0.0)
    assert main(["quantize", str(files / "net.onnx"), "--calib", str(script), "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "trtq: warning: load_data() in" in err and "pass --limit N" in err
    assert "yielded over 300 samples without ending" in err and "checking load_data() of endless.py" in err
    assert main(["quantize", str(files / "net.onnx"), "--calib", str(script), "--limit", "5", "--output-dir",
                 str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 5


def test_an_image_folder_with_an_int_dtype_for_int_inputs_still_works(files, tmp_path, capsys):
    """The --dtype check refuses integers only for float inputs (uint8 models take raw pixels)."""
    model = residual_conv_net(batch="N")
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.UINT8
    cast = helper.make_node("Cast", ["pixels"], ["input"], name="cast", to=TensorProto.FLOAT)
    model.graph.input[0].name = "pixels"
    model.graph.node.insert(0, cast)
    path = save(model, tmp_path / "u8.onnx")
    shutil.copytree(files / "images", tmp_path / "images")
    assert main(["quantize", path, "--calib", str(tmp_path / "images"), "--dtype", "uint8", "--scale", "1",
                 "--output-dir", str(tmp_path), "--quiet"]) == 0


def test_what_a_data_script_prints_goes_to_stderr(files, capsys, tmp_path):
    """A load_data() that prints its progress must not break the --json result on stdout."""
    script = tmp_path / "chatty.py"
    script.write_text("import numpy as np\nprint('importing')\ndef load_data():\n    print('loading')\n"
                      "    yield {'input': np.zeros((2, 3, 16, 16), np.float32)}\n")
    assert main(["quantize", str(files / "net.onnx"), "--calib", str(script), "--output-dir", str(tmp_path),
                 "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["samples"] == 2 and "importing" in captured.err and "loading" in captured.err


def test_a_batch_size_a_fixed_batch_model_cannot_take_is_said_to_be_unused(tmp_path, capsys, files):
    model = save(residual_conv_net(batch=2), tmp_path / "fixed.onnx")
    assert main(["compare", model, model, "--data", str(files / "calib.npy"), "--batch-size", "4",
                 "--output-dir", str(tmp_path), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err == ("trtq: warning: --batch-size 4 is not used: the model fixes its batch dim at 2, so it is evaluated "
                   "2 samples at a time.\n")
