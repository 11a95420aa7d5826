"""Small embedding nets for `facegate train triplet`: a from-scratch CNN and projection heads on a backbone.

`SmallEmbed` is a six-convolution net (≈ 35 M multiply-adds at 64×64) meant to prove the triplet machinery on
a 2-core CPU in minutes, not to compete with SFace. `ProjectionHead` is a linear map that reduces a frozen
backbone's embedding (e.g. 128 → 64); `Projected` chains backbone and head into one embedder the `torch`
export recipe can convert. Outputs are L2-normalised by hand (x·rsqrt(Σx²)), which every converter takes.

The factories take no arguments, as `facegate export torch --module MOD:FUNC` calls them.
"""

from __future__ import annotations

import torch
from torch import nn

SMALL_INPUT = (64, 64)  # (W, H)
SMALL_DIM = 128
SMALL_MEAN = (127.5, 127.5, 127.5)
SMALL_STD = (128.0, 128.0, 128.0)


def l2n(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(dim=1, keepdim=True) + 1e-12)


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallEmbed(nn.Module):
    """(N, 3, 64, 64) normalised RGB → (N, dim) unit vectors."""

    def __init__(self, dim: int = SMALL_DIM, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _block(3, w, 2), _block(w, 2 * w, 1),  # 32×32
            _block(2 * w, 4 * w, 2), _block(4 * w, 4 * w, 1),  # 16×16
            _block(4 * w, 8 * w, 2), _block(8 * w, 8 * w, 1),  # 8×8
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embed = nn.Conv2d(8 * w, dim, 1)  # a 1×1 conv on the pooled map: no flatten of the batch dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2n(self.embed(self.pool(self.features(x)))[:, :, 0, 0])


class ProjectionHead(nn.Module):
    """(N, in) backbone embeddings → (N, out) unit vectors through one linear map."""

    def __init__(self, dim_in: int = 128, dim_out: int = 64) -> None:
        super().__init__()
        # The bias lets a head centre its input (the LDA start does); it starts at zero otherwise.
        self.linear = nn.Linear(dim_in, dim_out, bias=True)
        nn.init.orthogonal_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2n(self.linear(x))


class Projected(nn.Module):
    """A frozen backbone followed by a projection head: the exported embedder."""

    def __init__(self, backbone: nn.Module, head: ProjectionHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


# -- factories (no arguments) --------------------------------------------------------------------------------------
def small_embed() -> SmallEmbed:
    return SmallEmbed()


def projected_sface() -> Projected:
    """SFace (the installed model's weights) → 64-d head; load the trained state dict on top."""
    from export.nets.sface import from_registry

    return Projected(from_registry("sface"), ProjectionHead(128, 64))


def projected_dlib() -> Projected:
    """dlib's ResNet (face-recognition-models' .dat) → 64-d head; load the trained state dict on top."""
    from export.recipes.dlib_resnet import load_module

    return Projected(_Normalised(load_module()), ProjectionHead(128, 64))


class _Normalised(nn.Module):
    """dlib's descriptors are not unit length; the head was trained on the device's unit vectors."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2n(self.net(x))
