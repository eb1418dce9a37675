"""Output sets from the command line, as a hostile user meets them: a stop signal while a model is
being written, a destination that cannot take its file, a full disk, numbers that are infinite.

Each case ends in a correct result or in one sentence with a fix and exit code 2 (128 + the
signal for a stop); the folder then holds the previous set, untouched, and no temporary file.
Signals go to a `trtq` subprocess whose model writer pauses after its first chunk (patched in
through a wrapper script), so the signal lands while a file is staged; every wait has a timeout.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from tiny_models import residual_conv_net, save

import trtq
from trtq.cli import main

SRC = str(Path(trtq.__file__).resolve().parents[1])

PAUSING_WRITER = """
    import os, signal, sys, time
    from pathlib import Path
    import trtq._io as io
    marker, when = Path(sys.argv[1]), sys.argv[2]
    if when == "staging":  # the model is streamed in chunks: pause after writing the first one
        import trtq.artifacts as artifacts
        real = artifacts.serialized_chunks
        def pausing(model):
            chunks = real(model)
            yield next(chunks)
            marker.touch()
            time.sleep(60)
            yield from chunks
        artifacts.serialized_chunks = pausing
    else:  # the signal arrives after the first rename of the set
        real_replace, renamed = os.replace, []
        def replace(src, dst):
            real_replace(src, dst)
            renamed.append(dst)
            if len(renamed) == 1:
                os.kill(os.getpid(), getattr(signal, when))
                time.sleep(0.2)
        os.replace = replace
    from trtq.cli import main
    sys.exit(main(sys.argv[3:]))
"""


@pytest.fixture()
def case(tmp_path):
    model = save(residual_conv_net(batch="N"), tmp_path / "net.onnx")
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).standard_normal((6, 3, 16, 16)).astype(np.float32))
    return tmp_path, model


def _folder(path: Path) -> dict[str, bytes]:
    """Every entry in `path`, hidden ones included (staged `.tmp`, backups `.bak`); folders as b"<dir>"."""
    if not path.exists():
        return {}
    return {p.name: b"<dir>" if p.is_dir() else p.read_bytes() for p in path.iterdir()}


def _quantize(tmp: Path, model: str, out: Path, *extra: str) -> list[str]:
    return ["quantize", model, "--calib", str(tmp / "calib.npy"), "--output-dir", str(out), "--quiet", *extra]


def _previous(tmp: Path, model: str, out: Path) -> dict[str, bytes]:
    """A first run's set (max ranges), which every failed or stopped later run must leave as it is."""
    assert main(_quantize(tmp, model, out, "--method", "max")) == 0
    before = _folder(out)
    assert sorted(before) == ["net.int8.cache", "net.int8.json", "net.int8.onnx", "trtq-quantize.json"]
    return before


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_a_stop_signal_while_the_model_is_staged_leaves_the_previous_set(case, signame):
    tmp, model = case
    out = tmp / "out"
    before = _previous(tmp, model, out)
    marker = tmp / "staging"
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(PAUSING_WRITER), str(marker), "staging",
         *_quantize(tmp, model, out, "--method", "percentile")],
        env={**os.environ, "PYTHONPATH": SRC}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the writer never started staging"
            time.sleep(0.02)
        assert any(name.endswith(".tmp") for name in _folder(out))  # caught mid-write
        proc.send_signal(getattr(signal, signame))
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    signum = getattr(signal, signame)
    assert proc.returncode == 128 + signum, err
    stopped = "interrupted" if signame == "SIGINT" else f"stopped by {signame}"
    assert err.strip() == f"trtq: {stopped}; no output was written, and earlier outputs are as they were."
    assert _folder(out) == before


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")
def test_a_stop_signal_during_the_renames_waits_for_the_whole_set(case):
    tmp, model = case
    out = tmp / "out"
    before = _previous(tmp, model, out)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PAUSING_WRITER), str(tmp / "unused"), "SIGTERM",
         *_quantize(tmp, model, out, "--method", "percentile")],
        env={**os.environ, "PYTHONPATH": SRC}, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert proc.stderr.startswith("trtq: stopped by SIGTERM; it had written ") and "(complete)" in proc.stderr
    after = _folder(out)
    assert sorted(after) == sorted(before)
    assert all(after[name] != before[name] for name in before)  # every member is new: one whole set
    assert json.loads(after["net.int8.json"])["method"] == "percentile"


def test_a_record_path_that_is_a_directory_stops_before_calibration(case, capsys, monkeypatch):
    tmp, model = case
    out = tmp / "out"
    before = _previous(tmp, model, out)
    (out / "trtq-quantize.json").unlink()
    (out / "trtq-quantize.json").mkdir()
    before.pop("trtq-quantize.json")
    from trtq.calibrate import runner

    monkeypatch.setattr(runner, "make_backend", lambda *a, **k: pytest.fail("calibration must not start"))
    assert main(_quantize(tmp, model, out, "--method", "percentile")) == 2
    err = capsys.readouterr().err
    assert "trtq-quantize.json is a directory" in err and "Traceback" not in err
    assert _folder(out) == {**before, "trtq-quantize.json": b"<dir>"}


@pytest.mark.parametrize("member", ["net.int8.json", "trtq-quantize.json", "net.int8.cache"])
def test_a_failed_rename_of_any_member_keeps_the_whole_previous_set(case, capsys, monkeypatch, member):
    tmp, model = case
    out = tmp / "out"
    before = _previous(tmp, model, out)
    real = os.replace

    def refuse(src, dst):
        if Path(dst).name == member:
            raise PermissionError(1, "Operation not permitted", str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", refuse)
    assert main(_quantize(tmp, model, out, "--method", "percentile")) == 2
    err = capsys.readouterr().err
    assert f"{member} (Operation not permitted), so nothing was written" in err and "Traceback" not in err
    assert _folder(out) == before


def test_a_full_disk_keeps_the_previous_set(case, capsys, monkeypatch):
    import trtq._io as io

    tmp, model = case
    out = tmp / "out"
    before = _previous(tmp, model, out)

    def full(handle, content):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io, "_write_content", full)
    assert main(_quantize(tmp, model, out, "--method", "percentile")) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith("net.int8.onnx (No space left on device), so nothing was written: the previous outputs "
                           "are as they were.")
    assert err[1].startswith("  fix: free space") and len(err) == 2
    assert _folder(out) == before


def test_output_paths_that_cannot_work_fail_before_calibration(case, capsys, tmp_path):
    tmp, model = case
    (tmp / "a-file").write_text("x")
    long_model = save(residual_conv_net(batch="N"), tmp / ("n" * 245 + ".onnx"))  # outputs exceed 255 bytes
    for args, expected in [
        (_quantize(tmp, model, tmp / "a-file"), "is not a directory"),
        (_quantize(tmp, model, tmp / "a-file" / "sub"), "is not a directory"),
        (_quantize(tmp, long_model, tmp / "out"), "over the file system's limit of 255 bytes"),
        (_quantize(tmp, model, tmp / ("d" * 300)), "too long for the file system"),
    ]:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err, err
    assert not (tmp / "out").exists()


def test_an_unreachable_snr_target_prints_infinity(case, capsys):
    """snr>=200 keeps every layer out of INT8 (the model is FP32: inf dB); printing that used to crash."""
    tmp, model = case
    assert main(_quantize(tmp, model, tmp / "out", "--target", "snr>=200")) == 0
    text = capsys.readouterr().out
    assert "-> inf with 4 layers kept out of INT8" in text
    assert "warning: the target holds only with every quantizable layer kept out of INT8" in text
    assert main(_quantize(tmp, model, tmp / "out", "--target", "snr>=200", "--json")) == 0
    out = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert out["mixed"]["final_metric"] == "inf"


def test_json_never_holds_infinity(case, capsys):
    """compare of a model with itself: SNR is infinite; --json must stay strict JSON (no `Infinity`)."""
    tmp, model = case
    assert main(["compare", model, model, "--data", str(tmp / "calib.npy"), "--json", "--output-dir",
                 str(tmp / "cmp")]) == 0
    out = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert out["outputs"][0]["snr_db"] == "inf"
    assert main(["compare", model, model, "--data", str(tmp / "calib.npy"), "--output-dir", str(tmp / "cmp")]) == 0
    assert "scores                        inf       inf" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["compare", "sensitivity", "report"])
def test_record_and_report_destinations_are_checked_first(case, capsys, command, monkeypatch):
    tmp, model = case
    out = tmp / "out"
    _previous(tmp, model, out)
    blocked = {"compare": "trtq-compare.json", "sensitivity": "trtq-sensitivity.json", "report": "trtq-report.md"}
    (out / blocked[command]).mkdir()
    before = _folder(out)
    args = {
        "compare": ["compare", model, str(out / "net.int8.onnx"), "--data", str(tmp / "calib.npy")],
        "sensitivity": ["sensitivity", model, "--calib", str(tmp / "calib.npy"), "--output-dir", str(out)],
        "report": ["report", str(out)],
    }[command]
    assert main([*args, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{blocked[command]} is a directory" in err and "Traceback" not in err
    assert _folder(out) == before


def test_rewriting_outputs_from_their_own_ranges_table_is_allowed(case, capsys):
    """--ranges out/net.int8.json into out/ rewrites the table it was read from: a reuse, not a clash."""
    tmp, model = case
    out = tmp / "out"
    before = _previous(tmp, model, out)
    assert main(["quantize", model, "--ranges", str(out / "net.int8.json"), "--output-dir", str(out),
                 "--exclude-ops", "Sigmoid", "--quiet"]) == 0, capsys.readouterr().err
    after = _folder(out)
    assert after["net.int8.json"] == before["net.int8.json"] and sorted(after) == sorted(before)
