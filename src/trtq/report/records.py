"""Run records: what quantize / compare / sensitivity / verify leave in their output folder for `trtq report`.

Each command writes `trtq-<kind>.json` (atomically) with its settings, its result and, where
calibration statistics are at hand, compact histograms of the most sensitive tensors. The
report reads whichever records a folder holds; a newer run of the same kind replaces the older.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from trtq._format import json_safe
from trtq._io import write_files_atomically
from trtq.calibrate.collector import TensorStats
from trtq.errors import TrtqError

KINDS = ("quantize", "compare", "sensitivity", "verify")
RECORD_FORMAT = "trtq-record"
HISTOGRAM_BINS = 128


@dataclass(frozen=True)
class RunRecord:
    """What a caller asks the API to save for `trtq report`: its options and command line.

    quantize writes the record with its outputs, as one set; compare and sensitivity, which write
    nothing else, put it in `directory`.
    """

    settings: Mapping[str, object]
    command: Sequence[str] | None = None
    """The command line (default: this process's)."""
    directory: str | Path | None = None
    """Where compare and sensitivity put the record (default: beside the model they read; quantize
    writes it with its outputs)."""

    def path(self, kind: str, beside: str | Path) -> Path:
        """Where the record of `kind` goes: in `directory`, else in the folder of `beside`."""
        return record_path(self.directory if self.directory else Path(beside).parent, kind)

    def write(self, kind: str, beside: str | Path, result: Mapping[str, object],
              histograms: Mapping[str, Mapping] | None = None) -> Path:
        """Save the record of a run of `kind` (atomically) and return its path."""
        return write_record(self.path(kind, beside).parent, kind, settings=self.settings, result=result,
                            histograms=histograms, command=self.command)


@dataclass(frozen=True)
class Record:
    """One command's settings and result, as saved."""

    kind: str
    created: str
    command: str
    settings: dict
    result: dict
    histograms: dict
    path: str


def record_path(directory: str | Path, kind: str) -> Path:
    """Where a record of `kind` lives in `directory`."""
    return Path(directory) / f"trtq-{kind}.json"


def histogram_summary(stats: TensorStats, amax: float, method: str, bins: int = HISTOGRAM_BINS) -> dict:
    """A calibration histogram of |x| folded to `bins` bins, with the chosen threshold and the observed max."""
    hist = np.asarray(stats.hist, dtype=np.int64)
    if hist.size and hist.size % bins == 0:
        hist = hist.reshape(bins, -1).sum(axis=1)
    return {
        "hist": [int(v) for v in hist],
        "hist_max": float(stats.hist_max),
        "observed_max": float(stats.amax),
        "threshold": float(amax),
        "method": method,
        "count": int(stats.count),
    }


def record_bytes(
    kind: str,
    *,
    settings: Mapping[str, object],
    result: Mapping[str, object],
    histograms: Mapping[str, Mapping] | None = None,
    command: Sequence[str] | None = None,
) -> bytes:
    """A record's file content (JSON; infinities and NaN as strings); `command` defaults to this process's."""
    if kind not in KINDS:
        raise ValueError(f"record kind {kind!r} is not one of {KINDS}")
    argv = list(command) if command is not None else ["trtq", *sys.argv[1:]]
    payload = {
        "format": RECORD_FORMAT,
        "kind": kind,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": shlex.join(argv),
        "settings": json_safe(dict(settings)),
        "result": json_safe(dict(result)),
        "histograms": json_safe(dict(histograms or {})),
    }
    return (json.dumps(payload, indent=1, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")


def write_record(
    directory: str | Path,
    kind: str,
    *,
    settings: Mapping[str, object],
    result: Mapping[str, object],
    histograms: Mapping[str, Mapping] | None = None,
    command: Sequence[str] | None = None,
) -> Path:
    """Save a record for `trtq report` (atomically); `command` defaults to this process's command line."""
    path = record_path(directory, kind)
    write_files_atomically({path: record_bytes(kind, settings=settings, result=result, histograms=histograms,
                                               command=command)})
    return path


def sensitivity_histograms(layers: Iterable[Sequence[str]], stats: Mapping[str, TensorStats],
                           amax: Mapping[str, float], method: str, count: int) -> dict[str, dict]:
    """Histogram summaries of the first `count` tensors of `layers` (each layer's tensors, most
    sensitive layer first) that have a calibration histogram and a range."""
    histograms: dict[str, dict] = {}
    for tensor in (t for tensors in layers for t in tensors):
        if len(histograms) < count and tensor in stats and tensor in amax and stats[tensor].has_histogram:
            histograms[tensor] = histogram_summary(stats[tensor], amax[tensor], method)
    return histograms


def clipped_histograms(stats: Mapping[str, TensorStats], amax: Mapping[str, float], method: str,
                       count: int) -> dict[str, dict]:
    """Histogram summaries of the `count` tensors whose chosen range clips most of what was observed."""
    clipped = sorted((amax[t] / stats[t].amax, t) for t in amax
                     if t in stats and stats[t].amax > 0 and stats[t].has_histogram)
    return {t: histogram_summary(stats[t], amax[t], method) for _, t in clipped[:count]}


def load_records(directory: str | Path) -> dict[str, Record]:
    """Every record in `directory`, by kind; TrtqError when there is none."""
    directory = Path(directory)
    if not directory.is_dir():
        raise TrtqError(
            f"Report folder {directory} " + ("is a file, not a folder." if directory.exists() else "does not exist."),
            "pass the --output-dir of a quantize, compare, sensitivity or verify run.",
        )
    records: dict[str, Record] = {}
    for kind in KINDS:
        path = record_path(directory, kind)
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TrtqError(
                f"Record {path} is not readable JSON ({exc}).", "re-run the command that wrote it."
            ) from exc
        if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
            raise TrtqError(f"{path} is not a trtq run record.", "re-run the command that wrote it.")
        records[kind] = Record(
            kind,
            str(data.get("created", "")),
            str(data.get("command", "")),
            dict(data.get("settings", {})),
            dict(data.get("result", {})),
            dict(data.get("histograms", {})),
            str(path),
        )
    if not records:
        raise TrtqError(
            f"Report folder {directory} holds no trtq run records (trtq-quantize.json, trtq-compare.json, "
            "trtq-sensitivity.json, trtq-verify.json).",
            "run trtq quantize/compare/sensitivity/verify with --output-dir pointing there first.",
        )
    return records
