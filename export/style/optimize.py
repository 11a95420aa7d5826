"""The one gradient-descent loop on J, and per-image optimisation of G's pixels (Gatys et al.).

`descend` is shared by everything that minimises J with a first-order optimiser: the pixels of one image
(`optimize`, and the benchmark's timed run in bench.py) and a style net's weights (train.py). They differ
only in what is evaluated, what is watched and what happens after a step, which are its arguments.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from export.style import StyleError
from export.style.costs import Costs, StyleCost

# (step index, the costs evaluated at that step) → True to end the run.
Watch = Callable[[int, Costs], bool]


def descend(opt: torch.optim.Optimizer, evaluate: Callable[[int], Costs], stop: Watch,
            stepped: Watch | None = None, project: Callable[[], Any] | None = None) -> int:
    """Minimise J: at step k = 0, 1, …, zero the gradients, evaluate the costs at the current parameters
    (`evaluate(k)`), back-propagate the batch mean of J, and ask `stop(k, costs)` whether to end the run
    there (the last iterate is evaluated, not moved). Otherwise the optimiser steps, `project` (under
    no_grad) maps the parameters back onto their domain — pixels into [0, 1] — and `stepped(k, costs)` may
    end the run. Returns the index of the last step evaluated."""
    k = 0
    while True:
        opt.zero_grad(set_to_none=True)
        costs = evaluate(k)
        costs.total.mean().backward()
        if stop(k, costs):
            return k
        opt.step()
        if project is not None:
            with torch.no_grad():
                project()
        if stepped is not None and stepped(k, costs):
            return k
        k += 1


def descend_pixels(g: torch.Tensor, evaluate: Callable[[int], Costs], lr: float, stop: Watch, bar: Any = None) -> int:
    """`descend` with Adam on the pixels of G, kept in [0, 1] after each step, a progress bar advanced per step."""
    def advance(_step: int, _c: Costs) -> bool:
        if bar is not None:
            bar.update(1)
        return False

    return descend(torch.optim.Adam([g], lr=lr), evaluate, stop, advance, project=lambda: g.clamp_(0.0, 1.0))


def progress_bar(total: int, enabled: bool, unit: str = "step"):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, dynamic_ncols=True, leave=False)


@dataclass
class OptimizeResult:
    image: torch.Tensor
    history: list[dict[str, float]] = field(default_factory=list)
    reached: bool = False  # True when stop_at was given and J fell to it


def start_image(content: torch.Tensor, init: str = "content", seed: int = 0) -> torch.Tensor:
    """G's first iterate, a leaf that needs gradients: a copy of C, or uniform noise."""
    if init == "content":
        g = content.detach().clone()
    else:
        gen = torch.Generator().manual_seed(seed)
        g = torch.rand(content.shape, generator=gen).to(content.device)
    return g.requires_grad_(True)


def optimize(cost: StyleCost, content: torch.Tensor, steps: int = 500, lr: float = 0.01, init: str = "content",
             method: str = "adam", seed: int = 0, stop_at: float | None = None, progress: bool = False,
             record_every: int = 1) -> OptimizeResult:
    """Minimise J over the pixels of G, starting from C (`init="content"`) or from uniform noise.

    Adam keeps G in [0, 1] by clamping after each step (projected gradient); L-BFGS (with strong-Wolfe line
    search) works on the unconstrained image, clamped at the end. `stop_at`: stop at the first iterate
    whose J is at or below it (the benchmark's "time to match the feed-forward output").
    """
    if init not in ("content", "random"):
        raise StyleError(f"init must be 'content' or 'random', not {init!r}")
    if method not in ("adam", "lbfgs"):
        raise StyleError(f"method must be 'adam' or 'lbfgs', not {method!r}")
    t0 = time.perf_counter()
    target = cost.content_target(content)
    g = start_image(content, init, seed)
    history: list[dict[str, float]] = []
    bar = progress_bar(steps, progress)
    reached = False

    def row(step: int, c: Costs) -> dict[str, float]:
        return {"step": step, **c.item(), "seconds": time.perf_counter() - t0}

    if method == "adam":
        def watch(step: int, c: Costs) -> bool:
            nonlocal reached
            j = float(c.total[0].detach())
            if step % record_every == 0 or step == steps:
                history.append(row(step, c))
            if bar is not None:
                bar.set_postfix(J=f"{j:.4g}")
            if stop_at is not None and j <= stop_at:
                reached = True
                history[-1:] = [row(step, c)]
                return True
            return step == steps

        descend_pixels(g, lambda _k: cost(g, target), lr, watch, bar)
    else:
        # Not `descend`: L-BFGS evaluates J itself, several times per step in its line search, via a closure.
        opt = torch.optim.LBFGS([g], lr=1.0, max_iter=1, history_size=20, line_search_fn="strong_wolfe")
        last: list[Costs] = []

        def closure() -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            c = cost(g, target)
            c.total.sum().backward()
            last[:] = [c]
            return c.total.sum().detach()

        for step in range(steps + 1):
            closure() if step == steps else opt.step(closure)
            c = last[0]
            history.append(row(step, c))
            if stop_at is not None and float(c.total[0]) <= stop_at:
                reached = True
                break
            if bar is not None and step < steps:
                bar.update(1)
                bar.set_postfix(J=f"{float(c.total[0]):.4g}")
    if bar is not None:
        bar.close()
    with torch.no_grad():
        g.clamp_(0.0, 1.0)
    return OptimizeResult(g.detach(), history, reached)


def save_curve(history: list[dict[str, float]], path: Path) -> None:
    """The loss curve: CSV (step, J, terms, seconds), or a PNG plot when the name ends in .png."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".png":
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        steps = [h["step"] for h in history]
        for key in ("J", "content", "style", "tv"):
            ax.plot(steps, [max(h[key], 1e-12) for h in history], label=key)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("cost (unweighted terms)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["step", "J", "content", "style", "tv", "seconds"])
        w.writeheader()
        for h in history:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in h.items()})
