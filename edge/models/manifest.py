"""The model manifest: everything the device needs to know about a model file, as data.

A manifest is a JSON object. Unknown keys are refused so a typo cannot silently change behaviour.
"""

from __future__ import annotations

import itertools
import json
import math
import re
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


NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
MAX_INPUT_SIDE = 8192
MEAN_BOUND = 1000.0  # pixels are 0–255: a mean far outside that is no normalisation
STD_BOUNDS = (0.01, 1000.0)  # a std of 1e30 turns every face into the same zero input: everyone matches
WEIGHT_BITS = (2, 8)


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
    name = d["name"]
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name in (".", ".."):
        raise ModelError(f"name must be letters, digits, '.', '_' or '-' (not '.' or '..'), not {name!r}")
    _choice(d["task"], TASKS, "task")
    _choice(d["runtime"], tuple(RUNTIMES), "runtime")
    sha = d["sha256"]
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha.lower()):
        raise ModelError("sha256 must be 64 hex digits")
    sha = sha.lower()
    file = _text(d["file"], "file", empty=True)
    check_relative(file, "file")
    licence = _text(d["licence"], "licence", empty=True)
    source = _object(d["source"], "source")
    for key in ("package", "path", "file", "optional_package"):
        if key in source:
            _text(source[key], f"source.{key}")
    for key in ("path", "file"):
        if key in source:
            check_relative(source[key], f"source.{key}")
    inp = _object(d["input"], "input")
    size = inp.get("size")
    spec = InputSpec(
        size=None if size is None else _ints(size, "input.size", 2, 1, MAX_INPUT_SIDE),  # type: ignore[arg-type]
        layout=_choice(inp.get("layout", "NCHW"), LAYOUTS, "input.layout"),
        colour=_choice(inp.get("colour", "BGR"), COLOURS, "input.colour"),
        stride=_ints([inp.get("stride", 1)], "input.stride", 1, 1, 1024)[0],
    )
    norm = _object(_given(d, "normalisation"), "normalisation")
    mean = _numbers(norm.get("mean", (0, 0, 0)), "normalisation.mean", 3)
    std = _numbers(norm.get("std", (1, 1, 1)), "normalisation.std", 3)
    if any(abs(v) > MEAN_BOUND for v in mean):
        raise ModelError(f"normalisation.mean must lie within ±{MEAN_BOUND:g} (pixels are 0–255), not {list(mean)}")
    if any(not STD_BOUNDS[0] <= v <= STD_BOUNDS[1] for v in std):
        raise ModelError(f"normalisation.std must lie in [{STD_BOUNDS[0]:g}, {STD_BOUNDS[1]:g}] (positive; pixels "
                         f"are 0–255), not {list(std)}")
    normalisation = Normalisation(mean=mean, std=std)  # type: ignore[arg-type]
    align = d.get("alignment")
    alignment = None
    if align is not None:
        align = _object(align, "alignment")
        points = align.get("points")
        if not isinstance(points, list | tuple) or len(points) != 5:
            raise ModelError("alignment.points must hold five (x, y) points")
        pts = tuple(_numbers(p, f"alignment.points[{i}]", 2) for i, p in enumerate(points))
        alignment = AlignmentTemplate(size=_ints(align.get("size"), "alignment.size", 2, 1, MAX_INPUT_SIDE),  # type: ignore[arg-type]
                                      points=pts)  # type: ignore[arg-type]
    output_dim = d.get("output_dim")
    output_dim = None if output_dim is None else _ints([output_dim], "output_dim", 1, 1, 1 << 16)[0]
    thresholds = {str(key): _threshold(key, t)
                  for key, t in _object(_given(d, "thresholds"), "thresholds").items()}
    flip = _flag(d, "flip_average")
    prepare = d.get("prepare", ())
    if not isinstance(prepare, list | tuple) or any(not isinstance(p, str) for p in prepare):
        raise ModelError(f"prepare must be a list of step names, not {prepare!r}")
    quantize = _object(_given(d, "quantize"), "quantize")
    if "weight_bits" in quantize:
        _ints([quantize["weight_bits"]], "quantize.weight_bits", 1, *WEIGHT_BITS)
    if "ranges" in quantize or "quantize_int8" in prepare:
        ranges = quantize.get("ranges")
        if not isinstance(ranges, dict) or not ranges:
            raise ModelError("prepare step quantize_int8 needs quantize.ranges: {tensor: [low, high]}")
        for tensor, r in ranges.items():
            lo, hi = _numbers(r, f"quantize.ranges.{tensor}", 2)
            if not lo < hi or max(abs(lo), abs(hi)) > 1e6:
                raise ModelError(f"quantize.ranges.{tensor} must be [low, high] with low < high, within ±1e6, "
                                 f"not {r!r}")
    return Manifest(
        name=name, task=d["task"], file=file, sha256=sha, source=dict(source),
        licence=licence, runtime=d["runtime"], input=spec, normalisation=normalisation,
        alignment=alignment, output_dim=output_dim or None,
        thresholds=thresholds, prepare=tuple(prepare), extra=dict(_object(_given(d, "extra"), "extra")),
        flip_average=flip, quantize=dict(quantize), default=_flag(d, "default"),
    )


def _given(d: dict[str, Any], key: str) -> Any:
    """An optional object: absent or null is empty; anything else must be an object ([] or 0 is an error, not
    a silent empty one)."""
    value = d.get(key)
    return {} if value is None else value


def _object(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ModelError(f"{key} must be a JSON object, not {value!r}"[:200])
    return value


def _text(value: Any, key: str, empty: bool = False) -> str:
    if not isinstance(value, str) or (not empty and not value):
        raise ModelError(f"{key} must be a non-empty string, not {value!r}"[:200])
    return value


def check_relative(value: str, key: str) -> None:
    """A file named by a manifest stays inside the folder it is resolved against (a package, a bundle)."""
    if value.startswith(("/", "\\")) or Path(value).is_absolute() or ".." in Path(value.replace("\\", "/")).parts \
            or (len(value) > 1 and value[1] == ":"):
        raise ModelError(f"{key} must stay inside the bundle or package folder (a relative path, no '..'), "
                         f"not {value!r}")


def _ints(value: Any, key: str, count: int, lo: int, hi: int) -> tuple[int, ...]:
    def whole(v: Any) -> bool:  # 112 or 112.0, never True, "112" or 112.5
        return not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v) and float(v).is_integer()

    if not isinstance(value, list | tuple) or len(value) != count or any(
            not whole(v) or not lo <= v <= hi for v in value):
        what = "an integer" if count == 1 else f"{count} integers"
        shown = value[0] if count == 1 and isinstance(value, list) else value
        raise ModelError(f"{key} must be {what} in {lo}..{hi}, not {shown!r}"[:200])
    return tuple(int(v) for v in value)


def _numbers(value: Any, key: str, count: int) -> tuple[float, ...]:
    if not isinstance(value, list | tuple) or len(value) != count:
        raise ModelError(f"{key} must be a list of {count} numbers, not {value!r}"[:200])
    return tuple(_finite(v, key) for v in value)


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
