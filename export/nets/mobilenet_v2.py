"""ImageNet MobileNetV2 written in torchvision's module layout, so its published state dict loads strictly.

Only what the style losses need is here: the feature trunk (`features.*`) and the classifier (kept so the
checkpoint loads with strict=True and so a test can check the weights by classifying), plus `trunk()`
which cuts the network after the last layer a loss reads.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# (expansion t, output channels c, repeats n, first stride s), the paper's Table 2.
SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConvBNReLU6(nn.Sequential):
    """Conv (no bias) → BatchNorm → ReLU6: torchvision's Conv2dNormActivation keys (.0 conv, .1 bn)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, t: int) -> None:
        super().__init__()
        hidden = cin * t
        self.use_res = stride == 1 and cin == cout
        self.expands = t != 1
        layers: list[nn.Module] = [ConvBNReLU6(cin, hidden, kernel=1)] if self.expands else []
        layers += [ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tapped(x)[0]

    def forward_tapped(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(block output, the first ReLU6 activation inside the block — the expansion layer when there is one)."""
        first = self.conv[0](x)
        out = first
        for layer in list(self.conv)[1:]:
            out = layer(out)
        return (x + out if self.use_res else out), first


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        blocks: list[nn.Module] = [ConvBNReLU6(3, 32, stride=2)]
        cin = 32
        for t, c, n, s in SETTINGS:
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        blocks.append(ConvBNReLU6(cin, 1280, kernel=1))
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


def load_mobilenet_v2(weights: Path) -> MobileNetV2:
    """The ImageNet network from a torchvision-layout state dict, strictly (a missing or extra key is an error)."""
    model = MobileNetV2()
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def trunk(model: MobileNetV2, last_block: int) -> nn.Sequential:
    """features[0..last_block]: everything later is never evaluated, so it is not kept (nor computed)."""
    return nn.Sequential(*list(model.features)[: last_block + 1])
