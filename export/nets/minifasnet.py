"""MiniFASNet (V2 and V1SE), the silent anti-spoofing nets of minivision-ai's Silent-Face-Anti-Spoofing.

Written from the published weights' structure: a MobileFaceNet-style stack of conv/BN/PReLU blocks, inverted
bottlenecks (1×1 expand, 3×3 depth-wise, 1×1 linear projection) with identity shortcuts inside the residual
stages, and in V1SE a squeeze-excitation step on the last block of each residual stage. Channel widths are
pruned per layer, so they are read from the state dict rather than hard-coded. Input: 80×80 BGR 0–255
(no normalisation); output: 3 logits, index 1 = live.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

STRIDE2 = ("conv_23", "conv_34", "conv_45")  # the down-sampling bottlenecks between residual stages
STAGES = ("conv_3", "conv_4", "conv_5")


class ConvBlock(nn.Module):
    """Conv (no bias) → BN → PReLU; without the PReLU it is the 'linear' block of a projection."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, groups: int = 1,
                 act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.prelu = nn.PReLU(cout) if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return self.prelu(x) if self.prelu is not None else x


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A mean over H and W rather than AdaptiveAvgPool2d: both exporters lower it without surprises.
        s = x.mean(dim=(2, 3), keepdim=True)
        s = torch.relu(self.bn1(self.fc1(s)))
        s = torch.sigmoid(self.bn2(self.fc2(s)))
        return x * s


class Bottleneck(nn.Module):
    """1×1 expand → 3×3 depth-wise (stride s) → 1×1 projection; shortcut added when `residual`."""

    def __init__(self, cin: int, hidden: int, cout: int, stride: int, residual: bool, se_hidden: int = 0) -> None:
        super().__init__()
        self.conv = ConvBlock(cin, hidden, 1)
        self.conv_dw = ConvBlock(hidden, hidden, 3, stride, 1, groups=hidden)
        self.project = ConvBlock(hidden, cout, 1, act=False)
        self.se_module = SqueezeExcite(cout, se_hidden) if se_hidden else None
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.conv_dw(self.conv(x)))
        if self.se_module is not None:
            y = self.se_module(y)
        return x + y if self.residual else y


class Stage(nn.Module):
    def __init__(self, blocks: list[Bottleneck]) -> None:
        super().__init__()
        self.model = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class MiniFASNet(nn.Module):
    def __init__(self, sd: Mapping[str, torch.Tensor], softmax: bool = False) -> None:
        """Build the layers the (prefix-free) state dict `sd` describes; load it with load_state_dict."""
        super().__init__()

        def shape(key: str) -> tuple[int, ...]:
            return tuple(sd[key].shape)

        def bottleneck(prefix: str, stride: int, residual: bool) -> Bottleneck:
            hidden, cin = shape(f"{prefix}.conv.conv.weight")[:2]
            cout = shape(f"{prefix}.project.conv.weight")[0]
            se_key = f"{prefix}.se_module.fc1.weight"
            return Bottleneck(cin, hidden, cout, stride, residual, shape(se_key)[0] if se_key in sd else 0)

        c1 = shape("conv1.conv.weight")[0]
        self.conv1 = ConvBlock(3, c1, 3, 2, 1)
        self.conv2_dw = ConvBlock(c1, c1, 3, 1, 1, groups=c1)
        for down, stage in zip(STRIDE2, STAGES, strict=True):
            setattr(self, down, bottleneck(down, 2, residual=False))
            count = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith(f"{stage}.model."))
            setattr(self, stage, Stage([bottleneck(f"{stage}.model.{i}", 1, residual=True) for i in range(count)]))
        c6, c5 = shape("conv_6_sep.conv.weight")[:2]
        self.conv_6_sep = ConvBlock(c5, c6, 1)
        k = shape("conv_6_dw.conv.weight")[-1]  # covers the whole 5×5 map: a learned global pooling
        self.conv_6_dw = ConvBlock(c6, c6, k, groups=c6, act=False)
        emb, _ = shape("linear.weight")
        self.linear = nn.Linear(c6, emb, bias=False)
        self.bn = nn.BatchNorm1d(emb)
        self.prob = nn.Linear(emb, shape("prob.weight")[0], bias=False)
        self.softmax = softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2_dw(self.conv1(x))
        x = self.conv_5(self.conv_45(self.conv_4(self.conv_34(self.conv_3(self.conv_23(x))))))
        x = self.conv_6_dw(self.conv_6_sep(x))
        # Index the 1×1 map instead of flattening, so no reshape of the batch dimension reaches the exporters.
        x = self.prob(self.bn(self.linear(x[:, :, 0, 0])))  # dropout sits here in training; a no-op in eval
        return torch.softmax(x, dim=1) if self.softmax else x


def strip_prefix(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the 'module.' prefix DataParallel training left on every key."""
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


def load(path: str, softmax: bool = False) -> MiniFASNet:
    """The net of a published .pth state dict, in eval mode."""
    sd = strip_prefix(torch.load(path, map_location="cpu", weights_only=True))
    net = MiniFASNet(sd, softmax=softmax)
    net.load_state_dict(sd, strict=True)
    return net.eval()
