"""The decision policy on real faces: LFW photos through the real detector, embedder, store and matcher.

Each photo is shown as several consecutive frames, as a camera would see a person standing still.
Liveness checks here are real classes implementing the LivenessCheck protocol with fixed verdicts (the
MiniFASNet check is tested on its own).
"""

import datetime as dt

import numpy as np
import pytest

from edge.config import parse
from edge.decide import AccessPolicy, Policy
from edge.engine import Engine
from edge.enroll import Enroller
from edge.health import Metrics
from edge.imageio import load_bgr
from edge.liveness.base import LivenessCheck, LivenessResult
from edge.match.factory import make_scorer
from edge.match.thresholds import identify_threshold as threshold_for
from edge.sources import Frame
from edge.store.db import Store


class FixedLiveness:
    def __init__(self, verdict: str, score: float | None) -> None:
        self.name = f"fixed-{verdict}"
        self.result = LivenessResult(verdict, score)  # type: ignore[arg-type]

    def check(self, image, face) -> LivenessResult:
        return self.result


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def faces(lfw):
    root = lfw / "images"
    return {k: load_bgr(root / p) for k, p in {
        "colin_enrol": "Colin_Powell/Colin_Powell_0038.jpg", "colin": "Colin_Powell/Colin_Powell_0040.jpg",
        "tony_enrol": "Tony_Blair/Tony_Blair_0006.jpg", "tony": "Tony_Blair/Tony_Blair_0018.jpg",
        "stranger": "Aaron_Peirsol/Aaron_Peirsol_0001.jpg"}.items()}


@pytest.fixture(scope="module")
def store(tmp_path_factory, pipeline, faces):
    s = Store(tmp_path_factory.mktemp("decide") / "s.db")
    enroller = Enroller(s, pipeline)
    for name in ("colin", "tony"):
        judged = enroller.judge(name, image=faces[f"{name}_enrol"])
        assert enroller.commit(name, [judged], command="test")
    yield s
    s.close()


class Door:
    """An Engine with a controllable clock; `show` plays one image for a number of frames at 15 fps."""

    def __init__(self, pipeline, store, liveness=None, **sections) -> None:
        self.clock = Clock()
        cfg = parse({"profile": "door" if liveness else "kiosk", **sections})
        policy = Policy(cfg.decision, AccessPolicy(cfg.access), liveness_required=liveness is not None,
                        clock=self.clock)
        scorer = make_scorer(pipeline.registry, pipeline.manifest.name, store=store)
        self.engine = Engine(pipeline, scorer, policy, cfg, Metrics(), liveness)
        self.frames = 0

    def show(self, image: np.ndarray, frames: int, problems: tuple[str, ...] = ()) -> list[tuple[int, object]]:
        out = []
        for i in range(frames):
            self.clock.t += 1 / 15
            self.frames += 1
            for d in self.engine.process(Frame(image, self.frames, self.clock.t, "test"), list(problems)):
                out.append((i + 1, d))
        return out

    def leave(self, seconds: float) -> None:
        """Nobody in view for a while: tracks end."""
        self.clock.t += seconds
        self.show(np.full((250, 250, 3), 120, np.uint8), 1)


def test_protocol_is_implemented():
    assert isinstance(FixedLiveness("live", 0.9), LivenessCheck)
    with pytest.raises(ValueError):
        LivenessResult("maybe", None)  # type: ignore[arg-type]


def test_k_of_n_agreeing_frames_grant_once(pipeline, store, faces):
    door = Door(pipeline, store)
    decisions = door.show(faces["colin"], 10)
    assert len(decisions) == 1
    frame, d = decisions[0]
    assert frame == 3 and d.decision == "granted" and d.identity == "colin" and d.frames == 3
    expected = threshold_for(pipeline.embedder.manifest, door.engine.identities, 0.01)[0]
    assert d.threshold == pytest.approx(expected) and d.score >= d.threshold
    event = d.event("sface", 12.3)
    assert event["liveness"] == {"verdict": "not_checked", "score": None}
    assert {"decision", "identity", "score", "threshold", "liveness", "model", "frames", "latency_ms"} <= set(event)


def test_k_of_n_settings_are_honoured(pipeline, store, faces):
    door = Door(pipeline, store, decision={"k": 5, "n": 7})
    assert [f for f, _ in door.show(faces["colin"], 8)] == [5]


def test_unknown_after_n_frames_matching_nobody(pipeline, store, faces):
    door = Door(pipeline, store)
    decisions = door.show(faces["stranger"], 10)
    assert [(f, d.decision, d.identity) for f, d in decisions] == [(5, "unknown", None)]
    assert decisions[0][1].score < decisions[0][1].threshold


def test_cooldown_one_walk_up_one_event(pipeline, store, faces):
    door = Door(pipeline, store, decision={"cooldown_s": 10})
    assert [d.decision for _, d in door.show(faces["colin"], 5)] == ["granted"]
    door.leave(2.0)
    assert door.show(faces["colin"], 5) == []  # back within the cooldown: no second event
    door.leave(10.0)
    assert [d.decision for _, d in door.show(faces["colin"], 5)] == ["granted"]


def test_denied_outside_the_time_window(pipeline, store, faces):
    other_day = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[(dt.datetime.now().weekday() + 3) % 7]
    door = Door(pipeline, store, access={"windows": {"colin": [f"{other_day} 00:00-24:00"]}})
    [(_, d)] = door.show(faces["colin"], 5)
    assert d.decision == "denied" and d.identity == "colin" and "outside its access windows" in d.reason
    [(_, d)] = door.show(faces["tony"], 5)  # tony has no window: the default allows
    assert d.decision == "granted" and d.identity == "tony"


def test_spoof_verdicts_decide_spoof(pipeline, store, faces):
    door = Door(pipeline, store, liveness=FixedLiveness("spoof", 0.02))
    [(frame, d)] = door.show(faces["colin"], 8)
    assert frame == 3 and d.decision == "spoof" and d.liveness == "spoof"
    assert d.event("sface", 1.0)["liveness"] == {"verdict": "spoof", "score": 0.02}


def test_live_verdicts_grant_and_are_reported(pipeline, store, faces):
    door = Door(pipeline, store, liveness=FixedLiveness("live", 0.97))
    [(frame, d)] = door.show(faces["colin"], 8)
    assert frame == 3 and d.decision == "granted" and d.event("sface", 1.0)["liveness"] == {"verdict": "live",
                                                                                             "score": 0.97}


def test_incomplete_liveness_denies_after_a_full_window(pipeline, store, faces):
    door = Door(pipeline, store, liveness=FixedLiveness("uncertain", None))
    [(frame, d)] = door.show(faces["colin"], 8)
    assert frame == 5 and d.decision == "denied" and d.reason == "liveness incomplete"
    assert d.event("sface", 1.0)["liveness"]["verdict"] == "not_checked"


def test_no_grant_while_unhealthy(pipeline, store, faces):
    door = Door(pipeline, store)
    [(_, d)] = door.show(faces["colin"], 5, problems=("store: database is locked",))
    assert d.decision == "denied" and d.reason.startswith("unhealthy: store")


def test_claim_narrows_the_next_decision_to_one_to_one(pipeline, store, faces):
    door = Door(pipeline, store)
    verify = pipeline.embedder.manifest.threshold("verify").value
    assert not door.engine.claim("nobody")  # no such identity: ignored
    assert door.engine.claim("tony")  # a badge says tony, but colin stands there
    [(_, d)] = door.show(faces["colin"], 6)
    assert d.decision == "unknown" and d.claim == "tony" and d.threshold == pytest.approx(verify)
    assert door.engine.policy.claimed is None  # one decision per claim
    assert door.engine.claim("colin")  # the right badge: the face in view is decided again, 1:1
    [(_, d)] = door.show(faces["colin"], 6)
    assert (d.decision, d.identity, d.claim) == ("granted", "colin", "colin")
    assert d.threshold == pytest.approx(verify)


def test_claim_expires(pipeline, store, faces):
    door = Door(pipeline, store, decision={"claim_window_s": 1.0})
    assert door.engine.claim("tony")
    door.clock.t += 1.5
    [(_, d)] = door.show(faces["colin"], 5)
    assert d.claim is None and d.identity == "colin"


def _pair(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    canvas = np.full((250, 560, 3), 120, np.uint8)
    canvas[:, :250], canvas[:, 310:] = left, right
    return canvas


def test_tailgating_denied_while_an_unknown_face_is_in_view(pipeline, store, faces):
    door = Door(pipeline, store)
    decisions = {d.identity: d for _, d in door.show(_pair(faces["colin"], faces["stranger"]), 10)}
    assert decisions[None].decision == "unknown"
    assert decisions["colin"].decision == "denied" and "tailgating" in decisions["colin"].reason


def test_tailgating_allowed_when_configured(pipeline, store, faces):
    door = Door(pipeline, store, decision={"tailgating": "allow"})
    decisions = {d.identity: d for _, d in door.show(_pair(faces["colin"], faces["stranger"]), 10)}
    assert decisions["colin"].decision == "granted" and "other face" in decisions["colin"].reason


def test_two_enrolled_people_are_both_granted(pipeline, store, faces):
    door = Door(pipeline, store)
    decisions = {d.identity: d.decision for _, d in door.show(_pair(faces["colin"], faces["tony"]), 10)}
    assert decisions == {"colin": "granted", "tony": "granted"}


def test_someone_else_stepping_into_a_decided_track_is_decided_anew(pipeline, store, faces):
    door = Door(pipeline, store)
    first = door.show(faces["colin"], 5)
    second = door.show(faces["tony"], 5)  # same place, no gap: the tracker alone would keep colin's track
    assert [d.identity for _, d in first + second] == ["colin", "tony"]


@pytest.fixture(scope="module")
def gallery25(tmp_path_factory, pipeline, lfw):
    """25 enrolled LFW identities, one photo each, including Alex_King; Barry_Collier stays unenrolled."""
    root = lfw / "images"
    s = Store(tmp_path_factory.mktemp("claims") / "s.db")
    enroller = Enroller(s, pipeline)
    others = [p.name for p in sorted(root.iterdir()) if p.name.startswith("A") and p.name != "Alex_King"]
    for name in ["Alex_King", *others]:
        if enroller.scorer.identities() == 25:
            break
        judged = enroller.judge(name, image=load_bgr(sorted((root / name).glob("*.jpg"))[0]))
        enroller.commit(name, [judged], command="test")  # a photo the quality gate refuses is skipped
    assert "Alex_King" in enroller.scorer.gallery.names()
    yield s
    s.close()


def test_a_claim_never_lowers_the_bar(pipeline, gallery25, lfw):
    """An unenrolled face scoring between the 1:1 threshold and the 1:N one against Alex_King is unknown with
    and without a badge claiming Alex_King (the claim used to decide at the lower 1:1 threshold)."""
    stranger = load_bgr(lfw / "images" / "Barry_Collier" / "Barry_Collier_0001.jpg")
    door = Door(pipeline, gallery25)
    k = door.engine.identities
    assert k == 25
    verify = pipeline.embedder.manifest.threshold("verify").value
    one_to_n = threshold_for(pipeline.embedder.manifest, k, 0.01)[0]
    assert verify < one_to_n
    [(_, d)] = door.show(stranger, 6)
    assert d.decision == "unknown"
    door.leave(5)
    assert door.engine.claim("Alex_King")
    [(_, d)] = door.show(stranger, 6)
    assert (d.decision, d.claim) == ("unknown", "Alex_King")
    assert d.threshold == pytest.approx(one_to_n) and verify <= d.score < one_to_n


def test_a_claim_needs_the_claimed_identity_to_be_the_best_match(pipeline, store, faces):
    """Even above the threshold, a face closer to another enrolled identity is not the badge holder."""
    door = Door(pipeline, store)
    door.engine.scorer.claim_threshold = lambda: -1.0  # any score passes: only the best-match rule can refuse
    assert door.engine.claim("tony")
    [(_, d)] = door.show(faces["colin"], 6)
    assert d.decision == "unknown" and d.claim == "tony"
