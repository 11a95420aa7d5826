"""A track's best frames, and how several photos of one person are combined.

At a door a person is seen in many frames. The daemon keeps each track's few best frames (by quality: detector
confidence, sharpness, frontal pose — TrackProbe) and the scorer takes the mean of each candidate's scores over
them (Scorer.identify_track): score-level fusion, which averages away one frame's blur or glance while keeping
the single-photo thresholds valid. (Averaging the embeddings instead — `fuse_probes` — raises every impostor's
score too, because all faces share a common direction that averaging strengthens: `facegate bench door`
measured FPIR 2–12 % at a 1 % target that way on View 1, so it is used only to make one template of several
photos, and only where its own thresholds would be calibrated.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from edge.embed import l2_normalise
from edge.match.base import Probe
from edge.vision.quality import Quality


def fuse_probes(probes: Sequence[Probe], embedders: Sequence[str]) -> dict[str, np.ndarray]:
    """The probes of one person as one: per embedder, the normalised mean of the unit vectors."""
    return {e: l2_normalise(np.mean([np.asarray(p[e], np.float32) for p in probes], axis=0)) for e in embedders}


def frame_quality(q: Quality | None) -> float:
    """How much a frame is worth to the track: detector confidence × sharpness (saturating) × frontal pose."""
    if q is None:
        return 0.0
    sharp = 1.0 - math.exp(-max(q.sharpness, 0.0) / 100.0)
    frontal = math.cos(math.radians(min(abs(q.yaw_deg), 89.0))) * math.cos(math.radians(min(abs(q.pitch_deg), 89.0)))
    return float(q.score) * sharp * frontal


class TrackProbe:
    """The best `keep` frames of a track by quality (their probes, best first)."""

    def __init__(self, keep: int = 3) -> None:
        self.keep = keep
        self.frames: list[tuple[float, dict[str, np.ndarray]]] = []

    def add(self, quality: float, probe: Probe) -> list[dict[str, np.ndarray]]:
        self.frames.append((quality, {k: np.asarray(v) for k, v in probe.items()}))
        self.frames.sort(key=lambda f: -f[0])
        del self.frames[self.keep:]
        return [p for _, p in self.frames]

    def __len__(self) -> int:
        return len(self.frames)
