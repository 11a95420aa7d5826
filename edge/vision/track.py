"""Faces followed across frames by box overlap (IoU), so each person in view is decided once.

Greedy matching, best overlap first, is enough at a door: faces are few and move little between frames.
A track that is not seen for `ttl_s` has left. A track can also be split when the face in it changes
(`Tracker.split`): one person stepping in where another stood must not inherit the first one's track.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.vision.detect import Face


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


@dataclass
class Track:
    id: int
    box: np.ndarray
    first_seen: float
    last_seen: float
    frames: int = 1
    state: dict[str, Any] = field(default_factory=dict)  # what the decision policy keeps per track


class Tracker:
    def __init__(self, iou_threshold: float = 0.3, ttl_s: float = 1.0) -> None:
        self.iou_threshold = iou_threshold
        self.ttl_s = ttl_s
        self.tracks: dict[int, Track] = {}
        self._ids = itertools.count(1)

    def update(self, faces: list[Face], t: float) -> tuple[list[tuple[Track, Face]], list[Track]]:
        """Assign this frame's faces to tracks: ([(track, face)] in face order, tracks that have left)."""
        pairs = sorted(((iou(tr.box, f.box), tid, fi) for tid, tr in self.tracks.items()
                        for fi, f in enumerate(faces)), reverse=True)
        assigned: dict[int, Track] = {}
        used: set[int] = set()
        for overlap, tid, fi in pairs:
            if overlap < self.iou_threshold:
                break
            if tid in used or fi in assigned:
                continue
            tr = self.tracks[tid]
            tr.box, tr.last_seen = faces[fi].box, t
            tr.frames += 1
            assigned[fi] = tr
            used.add(tid)
        for fi, f in enumerate(faces):
            if fi not in assigned:
                assigned[fi] = self._new(f, t)
        gone = [tr for tid, tr in self.tracks.items() if t - tr.last_seen > self.ttl_s]
        for tr in gone:
            del self.tracks[tr.id]
        return [(assigned[fi], f) for fi, f in enumerate(faces)], gone

    def split(self, track: Track, face: Face, t: float) -> Track:
        """End `track` (someone else's face now occupies its place) and start a new one for `face`."""
        self.tracks.pop(track.id, None)
        return self._new(face, t)

    def visible(self, t: float) -> list[Track]:
        """Tracks seen in the frame at time `t`."""
        return [tr for tr in self.tracks.values() if tr.last_seen == t]

    def _new(self, face: Face, t: float) -> Track:
        tr = Track(next(self._ids), face.box, t, t)
        self.tracks[tr.id] = tr
        return tr
