"""Liveness evaluation as a library: the passive check's score for each image of a folder (what
`facegate bench liveness` and `facegate calibrate liveness` both read)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edge.errors import ImageError
from edge.imageio import load_bgr
from edge.liveness.minifasnet import PassiveCheck
from edge.models.registry import Registry
from edge.vision.detect import Detector, make_detector, select_face


def _detector(registry: Registry, min_face_px: float = 40.0) -> Detector:
    return make_detector(registry, "yunet", threads=1, min_face_px=min_face_px)


def score_images(check: PassiveCheck, detector: Detector, paths: Iterable[Path], root: Path) -> list[dict[str, Any]]:
    rows = []
    for path in paths:
        row: dict[str, Any] = {"image": path.relative_to(root).as_posix()}
        try:
            image = load_bgr(path)
        except ImageError as exc:
            rows.append({**row, "face": False, "error": str(exc)})
            continue
        faces = detector.detect(image)
        if not faces:
            rows.append({**row, "face": False})
            continue
        a = check.assess(image, select_face(faces, image.shape, "largest"))
        rows.append({**row, "face": True, "score": round(a.score, 6), "live": a.live, "argmax_live": a.argmax_live,
                     "certain_spoof": a.score <= a.certain_spoof,
                     "members": {k: round(v, 6) for k, v in a.members.items()},
                     "shrunk": any(c["shrunk"] for c in a.crops.values()),
                     "shifted": any(c["shifted"] for c in a.crops.values())})
    return rows
