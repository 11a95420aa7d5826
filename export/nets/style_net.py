"""The feed-forward stylisation network (Johnson et al. 2016, slimmed for 2-core CPUs).

Layout: 9×9 conv → two stride-2 convs → residual blocks → two (nearest ×2 upsample → conv) → 9×9 conv.
Every conv pads by reflection (zero padding darkens borders, and tile edges on the device would show it);
instance normalisation (Ulyanov et al.) instead of batch norm, so contrast does not depend on the batch;
upsample-then-convolve instead of transposed convs, which leave checkerboard artefacts.

Input and output: RGB NCHW floats in [0, 1], height and width multiples of 4 (two ×2 downsamplings).
The default widths 16-32-64 with 5 residual blocks hold 0.4 M parameters (1.6 MB fp32).
"""

from __future__ import annotations

import torch
from torch import nn

STRIDE = 4  # input sides must be multiples of this to come back at the same size


class ConvIN(nn.Sequential):
    """Reflection pad → conv → instance norm (→ ReLU)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, relu: bool = True) -> None:
        layers: list[nn.Module] = [nn.ReflectionPad2d(kernel // 2), nn.Conv2d(cin, cout, kernel, stride),
                                   nn.InstanceNorm2d(cout, affine=True)]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(ConvIN(channels, channels, 3), ConvIN(channels, channels, 3, relu=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Upsample(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), ConvIN(cin, cout, 3))


class StyleNet(nn.Module):
    def __init__(self, channels: tuple[int, int, int] = (16, 32, 64), res_blocks: int = 5) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.channels = tuple(channels)
        self.res_blocks = res_blocks
        self.net = nn.Sequential(
            ConvIN(3, c1, 9), ConvIN(c1, c2, 3, stride=2), ConvIN(c2, c3, 3, stride=2),
            *[Residual(c3) for _ in range(res_blocks)],
            Upsample(c3, c2), Upsample(c2, c1),
            nn.ReflectionPad2d(4), nn.Conv2d(c1, 3, 9),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The net predicts 0–255-scaled colours (as in Johnson's formulation); dividing here keeps the
        # interface in [0, 1]. Unclamped while training, so gradients never vanish at the range's ends.
        return self.net(x * 255.0) / 255.0


class ClampedStyleNet(nn.Module):
    """What gets exported: the trained net with its output clamped to displayable colours."""

    def __init__(self, net: StyleNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).clamp(0.0, 1.0)


def parameter_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
