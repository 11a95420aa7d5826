import numpy as np
import pytest

from edge.errors import FacegateError
from edge.eval.lfw import (
    Pair,
    accuracy_at,
    best_threshold,
    cross_validate,
    read_pairs,
    tar_at_far,
    threshold_at_far,
)


def test_read_pairs_both_formats(tmp_path):
    (tmp_path / "v2.txt").write_text("2\t1\nA\t1\t2\nA\t1\tB\t3\nC\t2\t4\nC\t1\tD\t1\n")
    pairs = read_pairs(tmp_path / "v2.txt")
    assert pairs[0] == Pair("A/A_0001.jpg", "A/A_0002.jpg", True, 0)
    assert pairs[1] == Pair("A/A_0001.jpg", "B/B_0003.jpg", False, 0)
    assert [p.fold for p in pairs] == [0, 0, 1, 1]
    (tmp_path / "v1.txt").write_text("1\nA\t1\t2\nA\t1\tB\t3\n")
    assert len(read_pairs(tmp_path / "v1.txt")) == 2
    (tmp_path / "bad.txt").write_text("2\t1\nA\t1\t2\n")
    with pytest.raises(FacegateError, match="promises"):
        read_pairs(tmp_path / "bad.txt")
    for body, message in ((b"1\nA\t-1\tnan\nA\t1\tB\t2\n", "image numbers must be whole numbers"),
                          (b"1\nA\t1\t2\nA\t1\tB\t0\n", "image numbers must be whole numbers"),
                          (b"\xff\xd8\xff\xe0 a JPEG", "not a pairs file")):
        (tmp_path / "bad.txt").write_bytes(body)
        with pytest.raises(FacegateError, match=message):
            read_pairs(tmp_path / "bad.txt")


def test_threshold_and_accuracy_by_hand():
    scores = np.array([0.9, 0.8, 0.3, 0.6, 0.2, 0.1])
    same = np.array([True, True, True, False, False, False])
    t = best_threshold(scores, same)
    assert 0.2 < t <= 0.3 or 0.6 < t <= 0.8  # two ways to get 5/6 right; nothing gets all six
    assert accuracy_at(scores, same, t) == pytest.approx(5 / 6)
    scores_nan = scores.copy()
    scores_nan[0] = np.nan  # an unscorable pair is always wrong
    assert accuracy_at(scores_nan, same, 0.7) == pytest.approx(4 / 6)


def test_cross_validate_uses_other_folds():
    # Fold 0 alone would pick a threshold near 0.5; the threshold must come from fold 1 (≈ 0.85).
    scores = np.array([0.6, 0.4, 0.9, 0.8])
    same = np.array([True, False, True, False])
    folds = np.array([0, 0, 1, 1])
    accs, thresholds = cross_validate(scores, same, folds)
    assert 0.8 < thresholds[0] < 0.9
    assert accs[0] == pytest.approx(0.5)  # 0.6 is now below threshold: the genuine pair is missed


def test_tar_at_far():
    impostor = np.linspace(0, 0.5, 1000)
    assert threshold_at_far(impostor, 1e-2) > impostor[-11]
    assert (impostor >= threshold_at_far(impostor, 1e-2)).sum() == 10
    scores = np.concatenate([impostor, [0.499, 0.6, 0.7, np.nan]])
    same = np.concatenate([np.zeros(1000, bool), np.ones(4, bool)])
    tar, _ = tar_at_far(scores, same, 1e-3)
    assert tar == pytest.approx(0.5)  # 0.6 and 0.7 pass; 0.499 is under; NaN counts as rejected


@pytest.mark.slow
def test_lfw_fold1_accuracy(lfw, pipeline, tmp_path):
    """LFW View 2 fold 1 through the device path, threshold from the manifest (calibrated on View 1)."""
    from edge.eval.lfw import embed_paths, pair_scores

    lines = (lfw / "pairs.txt").read_text().splitlines()
    (tmp_path / "fold1.txt").write_text("1\t300\n" + "\n".join(lines[1:601]) + "\n")
    pairs = read_pairs(tmp_path / "fold1.txt")
    rels = sorted({p.a for p in pairs} | {p.b for p in pairs})
    embeddings, no_face = embed_paths(pipeline, lfw / "images", rels)
    scores = pair_scores(pairs, embeddings)
    same = np.array([p.same for p in pairs])
    acc = accuracy_at(scores, same, pipeline.manifest.threshold("verify").value)
    assert no_face == []
    assert acc >= 0.985, acc
