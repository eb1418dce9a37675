"""One naming and one writer for the output sets of quantize (int8, fp8) and finetune (qat.int8)."""

from __future__ import annotations

from pathlib import Path

import onnx
from tiny_models import residual_conv_net

from trtq import artifacts
from trtq.artifacts import artifact_paths, cache_amax, output_directory
from trtq.formats.cache import read_cache
from trtq.formats.ranges import RangesTable


def test_paths_per_tag_beside_the_model_or_in_the_output_dir(tmp_path):
    model = tmp_path / "models" / "net.onnx"
    for tag in ("int8", "fp8", "qat.int8"):
        paths = artifact_paths(model, None, tag)
        expected = tuple(model.parent / f"net.{tag}.{suffix}" for suffix in ("onnx", "cache", "json"))
        assert (paths.onnx, paths.cache, paths.ranges) == expected
        assert paths.data == model.parent / f"net.{tag}.onnx.data"
    elsewhere = artifact_paths(model, tmp_path / "out", "int8")
    assert elsewhere.directory == tmp_path / "out" == output_directory(model, str(tmp_path / "out"))
    assert elsewhere.destinations(cache=False, external=True) == [elsewhere.onnx, elsewhere.ranges, elsewhere.data]


def _table(amax: dict[str, float]) -> RangesTable:
    return RangesTable(amax=amax, method="max", num_samples=1, data_sha256="0" * 64, model_sha256="0" * 64,
                       model_name="net.onnx")


def test_a_set_without_cache_or_external_weights_removes_an_earlier_data_file(tmp_path):
    # an earlier run stored its weights apart; this one's fit inline, so the old .data goes with the set
    paths = artifact_paths(tmp_path / "net.onnx", None, "qat.int8")
    paths.data.write_bytes(b"old weights")
    table = _table({"input": 1.0, "r1": 2.0})
    assert cache_amax(table.amax, ["r1", "absent"]) == {"r1": 2.0}
    artifacts.artifacts(paths, residual_conv_net(), table, None, "10.13.3").write()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.qat.int8.json", "net.qat.int8.onnx"]
    assert onnx.load(paths.onnx).graph.name == residual_conv_net().graph.name
    assert RangesTable.load(paths.ranges).amax == table.amax
    artifacts.artifacts(paths, residual_conv_net(), table, {"r1": 2.0}, "10.13.3").write()
    cache = read_cache(Path(paths.cache))
    assert set(cache.scales) == {"r1"} and cache.algorithm == "MinMaxCalibration"
