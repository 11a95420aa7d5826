"""The liveness (presentation-attack detection) protocol every liveness check implements.

A check looks at one camera frame and one detected face and says whether the face is a live person
("live"), a presentation attack such as a printed photo or a screen replay ("spoof"), or that it cannot
tell ("uncertain": face too small, too dark, model unsure). The decision policy, not the check, turns
several frames' verdicts into a decision, so a check never needs state of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from edge.vision.detect import Face

Verdict = Literal["live", "spoof", "uncertain"]
VERDICTS: tuple[str, ...] = ("live", "spoof", "uncertain")


@dataclass(frozen=True)
class LivenessResult:
    verdict: Verdict
    score: float | None  # the check's own live-ness score (higher = more live), when it has one

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"liveness verdict must be one of {VERDICTS}, not {self.verdict!r}")


@runtime_checkable
class LivenessCheck(Protocol):
    """One frame, one face → a verdict. `name` is what events report as the liveness mode."""

    name: str

    def check(self, image: np.ndarray, face: Face) -> LivenessResult:  # BGR uint8 frame, face in its pixels
        ...
