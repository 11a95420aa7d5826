"""Face detection: the Detector protocol, the factory that builds one from a manifest, and face choice.

A detector is a model whose manifest has task "detect"; the code that runs it is the module its manifest names
(`extra.module`), else `edge.vision.<name up to its first "-">` (YuNet: edge/vision/yunet.py), providing
`create(runtime, manifest, min_face_px) -> Detector`. Adding a detector is one module plus one manifest.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from edge.errors import ManyFacesError, ModelError, NoFaceError

if TYPE_CHECKING:
    from edge.models.registry import Registry

POLICIES = ("best", "largest", "central", "single")

# The "best" rule's weights (select_face): chosen on the wild set built from LFW View 1 (edge/eval/wild.py,
# docs/wild.md), never on View 2.
BEST_SIZE_POWER = 1.0
BEST_CENTRE_SIGMA = 0.5
BEST_SCORE_POWER = 1.0


@dataclass(frozen=True)
class Face:
    box: np.ndarray  # (x1, y1, x2, y2) in source-image pixels
    landmarks: np.ndarray  # (5, 2): image-left eye, image-right eye, nose, left and right mouth corners
    score: float

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    def to_dict(self) -> dict[str, object]:
        return {"box": [round(float(v), 1) for v in self.box],
                "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in self.landmarks],
                "score": round(self.score, 4)}


@runtime_checkable
class Detector(Protocol):
    min_face_px: float

    def detect(self, image: np.ndarray) -> list[Face]:
        """All faces in a BGR uint8 image, best score first, at least `min_face_px` wide."""
        ...


@runtime_checkable
class FullResolution(Protocol):
    """What the rescue pass (edge/vision/rescue.py) asks of a detector beyond `detect`, when it offers it: the
    image at its own resolution, below the usual score threshold, with no size floor. A detector without it is
    rescued by turning the image only."""

    score_threshold: float  # the usual one, as `detect` applies it
    sure_score: float  # a face scoring less may be a turned face misread as upright: the rescue checks (manifest)
    rescue_score_threshold: float  # the last look's (manifest)
    detector_min_px: float  # the smallest face it finds reliably at the size it runs at (manifest)

    def detect_full(self, image: np.ndarray, score_threshold: float) -> list[Face]:
        """Every face at the image's own resolution scoring at least `score_threshold`, any size."""
        ...


def make_detector(registry: Registry, name: str = "yunet", threads: int = 1, min_face_px: float = 40.0) -> Detector:
    """The detector a manifest describes, on the runtime the manifest names."""
    runtime, m = registry.open(name, threads=threads)
    if m.task != "detect":
        raise ModelError(f"model {name!r} is a {m.task!r} model, not a face detector")
    module_name = str(m.extra.get("module") or f"edge.vision.{m.name.split('-')[0].replace('-', '_')}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise ModelError(f"detector {name!r}: no code for it ({module_name})") from None
    detector = module.create(runtime, m, min_face_px)
    if not isinstance(detector, Detector):
        raise ModelError(f"detector {name!r}: {module_name}.create did not return a Detector")
    return detector


def detection_scale(width: int, height: int, min_face_px: float, detector_min_px: float,
                    min_side: int) -> float:
    """Scale at which to run the detector on a width×height image.

    Shrinks the image as far as keeps a face of `min_face_px` source pixels at `detector_min_px` (the smallest
    size the detector finds reliably), but never below `min_side` on the longer side, and never enlarges.
    Small faces in large photos are therefore still found, and large frames do not cost more than needed.
    """
    longest = max(width, height)
    scale = min(1.0, detector_min_px / max(min_face_px, 1e-6))
    if longest * scale < min_side:
        scale = min(1.0, min_side / longest)
    return scale


def select_face(faces: list[Face], image_shape: tuple[int, ...], policy: str = "best") -> Face:
    """Choose the face to use: `best` (below), `largest` area, most `central`, or `single` (several faces is an
    error).

    `best` weighs what each of the others ignores: the face maximising

        score^p · (width / widest width)^q · exp(-d² / 2σ²)

    where score is the detector's confidence, width the face's box width relative to the widest face found,
    and d the distance of the box centre from the image centre in half image diagonals (0 at the centre, 1 in
    a corner). A bystander must be larger *and* about as central to win; a false box (low confidence, often
    small) rarely wins; a subject off centre but alone still does. p, q and σ are the BEST_* constants.
    """
    if policy not in POLICIES:
        raise ValueError(f"face policy must be one of {POLICIES}, not {policy!r}")
    if not faces:
        raise NoFaceError("no face found")
    if policy == "single":
        if len(faces) > 1:
            raise ManyFacesError(f"{len(faces)} faces found; expected exactly one")
        return faces[0]
    if policy == "largest":
        return max(faces, key=lambda f: f.width * f.height)
    if policy == "best":
        return faces[int(np.argmax(best_scores(faces, image_shape)))]
    return min(faces, key=lambda f: _off_centre(f, image_shape))


def _off_centre(f: Face, image_shape: tuple[int, ...]) -> float:
    """Distance of the box centre from the image centre, in half image diagonals."""
    h, w = image_shape[0], image_shape[1]
    mx, my = (f.box[0] + f.box[2]) / 2.0, (f.box[1] + f.box[3]) / 2.0
    return float(np.hypot(mx - w / 2.0, my - h / 2.0) / max(np.hypot(w, h) / 2.0, 1e-9))


def best_scores(faces: list[Face], image_shape: tuple[int, ...], score_power: float = BEST_SCORE_POWER,
                size_power: float = BEST_SIZE_POWER, centre_sigma: float = BEST_CENTRE_SIGMA) -> np.ndarray:
    """The `best` rule's value for each face (select_face); the weights are parameters for tuning only."""
    widest = max(max(f.width for f in faces), 1e-9)
    out = []
    for f in faces:
        d = _off_centre(f, image_shape)
        out.append(max(f.score, 1e-9) ** score_power * (max(f.width, 1e-9) / widest) ** size_power
                   * np.exp(-d * d / (2.0 * centre_sigma * centre_sigma)))
    return np.asarray(out)
