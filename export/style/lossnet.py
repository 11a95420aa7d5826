"""The loss network: ImageNet MobileNetV2 (export/nets/mobilenet_v2.py) cut after the last layer read.

Which activations, and why (MobileNetV2 is not VGG): its blocks' outputs are *linear* bottlenecks summed with
residual shortcuts — signed, low-entropy, peaky maps, the kind Wang et al. (CVPR 2021, "SWAG") show to give
poor Gram statistics. We read instead the first ReLU6 inside a block (the 1×1 expansion layer), which is
what VGG's relu layers are: a fresh conv + non-linearity, non-negative, wide (6× the block's width). ReLU6
also caps the peaks, the job SWAG's softmax does for ResNets; `smoothing="softmax"` (costs.CostSettings) adds
SWAG's smoothing (a softmax over channels at each position, temperature T) for experiments, off by default.
Layers:
    style   b2.expand (96 ch, ½ res), b4.expand (144 ch, ¼), b7.expand (192 ch, ⅛), b11.expand (384 ch, 1/16)
    content b7.expand
so features[12…] are never built. Pixels enter as RGB in [0, 1] and are ImageNet-normalised inside.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from edge.paths import data_dir
from export.nets.mobilenet_v2 import IMAGENET_MEAN, IMAGENET_STD, InvertedResidual, load_mobilenet_v2, trunk
from export.style import StyleError


def default_weights() -> Path:
    """The ImageNet MobileNetV2 state dict: $FACEGATE_MOBILENET_V2, else <data dir>/models/…"""
    env = os.environ.get("FACEGATE_MOBILENET_V2")
    return Path(env) if env else data_dir() / "models" / "mobilenet_v2-b0353104.pth"


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
