"""The ranges table: tensor name -> amax, with where it came from.

This is the object that passes from calibration to every later stage (Q/DQ insertion, cache,
evaluation), saved as JSON so calibration runs once (`trtq quantize --ranges FILE`).

`--method auto` adds a `choices` object (tensor -> why it got its range). Readers that predate it
ignore the key, so the format version stays 1 and tables load both ways.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trtq._io import atomic_write_text, special_kind
from trtq.errors import TrtqError

FORMAT_VERSION = 1


@dataclass(frozen=True)
class RangeChoice:
    """Why a tensor got its range under `--method auto`."""

    method: str
    """The winning candidate: "max", "entropy", "mse" or "percentile P"."""
    amax_over_max: float
    """Its amax divided by the largest |x| seen in calibration (1.0: nothing clipped)."""
    clipped: float
    """Share of the calibration values beyond it (from the histogram)."""
    snr_db: float | None = None
    """Output SNR of the layers reading the tensor with this range, on the judging samples (None: not judged)."""
    max_snr_db: float | None = None
    """The same with the full range (max), for comparison."""
    candidates: dict[str, float] = field(default_factory=dict)
    """Every candidate's output SNR (dB), by name."""
    judged_samples: int = 0
    """Calibration samples the candidates were judged on (0: not judged, the fallback range)."""
    shared_with: str | None = None
    """The tensor whose range this one takes (the Q/DQ pairs around a MaxPool share one, `trtq.calibrate.shared`);
    `method` is how that range was chosen, `amax_over_max` and `clipped` are this tensor's own."""

    def to_dict(self) -> dict:
        """JSON-friendly view (infinite SNRs as strings)."""
        out = asdict(self)
        out["snr_db"], out["max_snr_db"] = _number(self.snr_db), _number(self.max_snr_db)
        out["candidates"] = {k: _number(v) for k, v in self.candidates.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict) -> RangeChoice:
        """Inverse of `to_dict`."""
        def optional(value: object) -> float | None:
            return None if value is None else float(value)  # type: ignore[arg-type]

        return cls(
            method=str(data["method"]),
            amax_over_max=float(data["amax_over_max"]),
            clipped=float(data["clipped"]),
            snr_db=optional(data.get("snr_db")),
            max_snr_db=optional(data.get("max_snr_db")),
            candidates={str(k): float(v) for k, v in dict(data.get("candidates", {})).items()},
            judged_samples=int(data.get("judged_samples", 0)),
            shared_with=None if data.get("shared_with") is None else str(data["shared_with"]),
        )


@dataclass(frozen=True)
class TableCheck:
    """How one whole ranges table did end to end on the judging samples (`--method auto`)."""

    samples: int
    """Judging samples it ran on (fewer than the others: dropped once it could not be chosen)."""
    snr_db: float
    """Output SNR (dB) over those samples together, the worst output, as `trtq compare` reports it."""
    gain_db: float
    """Mean per-sample output SNR gain (dB) over the preferred table (mse) on the same samples."""
    gain_low_db: float
    """Lower confidence bound of that gain (2 standard errors); -inf with under 3 samples."""
    gain_high_db: float
    """Upper confidence bound of that gain."""
    effective_samples: float = 0.0
    """How many samples the aggregate SNR effectively rests on: (sum of per-sample noise)^2 / sum of its squares,
    for the worst output. Equal noise on every sample gives the sample count; one sample carrying it all gives 1."""
    output_snr_db: tuple[float, ...] = ()
    """Each scored output's SNR (dB) over the samples together, in the model's output order (`snr_db` is the least)."""

    def to_dict(self) -> dict:
        """JSON-friendly view (infinities as strings)."""
        out = {key: _number(value) if isinstance(value, float) else value for key, value in asdict(self).items()}
        out["output_snr_db"] = [_number(float(value)) for value in self.output_snr_db]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> TableCheck:
        """Inverse of `to_dict` (a table from before `effective_samples` and `output_snr_db` reads 0 and ())."""
        return cls(samples=int(data["samples"]), snr_db=float(data["snr_db"]), gain_db=float(data["gain_db"]),
                   gain_low_db=float(data["gain_low_db"]), gain_high_db=float(data["gain_high_db"]),
                   effective_samples=float(data.get("effective_samples", 0.0)),
                   output_snr_db=tuple(float(value) for value in data.get("output_snr_db", ())))


def _number(value: float | None) -> float | str | None:
    return str(value) if value is not None and not math.isfinite(value) else value


@dataclass(frozen=True)
class RangesTable:
    """Per-tensor absolute maxima (amax) for symmetric INT8 quantization."""

    amax: dict[str, float]
    method: str
    model_sha256: str
    num_samples: int
    data_sha256: str
    options: dict[str, float | int | str] = field(default_factory=dict)
    model_name: str = ""
    trtq_version: str = ""
    choices: dict[str, RangeChoice] = field(default_factory=dict)
    """Per tensor, why it got its range (`--method auto` only)."""
    table_scores: dict[str, float] = field(default_factory=dict)
    """`--method auto`: end-to-end output SNR (dB) of each candidate table on the judging samples it ran on."""
    table_checks: dict[str, TableCheck] = field(default_factory=dict)
    """`--method auto`: each candidate table's end-to-end check (samples, SNR, gain over mse and its bounds)."""
    smoothing: dict[str, dict] = field(default_factory=dict)
    """`--smooth`: activation tensor -> {"alpha": a, "factors": [s_j, ...]}, the per-channel factors the
    ranges were calibrated after (so `--ranges` rebuilds the same smoothed model); empty without."""
    weights: dict[str, dict] = field(default_factory=dict)
    """`--weight-ranges mse` (the FP8 default): weight -> {"axis", "amax": per channel, "bias", "delta",
    "gain_db"} (`trtq.quantize.weights.WeightChoice`); empty where weights use max |w|."""

    def __post_init__(self) -> None:
        for name, value in self.amax.items():
            if not (math.isfinite(value) and value >= 0.0):
                raise TrtqError(
                    f"Range of tensor {name!r} is {value}; ranges must be finite and non-negative.",
                    "check the calibration data for NaN/Inf values.",
                )

    def scale(self, name: str) -> float:
        """The INT8 scale of a tensor: amax / 127, kept strictly positive."""
        return scale_from_amax(self.amax[name])

    def to_json(self) -> str:
        """Deterministic JSON text (sorted keys) of this table."""
        payload = {"format": "trtq-ranges", "format_version": FORMAT_VERSION, **asdict(self)}
        payload["amax"] = dict(sorted(self.amax.items()))
        for key in ("choices", "table_scores", "table_checks", "smoothing", "weights"):  # written only when present
            if not getattr(self, key):
                del payload[key]
        if self.choices:
            payload["choices"] = {name: choice.to_dict() for name, choice in sorted(self.choices.items())}
        if self.table_scores:
            payload["table_scores"] = {name: _number(v) for name, v in self.table_scores.items()}
        if self.table_checks:
            payload["table_checks"] = {name: c.to_dict() for name, c in self.table_checks.items()}
        if self.smoothing:
            payload["smoothing"] = dict(sorted(self.smoothing.items()))
        if self.weights:
            payload["weights"] = dict(sorted(self.weights.items()))
        return json.dumps(payload, indent=2, sort_keys=True) + "\n"

    def save(self, path: str | Path) -> None:
        """Write the table as JSON, atomically."""
        atomic_write_text(Path(path), self.to_json())

    @classmethod
    def from_json(cls, text: str, source: str = "<string>") -> RangesTable:
        """Parse a table written by `to_json`."""
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TrtqError(
                f"Ranges file {source} is not valid JSON ({exc.msg} at line {exc.lineno}).",
                "pass the .int8.json file that `trtq quantize` wrote.",
            ) from exc
        if not isinstance(payload, dict) or payload.get("format") != "trtq-ranges":
            raise TrtqError(
                f"Ranges file {source} is not a trtq ranges table (expected \"format\": "
                f"\"trtq-ranges\", got {payload.get('format') if isinstance(payload, dict) else type(payload).__name__!r}).",
                "pass the .int8.json file that `trtq quantize` wrote.",
            )
        version = payload.get("format_version")
        if version != FORMAT_VERSION:
            raise TrtqError(
                f"Ranges file {source} has format_version {version}, expected {FORMAT_VERSION}.",
                "re-run calibration with this version of trtq.",
            )
        try:
            return cls(
                amax={str(k): float(v) for k, v in payload["amax"].items()},
                method=str(payload["method"]),
                model_sha256=str(payload["model_sha256"]),
                num_samples=int(payload["num_samples"]),
                data_sha256=str(payload["data_sha256"]),
                options=dict(payload.get("options", {})),
                model_name=str(payload.get("model_name", "")),
                trtq_version=str(payload.get("trtq_version", "")),
                choices={str(k): RangeChoice.from_dict(v) for k, v in dict(payload.get("choices", {})).items()},
                table_scores={str(k): float(v) for k, v in dict(payload.get("table_scores", {})).items()},
                table_checks={str(k): TableCheck.from_dict(v) for k, v in dict(payload.get("table_checks", {})).items()},
                smoothing={str(k): {"alpha": float(v["alpha"]), "factors": [float(f) for f in v["factors"]]}
                           for k, v in dict(payload.get("smoothing", {})).items()},
                weights={str(k): {"axis": int(v["axis"]), "amax": [float(a) for a in v["amax"]], "bias": v.get("bias"),
                                  "delta": [float(d) for d in v["delta"]] if v.get("delta") is not None else None,
                                  "gain_db": float(v.get("gain_db", 0.0))}
                         for k, v in dict(payload.get("weights", {})).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise TrtqError(
                f"Ranges file {source} is missing or has a malformed field ({exc}).",
                "pass the .int8.json file that `trtq quantize` wrote.",
            ) from exc

    @classmethod
    def load(cls, path: str | Path) -> RangesTable:
        """Read a table from a JSON file."""
        path = Path(path)
        kind = special_kind(path)
        if kind:
            raise TrtqError(f"Ranges file {path} is a {kind}, not a file.", "pass the .json file that `trtq quantize` wrote.")
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise TrtqError(f"Ranges file {path} does not exist.", "check the --ranges path.") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise TrtqError(f"Ranges file {path} cannot be read ({exc}).", "check the --ranges path.") from exc
        return cls.from_json(text, source=str(path))


MIN_AMAX = 1e-8
"""Floor for amax so scales stay strictly positive (an all-zero tensor still gets a valid scale)."""


def scale_from_amax(amax: float) -> float:
    """Symmetric INT8 scale for an absolute maximum: max(amax, MIN_AMAX) / 127."""
    return max(float(amax), MIN_AMAX) / 127.0
