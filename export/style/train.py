"""Feed-forward training (Johnson et al. 2016): a StyleNet learns to minimise J over content images.

Writes <name>.pt (crash-safe checkpoint: weights, Adam state, iteration, elapsed time), <name>.train_log.csv
(mean J and its terms every `log_every` iterations) and <name>.settings.json; `resume` continues from the
checkpoint, appending to the log, so a long CPU run can be stopped and picked up again.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.nets.style_net import StyleNet
from export.style import StyleError
from export.style.content import held_out_removed, list_images, load_content_set, zoom_crop
from export.style.costs import Costs, CostSettings, build_cost
from export.style.optimize import descend, progress_bar
from export.train.checkpoint import load_checkpoint as read_checkpoint
from export.train.checkpoint import save_checkpoint

CHECKPOINT_FORMAT = "facegate-style-net/1"
LOG_FIELDS = ["iteration", "seconds", "images", "J", "content", "style", "tv", "lr"]


@dataclass(frozen=True)
class TrainSettings:
    name: str
    style: str  # the painting's path
    content: tuple[str, ...]  # folders of content images (searched recursively)
    size: int = 256  # training crops are size × size
    # Multi-scale crops: images are decoded at load_size² (0: at size², the whole centre square) and each
    # batch is zoomed by a factor drawn log-uniformly from `zoom`, then cut to random size² crops. A net
    # trained on small crops then also sees faces at the scale the device and the benchmark show them.
    load_size: int = 0
    zoom: tuple[float, float] = (1.0, 1.0)
    batch: int = 16
    lr: float = 1e-3
    iterations: int = 20000
    minutes: float = 0.0  # wall-clock budget; 0 = none. The learning rate decays over the last 30 % of
    # whichever budget (iterations or minutes) runs out first.
    channels: tuple[int, int, int] = (16, 32, 64)
    res_blocks: int = 5
    max_images: int = 0  # 0 = every image found
    seed: int = 0
    # Warm start: the weights (not the optimiser state) of another style's checkpoint with the same layout.
    # The encoder/decoder a net learns (keep the face, paint at this scale) is mostly shared across
    # styles, so a CPU budget goes further from a trained net than from a random one. "" = random init.
    init: str = ""
    log_every: int = 50
    checkpoint_every: int = 500
    costs: CostSettings = field(default_factory=CostSettings)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["costs"] = self.costs.to_dict()
        d["content"] = list(self.content)
        d["channels"] = list(self.channels)
        d["zoom"] = list(self.zoom)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainSettings:
        d = {k: v for k, v in d.items() if k in {f.name for f in fields(cls)}}
        d["costs"] = CostSettings.from_dict(d.get("costs", {}))
        d["content"] = tuple(d.get("content", ()))
        d["channels"] = tuple(d.get("channels", (16, 32, 64)))
        d["zoom"] = tuple(float(v) for v in d.get("zoom", (1.0, 1.0)))
        return cls(**d)


def checkpoint_path(out_dir: Path, name: str) -> Path:
    return Path(out_dir) / f"{name}.pt"


def log_path(out_dir: Path, name: str) -> Path:
    return Path(out_dir) / f"{name}.train_log.csv"


def settings_path(out_dir: Path, name: str) -> Path:
    return Path(out_dir) / f"{name}.settings.json"


def load_checkpoint(path: Path) -> dict[str, Any]:
    state = read_checkpoint(path, StyleError)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise StyleError(f"{path}: not a facegate style-net checkpoint")
    return state


def load_style_net(path: Path) -> tuple[StyleNet, TrainSettings, dict[str, Any]]:
    """(the trained net in eval mode, its training settings, the checkpoint's other fields)."""
    state = load_checkpoint(path)
    settings = TrainSettings.from_dict(state["settings"])
    net = StyleNet(settings.channels, settings.res_blocks)
    net.load_state_dict(state["model"], strict=True)
    return net.eval(), settings, {k: v for k, v in state.items() if k not in ("model", "optimizer")}


def lr_at(settings: TrainSettings, iteration: int, elapsed: float) -> float:
    progress = iteration / max(1, settings.iterations)
    if settings.minutes > 0:
        progress = max(progress, elapsed / (settings.minutes * 60.0))
    if progress <= 0.7:
        return settings.lr
    return settings.lr * max(0.1, 1.0 - 0.9 * (progress - 0.7) / 0.3)


def read_log(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def train(settings: TrainSettings, out_dir: Path, device: str = "cpu", resume: bool = False,
          weights: Path | None = None, progress: bool = True, workers: int = 8) -> dict[str, Any]:
    """Train a StyleNet on the content folders with J; writes <name>.pt, .train_log.csv and .settings.json.

    With `resume`, training continues from <name>.pt (weights, Adam state, iteration, elapsed time) and the
    log is appended to. Returns a summary (iterations, seconds, last logged costs).
    """
    if settings.load_size and settings.load_size < settings.size:
        raise StyleError(f"load size {settings.load_size} is smaller than the crop size {settings.size}")
    if not 0 < settings.zoom[0] <= settings.zoom[1]:
        raise StyleError(f"zoom {settings.zoom}: need 0 < MIN ≤ MAX")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt, log = checkpoint_path(out_dir, settings.name), log_path(out_dir, settings.name)
    dev = torch.device(device)
    if dev.type == "cuda":
        # TF32 tensor cores for convs and Gram products (10-bit mantissas, fp32 sums: ample for a training
        # gradient; the benchmark's reference losses turn it off); cuDNN picks conv algorithms once per shape.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(settings.seed)

    net = StyleNet(settings.channels, settings.res_blocks).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=settings.lr)
    iteration, elapsed, seen = 0, 0.0, 0
    warm_start: dict[str, Any] | None = None  # what the init checkpoint was trained with, kept for provenance
    if resume and ckpt.is_file():
        state = load_checkpoint(ckpt)
        if TrainSettings.from_dict(state["settings"]).costs != settings.costs:
            raise StyleError(f"{ckpt}: trained with other costs; resume needs the same settings")
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        iteration, elapsed, seen = int(state["iteration"]), float(state["elapsed_s"]), int(state.get("images", 0))
        warm_start = state.get("warm_start")
    else:
        if settings.init:
            init_state = load_checkpoint(Path(settings.init))
            start = TrainSettings.from_dict(init_state["settings"])
            if (start.channels, start.res_blocks) != (settings.channels, settings.res_blocks):
                raise StyleError(f"{settings.init}: a {start.channels}/{start.res_blocks} net, not "
                                 f"{settings.channels}/{settings.res_blocks}")
            net.load_state_dict(init_state["model"])
            warm_start = {"checkpoint": Path(settings.init).name,
                          **{k: init_state.get(k) for k in ("settings", "iteration", "elapsed_s", "images",
                                                            "device", "torch", "warm_start")}}
        with open(log, "w", newline="") as f:
            csv.writer(f).writerow(LOG_FIELDS)
    settings_path(out_dir, settings.name).write_text(json.dumps(settings.to_dict(), indent=2) + "\n")

    paths = held_out_removed(list_images(settings.content))
    if settings.max_images:
        order = np.random.default_rng(settings.seed).permutation(len(paths))[: settings.max_images]
        paths = [paths[int(i)] for i in sorted(order)]
    t_load = time.perf_counter()
    images = load_content_set(paths, settings.load_size or settings.size, workers=workers).to(dev)
    cost = build_cost(Path(settings.style), settings.costs, weights, device=str(dev))
    print(f"{settings.name}: {len(images)} content images at {images.shape[-1]}² loaded in "
          f"{time.perf_counter() - t_load:.1f} s; device {dev}", flush=True)

    gen = torch.Generator().manual_seed(settings.seed * 1_000_003 + iteration)  # resumes draw fresh batches
    budget = settings.minutes * 60.0 if settings.minutes > 0 else math.inf
    sums = torch.zeros(4, device=dev)
    window = 0
    lr = settings.lr
    bar = progress_bar(settings.iterations, progress)
    if bar is not None:
        bar.update(iteration)
    net.train()

    def save() -> None:
        save_checkpoint(ckpt, {"format": CHECKPOINT_FORMAT, "settings": settings.to_dict(),
                                "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                                "optimizer": opt.state_dict(), "iteration": iteration, "elapsed_s": elapsed,
                                "images": seen, "torch": torch.__version__, "device": str(dev),
                                "warm_start": warm_start})

    def batch_costs(_step: int) -> Costs:
        """J of the net's output on a fresh batch, at the learning rate this point of the budget gets."""
        nonlocal lr
        lr = lr_at(settings, iteration, elapsed)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(len(images), (settings.batch,), generator=gen).to(dev)
        flip = (torch.rand(settings.batch, generator=gen) < 0.5).to(dev).view(-1, 1, 1, 1)
        x = images[idx].float() / 255.0
        x = torch.where(flip, x.flip(-1), x)
        if x.shape[-1] != settings.size or settings.zoom != (1.0, 1.0):
            x = zoom_crop(x, settings.size, settings.zoom, gen)
        return cost(net(x), cost.content_target(x))

    def stepped(_step: int, c: Costs) -> bool:
        """Count, log and checkpoint after each step; True once the iterations or the minutes are spent."""
        nonlocal iteration, seen, window, elapsed
        iteration += 1
        seen += settings.batch
        sums.add_(torch.stack([c.total.mean(), c.content.mean(), c.style.mean(), c.tv.mean()]).detach())
        window += 1
        elapsed = time.perf_counter() - t_start
        if bar is not None:
            bar.update(1)
        if iteration % settings.log_every == 0 or iteration >= settings.iterations or elapsed >= budget:
            means = (sums / window).tolist()  # the only host sync: once per log row
            with open(log, "a", newline="") as f:
                csv.writer(f).writerow([iteration, f"{elapsed:.2f}", seen, *(f"{v:.6g}" for v in means),
                                        f"{lr:.3g}"])
            if bar is not None:
                bar.set_postfix(J=f"{means[0]:.4g}")
            sums.zero_()
            window = 0
        if iteration % settings.checkpoint_every == 0:
            save()
        return iteration >= settings.iterations or elapsed >= budget

    t_start = time.perf_counter() - elapsed
    if iteration < settings.iterations and elapsed < budget:
        descend(opt, batch_costs, stop=lambda _k, _c: False, stepped=stepped)
    save()
    if bar is not None:
        bar.close()
    last = read_log(log)[-1:] or [{}]
    return {"name": settings.name, "iterations": iteration, "seconds": round(elapsed, 1), "images": seen,
            "checkpoint": str(ckpt), "log": str(log), "last": last[0]}
