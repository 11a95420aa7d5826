"""The costs J(G) = α J_content + β J_style + γ J_tv (formulas in export/style/__init__.py) for one painting.

The style image S and the generated image G need not have the same size. Since G_kk' is a sum over
positions, S's matrix is taken per position and multiplied by G's n_H·n_W, i.e. the Gram matrix S would have
at G's size; when the sizes agree this is exactly the theory's formula.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from export.style.images import load_image
from export.style.lossnet import LossNet, default_weights, parse_tap


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


# -- J for one painting -----------------------------------------------------------------------------------------
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
