"""Neural style transfer with the costs as the theory states them: optimise one image, or train a network.

Costs (Gatys et al. 2016; notation of the deeplearning.ai course), on activations a^[l] of the loss network:
    J_content(C, G)  = ½ ‖a^[l](C) − a^[l](G)‖²                          (a plain sum over n_H·n_W·n_C entries)
    G_kk'            = Σ_i Σ_j a_ijk a_ijk'                                (the style, or Gram, matrix)
    J_style^[l](S,G) = 1/(2 n_H n_W n_C)² Σ_k Σ_k' (G_kk'^(S) − G_kk'^(G))²
    J_style          = Σ_l λ_l J_style^[l]
    J                = α J_content + β J_style + γ J_tv,  J_tv = Σ (neighbour pixel differences)², pixels in [0, 1]
The style image S and the generated image G need not have the same size. Since G_kk' is a sum over
positions, S's matrix is taken per position and multiplied by G's n_H·n_W, i.e. the Gram matrix S would have
at G's size; when the sizes agree this is exactly the formula above.

Loss network: ImageNet MobileNetV2 (export/nets/mobilenet_v2.py) cut after the last layer read. Which
activations, and why (MobileNetV2 is not VGG): its blocks' outputs are *linear* bottlenecks summed with
residual shortcuts — signed, low-entropy, peaky maps, the kind Wang et al. (CVPR 2021, "SWAG") show to give
poor Gram statistics. We read instead the first ReLU6 inside a block (the 1×1 expansion layer), which is
what VGG's relu layers are: a fresh conv + non-linearity, non-negative, wide (6× the block's width). ReLU6
also caps the peaks, the job SWAG's softmax does for ResNets; `smoothing="softmax"` adds SWAG's smoothing
(a softmax over channels at each position, temperature T) for experiments, off by default. Layers:
    style   b2.expand (96 ch, ½ res), b4.expand (144 ch, ¼), b7.expand (192 ch, ⅛), b11.expand (384 ch, 1/16)
    content b7.expand
so features[12…] are never built. Pixels enter as RGB in [0, 1] and are ImageNet-normalised inside.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from edge.errors import FacegateError
from edge.imageio import image_files
from edge.paths import data_dir
from export.nets.mobilenet_v2 import IMAGENET_MEAN, IMAGENET_STD, InvertedResidual, load_mobilenet_v2, trunk
from export.nets.style_net import STRIDE, StyleNet
from export.train.checkpoint import load_checkpoint as read_checkpoint
from export.train.checkpoint import save_checkpoint

CHECKPOINT_FORMAT = "facegate-style-net/1"


class StyleError(FacegateError):
    """Bad style/optimisation/training input: a missing image, weights file or checkpoint."""


def default_weights() -> Path:
    """The ImageNet MobileNetV2 state dict: $FACEGATE_MOBILENET_V2, else <data dir>/models/…"""
    env = os.environ.get("FACEGATE_MOBILENET_V2")
    return Path(env) if env else data_dir() / "models" / "mobilenet_v2-b0353104.pth"


# -- settings ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CostSettings:
    content_layer: str = "b7.expand"
    style_layers: tuple[tuple[str, float], ...] = (
        ("b2.expand", 1.0), ("b4.expand", 1.0), ("b7.expand", 1.0), ("b11.expand", 1.0))
    alpha: float = 1.0  # content weight
    beta: float = 1e8  # style weight
    tv: float = 0.1  # total-variation weight (pixels in [0, 1])
    smoothing: str = "none"  # "none" or "softmax" (SWAG, over channels)
    temperature: float = 1.0
    style_size: int = 512  # the painting is seen with this longer side, whatever G's size

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["style_layers"] = {k: w for k, w in self.style_layers}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CostSettings:
        d = dict(d)
        if isinstance(d.get("style_layers"), dict):
            d["style_layers"] = tuple((str(k), float(w)) for k, w in d["style_layers"].items())
        elif "style_layers" in d:
            d["style_layers"] = tuple((str(k), float(w)) for k, w in d["style_layers"])
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in fields(cls)}})


# -- the theory's formulas --------------------------------------------------------------------------------------
def gram(a: torch.Tensor) -> torch.Tensor:
    """G_kk' = Σ_i Σ_j a_ijk a_ijk' for activations (B, n_C, n_H, n_W): (B, n_C, n_C), not normalised."""
    f = a.flatten(2)
    return f @ f.transpose(1, 2)


def content_cost(a_c: torch.Tensor, a_g: torch.Tensor) -> torch.Tensor:
    """½ ‖a(C) − a(G)‖², one value per batch item."""
    return 0.5 * (a_c - a_g).pow(2).flatten(1).sum(1)


def layer_style_cost(g_s: torch.Tensor, g_g: torch.Tensor, n_h: int, n_w: int, n_c: int) -> torch.Tensor:
    """1/(2 n_H n_W n_C)² Σ_k Σ_k' (G^(S) − G^(G))², one value per batch item."""
    return (g_s - g_g).pow(2).flatten(1).sum(1) / float(2 * n_h * n_w * n_c) ** 2


def tv_cost(x: torch.Tensor) -> torch.Tensor:
    """Σ over neighbouring pixels of their squared difference, one value per batch item."""
    dy = (x[..., 1:, :] - x[..., :-1, :]).pow(2).flatten(1).sum(1)
    dx = (x[..., :, 1:] - x[..., :, :-1]).pow(2).flatten(1).sum(1)
    return dx + dy


# -- loss network -----------------------------------------------------------------------------------------------
_TAP = re.compile(r"^b(\d+)(\.expand)?$")


def parse_tap(name: str) -> tuple[int, bool]:
    """'b7.expand' → (7, True): the first ReLU6 of block 7; 'b6' → (6, False): block 6's output."""
    m = _TAP.match(name)
    if not m:
        raise StyleError(f"layer {name!r}: expected 'b<k>' or 'b<k>.expand' (k = MobileNetV2 features index)")
    k, expand = int(m.group(1)), bool(m.group(2))
    if not 0 <= k <= 18 or (expand and k in (0, 1, 18)):
        raise StyleError(f"layer {name!r}: no such activation in MobileNetV2")
    return k, expand


class LossNet(nn.Module):
    """The truncated, frozen MobileNetV2: RGB [0, 1] in, the requested activations out."""

    def __init__(self, weights: Path, taps: Iterable[str]) -> None:
        super().__init__()
        if not Path(weights).is_file():
            raise StyleError(f"{weights}: MobileNetV2 weights not found (set FACEGATE_MOBILENET_V2)")
        self.taps = sorted(set(taps), key=parse_tap)
        parsed = [parse_tap(t) for t in self.taps]
        self.last = max(k for k, _ in parsed)
        self.expand_at = {k for k, e in parsed if e}
        self.output_at = {k for k, e in parsed if not e}
        self.blocks = trunk(load_mobilenet_v2(weights), self.last)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> LossNet:
        return super().train(False)  # BatchNorm stays in inference mode, always

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (x - self.mean) / self.std
        out: dict[str, torch.Tensor] = {}
        for k, block in enumerate(self.blocks):
            if k in self.expand_at:
                assert isinstance(block, InvertedResidual)
                x, first = block.forward_tapped(x)
                out[f"b{k}.expand"] = first
            else:
                x = block(x)
            if k in self.output_at:
                out[f"b{k}"] = x
        return out


@dataclass
class Costs:
    """Per-image values (B,) of each term and of the weighted total J."""

    total: torch.Tensor
    content: torch.Tensor
    style: torch.Tensor
    tv: torch.Tensor

    def item(self, i: int = 0) -> dict[str, float]:
        return {"J": float(self.total[i].detach()), "content": float(self.content[i].detach()),
                "style": float(self.style[i].detach()),
                "tv": float(self.tv[i].detach())}


class StyleCost(nn.Module):
    """J(G) for one painting S: holds S's per-position Gram matrices and the loss network."""

    def __init__(self, net: LossNet, settings: CostSettings, style: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.settings = settings
        with torch.no_grad():
            feats = net(style)
        for name, _ in settings.style_layers:
            a = self.smooth(feats[name]).float()
            self.register_buffer(_buf(name), gram(a)[0] / (a.shape[2] * a.shape[3]))

    def smooth(self, a: torch.Tensor) -> torch.Tensor:
        if self.settings.smoothing == "softmax":
            return torch.softmax(a / self.settings.temperature, dim=1)
        return a

    def content_target(self, content: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.smooth(self.net(content)[self.settings.content_layer]).float()

    def forward(self, g: torch.Tensor, target: torch.Tensor) -> Costs:
        s = self.settings
        feats = self.net(g)
        j_content = content_cost(target, self.smooth(feats[s.content_layer]).float())
        j_style = torch.zeros_like(j_content)
        for name, weight in s.style_layers:
            a = self.smooth(feats[name]).float()
            _, n_c, n_h, n_w = a.shape
            g_s = getattr(self, _buf(name)) * (n_h * n_w)  # S's Gram matrix at G's size
            j_style = j_style + weight * layer_style_cost(g_s, gram(a), n_h, n_w, n_c)
        j_tv = tv_cost(g.float())
        total = s.alpha * j_content + s.beta * j_style + s.tv * j_tv
        return Costs(total, j_content, j_style, j_tv)


def _buf(layer: str) -> str:
    return "gram_" + layer.replace(".", "_")


def loss_taps(settings: CostSettings) -> list[str]:
    return sorted({settings.content_layer, *(k for k, _ in settings.style_layers)}, key=parse_tap)


def build_cost(style_image: Path, settings: CostSettings, weights: Path | None = None,
               device: str = "cpu", net: LossNet | None = None) -> StyleCost:
    net = net or LossNet(weights or default_weights(), loss_taps(settings))
    net = net.to(device)
    style = load_image(style_image, longer=settings.style_size).to(device)
    return StyleCost(net, settings, style).to(device)


# -- images -----------------------------------------------------------------------------------------------------
def load_image(path: Path, longer: int | None = None, size: tuple[int, int] | None = None) -> torch.Tensor:
    """RGB (1, 3, H, W) in [0, 1]; resized to `size` (w, h) or so its longer side is `longer`."""
    p = Path(path)
    if not p.is_file():
        raise StyleError(f"{p}: no such image")
    with Image.open(p) as im:
        im = im.convert("RGB")
        if size is not None:
            im = im.resize(size, Image.Resampling.BICUBIC)
        elif longer is not None:
            w, h = im.size
            scale = longer / max(w, h)
            im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
        arr = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()


def save_image(x: torch.Tensor, path: Path) -> None:
    arr = (x.detach()[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def fit_stride(x: torch.Tensor, stride: int = STRIDE) -> torch.Tensor:
    """Crop H and W down to multiples of `stride` (the style net's two downsamplings need it)."""
    h, w = x.shape[-2:]
    return x[..., : h - h % stride, : w - w % stride]


# -- optimisation of one image ----------------------------------------------------------------------------------
@dataclass
class OptimizeResult:
    image: torch.Tensor
    history: list[dict[str, float]] = field(default_factory=list)
    reached: bool = False  # True when stop_at was given and J fell to it


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
    if init == "content":
        g = content.detach().clone()
    else:
        gen = torch.Generator().manual_seed(seed)
        g = torch.rand(content.shape, generator=gen).to(content.device)
    g.requires_grad_(True)
    history: list[dict[str, float]] = []
    bar = _progress(steps, progress)
    reached = False

    def evaluate() -> Costs:
        c = cost(g, target)
        c.total.sum().backward()
        return c

    if method == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam([g], lr=lr)
        for step in range(steps + 1):
            opt.zero_grad(set_to_none=True)
            c = evaluate()
            j = float(c.total[0].detach())
            if step % record_every == 0 or step == steps:
                history.append({"step": step, **c.item(), "seconds": time.perf_counter() - t0})
            if bar is not None:
                bar.set_postfix(J=f"{j:.4g}")
            if stop_at is not None and j <= stop_at:
                reached = True
                history[-1:] = [{"step": step, **c.item(), "seconds": time.perf_counter() - t0}]
                break
            if step == steps:
                break
            opt.step()
            with torch.no_grad():
                g.clamp_(0.0, 1.0)
            if bar is not None:
                bar.update(1)
    else:
        opt = torch.optim.LBFGS([g], lr=1.0, max_iter=1, history_size=20, line_search_fn="strong_wolfe")
        last: list[Costs] = []

        def closure() -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            c = evaluate()
            last[:] = [c]
            return c.total.sum().detach()

        for step in range(steps + 1):
            closure() if step == steps else opt.step(closure)
            c = last[0]
            history.append({"step": step, **c.item(), "seconds": time.perf_counter() - t0})
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


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="step", dynamic_ncols=True, leave=False)


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


# -- feed-forward training --------------------------------------------------------------------------------------
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
    log_every: int = 50
    checkpoint_every: int = 500
    costs: CostSettings = CostSettings()

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


def list_images(folders: Sequence[str | Path]) -> list[Path]:
    found: list[Path] = []
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            raise StyleError(f"{root}: content folder not found")
        found += image_files(root)
    return found


def _square(path: Path, size: int) -> np.ndarray:
    """Shorter side resized to `size`, centre crop: (3, size, size) uint8."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        scale = size / min(w, h)
        im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8).transpose(2, 0, 1)


def held_out_removed(paths: Sequence[Path]) -> list[Path]:
    """`paths` without the benchmark's held-out identities (LFW's <Name>/<Name>_NNNN.jpg, or flat copies)."""
    held = {rel.split("/")[0] for rel in BENCH_PORTRAITS}
    return [p for p in paths if p.parent.name not in held and re.sub(r"_\d+$", "", p.stem) not in held]


def zoom_crop(x: torch.Tensor, size: int, zoom: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
    """The batch zoomed by one factor drawn log-uniformly from `zoom` (never below size²), then one random
    size × size crop per image."""
    lo, hi = math.log(zoom[0]), math.log(zoom[1])
    factor = math.exp(lo + (hi - lo) * float(torch.rand((), generator=gen)))
    side = max(size, round(x.shape[-1] * factor))
    if side != x.shape[-1]:
        x = nn.functional.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    offsets = torch.randint(side - size + 1, (len(x), 2), generator=gen).tolist()
    return torch.stack([img[:, y:y + size, c:c + size] for img, (y, c) in zip(x, offsets, strict=True)])


def load_content_set(paths: Sequence[Path], size: int, workers: int = 8) -> torch.Tensor:
    """Every content image decoded once into one (N, 3, size, size) uint8 tensor: a few thousand portraits at
    256² fit in under 1 GB, and sampling batches from memory keeps the accelerator busy without a loader."""
    if not paths:
        raise StyleError("no content images found")
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # PIL releases the GIL while decoding
        arrays = list(pool.map(lambda p: _square(p, size), paths))
    return torch.from_numpy(np.stack(arrays))


def checkpoint_path(out_dir: Path, name: str) -> Path:
    return Path(out_dir) / f"{name}.pt"


def log_path(out_dir: Path, name: str) -> Path:
    return Path(out_dir) / f"{name}.train_log.csv"


def settings_path(out_dir: Path, name: str) -> Path:
    return Path(out_dir) / f"{name}.settings.json"


LOG_FIELDS = ["iteration", "seconds", "images", "J", "content", "style", "tv", "lr"]


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


def _lr_at(settings: TrainSettings, iteration: int, elapsed: float) -> float:
    progress = iteration / max(1, settings.iterations)
    if settings.minutes > 0:
        progress = max(progress, elapsed / (settings.minutes * 60.0))
    if progress <= 0.7:
        return settings.lr
    return settings.lr * max(0.1, 1.0 - 0.9 * (progress - 0.7) / 0.3)


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
    if resume and ckpt.is_file():
        state = load_checkpoint(ckpt)
        if TrainSettings.from_dict(state["settings"]).costs != settings.costs:
            raise StyleError(f"{ckpt}: trained with other costs; resume needs the same settings")
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        iteration, elapsed, seen = int(state["iteration"]), float(state["elapsed_s"]), int(state.get("images", 0))
    else:
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
    bar = _progress(settings.iterations, progress)
    if bar is not None:
        bar.update(iteration)
    net.train()

    def save() -> None:
        save_checkpoint(ckpt, {"format": CHECKPOINT_FORMAT, "settings": settings.to_dict(),
                                "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                                "optimizer": opt.state_dict(), "iteration": iteration, "elapsed_s": elapsed,
                                "images": seen, "torch": torch.__version__, "device": str(dev)})

    t_start = time.perf_counter() - elapsed
    while iteration < settings.iterations and elapsed < budget:
        lr = _lr_at(settings, iteration, elapsed)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(len(images), (settings.batch,), generator=gen).to(dev)
        flip = (torch.rand(settings.batch, generator=gen) < 0.5).to(dev).view(-1, 1, 1, 1)
        x = images[idx].float() / 255.0
        x = torch.where(flip, x.flip(-1), x)
        if x.shape[-1] != settings.size or settings.zoom != (1.0, 1.0):
            x = zoom_crop(x, settings.size, settings.zoom, gen)
        target = cost.content_target(x)
        c = cost(net(x), target)
        opt.zero_grad(set_to_none=True)
        c.total.mean().backward()
        opt.step()
        iteration += 1
        seen += settings.batch
        sums += torch.stack([c.total.mean(), c.content.mean(), c.style.mean(), c.tv.mean()]).detach()
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
    save()
    if bar is not None:
        bar.close()
    last = read_log(log)[-1:] or [{}]
    return {"name": settings.name, "iterations": iteration, "seconds": round(elapsed, 1), "images": seen,
            "checkpoint": str(ckpt), "log": str(log), "last": last[0]}


def read_log(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


# -- export: ONNX + TFLite bundles with a parity report ---------------------------------------------------------
# Held-out LFW portraits (their identities are left out of the device's training subset), as paths relative
# to the LFW images folder: the parity images and the benchmark's contents.
BENCH_PORTRAITS = (
    "Angelina_Jolie/Angelina_Jolie_0001.jpg", "Colin_Powell/Colin_Powell_0038.jpg",
    "Serena_Williams/Serena_Williams_0001.jpg", "Nelson_Mandela/Nelson_Mandela_0001.jpg",
    "Oprah_Winfrey/Oprah_Winfrey_0001.jpg",
)
PARITY_MIN_PSNR_DB = 40.0


def default_portraits(root: Path | None = None) -> list[Path]:
    base = Path(root) if root else data_dir() / "lfw" / "images"
    return [base / rel for rel in BENCH_PORTRAITS]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two images in [0, 1]; identical images report 150 dB (JSON has no infinity)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return 150.0 if mse <= 1e-15 else min(150.0, 10.0 * math.log10(1.0 / mse))


def _onnx_export(module: nn.Module, tile: int, out: Path) -> Path:
    import warnings

    sample = torch.rand(1, 3, tile, tile)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and instance-norm notes
        # dynamo=False: the TorchScript exporter keeps height and width symbolic without shape guards.
        torch.onnx.export(module, (sample,), str(out), input_names=["image"], output_names=["stylized"],
                          opset_version=17, dynamo=False,
                          dynamic_axes={"image": {2: "height", 3: "width"}, "stylized": {2: "height", 3: "width"}})
    return out


def export_style(checkpoint: Path, out_dir: Path, tile: int = 512, overlap: int = 64,
                 parity_images: Sequence[Path] | None = None, name: str | None = None) -> dict[str, Any]:
    """Write bundles style-<name> (ONNX, any size) and style-<name>-litert (TFLite, tile × tile) into
    `out_dir`, each with parity.json: PSNR of ONNX vs TFLite vs PyTorch on real portraits at tile²."""
    import tempfile

    from edge.runtime import open_runtime
    from export.bundle import check_targets, write_bundle
    from export.nets.style_net import ClampedStyleNet
    from export.tflite import convert_fp32

    if tile % STRIDE:
        raise StyleError(f"tile {tile} must be a multiple of {STRIDE}")
    net, settings, meta = load_style_net(checkpoint)
    style = name or settings.name
    module = ClampedStyleNet(net).eval()
    images = list(parity_images or default_portraits())
    xs = [load_image(p, size=(tile, tile)) for p in images]
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = _onnx_export(module, tile, Path(tmp) / "model.onnx")
        tfl_file = convert_fp32(module, (1, 3, tile, tile), Path(tmp) / "model.tflite")
        ort, lrt = open_runtime("onnxruntime", onnx_file), open_runtime("litert", tfl_file)
        rows = []
        for p, x in zip(images, xs, strict=True):
            with torch.no_grad():
                ref = module(x).numpy()
            a = ort.run({ort.input_names[0]: x.numpy()})[0]
            b = lrt.run({lrt.input_names[0]: x.numpy()})[0]
            rows.append({"image": Path(p).name, "psnr_onnx_tflite": psnr(a, b), "psnr_onnx_torch": psnr(a, ref),
                         "psnr_tflite_torch": psnr(b, ref), "max_abs_onnx_tflite": float(np.abs(a - b).max())})
        parity = {"reference": "PyTorch checkpoint", "crops": len(rows), "tile": tile,
                  "min_psnr_db_onnx_tflite": min(r["psnr_onnx_tflite"] for r in rows),
                  "min_psnr_db_onnx_torch": min(r["psnr_onnx_torch"] for r in rows),
                  "min_psnr_db_tflite_torch": min(r["psnr_tflite_torch"] for r in rows),
                  "max_abs_diff": max(r["max_abs_onnx_tflite"] for r in rows), "images": rows}
        parity = check_targets(parity, {"min_psnr_db_onnx_tflite": PARITY_MIN_PSNR_DB})
        base = {
            "task": "stylize", "licence": "Apache-2.0",
            "source": {"recipe": "export.train.style", "checkpoint": Path(checkpoint).name,
                       "painting": Path(settings.style).name},
            "input": {"size": None, "layout": "NCHW", "colour": "RGB", "stride": STRIDE},
            "normalisation": {"mean": [0, 0, 0], "std": [255, 255, 255]},
            "extra": {"style": style, "painting": Path(settings.style).name, "tile": tile, "overlap": overlap,
                      "costs": settings.costs.to_dict(), "channels": list(settings.channels),
                      "res_blocks": settings.res_blocks, "iterations": meta.get("iteration"),
                      "train_size": settings.size},
        }
        onnx_bundle = write_bundle(out_dir, {**base, "name": f"style-{style}", "runtime": "onnxruntime"},
                                   onnx_file, parity)
        tfl_manifest = {**base, "name": f"style-{style}-litert", "runtime": "litert",
                        "input": {**base["input"], "size": [tile, tile]}}
        tfl_bundle = write_bundle(out_dir, tfl_manifest, tfl_file, parity)
    return {"style": style, "onnx": str(onnx_bundle), "tflite": str(tfl_bundle), "parity": parity}


# -- benchmark --------------------------------------------------------------------------------------------------
@dataclass
class BenchStyle:
    name: str
    painting: Path
    costs: CostSettings


def reference_style_losses(styles: Sequence[BenchStyle], contents: Sequence[Path], size: int = 512,
                           steps: int = 500, lr: float = 0.01, device: str = "cpu", weights: Path | None = None,
                           progress: bool = False) -> dict[str, Any]:
    """J_style after `steps` Adam steps from C, per style and content: the benchmark's reference (on an
    accelerator this is minutes, not the CPU's hour; fp32 throughout, no TF32)."""
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    out: dict[str, Any] = {"size": size, "steps": steps, "lr": lr, "device": device, "losses": {}, "costs": {}}
    for st in styles:
        cost = build_cost(st.painting, st.costs, weights, device=device)
        out["costs"][st.name] = st.costs.to_dict()
        out["losses"][st.name] = {}
        for p in contents:
            c = load_image(p, size=(size, size)).to(device)
            r = optimize(cost, c, steps=steps, lr=lr, progress=progress, record_every=steps)
            out["losses"][st.name][_content_key(p)] = r.history[-1]["style"]
    return out


def _content_key(p: Path) -> str:
    return f"{Path(p).parent.name}/{Path(p).name}"


def bench(styles: Sequence[str], contents: Sequence[Path], paintings: Path, size: int = 512, lr: float = 0.01,
          steps: int = 500, max_steps: int = 1000, reference: dict[str, Any] | None = None,
          runtime: str = "onnxruntime", grid: Path | None = None, weights: Path | None = None,
          progress: bool = False) -> dict[str, Any]:
    """The feed-forward nets against per-image optimisation, at size², one thread (see the CLI's help)."""
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
            t0 = time.perf_counter()
            y_rgb = runner(rgb)
            ff_s = time.perf_counter() - t0
            y = torch.from_numpy(np.ascontiguousarray(y_rgb.transpose(2, 0, 1)))[None].float()
            with torch.no_grad():
                j_ff = cost(y, cost.content_target(c))
                style_dist = {k: float(j(y, j.content_target(c)).style[0]) for k, j in judges.items()}
            nearest = min(style_dist, key=style_dist.__getitem__)
            nearest_ok += nearest == painting.stem
            nearest_n += 1
            ref_style = None if ref is None else ref.get(_content_key(p))
            reached, opt_s, style_at = _optimize_for_bench(
                cost, c, float(j_ff.total[0]), lr, max_steps, None if ref_style is not None else steps, progress)
            if ref_style is None:
                ref_style = style_at
            pairs.append({"content": _content_key(p), "feedforward_ms": ff_s * 1000.0,
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
        "size": size, "threads": 1, "runtime": runtime, "lr": lr, "steps": steps, "max_steps": max_steps,
        "reference": "given" if reference is not None else "computed here",
        "contents": [_content_key(p) for p in contents], "styles": results,
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


def _optimize_for_bench(cost: StyleCost, content: torch.Tensor, j_ff: float, lr: float, max_steps: int,
                        style_at: int | None, progress: bool) -> tuple[bool, float, float]:
    """Adam from C at a fixed rate. Returns (J fell to j_ff, seconds until it did — content features
    included, the painting's Gram matrices excluded as they serve every photo —, J_style after `style_at`
    steps). Steps after the time is taken are not timed."""
    t0 = time.perf_counter()
    target = cost.content_target(content)
    g = content.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([g], lr=lr)
    reached_s: float | None = None
    style_value = math.nan
    last = max(max_steps, style_at or 0)
    bar = _progress(last, progress)
    for step in range(last + 1):
        opt.zero_grad(set_to_none=True)
        c = cost(g, target)
        c.total.sum().backward()
        if reached_s is None and float(c.total[0].detach()) <= j_ff:
            reached_s = time.perf_counter() - t0
        if style_at is not None and step == style_at:
            style_value = float(c.style[0].detach())
        done_timing = reached_s is not None or step >= max_steps
        if done_timing and (style_at is None or step >= style_at):
            break
        opt.step()
        with torch.no_grad():
            g.clamp_(0.0, 1.0)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return reached_s is not None, (reached_s if reached_s is not None else time.perf_counter() - t0), style_value


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


def save_grid(rows: list[list[np.ndarray]], header: list[np.ndarray], path: Path, cell: int = 192) -> None:
    """Contents down the side, styles across; the first row shows the paintings, the first column the photos."""
    def tile(a: np.ndarray) -> Image.Image:
        return Image.fromarray((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)).resize((cell, cell))

    cols = max(len(r) for r in rows)
    sheet = Image.new("RGB", (cols * cell, (len(rows) + 1) * cell), "white")
    for j, a in enumerate(header):
        sheet.paste(tile(a), ((j + 1) * cell, 0))
    for i, r in enumerate(rows):
        for j, a in enumerate(r):
            sheet.paste(tile(a), (j * cell, (i + 1) * cell))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
