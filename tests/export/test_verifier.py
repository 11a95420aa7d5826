"""The verification head: features, logistic fit, the LFW fold protocol, ONNX export and its parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge.eval.lfw import Pair, read_pairs
from edge.models.registry import Registry
from edge.verifier import resolve_head
from export.train import verifier as V
from export.train.data import embeddings


def test_pair_features_blocks_and_cosines() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 6))
    b = rng.normal(size=(5, 6))
    f = V.pair_features(a, b, (4, 2), ("abs", "prod", "chi2", "cos"))
    assert f.shape == (5, 6 * 3 + 2)
    assert np.allclose(f[:, :6], np.abs(a - b)) and np.allclose(f[:, 6:12], a * b)
    assert np.allclose(f[:, 12:18], (a - b) ** 2 / (np.abs(a) + np.abs(b) + 1e-6))
    assert np.allclose(f[:, 18], (a[:, :4] * b[:, :4]).sum(1)) and np.allclose(f[:, 19], (a[:, 4:] * b[:, 4:]).sum(1))


def test_logistic_fit_recovers_a_known_rule() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4000, 3))
    y = (rng.random(4000) < 1 / (1 + np.exp(-(2 * x[:, 0] - x[:, 1] + 0.5)))).astype(float)
    m = V.fit_logistic(x, y, l2=0.0)
    w = m.w / m.scale
    assert w[0] == pytest.approx(2, abs=0.25) and w[1] == pytest.approx(-1, abs=0.2) and abs(w[2]) < 0.15
    assert m.iterations < 20


def test_sample_pairs_draws_matched_and_mismatched() -> None:
    rels = [f"p{i}/p{i}_{j:04d}.jpg" for i in range(6) for j in range(1 + i % 3)]
    pairs = V.sample_pairs(rels, 50, np.random.default_rng(0))
    same = [p for p in pairs if p.same]
    assert len(same) == 50 and len(pairs) == 100
    assert all(p.a != p.b and p.a.split("/")[0] == p.b.split("/")[0] for p in same)
    assert all(p.a.split("/")[0] != p.b.split("/")[0] for p in pairs if not p.same)


@pytest.fixture(scope="module")
def dev(lfw: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Pair], dict[str, dict[str, np.ndarray]]]:
    """The first 60 + last 60 DevTrain pairs, relabelled as three folds (identity-disjoint by construction of
    View 1 order: each block of the file names other people), with cached SFace embeddings."""
    cache = tmp_path_factory.mktemp("cache")
    rows = read_pairs(lfw / "pairsDevTrain.txt")
    chosen = rows[:60] + rows[-60:]
    pairs = [Pair(p.a, p.b, p.same, k % 3) for k, p in enumerate(chosen)]
    rels = sorted({r for p in pairs for r in (p.a, p.b)})
    return pairs, {"sface": embeddings(lfw / "images", rels, "sface", cache_dir=cache)}


def test_cross_validation_trains_on_the_other_folds_only(dev) -> None:
    pairs, vectors = dev
    s = V.HeadSettings(features=("abs", "cos"), l2=100.0)
    out = V.cross_validate_head(pairs, vectors, ["sface"], s)
    assert out["folds"] == 3 and len(out["fold_accuracy"]) == 3
    assert out["accuracy"] >= 0.9 and out["accuracy_sem"] == pytest.approx(out["accuracy_std"] / np.sqrt(3))
    # The held-out fold's logits change when that fold's labels are flipped only if it was trained on: they must not.
    flipped = [Pair(p.a, p.b, (not p.same) if p.fold == 0 else p.same, p.fold) for p in pairs]
    again = V.cross_validate_head(flipped, vectors, ["sface"], s)
    held = np.array([p.fold == 0 for p in pairs])
    assert np.allclose(out["logits"][held], again["logits"][held])


def test_folded_head_and_onnx_match_the_trainer(dev, tmp_path: Path) -> None:
    pairs, vectors = dev
    s = V.HeadSettings(features=("abs", "prod", "chi2", "cos"), l2=50.0)
    trained = V.fit_on(pairs, vectors, ["sface"], s)
    a, b, ok = V.pair_arrays(pairs, vectors, ["sface"])
    folded = trained.folded()
    assert np.allclose(folded.logit_concat(a[ok], b[ok]), trained.logit(a[ok], b[ok]), atol=1e-8)
    trained.provenance = {"trained_on": {"pairs_file": "pairsDevTrain.txt"}}
    bundle = V.export_head(tmp_path, "verifier-test", trained, vectors, pairs, registry=Registry())
    parity = json.loads((bundle / "parity.json").read_text())
    assert parity["passed"], parity
    assert parity["max_abs_logit_diff_onnx"] < 1e-3 and parity["verdict_mismatches"] == 0
    head = resolve_head(bundle)
    assert head.embedders == ("sface",) and head.manifest is not None and head.manifest.task == "verify_head"
    assert np.allclose(head.logit_concat(a[ok], b[ok]), trained.logit(a[ok], b[ok]), atol=1e-3)


def test_thresholds_come_from_cross_identity_logits(dev, tmp_path: Path) -> None:
    pairs, vectors = dev
    trained = V.fit_on(pairs[:40] + pairs[60:100], vectors, ["sface"], V.HeadSettings(features=("cos",)))
    f = tmp_path / "cal.txt"
    f.write_text("placeholder\n")
    th = V.logit_thresholds(trained.folded(), vectors, pairs[40:60] + pairs[100:], f, far=0.01, fpir=0.01)
    assert th["verify"]["metric"] == "logit" and th["identify"]["tail"]
    assert th["verify"]["provenance"]["far_measured"] <= 0.01


def test_tune_uses_view1_both_ways(dev) -> None:
    pairs, vectors = dev
    grid = [V.HeadSettings(features=("cos",)), V.HeadSettings(features=("abs", "cos"), l2=100.0)]
    best, rows = V.tune(pairs[::2], pairs[1::2], vectors, ["sface"], grid)
    assert best in grid and len(rows) == 2 and all(0.5 <= r["view1_accuracy"] <= 1 for r in rows)
