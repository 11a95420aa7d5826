"""The active challenge: turn your head to the left (or right), chosen at random, read from the five-point yaw.

One challenge per face track. It is issued when the face is roughly frontal; the instruction goes out as a
prompt. From then on the face region's points are tracked (edge/liveness/motion.py) and, every frame, the
motion since the instruction is judged:
- at any time, the points moved as one plane that turned (a photo or a screen tilted to imitate a turn)
  → "spoof";
- once the yaw has moved `yaw_deg` the requested way: the points did not move as one plane (parallax: a
  head) → "passed"; too few points left → "failed"; otherwise keep waiting.
A turn of `yaw_deg` the other way ends the challenge as "failed" (a random direction is a defence only if
the wrong one fails); no turn within `timeout_s` ends it as "timeout". Neither is evidence of an attack, so
both leave liveness incomplete (the door stays shut; the person may step back and try again).

Yaw sign (edge/vision/quality.pose): positive when the nose moves to the image's right, which for a camera
facing the person is the person's own left. A camera whose picture is mirrored must be configured unmirrored.

Blink detection is left out: it needs face-mesh landmarks (a model this project does not ship) and could not
be validated here — there are no real image sequences of blinking and open eyes to test it on.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np

from edge.liveness.motion import MIN_POINTS, PlanarFit, PointTracker
from edge.vision.detect import Face
from edge.vision.quality import pose

DIRECTIONS = ("left", "right")
PROMPTS = {"left": "turn your head to your left", "right": "turn your head to your right",
           "any": "turn your head to one side"}
STATES = ("pending", "passed", "spoof", "failed", "timeout")


@dataclass(frozen=True)
class ChallengeConfig:
    yaw_deg: float = 20.0  # how far the head must turn (within the quality gate's 40°, so frames stay usable)
    timeout_s: float = 8.0
    start_yaw_deg: float = 15.0  # issued only when the face is at most this far from frontal


def random_direction() -> str:
    """Unpredictable to someone preparing a video in advance (the secrets module, not a seeded generator)."""
    return secrets.choice(DIRECTIONS)


class Challenge:
    """One head-turn challenge for one track. `update` with every later frame of that track's face."""

    def __init__(self, cfg: ChallengeConfig, direction: str, image: np.ndarray, face: Face, t: float) -> None:
        if direction not in (*DIRECTIONS, "any"):
            raise ValueError(f"direction must be one of {DIRECTIONS} or 'any', not {direction!r}")
        self.cfg, self.direction = cfg, direction
        self.t0 = t
        self.yaw0 = pose(face.landmarks)[0]
        self.tracker: PointTracker | None = PointTracker(image, face.box)
        self.state = "pending"
        self.reason = ""
        self.turned = 0.0  # the furthest turn so far, in degrees, positive the requested way
        self.fit: PlanarFit | None = None
        self.frames = 0

    @property
    def prompt(self) -> str:
        return PROMPTS[self.direction]

    @property
    def done(self) -> bool:
        return self.state != "pending"

    def _progress(self, yaw: float) -> float:
        delta = yaw - self.yaw0
        if self.direction == "any":
            return abs(delta)
        return delta if self.direction == "left" else -delta

    def update(self, image: np.ndarray, face: Face, t: float) -> str:
        """Follow the challenge into this frame; returns the state."""
        tracker = self.tracker
        if self.done or tracker is None:
            return self.state
        self.frames += 1
        tracker.update(image, face.box)
        progress = self._progress(pose(face.landmarks)[0])
        self.turned = max(self.turned, progress)
        if progress <= -self.cfg.yaw_deg:
            return self._end("failed", f"challenge: turned the wrong way ({-progress:.0f}° to the "
                                       f"{'right' if self.direction == 'left' else 'left'})")
        fit = self.fit = tracker.fit()
        if fit.planar is True:  # at any time: a flat picture was turned in front of the camera
            return self._end("spoof", f"challenge: the face moved as one flat picture ({fit.inliers:.0%} of "
                                      f"{fit.points} points on one plane, turned {fit.tilt:.2f})")
        if progress >= self.cfg.yaw_deg:
            if fit.planar is False:
                return self._end("passed", f"challenge passed ({fit.inliers:.0%} of {fit.points} points on one "
                                           "plane: a 3-D head)")
            if tracker.alive < MIN_POINTS:  # too little left to judge: no way to pass this challenge
                return self._end("failed", "challenge: the face could not be tracked through the turn")
        if t - self.t0 > self.cfg.timeout_s:
            return self._end("timeout", f"challenge: no turn to the {self.direction} within "
                                        f"{self.cfg.timeout_s:g} s (turned {self.turned:.0f}° of "
                                        f"{self.cfg.yaw_deg:g}°)")
        return self.state

    def _end(self, state: str, reason: str) -> str:
        self.state, self.reason = state, reason
        self.tracker = None  # frees the tracking images
        return state
