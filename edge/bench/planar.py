"""`facegate bench planar`: the planar-motion check on synthetic clips of real faces (edge/liveness/simulate.py).

Each image's central face is turned into five clips — a replayed photo, a halftone print, a screen with
moiré (each should be judged one plane that turned), two pieces of a torn print and a textured relief turning
like a head (each should be judged not one plane) — and every clip is judged as the challenge judges it
(`motion.assess_clip`). Clip kind i of face k uses seed `seed + 25 i + k`, so a run is reproducible and two
runs with different `--seed` share no clip.

Besides the verdicts it reports, per kind, the clips in which some frame said the opposite (a replay read
"not one plane", which the challenge would take for a head if the yaw had turned far enough by then) and the
inlier share of the deciding fits, which shows the margin to `PLANAR_SHARE`. A regression aid for the check's
settings, not a measure of accuracy on real attacks (the simulator's docstring says why).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from edge.errors import FacegateError, NoFaceError
from edge.imageio import load_bgr
from edge.liveness import motion, simulate
from edge.models.registry import Registry
from edge.vision.detect import make_detector, select_face

REPLAYS = ("photo", "halftone print", "screen with moire")
NON_PLANAR = ("two planes", "rotating relief")
KINDS = (*REPLAYS, *NON_PLANAR)
SEED_STRIDE = 25  # seeds of one kind: seed + 25 i + k; fewer than 25 faces per run keep the kinds apart


def clip_for(kind: str, image: np.ndarray, box: np.ndarray, nose: np.ndarray, seed: int, index: int,
             frames: int = 30) -> list[np.ndarray]:
    """One synthetic clip of `kind`; `index` alternates the relief's turn between left and right."""
    if kind in REPLAYS:
        return simulate.replay_clip(image, frames=frames, seed=seed, print_halftone=kind == "halftone print",
                                    moire=kind == "screen with moire")
    if kind == "two planes":
        return simulate.two_planes_clip(image, frames=frames, fold_x=float(nose[0]), seed=seed)
    if kind == "rotating relief":
        return simulate.relief_clip(image, box, nose, frames=frames, seed=seed,
                                    direction="left" if index % 2 else "right")
    raise ValueError(f"unknown clip kind {kind!r}")


def judge(clip: list[np.ndarray], box: np.ndarray) -> dict[str, Any]:
    """The clip's verdict as the challenge reaches it, and whether any frame said the opposite."""
    tracker = motion.PointTracker(clip[0], box)
    fits = []
    for frame in clip[1:]:
        tracker.update(frame)
        fits.append(tracker.fit())
    verdict = motion.assess_clip(clip, box)
    return {"verdict": verdict.planar, "fit": verdict.to_dict(),
            "any_planar": any(f.planar is True for f in fits),
            "any_not_planar": any(f.planar is False for f in fits)}


def run(images: Iterable[Path], seed: int = 20, frames: int = 30, registry: Registry | None = None,
        progress: bool = False) -> dict[str, Any]:
    paths = list(images)
    if len(paths) > SEED_STRIDE:
        raise FacegateError(f"bench planar: at most {SEED_STRIDE} images per run (the seeds of two kinds would "
                            "overlap); use --limit")
    detector = make_detector(registry or Registry(), "yunet")
    clips: list[dict[str, Any]] = []
    no_face: list[str] = []
    for k, path in enumerate(tqdm(paths, desc="faces", unit="face", disable=not progress)):
        image = load_bgr(path)
        try:
            face = select_face(detector.detect(image), image.shape, "central")
        except NoFaceError:
            no_face.append(str(path))
            continue
        for i, kind in enumerate(KINDS):
            s = seed + SEED_STRIDE * i + k
            r = judge(clip_for(kind, image, face.box, face.landmarks[2], s, k, frames), face.box)
            clips.append({"image": str(path), "kind": kind, "seed": s, **r})
    if not clips:
        raise FacegateError("bench planar: no face in any of the images")
    kinds: dict[str, Any] = {}
    for kind in KINDS:
        rows = [c for c in clips if c["kind"] == kind]
        want = kind in REPLAYS  # True: should be judged one plane
        inliers = [c["fit"]["inliers"] for c in rows]
        kinds[kind] = {
            "clips": len(rows), "expected": "planar" if want else "not planar",
            "correct": sum(c["verdict"] is want for c in rows),
            "no_verdict": sum(c["verdict"] is None for c in rows),
            "some_frame_opposite": sum(c["any_not_planar"] if want else c["any_planar"] for c in rows),
            "inliers_min": round(min(inliers), 4), "inliers_median": round(float(np.median(inliers)), 4),
            "wrong": [c["image"] for c in rows if c["verdict"] is not want],
        }
    return {"opencv": cv2.__version__, "seed": seed, "frames": frames, "faces": len(paths) - len(no_face),
            "no_face": no_face, "planar_share": motion.PLANAR_SHARE, "min_condition": motion.MIN_CONDITION,
            "kinds": kinds, "clips": clips}
