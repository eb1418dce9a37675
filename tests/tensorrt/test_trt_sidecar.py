"""The engine sidecar: round trip and the mismatch warnings run/bench/inspect print."""

from __future__ import annotations

import pytest

from trtq.errors import TrtqError
from trtq.tensorrt.profiles import ProfileShape
from trtq.tensorrt.sidecar import EngineSidecar, mismatches, profile_to_json, read_sidecar, sidecar_path


def make() -> EngineSidecar:
    return EngineSidecar(
        engine_file="m.int8.engine", engine_sha256="ab" * 32, tensorrt_version="10.13.3.9", gpu_name="NVIDIA H100",
        precision="int8", mode="tensorrt-10-strongly-typed", onnx_file="m.int8.onnx", onnx_sha256="cd" * 32,
        profile=profile_to_json({"x": ProfileShape((1, 3), (4, 3), (8, 3))}), ranges_sha256="ef" * 32,
        build_options={"workspace_mib": 4096, "input_formats": ["fp16:chw16"]}, trtq_version="0.1.0",
    )


def test_round_trip(tmp_path):
    engine = tmp_path / "m.int8.engine"
    assert sidecar_path(engine).name == "m.int8.engine.json"
    assert read_sidecar(engine) is None
    make().save(sidecar_path(engine))
    assert read_sidecar(engine) == make()
    assert make().profile == {"x": {"min": [1, 3], "opt": [4, 3], "max": [8, 3]}}


def test_not_a_sidecar(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"format": "other"}')
    with pytest.raises(TrtqError, match="not a trtq engine sidecar"):
        EngineSidecar.load(path)


def test_mismatch_warnings():
    sidecar = make()
    assert mismatches(sidecar, "10.13.3.9", "NVIDIA H100", "ab" * 32) == []
    found = mismatches(sidecar, "10.8.0.43", "Orin", "00" * 32)
    assert len(found) == 3
    assert "built with TensorRT 10.13.3.9, but TensorRT 10.8.0.43" in found[0]
    assert "built on NVIDIA H100, but this GPU is Orin" in found[1]
    assert "sha256" in found[2]
    assert "no trtq sidecar" in mismatches(None, "10.13.3.9", None)[0]
