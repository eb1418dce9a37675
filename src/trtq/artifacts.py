"""What a quantize or fine-tune run writes, and where: one output set, written atomically.

A run's outputs are `<stem>.<tag>.onnx` (the Q/DQ model; its weights in `<stem>.<tag>.onnx.data`
when stored apart), `<stem>.<tag>.cache` (TensorRT <= 10's calibration cache, INT8 only) and
`<stem>.<tag>.json` (the ranges table), in `--output-dir` or beside the model. The tag is `int8`
or `fp8` (`trtq quantize`) or `qat.int8` (`trtq finetune`). Both commands name their files with
`artifact_paths` and write them with `Artifacts.write` (`trtq._io.write_files_atomically`: all
appear together, or the previous set stays as it was).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx

from trtq._io import Content, write_files_atomically
from trtq.formats.cache import format_cache
from trtq.formats.ranges import RangesTable
from trtq.model import PROTOBUF_LIMIT, external_data_chunks, initializer_bytes, serialized_chunks


def output_directory(beside: str | Path, output_dir: str | Path | None) -> Path:
    """`output_dir`, else the folder of `beside` (the file a run reads): where the run's files go."""
    return Path(output_dir) if output_dir else Path(beside).parent


@dataclass(frozen=True)
class ArtifactPaths:
    """Where one run's output set goes."""

    onnx: Path
    cache: Path
    ranges: Path

    @property
    def directory(self) -> Path:
        """The output folder."""
        return self.onnx.parent

    @property
    def data(self) -> Path:
        """The external weights file beside `onnx` (written only when the weights are stored apart)."""
        return self.onnx.with_name(self.onnx.name + ".data")

    def beside(self, name: str) -> Path:
        """Another output of the run, `name` in the output folder (e.g. --smooth's smoothed FP32 model)."""
        return self.directory / name

    def destinations(self, cache: bool = True, external: bool | None = None) -> list[Path]:
        """The files a run will write, for `trtq._io.check_destinations` before its work: the model, the
        ranges, the cache (unless `cache` is False) and, when the weights are sure to go apart, their file."""
        return [self.onnx, self.ranges, *([self.cache] if cache else []), *([self.data] if external else [])]


def artifact_paths(model_path: str | Path, output_dir: str | Path | None, tag: str) -> ArtifactPaths:
    """`<stem>.<tag>.onnx`, `.<tag>.cache` and `.<tag>.json` in `output_dir` (default: beside the model)."""
    directory = output_directory(model_path, output_dir)
    stem = f"{Path(model_path).stem}.{tag}"
    return ArtifactPaths(directory / f"{stem}.onnx", directory / f"{stem}.cache", directory / f"{stem}.json")


def cache_amax(amax: Mapping[str, float], tensors: Iterable[str]) -> dict[str, float]:
    """The ranges the calibration cache lists: those of `tensors` (a placement's calibrated tensors) in `amax`."""
    return {name: amax[name] for name in tensors if name in amax}


@dataclass(frozen=True)
class Artifacts:
    """One output set, ready to write: its files by path, and whether the weights are stored apart."""

    paths: ArtifactPaths
    files: Mapping[Path, Content]
    external: bool

    @property
    def data_path(self) -> Path | None:
        """The external weights file, when the weights are stored apart."""
        return self.paths.data if self.external else None

    def write(self, extra: Mapping[Path, Content] | None = None, inputs: Iterable[str | Path | None] = ()) -> None:
        """Write the set, with `extra` files (a run record), as one: all appear or none changes.

        A `.data` file left by an earlier run that stored its weights apart belongs to the set this
        one replaces, so it goes when this one keeps its weights inline.
        """
        write_files_atomically({**self.files, **(extra or {})}, remove=() if self.external else (self.paths.data,),
                               inputs=inputs)


def model_files(model: onnx.ModelProto, path: Path, external: bool) -> dict[Path, Content]:
    """What writing `model` to `path` takes: its chunks, and with `external` its weights in `<path>.data`
    beside it (streamed weight by weight, never serialised whole in memory)."""
    if not external:
        return {path: serialized_chunks(model)}
    data_path = path.with_name(path.name + ".data")
    model_chunks, data_chunks = external_data_chunks(model, data_path.name)
    return {data_path: data_chunks, path: model_chunks}


def artifacts(paths: ArtifactPaths, model: onnx.ModelProto, table: RangesTable, cache: Mapping[str, float] | None,
              trt_version: str, external: bool | None = None) -> Artifacts:
    """The output set of the quantized `model`, its ranges `table` and, unless `cache` is None, a
    calibration cache of the ranges in `cache` for TensorRT `trt_version`.

    `external`: the weights go to `paths.data` (True), stay inline (False), or go apart only when
    they exceed protobuf's 2 GB limit, where one file is impossible (None). Large models are
    streamed weight by weight, never serialised whole in memory.
    """
    if external is None:
        external = initializer_bytes(model) > PROTOBUF_LIMIT
    files = model_files(model, paths.onnx, external)
    files[paths.ranges] = table.to_json().encode("utf-8")
    if cache is not None:
        files[paths.cache] = format_cache(cache, trt_version, table.method)
    return Artifacts(paths, files, external)
