"""The head-turn challenge on synthetic clips of real faces: the relief turns and passes, the wrong way fails,
a picture moved to imitate a turn is refused, nothing happening times out."""

from __future__ import annotations

import cv2
import pytest

from edge.liveness import simulate
from edge.liveness.challenge import PROMPTS, Challenge, ChallengeConfig, random_direction
from edge.models.registry import Registry
from edge.vision.detect import make_detector, select_face
from edge.vision.quality import pose

FPS = 15.0


@pytest.fixture(scope="module")
def detector():
    return make_detector(Registry(), "yunet")


@pytest.fixture(scope="module")
def frontal(data, detector):
    """Faces within the challenge's start limit (|yaw| ≤ 15°)."""
    out = []
    for rel in ("lfw/images/George_W_Bush/George_W_Bush_0007.jpg", "lfw/images/Laura_Bush/Laura_Bush_0001.jpg",
                "liveness/image_T1.jpg"):
        image = cv2.imread(str(data / rel))
        face = select_face(detector.detect(image), image.shape, "central")
        assert abs(pose(face.landmarks)[0]) <= ChallengeConfig().start_yaw_deg
        out.append((image, face))
    return out


def run(detector, clip, direction: str, cfg: ChallengeConfig | None = None) -> Challenge:
    cfg = cfg or ChallengeConfig()
    ch = None
    for i, frame in enumerate(clip):
        found = detector.detect(frame)
        if not found:
            continue
        face = select_face(found, frame.shape, "central")
        if ch is None:
            ch = Challenge(cfg, direction, frame, face, i / FPS)
        elif ch.update(frame, face, i / FPS) != "pending":
            break
    assert ch is not None
    return ch


def test_yaw_sign_is_the_persons_own_side(frontal, detector):
    image, face = frontal[0]
    for direction, sign in (("left", 1), ("right", -1)):
        clip = simulate.relief_clip(image, face.box, face.landmarks[2], frames=10, max_yaw_deg=30, direction=direction)
        yaw = [pose(select_face(detector.detect(f), f.shape, "central").landmarks)[0] for f in (clip[0], clip[-1])]
        assert sign * (yaw[1] - yaw[0]) > 10


@pytest.mark.parametrize("direction", ["left", "right"])
def test_a_head_turning_the_asked_way_passes(frontal, detector, direction):
    for k, (image, face) in enumerate(frontal):
        clip = simulate.relief_clip(image, face.box, face.landmarks[2], frames=30, max_yaw_deg=40,
                                    direction=direction, seed=300 + k)
        ch = run(detector, clip, direction)
        assert ch.state == "passed", ch.reason
        assert ch.turned >= 20 and ch.fit is not None and ch.fit.planar is False


def test_turning_the_other_way_fails(frontal, detector):
    image, face = frontal[0]
    clip = simulate.relief_clip(image, face.box, face.landmarks[2], frames=30, max_yaw_deg=40, direction="left")
    ch = run(detector, clip, "right")
    assert ch.state == "failed" and "wrong way" in ch.reason


def test_a_picture_moved_to_imitate_a_turn_is_refused(frontal, detector):
    for k, (image, _) in enumerate(frontal):
        for extra in ({}, {"print_halftone": True}, {"moire": True}):
            ch = run(detector, simulate.replay_clip(image, frames=30, seed=310 + k, **extra), "any")
            assert ch.state == "spoof" and "flat picture" in ch.reason, (k, extra, ch.reason)


def test_no_turn_times_out(frontal, detector):
    image, _ = frontal[0]
    ch = run(detector, [image] * 20, "left", ChallengeConfig(timeout_s=1.0))
    assert ch.state == "timeout" and "within 1 s" in ch.reason


def test_directions_are_random():
    seen = {random_direction() for _ in range(64)}
    assert seen == {"left", "right"} and set(PROMPTS) >= seen
