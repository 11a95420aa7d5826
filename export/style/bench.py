"""`facegate style bench`: the feed-forward nets against per-image optimisation of the same J, at size².

For each installed style (its bundle names the painting and the costs it was trained with) and each
portrait C (the five held-out LFW portraits by default), one thread:
    feedforward_ms    one pass of the bundle through the device code path (edge.stylize), tiles and
                      blending included: the median of FF_PASSES timed passes after a warm-up pass (one
                      sample of a ~0.5 s pass on a shared machine can catch a load spike several times its
                      length, while the optimisation's seconds average over many steps)
    optimize_s        Adam from G = C at a fixed rate until J(G) ≤ J(feed-forward output), content features
                      included, the painting's Gram matrices excluded (they serve every photo); if J is
                      not reached in max_steps the time so far is taken, a lower bound (`optimize_reached`)
    speedup           optimize_s / feed-forward seconds: how much longer optimisation takes to produce
                      an image as good, by J, as the net's. The headline is the ratio of the means.
    style_loss_ratio  J_style(feed-forward output) / J_style after `steps` Adam steps from C (the
                      reference, reference.py): how far the net's style term is from what a fixed
                      optimisation budget reaches on that very photo; 1 = as good. Headline: the mean.
    nearest_painting  the painting (of all in the folder) whose Gram statistics are nearest the output,
                      i.e. with the lowest J_style; it should be the style's own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge.imageio import image_files
from export.style import StyleError
from export.style.costs import Costs, CostSettings, StyleCost, build_cost, loss_taps
from export.style.images import load_image, save_grid
from export.style.lossnet import LossNet, default_weights
from export.style.optimize import descend_pixels, progress_bar, start_image
from export.style.reference import content_key

FF_PASSES = 3  # timed feed-forward passes per pair; their median is the pair's feedforward_ms


def bench(styles: Sequence[str], contents: Sequence[Path], paintings: Path, size: int = 512, lr: float = 0.01,
          steps: int = 500, max_steps: int = 1000, reference: dict[str, Any] | None = None,
          runtime: str = "onnxruntime", grid: Path | None = None, weights: Path | None = None,
          progress: bool = False) -> dict[str, Any]:
    """The feed-forward nets against per-image optimisation, at size², one thread (definitions above)."""
    from edge.stylize import open_style_net

    torch.set_num_threads(1)
    paintings = Path(paintings)
    all_paintings = image_files(paintings, recursive=False)
    if not all_paintings:
        raise StyleError(f"{paintings}: no paintings found")
    net: LossNet | None = None
    results: dict[str, Any] = {}
    grid_rows: list[list[np.ndarray]] = [[load_image(p, size=(size, size))[0].permute(1, 2, 0).numpy()]
                                         for p in contents]
    header: list[np.ndarray] = []
    nearest_ok, nearest_n = 0, 0
    for style in styles:
        runner = open_style_net(style, runtime, threads=1)
        extra = runner.manifest.extra
        costs = CostSettings.from_dict(extra["costs"])
        painting = paintings / str(extra["painting"])
        net = net if net is not None and set(net.taps) >= set(loss_taps(costs)) else \
            LossNet(weights or default_weights(), loss_taps(costs))
        cost = build_cost(painting, costs, net=net)
        judges = {p.stem: build_cost(p, costs, net=net) for p in all_paintings}  # the Gram-nearest check
        header.append(load_image(painting, size=(size, size))[0].permute(1, 2, 0).numpy())
        ref = (reference or {}).get("losses", {}).get(extra["style"])
        if reference is not None and ref is not None and reference.get("costs", {}).get(extra["style"]) not in (
                None, costs.to_dict()):
            raise StyleError(f"reference losses for {extra['style']!r} were computed with other costs")
        pairs = []
        for row, p in enumerate(contents):
            c = load_image(p, size=(size, size))
            rgb = c[0].permute(1, 2, 0).numpy()
            runner(rgb)  # warm-up: first-call allocations are not the network's speed
            times = []
            for _ in range(FF_PASSES):
                t0 = time.perf_counter()
                y_rgb = runner(rgb)
                times.append(time.perf_counter() - t0)
            ff_s = float(np.median(times))
            y = torch.from_numpy(np.ascontiguousarray(y_rgb.transpose(2, 0, 1)))[None].float()
            with torch.no_grad():
                j_ff = cost(y, cost.content_target(c))
                style_dist = {k: float(j(y, j.content_target(c)).style[0]) for k, j in judges.items()}
            nearest = min(style_dist, key=style_dist.__getitem__)
            nearest_ok += nearest == painting.stem
            nearest_n += 1
            ref_style = None if ref is None else ref.get(content_key(p))
            reached, opt_s, style_at = optimize_until(
                cost, c, float(j_ff.total[0]), lr, max_steps, None if ref_style is not None else steps, progress)
            if ref_style is None:
                ref_style = style_at
            pairs.append({"content": content_key(p), "feedforward_ms": ff_s * 1000.0,
                          "J_feedforward": float(j_ff.total[0]), "style_feedforward": float(j_ff.style[0]),
                          "optimize_s": opt_s, "optimize_reached": reached,
                          "style_after_steps": ref_style, "style_loss_ratio": float(j_ff.style[0]) / ref_style,
                          "speedup": opt_s / ff_s, "nearest_painting": nearest})
            grid_rows[row].append(y_rgb)
        results[extra["style"]] = {
            "painting": painting.name, "feedforward_ms": _mean(pairs, "feedforward_ms"),
            "optimize_s": _mean(pairs, "optimize_s"), "style_loss_ratio": _mean(pairs, "style_loss_ratio"),
            "speedup": _mean(pairs, "optimize_s") / (_mean(pairs, "feedforward_ms") / 1000.0), "pairs": pairs}
    all_pairs = [q for r in results.values() for q in r["pairs"]]
    out = {
        "size": size, "threads": 1, "runtime": runtime, "feedforward_passes": FF_PASSES, "lr": lr,
        "steps": steps, "max_steps": max_steps,
        "reference": "given" if reference is not None else "computed here",
        "contents": [content_key(p) for p in contents], "styles": results,
        "feedforward_ms": _mean(all_pairs, "feedforward_ms"), "optimize_s": _mean(all_pairs, "optimize_s"),
        "speedup": _mean(all_pairs, "optimize_s") / (_mean(all_pairs, "feedforward_ms") / 1000.0),
        "speedup_min": min(q["speedup"] for q in all_pairs),
        "style_loss_ratio": _mean(all_pairs, "style_loss_ratio"),
        "style_loss_ratio_max": max(q["style_loss_ratio"] for q in all_pairs),
        "all_reached": all(q["optimize_reached"] for q in all_pairs),
        "gram_nearest_correct": f"{nearest_ok}/{nearest_n}",
    }
    if grid is not None:
        save_grid(grid_rows, header, grid)
        out["grid"] = str(grid)
    return out


def optimize_until(cost: StyleCost, content: torch.Tensor, j_ff: float, lr: float, max_steps: int,
                   style_at: int | None, progress: bool) -> tuple[bool, float, float]:
    """Adam from C at a fixed rate. Returns (J fell to j_ff, seconds until it did — content features
    included, the painting's Gram matrices excluded as they serve every photo —, J_style after `style_at`
    steps). Steps after the time is taken are not timed."""
    t0 = time.perf_counter()
    target = cost.content_target(content)
    g = start_image(content)
    reached_s: float | None = None
    style_value = math.nan
    bar = progress_bar(max(max_steps, style_at or 0), progress)

    def watch(step: int, c: Costs) -> bool:
        nonlocal reached_s, style_value
        if reached_s is None and float(c.total[0].detach()) <= j_ff:
            reached_s = time.perf_counter() - t0
        if style_at is not None and step == style_at:
            style_value = float(c.style[0].detach())
        done_timing = reached_s is not None or step >= max_steps
        return done_timing and (style_at is None or step >= style_at)

    descend_pixels(g, lambda _k: cost(g, target), lr, watch, bar)
    if bar is not None:
        bar.close()
    return reached_s is not None, (reached_s if reached_s is not None else time.perf_counter() - t0), style_value


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))
