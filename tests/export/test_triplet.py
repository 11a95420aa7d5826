"""Triplet training: the loss against hand-computed values, the miners on toy batches, and short real runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge.eval.lfw import read_pairs  # noqa: E402
from export.nets.small_embed import ProjectionHead, SmallEmbed  # noqa: E402
from export.train import triplet as T  # noqa: E402
from export.train.data import Labelled, aligned_crops, augment, embeddings, list_people, pk_batches  # noqa: E402


def unit(*v: float) -> list[float]:
    x = np.asarray(v, float)
    return (x / np.linalg.norm(x)).tolist()


def test_loss_matches_hand_computed_values() -> None:
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[0.6, 0.8], [0.6, 0.8], [0.0, 1.0]])
    n = torch.tensor([[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]])
    # ‖a−p‖² = 0.16 + 0.64 = 0.8; ‖a−n‖² = 0.04 + 0.36 = 0.4 → 0.8 − 0.4 + 0.2 = 0.6
    # second: 0.8 − 2.0 + 0.2 < 0 → 0;   third: 0 − 2 + 0.2 < 0 → 0
    assert T.triplet_loss(a, p, n, 0.2).tolist() == pytest.approx([0.6, 0.0, 0.0], abs=1e-6)
    # a margin of 1.5 activates the second: 0.8 − 2 + 1.5 = 0.3
    assert T.triplet_loss(a, p, n, 1.5).tolist() == pytest.approx([1.9, 0.3, 0.0], abs=1e-6)


def test_loss_gradient_is_zero_for_inactive_triplets() -> None:
    a = torch.tensor([[1.0, 0.0]], requires_grad=True)
    T.triplet_loss(a, torch.tensor([[0.99, 0.141]]), torch.tensor([[-1.0, 0.0]]), 0.2).sum().backward()
    assert a.grad is not None and float(a.grad.abs().sum()) == 0.0


def toy_batch() -> tuple[torch.Tensor, torch.Tensor]:
    # Identity 0 at angles 0°, 20°, 45°; identity 1 at 30°, 100°; identity 2 at 180°.
    ang = np.radians([0, 20, 45, 30, 100, 180])
    x = torch.tensor(np.stack([np.cos(ang), np.sin(ang)], 1), dtype=torch.float32)
    return x, torch.tensor([0, 0, 0, 1, 1, 2])


def test_batch_hard_picks_the_farthest_positive_and_the_closest_negative() -> None:
    x, labels = toy_batch()
    a, p, n = T.mine_batch_hard(T.squared_distances(x), labels)
    got = {int(i): (int(j), int(k)) for i, j, k in zip(a, p, n, strict=True)}
    # Anchor 0° : positives 20°, 45° → 45° (row 2); negatives 30°, 100°, 180° → 30° (row 3).
    assert got[0] == (2, 3)
    # Anchor 20°: positives 0° (20° away), 45° (25° away) → row 2; closest negative 30° (row 3).
    assert got[1] == (2, 3)
    # Anchor 30° (identity 1): its only positive 100° (row 4); closest negative 20° (10° away, row 1).
    assert got[3] == (4, 1)
    # Anchor 180° has no positive: skipped.
    assert 5 not in got


def test_semi_hard_picks_the_closest_negative_beyond_the_positive() -> None:
    x, labels = toy_batch()
    a, p, n = T.mine_semi_hard(T.squared_distances(x), labels)
    got = {(int(i), int(j)): int(k) for i, j, k in zip(a, p, n, strict=True)}
    # Anchor 0°, positive 20°: negatives farther than 20° are 30°, 100°, 180° → the closest, 30° (row 3).
    assert got[(0, 1)] == 3
    # Anchor 20°, positive 0° (20° away): negatives at 10° (30°), 80°, 160° → beyond 20°: 100° (row 4).
    assert got[(1, 0)] == 4
    # Anchor 30°, positive 100° (70° away): negatives 0° (30°), 20° (10°), 45° (15°), 180° (150°) → row 5.
    assert got[(3, 4)] == 5
    # Anchor 45°, positive 0° (45° away): negatives 30° (15°), 100° (55°), 180° (135°) → 100° (row 4).
    assert got[(2, 0)] == 4
    # Every ordered anchor–positive pair is used once: 3·2 + 2·1 = 8.
    assert len(got) == 8


def test_semi_hard_falls_back_to_the_farthest_negative_when_all_are_closer() -> None:
    ang = np.radians([0, 90, 10, 20])
    x = torch.tensor(np.stack([np.cos(ang), np.sin(ang)], 1), dtype=torch.float32)
    a, p, n = T.mine_semi_hard(T.squared_distances(x), torch.tensor([0, 0, 1, 1]))
    got = {(int(i), int(j)): int(k) for i, j, k in zip(a, p, n, strict=True)}
    assert got[(0, 1)] == 3  # both negatives (10°, 20°) are closer than the positive (90°): the farther, 20°


def test_batch_loss_reports_active_fraction() -> None:
    x, labels = toy_batch()
    loss, st = T.batch_loss(x, labels, 0.2, "batch-hard")
    assert st["triplets"] == 5 and 0 <= st["active"] <= st["triplets"]
    assert float(loss) > 0


def test_lda_start_keeps_the_discriminative_direction_and_centres() -> None:
    """Toy data: identities differ along axis 0; axis 1 carries large noise within each identity. PCA would keep
    axis 1 (more variance); the discriminant start must keep axis 0, and its bias must centre the data."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1.0, size=(40, 1))
    labels = np.repeat(np.arange(40), 5)
    x = np.zeros((200, 3))
    x[:, 0] = centres[labels, 0] + rng.normal(0, 0.05, 200)
    x[:, 1] = rng.normal(0, 5.0, 200)  # within-identity noise, the largest variance
    x[:, 2] = rng.normal(0, 0.5, 200)
    x += np.array([3.0, -2.0, 1.0])  # an offset the bias has to remove
    weight, bias = T.lda_projection(x, labels, 1)
    direction = weight[0] / np.linalg.norm(weight[0])
    assert abs(direction[0]) > 0.99
    assert abs(float((weight @ x.T + bias[:, None]).mean())) < 1e-4
    assert np.linalg.norm(weight, axis=1).mean() == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(Exception, match="LDA"):
        T.lda_projection(x[:3], labels[:3], 1)
    head_settings = T.TripletSettings(mode="head", dim=1, init="lda", epochs=1)
    assert head_settings.init == "lda"


def test_pk_batches_hold_p_identities_of_k() -> None:
    labels = np.repeat(np.arange(10), [1, 2, 3, 4, 5, 6, 2, 2, 2, 9])
    batches = list(pk_batches(labels, 3, 4, np.random.default_rng(0)))
    assert len(batches) == 3  # 9 identities with ≥ 2 samples, 3 per batch
    for b in batches:
        assert len(b) == 12
        ids = labels[b].reshape(3, 4)
        assert (ids == ids[:, :1]).all() and len(set(ids[:, 0])) == 3
    assert 0 not in labels[np.concatenate(batches)]  # a single-image identity can give no positive


def test_augment_is_seeded_and_keeps_shape() -> None:
    crops = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    a = augment(crops, np.random.default_rng(1))
    b = augment(crops, np.random.default_rng(1))
    assert a.shape == crops.shape and a.dtype == np.float32
    assert np.array_equal(a, b) and a.min() >= 0 and a.max() <= 255


@pytest.fixture(scope="module")
def small_set(lfw: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], Path]:
    """24 LFW identities with ≥ 4 photos (≤ 6 each): cached SFace embeddings and 48×48 crops."""
    cache = tmp_path_factory.mktemp("cache")
    people = [(n, r[:6]) for n, r in list_people(lfw / "images") if len(r) >= 4][:24]
    rels = [x for _, r in people for x in r]
    return lfw / "images", rels, cache


def test_projection_head_loss_falls_and_resume_reproduces(small_set, tmp_path: Path) -> None:
    images, rels, cache = small_set
    vecs = embeddings(images, rels, "sface", cache_dir=cache)
    kept = [r for r in rels if r in vecs]
    x = np.stack([vecs[r] for r in kept])
    labels = Labelled.from_rels(kept).labels
    s = T.TripletSettings(mode="head", epochs=4, p=8, k=3, margin=0.3, mining="batch-hard", lr=5e-3, dim=16,
                          threads=1)
    _, full = T.train_projection(x, labels, s, tmp_path / "full", progress=False)
    assert full[-1]["loss"] < full[1]["loss"]
    assert all(0.0 <= row["active_fraction"] <= 1.0 for row in full[1:])
    log = (tmp_path / "full" / "log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,") and "active_fraction" in log[0] and len(log) == 1 + 5
    assert json.loads((tmp_path / "full" / "settings.json").read_text())["seed"] == 0
    # Two epochs, interrupted, resumed to four: the same weights and losses as the uninterrupted run.
    _, part = T.train_projection(x, labels, s, tmp_path / "part", progress=False, stop_after=2)
    assert len(part) == 3 and T.load_checkpoint(tmp_path / "part" / "checkpoint.pt")["epoch"] == 2
    head, resumed = T.train_projection(x, labels, s, tmp_path / "part", resume=True, progress=False)
    ref = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)["state_dict"]
    assert torch.equal(head.state_dict()["linear.weight"], ref["linear.weight"])
    assert [r["loss"] for r in resumed[1:]] == pytest.approx([r["loss"] for r in full[1:]])


def test_small_net_learns_its_training_batches(small_set, tmp_path: Path) -> None:
    images, rels, cache = small_set
    crops, kept = aligned_crops(images, rels, (48, 48), cache_dir=cache)
    labels = Labelled.from_rels(kept).labels
    s = T.TripletSettings(mode="net", epochs=5, p=8, k=3, lr=3e-3, mining="batch-hard", size=(48, 48), dim=32,
                          threads=1, augment=False)
    pre = T.net_preprocessing(s)
    from edge.embed import to_input

    x = torch.from_numpy(to_input(crops, pre))
    torch.manual_seed(0)
    net = SmallEmbed(dim=32, width=8)
    hist = T.train(net, labels, lambda rows, rng: x[torch.from_numpy(rows)], s, tmp_path, progress=False)
    assert hist[-1]["loss"] < hist[1]["loss"]
    assert (tmp_path / "checkpoint.pt").is_file()


def test_projection_cv_follows_the_fold_protocol(small_set, tmp_path: Path) -> None:
    """Three synthetic folds of real pairs: no head sees the identities of the folds it scores."""
    images, rels, cache = small_set
    vecs = embeddings(images, rels, "sface", cache_dir=cache)
    from edge.eval.lfw import Pair

    people = sorted({r.split("/")[0] for r in vecs})
    pairs = []
    for fold in range(3):
        group = people[8 * fold:8 * fold + 8]
        own = {n: sorted(r for r in vecs if r.startswith(n + "/")) for n in group}
        pairs += [Pair(own[n][0], own[n][1], True, fold) for n in group[:4]]
        pairs += [Pair(own[x][0], own[y][0], False, fold) for x, y in zip(group[:4], group[4:], strict=True)]
    s = T.TripletSettings(mode="head", epochs=2, p=6, k=3, dim=16, threads=1)
    out = T.cross_validate_projection(pairs, vecs, s, tmp_path)
    assert out["head"]["folds"] == out["backbone"]["folds"] == 3
    assert 0.5 <= out["backbone"]["accuracy"] <= 1.0 and "delta_pp" in out
    # One head per fold plus one per (fold, other fold) for the out-of-sample thresholds.
    assert len(list(tmp_path.glob("fold*/checkpoint.pt"))) == 3 + 3 * 2
    assert ProjectionHead(128, 16)(torch.zeros(1, 128)).shape == (1, 16)


def test_dev_accuracy_reads_view1(lfw: Path, small_set) -> None:
    images, _, cache = small_set
    dev_train = read_pairs(lfw / "pairsDevTrain.txt")[:40] + read_pairs(lfw / "pairsDevTrain.txt")[-40:]
    needed = sorted({r for p in dev_train for r in (p.a, p.b)})
    vecs = embeddings(images, needed, "sface", cache_dir=cache)
    acc = T.dev_accuracy(vecs, dev_train, dev_train)
    assert acc["dev_test_accuracy"] == acc["dev_train_accuracy"] >= 0.9


@pytest.mark.slow
def test_net_exports_through_the_torch_recipe(lfw: Path, tmp_path: Path) -> None:
    from export.nets.small_embed import SMALL_MEAN, SMALL_STD
    from export.recipes import torch_module

    torch.manual_seed(0)
    weights = tmp_path / "w.pt"
    torch.save(SmallEmbed().state_dict(), weights)
    spec = torch_module.ModelSpec(name="small-embed-test", task="embed", size=(64, 64), mean=SMALL_MEAN, std=SMALL_STD)
    (bundle, ok), = torch_module.export(tmp_path / "out", "export.nets.small_embed:small_embed", spec, weights=weights,
                                        variants=("onnx-fp32",), images=lfw / "images", calib_images=8,
                                        parity_images=8)
    assert ok and (bundle / "model.onnx").is_file()
