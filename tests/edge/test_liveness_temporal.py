"""Liveness over a track: the k-of-n rule and the one-frame veto, then the daemon's engine with the real fused
MiniFASNet check (and the challenge) deciding on the liveness samples and synthetic clips."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge.config import parse
from edge.decide import AccessPolicy, Policy
from edge.enroll import Enroller
from edge.health import Metrics
from edge.liveness import load
from edge.liveness.base import LivenessResult
from edge.liveness.challenge import ChallengeConfig
from edge.liveness.minifasnet import CERTAIN_SPOOF, FUSED_NAME
from edge.liveness.temporal import SPOOF_KEY, LivenessGate, TemporalRule
from edge.models.registry import Registry
from edge.sources import Frame
from edge.store.db import Store
from tests.edge.test_liveness_passive import build_models

LIVE, SPOOF, UNSURE = LivenessResult("live", 0.9), LivenessResult("spoof", 0.3), LivenessResult("uncertain", None)


def test_k_of_n_and_the_veto():
    rule = TemporalRule(k=3, n=5, certain_spoof=0.05)
    assert rule.judge([LIVE, LIVE])[0] == "pending"
    assert rule.judge([LIVE, UNSURE, LIVE, LIVE])[0] == "live"
    assert rule.judge([LIVE, LIVE, SPOOF, LIVE, LIVE])[0] == "pending"  # a spoof in the window blocks live
    assert rule.judge([SPOOF, LIVE, LIVE, LIVE, LIVE, LIVE])[0] == "live"  # … until it leaves the window
    assert rule.judge([SPOOF, SPOOF, LIVE, SPOOF])[0] == "spoof"
    verdict, why = rule.judge([LIVE, LIVE, LivenessResult("spoof", 0.01), LIVE, LIVE, LIVE, LIVE])
    assert verdict == "spoof" and "high-confidence" in why  # one certain frame denies, whatever follows
    certain = [LivenessResult("spoof", 0.0), *[LIVE] * 5]
    assert rule.judge(certain)[0] == "spoof" and TemporalRule(3, 5, None).judge(certain)[0] == "live"  # no veto


@pytest.fixture(scope="module")
def check(data, tmp_path_factory):
    return load(FUSED_NAME, Registry(build_models(tmp_path_factory.getbasetemp() / "liveness", data)))


@pytest.fixture(scope="module")
def samples(data):
    return {k: cv2.imread(str(data / "liveness" / f"image_{k}.jpg")) for k in ("T1", "F1", "F2")}


@pytest.fixture(scope="module")
def store(tmp_path_factory, pipeline, samples):
    s = Store(tmp_path_factory.mktemp("liveness") / "s.db")
    enroller = Enroller(s, pipeline)
    assert enroller.commit("t1", [enroller.judge("t1", image=samples["T1"])], command="test")
    yield s
    s.close()


class Door:
    """The daemon's engine on a fake clock at 15 fps, door profile."""

    def __init__(self, pipeline, store, check, gate: LivenessGate | None = None) -> None:
        from edge.engine import Engine
        from edge.match.factory import make_scorer

        self.t = 1000.0
        cfg = parse({"profile": "door"})
        policy = Policy(cfg.decision, AccessPolicy(cfg.access), liveness_required=True, clock=lambda: self.t)
        scorer = make_scorer(pipeline.registry, pipeline.manifest.name, store=store)
        self.engine = Engine(pipeline, scorer, policy, cfg, Metrics(), check, gate)
        self.frames = 0

    def show(self, images) -> list[tuple[int, object]]:
        out = []
        for i, image in enumerate(images):
            self.t += 1 / 15
            self.frames += 1
            out += [(i + 1, d) for d in self.engine.process(Frame(image, self.frames, self.t, "test"), [])]
        return out

    def leave(self) -> None:
        """Nobody in view for a while: the tracks end."""
        self.t += 5.0
        self.show([np.full((640, 480, 3), 120, np.uint8)])


def test_the_samples_through_the_engine(pipeline, store, check, samples):
    door = Door(pipeline, store, check)
    (frame, d), = door.show([samples["T1"]] * 6)
    assert (frame, d.decision, d.identity, d.liveness) == (3, "granted", "t1", "live")
    assert d.event("sface", 1.0)["liveness"]["verdict"] == "live" and d.liveness_score > 0.99
    door.leave()
    # The screen replay scores below the veto: one frame is enough for a spoof decision.
    (frame, d), = door.show([samples["F2"]] * 6)
    assert (frame, d.decision) == (1, "spoof") and "high-confidence" in d.reason
    assert d.liveness_score <= CERTAIN_SPOOF and d.event("sface", 1.0)["liveness"]["verdict"] == "spoof"
    door.leave()
    # The print reads spoof without the veto's certainty: k of the last n frames decide.
    (frame, d), = door.show([samples["F1"]] * 6)
    assert (frame, d.decision, d.reason) == (3, "spoof", "liveness: spoof")


def test_the_challenge_in_the_engine(pipeline, store, check, samples):
    from edge.liveness import simulate
    from edge.vision.detect import select_face

    image = samples["T1"]
    face = select_face(pipeline.detector.detect(image), image.shape)
    gate = LivenessGate(check, 3, 5, ChallengeConfig(), direction=lambda: "right")
    door = Door(pipeline, store, check, gate)
    turn = simulate.relief_clip(image, face.box, face.landmarks[2], frames=24, max_yaw_deg=40, direction="right")
    decisions = door.show([image, *turn, *turn[::-1], image, image])  # turn, and back to the camera
    assert [(d.decision, d.identity, d.liveness) for _, d in decisions] == [("granted", "t1", "live")]
    assert gate.take_prompts() == ["turn your head to your right", "look at the camera"]
    state = next(iter(door.engine.tracker.tracks.values())).state["liveness_track"]
    assert state.challenge.state == "passed" and state.verified
    # Nothing was decided while the challenge ran: the grant came k observations after it passed.
    assert decisions[0][1].frames == 3 and decisions[0][0] > state.challenge.frames
    seen = gate.wait_verified(0.5, since=0.0)  # what a live-capture enrolment would take
    assert seen is not None and seen[0].shape == image.shape

    door.leave()
    gate.take_prompts()
    decisions = door.show(simulate.replay_clip(image, frames=30, seed=5))  # the photo, tilted about
    assert [d.decision for _, d in decisions] == ["spoof"]
    assert "flat picture" in decisions[0][1].reason
    door.leave()
    # A face that never turns: liveness incomplete, so a recognised face is denied, never granted.
    gate = LivenessGate(check, 3, 5, ChallengeConfig(timeout_s=1.0), direction=lambda: "left")
    door = Door(pipeline, store, check, gate)
    decisions = door.show([image] * 40)
    assert [(d.decision, d.liveness) for _, d in decisions] == [("denied", "uncertain")]
    assert decisions[0][1].reason.startswith("liveness incomplete (challenge: no turn to the left")


def test_a_vetoed_track_stays_vetoed(check, samples, pipeline):
    """After one certain spoof frame the track reads spoof, even if later frames look live."""
    from edge.vision.detect import select_face
    from edge.vision.track import Tracker

    gate = LivenessGate(check, 3, 5)
    tracker = Tracker()
    f2 = samples["F2"]
    face = select_face(pipeline.detector.detect(f2), f2.shape)
    (track, _), = tracker.update([face], 0.0)[0]
    assert gate.observe(track, f2, face, 0.0).verdict == "spoof" and "high-confidence" in track.state[SPOOF_KEY]
    t1 = samples["T1"]
    assert check.check(t1, select_face(pipeline.detector.detect(t1), t1.shape)).verdict == "live"
    assert gate.observe(track, t1, select_face(pipeline.detector.detect(t1), t1.shape), 0.1).verdict == "spoof"


def test_daemon_wiring(data, tmp_path, tmp_path_factory, samples):
    """liveness.model = "auto" finds the fusion; the door profile's challenge is on unless configured off;
    an enrolment from a file is recorded as an administrator's act."""
    from edge.daemon import Daemon
    from edge.sinks.log import LogSink

    models = build_models(tmp_path_factory.getbasetemp() / "liveness", data)
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "a.jpg"), samples["T1"])

    def config(**sections) -> dict:
        base = {"profile": "door", "camera": {"source": str(frames)},
                "store": {"path": str(tmp_path / "s.db"), "create": True},
                "models": {"model_dir": str(models)}, "mqtt": {"enabled": False},
                "health": {"listen": "127.0.0.1:0"}}
        return {**base, **sections}

    daemon = Daemon(parse(config()), sink=LogSink("door1", "front", tmp_path / "e.jsonl"))
    try:
        assert daemon.liveness_mode == FUSED_NAME and len(daemon.liveness.nets) == 2
        assert daemon.engine.live_gate.challenge == ChallengeConfig()
        _, buf = cv2.imencode(".jpg", samples["T1"])
        assert daemon.enroll("t1", buf.tobytes(), live_capture=False)["ok"]
        assert "administrator" in daemon.store.audit()[-1]["command"]
    finally:
        daemon.store.close()
    daemon = Daemon(parse(config(liveness={"challenge": False})), sink=LogSink("door1", "front", tmp_path / "e.jsonl"))
    try:
        assert daemon.engine.live_gate.challenge is None and daemon.engine.live_gate.rule.certain_spoof == CERTAIN_SPOOF
    finally:
        daemon.store.close()
