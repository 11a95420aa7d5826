"""Setting the passive check's live threshold from bona fide faces alone: `facegate calibrate liveness`.

A site has plenty of live faces and, usually, no attacks. So the threshold is set the way the 1:1 face
threshold is set from impostors: as a quantile. Given live images that take no part in any evaluation, it is
the score below which a chosen share of them falls (the target BPCER, per frame); live iff score > threshold.
This says nothing about attacks: a lower threshold refuses fewer people and can accept more attacks, so the
threshold is never set below the high-confidence-spoof level, and APCER must be measured on attack samples
(`facegate bench liveness`). The value and everything needed to reproduce it go into the fused bundle's
manifest (`thresholds.live.provenance`); `write_fused` keeps it while the members stay the same files.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from edge.atomic import atomic_write_bytes
from edge.errors import FacegateError
from edge.imageio import sample_images
from edge.models.manifest import Manifest
from edge.models.registry import Registry, sha256_file

DEFAULT_BPCER = 0.05


def live_threshold(scores: np.ndarray, bpcer: float) -> float:
    """The threshold t (live iff score > t) that refuses at most `bpcer` of these live scores.

    t lies midway between the highest refused score and the lowest accepted one, so refusing exactly
    floor(bpcer · n) of them.
    """
    if not 0.0 <= bpcer < 1.0:
        raise FacegateError(f"target BPCER must be in [0, 1), not {bpcer}")
    s = np.sort(np.asarray(scores, np.float64))
    if s.size == 0:
        raise FacegateError("no live faces to calibrate on")
    refused = int(np.floor(bpcer * s.size))
    if refused == 0:
        return float(np.nextafter(s[0], -np.inf))
    return float((s[refused - 1] + s[refused]) / 2.0)


def calibrate(live_dir: Path, registry: Registry, bpcer: float = DEFAULT_BPCER, exclude: Iterable[Path] = (),
              limit: int | None = None, command: str = "", write: bool = True,
              progress: Callable[[Iterable[Path]], Iterable[Path]] = lambda it: it) -> dict[str, Any]:
    """Score the live images with the installed fused check and (with `write`) store the new threshold."""
    from edge.eval.lfw import images_named_by
    from edge.eval.liveness import _detector, score_images
    from edge.liveness.minifasnet import FUSED_NAME, LIVE_THRESHOLD, open_passive, write_fused

    live_dir = Path(live_dir)
    exclude = [Path(p) for p in exclude]
    if FUSED_NAME not in registry.names() and write_fused(registry.model_dir) is None:
        raise FacegateError("calibrate liveness needs both MiniFASNet nets installed: `facegate models install "
                            "minifasnet`")
    registry = Registry(registry.model_dir)  # re-read: the fused bundle may have just been written
    check = open_passive(registry, FUSED_NAME)
    skip = images_named_by(exclude)
    paths = sample_images(live_dir, limit, exclude=skip)
    rows = score_images(check, _detector(registry), progress(paths), live_dir)
    scores = np.array([r["score"] for r in rows if r["face"]])
    if scores.size < 100:
        raise FacegateError(f"only {scores.size} live faces found under {live_dir}: need at least 100 to set a "
                            "threshold from a quantile")
    raw = live_threshold(scores, bpcer)
    certain = check.certain_spoof
    value = round(max(raw, certain), 6)
    faces = [r for r in rows if r["face"]]
    provenance = {
        "rule": "live iff the mean of the members' softmax live probabilities > value",
        "source": "calibrated on bona fide faces only: the value refusing the target share of them (per frame)",
        "target_bpcer": bpcer,
        "bpcer_measured": round(float((scores <= value).mean()), 6),
        "a_priori_rule": {"value": LIVE_THRESHOLD, "bpcer_measured": round(float((scores <= LIVE_THRESHOLD).mean()),
                                                                           6)},
        "raised_to_certain_spoof": raw < certain,
        "live_dir": str(live_dir), "images": len(rows), "faces": int(scores.size),
        "no_face": len(rows) - int(scores.size),
        "crops_adjusted": round(sum(r["shrunk"] or r["shifted"] for r in faces) / len(faces), 4),
        "excluded_pairs": [{"file": p.name, "sha256": sha256_file(p)} for p in exclude],
        "excluded_images": len(skip),
        "members_sha256": {n.manifest.name: n.manifest.sha256 for n in check.nets},
        "attacks": "none used: APCER at this value must be measured separately (facegate bench liveness)",
        "date": datetime.date.today().isoformat(),
        "command": command,
    }
    result = {"model": FUSED_NAME, "threshold": value, "previous_threshold": check.threshold,
              "certain_spoof": certain, "provenance": provenance,
              "written": False, "images": rows}
    if write:
        store_threshold(registry, value, provenance)
        result["written"] = True
    return result


def store_threshold(registry: Registry, value: float, provenance: dict[str, Any]) -> Path:
    """Put the live threshold into the fused bundle's manifest (validated, then replaced atomically)."""
    from edge.liveness.minifasnet import FUSED_NAME

    path = Path(registry.model_dir) / FUSED_NAME / "manifest.json"
    data = json.loads(path.read_text())
    data.setdefault("thresholds", {})["live"] = {"value": value, "metric": "probability", "provenance": provenance}
    Manifest.from_dict(data, origin=str(path))
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())
    return path
