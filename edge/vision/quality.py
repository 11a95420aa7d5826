"""Face quality figures and the gate that refuses poor enrolment (and, later, poor camera frames).

Every refusal says why. Pose is estimated from the five landmarks alone with a simple geometric model
(nose tip in front of the eye plane), so yaw and pitch are approximate — good enough to refuse profile
views and heads tilted far back, not a head-pose estimator.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from edge.vision.detect import Face

# Frontal faces: YuNet puts the nose tip 0.557 of the way from the eye line to the mouth line
# (the median over 1,000 LFW faces; the ArcFace template says 0.496, but its landmarks are defined differently).
FRONTAL_NOSE_RATIO = 0.557
# Nose depth relative to the inter-eye distance (≈ 0.5 on an average adult face).
NOSE_DEPTH = 0.5


@dataclass(frozen=True)
class Quality:
    inter_eye_px: float
    yaw_deg: float
    pitch_deg: float
    roll_deg: float
    sharpness: float  # variance of the Laplacian of the aligned grey crop
    brightness: float  # mean grey level of the aligned crop, 0–255
    clipped: float  # fraction of crop pixels at ≤ 5 or ≥ 250
    score: float  # detector confidence

    def to_dict(self) -> dict[str, float]:
        return {k: round(float(v), 3) for k, v in asdict(self).items()}


def pose(landmarks: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from five landmarks; 0 for a frontal, upright face."""
    le, re, nose, lm, rm = np.asarray(landmarks, dtype=np.float64)
    eye_vec = re - le
    roll = np.degrees(np.arctan2(eye_vec[1], eye_vec[0]))
    d = max(float(np.linalg.norm(eye_vec)), 1e-6)
    # Work in the face's own frame, roll removed.
    c, s = eye_vec / d
    rot = np.array([[c, s], [-s, c]])
    eye_mid = (le + re) / 2.0
    mouth_mid = (lm + rm) / 2.0
    n = rot @ (nose - eye_mid)
    m = rot @ (mouth_mid - eye_mid)
    yaw = np.degrees(np.arctan2(n[0] / d, NOSE_DEPTH))
    ratio = n[1] / m[1] if abs(m[1]) > 1e-6 else FRONTAL_NOSE_RATIO
    pitch = np.degrees(np.arctan2(ratio - FRONTAL_NOSE_RATIO, NOSE_DEPTH))
    return float(yaw), float(pitch), float(roll)


def assess(face: Face, crop: np.ndarray) -> Quality:
    """Quality figures of a detected face, measured on its aligned crop (BGR uint8)."""
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    # Only the central part of the crop: the warped border is black and would inflate sharpness.
    h, w = grey.shape
    centre = grey[h // 6: h - h // 6, w // 6: w - w // 6]
    sharp = float(cv2.Laplacian(centre, cv2.CV_64F).var())
    yaw, pitch, roll = pose(face.landmarks)
    return Quality(
        inter_eye_px=float(np.linalg.norm(face.landmarks[1] - face.landmarks[0])),
        yaw_deg=yaw, pitch_deg=pitch, roll_deg=roll, sharpness=sharp,
        brightness=float(centre.mean()), clipped=float(((centre <= 5) | (centre >= 250)).mean()),
        score=face.score,
    )


@dataclass(frozen=True)
class QualityGate:
    """Limits for enrolment. Defaults refuse under 1 % of LFW's news photos (see tests) yet catch the
    profile views, tiny faces, heavy blur and badly exposed shots that make poor templates."""

    min_inter_eye_px: float = 20.0
    max_yaw_deg: float = 40.0
    max_pitch_deg: float = 30.0
    min_sharpness: float = 15.0
    min_brightness: float = 40.0
    max_brightness: float = 220.0
    max_clipped: float = 0.25
    min_score: float = 0.7

    def failures(self, q: Quality) -> list[tuple[str, str]]:
        """(reason code, sentence) of each limit `q` misses, in the order of PROMPTS' priority; empty: passed.
        The codes are stable (metric labels, prompts); the sentences are for people."""
        out = []
        if q.inter_eye_px < self.min_inter_eye_px:
            out.append(("too_small", f"face too small: eyes {q.inter_eye_px:.0f} px apart < "
                                     f"{self.min_inter_eye_px:.0f}"))
        if abs(q.yaw_deg) > self.max_yaw_deg:
            out.append(("head_turned", f"head turned: yaw {q.yaw_deg:+.0f}° beyond ±{self.max_yaw_deg:.0f}°"))
        if abs(q.pitch_deg) > self.max_pitch_deg:
            out.append(("head_tilted", f"head tilted: pitch {q.pitch_deg:+.0f}° beyond ±{self.max_pitch_deg:.0f}°"))
        if q.score < self.min_score:
            out.append(("low_confidence", f"face detection confidence {q.score:.2f} < {self.min_score}"))
        if q.sharpness < self.min_sharpness:
            out.append(("blurred", f"blurred: sharpness {q.sharpness:.0f} < {self.min_sharpness:.0f}"))
        if q.brightness < self.min_brightness:
            out.append(("too_dark", f"too dark: brightness {q.brightness:.0f} < {self.min_brightness:.0f}"))
        if q.brightness > self.max_brightness:
            out.append(("too_bright", f"too bright: brightness {q.brightness:.0f} > {self.max_brightness:.0f}"))
        if q.clipped > self.max_clipped:
            out.append(("badly_exposed", f"badly exposed: {q.clipped:.0%} of pixels clipped > "
                                         f"{self.max_clipped:.0%}"))
        return out

    def reasons(self, q: Quality) -> list[str]:
        return [text for _, text in self.failures(q)]

    def codes(self, q: Quality) -> list[str]:
        return [code for code, _ in self.failures(q)]


# What a person at the camera can do about each refusal (the daemon's prompt topic), keyed by reason code.
PROMPTS = {
    "too_small": "come closer",
    "head_turned": "face the camera",
    "head_tilted": "face the camera",
    "low_confidence": "face the camera",
    "blurred": "hold still",
    "too_dark": "step into the light",
    "too_bright": "step out of the glare",
    "badly_exposed": "step out of the glare",
}
