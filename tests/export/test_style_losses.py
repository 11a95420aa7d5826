"""The style-transfer costs against hand-computed values, and the MobileNetV2 loss network."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from export.nets.mobilenet_v2 import load_mobilenet_v2, trunk  # noqa: E402
from export.style.costs import (  # noqa: E402
    CostSettings,
    StyleCost,
    build_cost,
    content_cost,
    gram,
    layer_style_cost,
    tv_cost,
)
from export.style.images import load_image  # noqa: E402
from export.style.lossnet import LossNet, parse_tap  # noqa: E402
from export.style.optimize import optimize  # noqa: E402

# Two 2×2 channels: k=0 holds 1 2 / 3 4, k=1 holds 0 1 / 1 0.
A = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]]])


def test_gram_is_the_unnormalised_sum_over_positions() -> None:
    # G_00 = 1+4+9+16, G_01 = 1·0+2·1+3·1+4·0, G_11 = 0+1+1+0.
    assert gram(A)[0].tolist() == [[30.0, 5.0], [5.0, 2.0]]


def test_content_cost_is_half_the_squared_distance() -> None:
    g = A.clone()
    g[0, 0, 0, 0] += 1.0  # one entry off by 1
    g[0, 1, 1, 1] -= 2.0  # another off by 2
    assert content_cost(A, g).tolist() == [0.5 * (1 + 4)]
    assert content_cost(A, A).tolist() == [0.0]


def test_layer_style_cost_uses_the_theory_normalisation() -> None:
    g_s = torch.tensor([[[30.0, 5.0], [5.0, 2.0]]])
    g_g = torch.tensor([[[28.0, 5.0], [5.0, 3.0]]])
    # Σ (G^S − G^G)² = 2² + 1² = 5; 1/(2·n_H·n_W·n_C)² = 1/(2·2·2·2)² = 1/256.
    assert layer_style_cost(g_s, g_g, 2, 2, 2).item() == pytest.approx(5 / 256)
    assert layer_style_cost(g_s, gram(A), 2, 2, 2).item() == 0.0


def test_total_variation_by_hand() -> None:
    x = torch.tensor([[[[0.0, 1.0], [1.0, 3.0]]]])
    # horizontal: (1−0)² + (3−1)² = 5; vertical: (1−0)² + (3−1)² = 5.
    assert tv_cost(x).tolist() == [10.0]


def test_tap_names() -> None:
    assert parse_tap("b7.expand") == (7, True)
    assert parse_tap("b6") == (6, False)
    for bad in ("b1.expand", "b19", "conv3", "b0.expand"):
        with pytest.raises(Exception, match="layer"):
            parse_tap(bad)


@pytest.fixture(scope="module")
def weights(data: Path) -> Path:
    path = data / "models" / "mobilenet_v2-b0353104.pth"
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return path


def test_mobilenet_loads_strictly_and_is_cut_after_the_last_used_layer(weights: Path) -> None:
    model = load_mobilenet_v2(weights)  # strict=True inside: every key matches torchvision's layout
    assert sum(p.numel() for p in model.parameters()) == 3_504_872
    settings = CostSettings()
    net = LossNet(weights, [settings.content_layer, *(k for k, _ in settings.style_layers)])
    assert len(net.blocks) == 12  # features[0..11]; 12-18 and the classifier are never run
    x = torch.rand(1, 3, 64, 96)
    feats = net(x)
    assert {k: tuple(v.shape[1:]) for k, v in feats.items()} == {
        "b2.expand": (96, 32, 48), "b4.expand": (144, 16, 24), "b7.expand": (192, 8, 12),
        "b11.expand": (384, 4, 6)}
    assert (feats["b4.expand"] >= 0).all() and (feats["b4.expand"] <= 6).all()  # ReLU6 activations
    with torch.no_grad():  # the truncated trunk computes what the full network computes up to there
        full = trunk(model, 18)[:4]((x - net.mean) / net.std)
        assert torch.allclose(net.blocks[:4]((x - net.mean) / net.std), full)


def test_costs_vanish_at_their_targets(weights: Path, data: Path) -> None:
    painting = data / "style" / "udnie.jpg"
    settings = CostSettings(style_size=64)
    cost = build_cost(painting, settings, weights)
    s = load_image(painting, longer=64)
    c = cost(s, cost.content_target(s))  # G = S = C: no content cost, no style cost
    assert c.content.item() == 0.0
    assert c.style.item() == pytest.approx(0.0, abs=1e-12)
    # S's Gram matrix is taken per position, so S at another size is still close to S, far from a photo.
    big = load_image(painting, longer=128)
    photo = load_image(data / "lfw" / "images" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg", size=(128, 128))
    near = cost(big, cost.content_target(big)).style.item()
    far = cost(photo, cost.content_target(photo)).style.item()
    assert near < far / 3


def test_optimisation_lowers_j_from_content_and_from_noise(weights: Path, data: Path) -> None:
    torch.set_num_threads(1)
    cost = build_cost(data / "style" / "the_scream.jpg", CostSettings(style_size=128), weights)
    content = load_image(data / "lfw" / "images" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg", size=(64, 64))
    for init, method in (("content", "adam"), ("random", "adam"), ("content", "lbfgs")):
        r = optimize(cost, content, steps=8, lr=0.02, init=init, method=method)
        assert r.history[-1]["J"] < r.history[0]["J"], (init, method)
        assert r.image.min() >= 0 and r.image.max() <= 1 and r.image.shape == content.shape
    # stop_at ends the run at the first iterate at or below the target
    r = optimize(cost, content, steps=50, lr=0.02, stop_at=r.history[0]["J"] * 0.9)
    assert r.reached and r.history[-1]["J"] <= r.history[0]["J"] * 0.9 + 1e-6


def test_style_cost_module_keeps_per_position_grams(weights: Path, data: Path) -> None:
    settings = CostSettings()
    net = LossNet(weights, ["b2.expand", "b4.expand", "b7.expand", "b11.expand"])
    style = load_image(data / "style" / "udnie.jpg", longer=64)
    cost = StyleCost(net, settings, style)
    a = net(style)["b2.expand"]
    assert torch.allclose(cost.gram_b2_expand, gram(a)[0] / (a.shape[2] * a.shape[3]))


def test_bench_descent_times_until_j_falls_to_the_target(weights: Path, data: Path) -> None:
    from export.style.bench import optimize_until

    torch.set_num_threads(1)
    cost = build_cost(data / "style" / "the_scream.jpg", CostSettings(style_size=128), weights)
    content = load_image(data / "lfw" / "images" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg", size=(64, 64))
    start = float(cost(content, cost.content_target(content)).total[0])
    reached, seconds, style = optimize_until(cost, content, start * 0.9, lr=0.02, max_steps=60, style_at=3,
                                             progress=False)
    assert reached and seconds > 0 and style > 0
    unreachable, _, _ = optimize_until(cost, content, 0.0, lr=0.02, max_steps=3, style_at=None, progress=False)
    assert not unreachable
