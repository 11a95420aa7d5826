"""Threads shared out among a fusion's embedders: side by side, same numbers, never more threads than configured."""

import numpy as np
import pytest

from edge.imageio import load_bgr
from edge.pipeline import FacePipeline

MEMBERS = ("sface-int8", "dlib-resnet-int8")


@pytest.fixture(scope="module")
def frame(lfw):
    """Three LFW portraits side by side: one frame with three faces."""
    people = ("Aaron_Eckhart", "AJ_Cook", "Abdullah_Gul")
    images = [load_bgr(next(iter(sorted((lfw / "images" / p).glob("*.jpg"))))) for p in people]
    return np.ascontiguousarray(np.hstack(images))


def test_embedders_run_side_by_side_on_their_share_of_the_threads(frame):
    one = FacePipeline(embedder=MEMBERS[0], extra_embedders=MEMBERS[1:], threads=1)
    two = FacePipeline(embedder=MEMBERS[0], extra_embedders=MEMBERS[1:], threads=2)
    four = FacePipeline(embedder=MEMBERS[0], extra_embedders=MEMBERS[1:], threads=4)
    alone = FacePipeline(embedder=MEMBERS[0], threads=2)
    assert not one.parallel and two.parallel and four.parallel and not alone.parallel
    # The sessions together hold the configured threads: 2 → 1 + 1, 4 → 2 + 2; one embedder keeps them all.
    assert [e.runtime.threads for e in two.embedders] == [1, 1]
    assert [e.runtime.threads for e in four.embedders] == [2, 2]
    assert alone.embedder.runtime.threads == 2
    # The detector takes a share too when the members run side by side (its idle pool threads would spin).
    assert two.detector.runtime.threads == 1 and four.detector.runtime.threads == 2
    assert alone.detector.runtime.threads == 2
    faces = one.detect(frame, frame=True)
    assert len(faces) == 3, len(faces)
    want, got = one.embed(frame, faces), two.embed(frame, faces)
    for a, b in zip(want, got, strict=True):
        assert set(a) == set(b) == set(MEMBERS)
        for name in MEMBERS:
            assert float(a[name] @ b[name]) > 0.9999, name


def test_embed_jobs_runs_each_embedder_on_its_own_faces_only(frame):
    pipe = FacePipeline(embedder=MEMBERS[0], extra_embedders=MEMBERS[1:], threads=2)
    faces = pipe.detect(frame, frame=True)
    # The engine's split: the primary for every face, the other member only for faces still to decide.
    out = pipe.embed_jobs(frame, faces, {MEMBERS[0]: [0, 1, 2], MEMBERS[1]: [1]})
    assert [sorted(o) for o in out] == [[MEMBERS[0]], sorted(MEMBERS), [MEMBERS[0]]]
    full = pipe.embed(frame, [faces[1]])[0]
    assert float(out[1][MEMBERS[1]] @ full[MEMBERS[1]]) > 0.9999
    assert pipe.embed_jobs(frame, faces, {MEMBERS[0]: [], MEMBERS[1]: []}) == [{}, {}, {}]


def test_auto_threads_give_each_member_a_core_when_the_box_has_them(monkeypatch):
    import edge.pipeline as pipeline

    # 0 = auto: a fusion runs its members side by side when there is a core for each, else on one thread;
    # one embedder stays on one thread (intra-op threads were slower, docs/results/int8.md § 8).
    monkeypatch.setattr(pipeline, "cores", lambda: 2)
    fused = FacePipeline(embedder=MEMBERS[0], extra_embedders=MEMBERS[1:], threads=0)
    single = FacePipeline(embedder=MEMBERS[0], threads=0)
    assert fused.threads == 2 and fused.parallel and [e.runtime.threads for e in fused.embedders] == [1, 1]
    assert single.threads == 1 and single.embedder.runtime.threads == 1
    monkeypatch.setattr(pipeline, "cores", lambda: 1)
    assert FacePipeline(embedder=MEMBERS[0], extra_embedders=MEMBERS[1:], threads=0).threads == 1
    with pytest.raises(ValueError, match="threads"):
        FacePipeline(embedder=MEMBERS[0], threads=-1)


def test_the_configuration_defaults_to_auto_threads_and_names_a_bad_value():
    from edge import config
    from edge.errors import FacegateError

    assert config.parse({}).models.threads == 0
    with pytest.raises(FacegateError, match=r"models\.threads"):
        config.parse({"models": {"threads": -1}})
