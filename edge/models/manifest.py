"""The model manifest: everything the device needs to know about a model file, as data.

A manifest is a JSON object. Unknown keys are refused so a typo cannot silently change behaviour.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge.errors import ModelError
from edge.runtime import RUNTIMES

TASKS = ("detect", "embed", "liveness", "verify_head", "stylize", "fusion")
# A score fusion (edge/match/fusion.py) is statistics over other models, not a file of its own.
FILELESS = {"fusion": {"file": "", "sha256": "0" * 64, "runtime": "onnxruntime", "input": {"size": None}}}
LAYOUTS = ("NCHW", "NHWC")
COLOURS = ("RGB", "BGR")


@dataclass(frozen=True)
class InputSpec:
    size: tuple[int, int] | None  # (width, height); None when the graph takes any size
    layout: str = "NCHW"
    colour: str = "BGR"
    stride: int = 1  # dynamic inputs are padded to a multiple of this


@dataclass(frozen=True)
class Normalisation:
    """x' = (x - mean) / std per channel, applied to 0–255 pixels before the graph."""

    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class AlignmentTemplate:
    """Five reference points (eyes, nose, mouth corners) in an output crop of `size` (width, height)."""

    size: tuple[int, int]
    points: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class Threshold:
    value: float
    metric: str  # "cosine" (higher is more similar) or "probability"
    provenance: dict[str, Any] = field(default_factory=dict)
    # For open-set identification: the impostor score tail as (FAR, score) points, FAR descending, so the
    # threshold can be recomputed for any gallery size (see edge/match/thresholds.py).
    tail: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class Manifest:
    name: str
    task: str
    file: str
    sha256: str
    source: dict[str, str]
    licence: str
    runtime: str
    input: InputSpec
    normalisation: Normalisation = Normalisation()
    alignment: AlignmentTemplate | None = None
    output_dim: int | None = None
    thresholds: dict[str, Threshold] = field(default_factory=dict)
    prepare: tuple[str, ...] = ()  # graph repairs applied once on first use (see prepare.py)
    extra: dict[str, Any] = field(default_factory=dict)  # task-specific settings (e.g. detector limits)
    # Embedders: embed the crop and its mirror image and average the two unit vectors (test-time flip).
    # Doubles the embedding cost; a recipe sets it only where held-out data showed it pays (see its provenance).
    flip_average: bool = False
    # int8 made on the device (prepare step "quantize_int8"): {"ranges": {tensor: [lo, hi]}, "weight_bits": 7,
    # "provenance": {...}}; the ranges were measured once on face crops (facegate export int8).
    quantize: dict[str, Any] = field(default_factory=dict)
    # Embedders: the one used where none is named (Registry.default_embedder); naming another is the switch.
    default: bool = False

    def threshold(self, key: str) -> Threshold:
        try:
            return self.thresholds[key]
        except KeyError:
            raise ModelError(f"model {self.name!r} has no {key!r} threshold in its manifest") from None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["prepare"] = list(self.prepare)
        for key in ("quantize", "default"):
            if not d[key]:
                del d[key]  # most models have neither; keeps their manifests as they were
        for t in d["thresholds"].values():
            t["tail"] = [list(p) for p in t["tail"]]
            if not t["tail"]:
                del t["tail"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], origin: str = "manifest") -> Manifest:
        try:
            return _parse(d)
        except ModelError as exc:
            raise ModelError(f"{origin}: {exc}") from None

    @classmethod
    def load(cls, path: Path) -> Manifest:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"{path}: cannot read manifest ({exc})") from None
        return cls.from_dict(data, origin=str(path))


_KEYS = {"name", "task", "file", "sha256", "source", "licence", "runtime", "input", "normalisation",
         "alignment", "output_dim", "thresholds", "prepare", "extra", "flip_average", "quantize",
         "default"}
_REQUIRED = {"name", "task", "file", "sha256", "source", "licence", "runtime", "input"}


def _parse(d: dict[str, Any]) -> Manifest:
    if not isinstance(d, dict):
        raise ModelError("a manifest must be a JSON object")
    unknown = set(d) - _KEYS
    if unknown:
        raise ModelError(f"unknown key(s) {sorted(unknown)}")
    if d.get("task") in FILELESS:
        d = {**FILELESS[d["task"]], **d}
    missing = _REQUIRED - set(d)
    if missing:
        raise ModelError(f"missing key(s) {sorted(missing)}")
    _choice(d["task"], TASKS, "task")
    _choice(d["runtime"], tuple(RUNTIMES), "runtime")
    sha = str(d["sha256"]).lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ModelError("sha256 must be 64 hex digits")
    inp = d["input"]
    size = inp.get("size")
    spec = InputSpec(
        size=tuple(int(v) for v in size) if size else None,  # type: ignore[arg-type]
        layout=_choice(inp.get("layout", "NCHW"), LAYOUTS, "input.layout"),
        colour=_choice(inp.get("colour", "BGR"), COLOURS, "input.colour"),
        stride=int(inp.get("stride", 1)),
    )
    norm = d.get("normalisation") or {}
    normalisation = Normalisation(
        mean=tuple(float(v) for v in norm.get("mean", (0, 0, 0))),  # type: ignore[arg-type]
        std=tuple(float(v) for v in norm.get("std", (1, 1, 1))),  # type: ignore[arg-type]
    )
    if any(s == 0 for s in normalisation.std):
        raise ModelError("normalisation.std must not contain 0")
    align = d.get("alignment")
    alignment = None
    if align:
        pts = tuple((float(x), float(y)) for x, y in align["points"])
        if len(pts) != 5:
            raise ModelError("alignment.points must hold five (x, y) points")
        alignment = AlignmentTemplate(size=tuple(int(v) for v in align["size"]), points=pts)  # type: ignore[arg-type]
    thresholds = {key: _threshold(key, t) for key, t in (d.get("thresholds") or {}).items()}
    flip = _flag(d, "flip_average")
    quantize = d.get("quantize") or {}
    if "quantize_int8" in d.get("prepare", ()):
        ranges = quantize.get("ranges") if isinstance(quantize, dict) else None
        if not isinstance(ranges, dict) or not ranges or any(
                not isinstance(r, list | tuple) or len(r) != 2 or not r[0] <= r[1] for r in ranges.values()):
            raise ModelError("prepare step quantize_int8 needs quantize.ranges: {tensor: [low, high]}")
    return Manifest(
        name=str(d["name"]), task=d["task"], file=str(d["file"]), sha256=sha, source=dict(d["source"]),
        licence=str(d["licence"]), runtime=d["runtime"], input=spec, normalisation=normalisation,
        alignment=alignment, output_dim=int(d["output_dim"]) if d.get("output_dim") else None,
        thresholds=thresholds, prepare=tuple(d.get("prepare", ())), extra=dict(d.get("extra", {})),
        flip_average=flip, quantize=dict(quantize), default=_flag(d, "default"),
    )


# Where a score of each metric lives: a threshold outside it accepts everything (or nothing) and is a mistake.
METRIC_RANGES = {"cosine": (-1.0, 1.0), "probability": (0.0, 1.0)}


def _threshold(key: str, t: Any) -> Threshold:
    """One operating point, checked: a threshold decides who gets in, so an infinite, NaN or out-of-range value
    (a hand-edited override, a damaged file) is an error naming it rather than a door that accepts anyone."""
    where = f"thresholds.{key}"
    if not isinstance(t, dict) or "value" not in t:
        raise ModelError(f"{where} must be an object with a value")
    metric = str(t.get("metric", "cosine"))
    lo, hi = METRIC_RANGES.get(metric, (-math.inf, math.inf))
    value = _finite(t["value"], f"{where}.value")
    if not lo <= value <= hi:
        raise ModelError(f"{where}.value {value:g} is outside the {metric} range [{lo:g}, {hi:g}]")
    try:
        tail = tuple((_finite(f, f"{where}.tail"), _finite(v, f"{where}.tail")) for f, v in t.get("tail", ()))
    except (TypeError, ValueError):
        raise ModelError(f"{where}.tail must be a list of [FAR, score] pairs") from None
    if any(not 0.0 < f < 1.0 for f, _ in tail):
        raise ModelError(f"{where}.tail: every FAR must lie strictly between 0 and 1")
    if any(a[0] <= b[0] for a, b in itertools.pairwise(tail)):
        raise ModelError(f"{where}.tail must list FAR values in descending order")
    # A lower FAR is a stricter point: its score cannot be lower (an impostor tail only rises as it thins).
    if any(b[1] < a[1] for a, b in itertools.pairwise(tail)):
        raise ModelError(f"{where}.tail: scores must not fall as the FAR falls")
    if any(not lo <= v <= hi for _, v in tail):
        raise ModelError(f"{where}.tail: scores must lie in the {metric} range [{lo:g}, {hi:g}]")
    if key == "margin" and value < 0:
        raise ModelError(f"{where}.value must not be negative (a lead over the runner-up), not {value:g}")
    provenance = t.get("provenance", {})
    if not isinstance(provenance, dict):
        raise ModelError(f"{where}.provenance must be an object")
    return Threshold(value=value, metric=metric, provenance=dict(provenance), tail=tail)


def _finite(value: Any, where: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ModelError(f"{where} must be a number, not {value!r}") from None
    if not math.isfinite(x) or isinstance(value, bool):
        raise ModelError(f"{where} must be a finite number, not {value!r}")
    return x


def _flag(d: dict[str, Any], key: str) -> bool:
    value = d.get(key, False)
    if not isinstance(value, bool):
        raise ModelError(f"{key} must be true or false, not {value!r}")
    return value


def _choice(value: Any, allowed: tuple[str, ...], key: str) -> str:
    if value not in allowed:
        raise ModelError(f"{key} must be one of {list(allowed)}, not {value!r}")
    return value
