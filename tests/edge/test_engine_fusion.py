"""The engine with the built-in fusion: which faces pay for the second model, on one thread and on two."""

import numpy as np
import pytest

from edge.config import parse
from edge.decide import AccessPolicy, Policy
from edge.engine import Engine
from edge.enroll import Enroller
from edge.health import Metrics
from edge.imageio import load_bgr
from edge.liveness.base import LivenessResult
from edge.match.factory import make_scorer
from edge.pipeline import FacePipeline
from edge.sources import Frame
from edge.store.db import Store

MEMBERS = ("sface-int8", "dlib-resnet-int8")


class SlowChallenge:
    """A liveness gate whose challenge is under way for a track's first `wait` frames, then live: what the engine
    sees while a visitor turns their head."""

    def __init__(self, wait: int) -> None:
        self.wait, self.seen = wait, {}

    def frame(self, assigned, image, t) -> None:
        pass

    def observe(self, track, image, face, t):
        self.seen[track.id] = self.seen.get(track.id, 0) + 1
        return None if self.seen[track.id] <= self.wait else LivenessResult("live", 0.99)

    def take_prompts(self) -> list[str]:
        return []


class Counted:
    """Wraps an embedder: how many crops it embedded."""

    def __init__(self, embedder) -> None:
        self.inner, self.crops = embedder, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        self.crops += len(crops)
        return self.inner.embed(crops)


@pytest.fixture(scope="module")
def faces(lfw):
    root = lfw / "images"
    return {"enrol": load_bgr(root / "Colin_Powell/Colin_Powell_0038.jpg"),
            "probe": load_bgr(root / "Colin_Powell/Colin_Powell_0040.jpg")}


def _run(threads: int, faces, tmp_path, frames: int = 10) -> tuple[list[int], int, int]:
    """(frames that decided, crops the second member embedded, crops the primary embedded)."""
    pipe = FacePipeline(embedder=MEMBERS[0], extra_embedders=MEMBERS[1:], threads=threads)
    store = Store(tmp_path / f"t{threads}.db")
    scorer = make_scorer(pipe.registry, MEMBERS[0], store=store, fusion="fused")
    enroller = Enroller(store, pipe, scorer=scorer)
    assert enroller.commit("colin", [enroller.judge("colin", image=faces["enrol"])], command="test")
    cfg = parse({"profile": "door"})
    clock = [1000.0]
    policy = Policy(cfg.decision, AccessPolicy(cfg.access), liveness_required=True, clock=lambda: clock[0])
    engine = Engine(pipe, make_scorer(pipe.registry, MEMBERS[0], store=store, fusion="fused"), policy, cfg,
                    Metrics(), live_gate=SlowChallenge(wait=2))
    primary, second = Counted(pipe.by_name[MEMBERS[0]]), Counted(pipe.by_name[MEMBERS[1]])
    pipe.by_name[MEMBERS[0]], pipe.by_name[MEMBERS[1]] = primary, second
    decided = []
    for i in range(1, frames + 1):
        clock[0] += 1 / 15
        out = engine.process(Frame(faces["probe"], i, clock[0], "test"), [])
        decided += [i for d in out if d.decision == "granted" and d.identity == "colin"]
    store.close()
    return decided, second.crops, primary.crops


def test_the_second_model_runs_only_for_faces_to_decide(faces, tmp_path):
    # Liveness under way for frames 1–2, then k = 3 agreeing frames: granted at frame 5 either way.
    one, second_one, primary_one = _run(1, faces, tmp_path)
    two, second_two, primary_two = _run(2, faces, tmp_path)
    assert one == two == [5], (one, two)
    # The primary runs on every frame (it tells one person from the next within a track).
    assert primary_one == primary_two == 10
    # One thread: the second model waits until a face is to be decided: frames 3, 4, 5.
    assert second_one == 3, second_one
    # Two threads: it runs beside the primary for every face on an undecided track (frames 1–5), then stops.
    assert second_two == 5, second_two


def test_one_thread_gives_the_second_model_to_one_face_per_frame_in_turn(faces, lfw, tmp_path):
    """Two enrolled people to decide in one frame, one thread: each frame embeds one face with the second model,
    the faces take turns, and both are granted."""
    pipe = FacePipeline(embedder=MEMBERS[0], extra_embedders=MEMBERS[1:], threads=1)
    store = Store(tmp_path / "two.db")
    scorer = make_scorer(pipe.registry, MEMBERS[0], store=store, fusion="fused")
    enroller = Enroller(store, pipe, scorer=scorer)
    gul = lfw / "images" / "Abdullah_Gul"
    for name, image in (("colin", faces["enrol"]), ("gul", load_bgr(gul / "Abdullah_Gul_0001.jpg"))):
        assert enroller.commit(name, [enroller.judge(name, image=image)], command="test")
    frame = np.ascontiguousarray(np.hstack([faces["probe"], load_bgr(gul / "Abdullah_Gul_0007.jpg")]))
    cfg = parse({"profile": "kiosk"})
    clock = [1000.0]
    policy = Policy(cfg.decision, AccessPolicy(cfg.access), liveness_required=False, clock=lambda: clock[0])
    engine = Engine(pipe, make_scorer(pipe.registry, MEMBERS[0], store=store, fusion="fused"), policy, cfg,
                    Metrics())
    second = Counted(pipe.by_name[MEMBERS[1]])
    pipe.by_name[MEMBERS[1]] = second
    per_frame, decided = [], {}
    for i in range(1, 13):
        clock[0] += 1 / 15
        before = second.crops
        for d in engine.process(Frame(frame, i, clock[0], "test"), []):
            decided.setdefault(d.identity or d.decision, (i, d.decision, d.reason))
        per_frame.append(second.crops - before)
    store.close()
    assert len(pipe.detect(frame, frame=True)) == 2
    # Never both faces' second model in one frame; while both are undecided, one per frame, taking turns.
    assert max(per_frame) == 1 and per_frame[:4] == [1, 1, 1, 1], per_frame
    assert {k: v[1] for k, v in decided.items()} == {"colin": "granted", "gul": "granted"}, decided
    # Taking turns, the two are decided one frame apart, each within twice the frames one face alone needs.
    first, last = sorted(v[0] for v in decided.values())
    assert last - first == 1 and last <= 8, decided


def _agreed(policy, track, name: str, k: int) -> None:
    from edge.decide import Observation

    for i in range(k):
        policy.observe(track, Observation(name, name, 0.9, 0.5, None, 1000.0 + i / 15, 0.5))


def test_a_face_waiting_for_its_second_model_still_blocks_a_tailgate():
    """A face that passed the quality gate but was not scored this frame (on one thread the second model goes
    to one face per frame) is company for the tailgating rule: the grant waits, then is denied."""
    from edge.decide import GATE_PASSED
    from edge.vision.track import Track

    cfg = parse({"profile": "kiosk"})
    policy = Policy(cfg.decision, AccessPolicy(cfg.access), liveness_required=False, clock=lambda: 1000.0)
    box = np.zeros(4)
    # Unscored and unflagged: nobody the rule can see (what the engine had before it marked gated faces).
    me, other = Track(1, box, 0.0, 0.0), Track(2, box, 0.0, 0.0)
    _agreed(policy, me, "colin", cfg.decision.k)
    assert policy.evaluate(me, [other], []).decision == "granted"
    # Flagged by the engine, never scored: the grant waits for it, then is denied when it stays unrecognised.
    me, other = Track(3, box, 0.0, 0.0), Track(4, box, 0.0, 0.0, state={GATE_PASSED: True})
    _agreed(policy, me, "tony", cfg.decision.k)
    assert policy.evaluate(me, [other], []) is None
    for _ in range(cfg.decision.tailgating_wait):
        _agreed(policy, me, "tony", 1)
        d = policy.evaluate(me, [other], [])
    assert d is not None and d.decision == "denied" and "tailgating" in d.reason, d


def test_the_engine_marks_every_gated_face_scored_or_not(faces, lfw, tmp_path):
    """One thread, a fusion, two faces: one is scored on the first frame, both are marked for the rule."""
    pipe = FacePipeline(embedder=MEMBERS[0], extra_embedders=MEMBERS[1:], threads=1)
    store = Store(tmp_path / "mark.db")
    scorer = make_scorer(pipe.registry, MEMBERS[0], store=store, fusion="fused")
    enroller = Enroller(store, pipe, scorer=scorer)
    assert enroller.commit("colin", [enroller.judge("colin", image=faces["enrol"])], command="test")
    gul = load_bgr(lfw / "images" / "Abdullah_Gul" / "Abdullah_Gul_0007.jpg")
    cfg = parse({"profile": "kiosk"})
    policy = Policy(cfg.decision, AccessPolicy(cfg.access), liveness_required=False, clock=lambda: 1000.0)
    engine = Engine(pipe, make_scorer(pipe.registry, MEMBERS[0], store=store, fusion="fused"), policy, cfg,
                    Metrics())
    engine.process(Frame(np.ascontiguousarray(np.hstack([faces["probe"], gul])), 1, 1000.0, "test"), [])
    store.close()
    from edge.decide import GATE_PASSED

    tracks = list(engine.tracker.tracks.values())
    assert len(tracks) == 2 and all(t.state.get(GATE_PASSED) for t in tracks)
    assert sorted(t.state.get("observations", 0) for t in tracks) == [0, 1]
