"""A track's frames as one probe: the mean of each embedder's unit vectors over the best frames, re-normalised.

At a door a person is seen in many frames; averaging the embeddings of the few best ones (by quality: detector
confidence, sharpness, frontal pose) cancels much of each frame's noise — motion blur, a half-closed eye,
lighting — before the probe is scored, so the scorer and its thresholds see one better probe rather than k
noisy ones. `facegate bench door` measures what it gains; the daemon keeps each track's best frames
(TrackProbe) and scores their fusion.
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
    """The best `keep` frames of a track by quality, and their fused probe."""

    def __init__(self, keep: int = 3) -> None:
        self.keep = keep
        self.frames: list[tuple[float, dict[str, np.ndarray]]] = []

    def add(self, quality: float, probe: Probe) -> dict[str, np.ndarray]:
        self.frames.append((quality, {k: np.asarray(v) for k, v in probe.items()}))
        self.frames.sort(key=lambda f: -f[0])
        del self.frames[self.keep:]
        embedders = [e for e in self.frames[0][1] if all(e in p for _, p in self.frames)]
        return fuse_probes([p for _, p in self.frames], embedders)

    def __len__(self) -> int:
        return len(self.frames)
