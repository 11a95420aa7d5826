"""dlib's face-recognition ResNet (`anet_type` of dlib's dnn_face_recognition_ex.cpp), rebuilt in PyTorch.

The device builds the same network as an ONNX graph without PyTorch (edge/models/dlib_resnet_graph.py, which
holds the architecture and the structure check both use); this rebuild is the export recipe's (TFLite) and
the reference the device graph is tested against.

    input 150×150 RGB, (x − channel mean) / 256
    con 32 7×7/2 → affine → relu → max_pool 3×3/2
    level4: 3 × ares 32      level3: ares_down 64, 3 × ares 64     level2: ares_down 128, 2 × ares 128
    level1: ares_down 256, 2 × ares 256                             level0: ares_down 256
    avg_pool_everything → fc_no_bias 128

A block is con 3×3/s → affine → relu → con 3×3/1 → affine, added to its input (an `ares`), or, for `ares_down`
(stride 2, no padding), to a 2×2/2 average pool of its input; then relu. `affine` is a frozen batch norm:
per-channel scale and shift.

dlib's add_prev adds tensors of different shapes by zero-filling both to the larger one, aligned at channel 0
and the top-left pixel. That happens here: a down-sampling block's pooled shortcut has half the channels of its
main path (zero-filled), and at 8×8 → 3×3 (main) vs 4×4 (pool) and 4×4 → 1×1 vs 2×2 the main path is the
smaller one and is zero-filled at its bottom and right. Reproducing that is what keeps the descriptors equal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edge.models.dlib_dat import DlibNet, Layer

# The architecture and its structure check are the device converter's (edge/models/dlib_resnet_graph.py),
# so the PyTorch rebuild and the ONNX graph built without PyTorch read the same network the same way.
from edge.models.dlib_resnet_graph import (
    EMBEDDING_DIM,
    STAGES,
    STEM_WIDTH,
    affine_params,
    check_structure,
)


class Affine(nn.Module):
    """dlib's affine layer in convolution mode: y = x · scale[c] + shift[c]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.shift = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: a + b after zero-filling both to their larger (C, H, W), aligned at (0, 0, 0)."""
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def grow(t: torch.Tensor) -> torch.Tensor:
        pads = (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1])
        return F.pad(t, pads) if any(pads) else t

    return grow(a) + grow(b)


def _conv(cin: int, cout: int, k: int, stride: int, pad: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=pad, bias=True)


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, down: bool) -> None:
        super().__init__()
        stride = 2 if down else 1
        # dlib's con<N,3,3,s,s> pads by 1 only at stride 1 (its default: stride != 1 → no padding).
        self.conv1 = _conv(cin, cout, 3, stride, 0 if down else 1)
        self.aff1 = Affine(cout)
        self.conv2 = _conv(cout, cout, 3, 1, 1)
        self.aff2 = Affine(cout)
        self.down = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.aff2(self.conv2(F.relu(self.aff1(self.conv1(x)))))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        # add_prev's operands: its subnetwork's output (the shortcut) first, the tagged block output second.
        return F.relu(add_prev(shortcut, y))


class DlibResNet(nn.Module):
    """Normalised NCHW RGB 150×150 input (see `input_mean`) → the 128-D descriptor dlib computes (unnormalised)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = _conv(3, STEM_WIDTH, 7, 2, 0)
        self.aff = Affine(STEM_WIDTH)
        blocks = []
        cin = STEM_WIDTH
        for width, n, down in STAGES:
            for i in range(n):
                blocks.append(Block(cin, width, down and i == 0))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, EMBEDDING_DIM, bias=False)
        self.input_mean = (122.782, 117.001, 104.298)  # dlib's defaults; from_dlib sets the file's values
        self.input_scale = 256.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.aff(self.conv(x))), 3, 2)
        x = self.blocks(x)
        return self.fc(x.mean(dim=(2, 3)))

    # -- weights from dlib ------------------------------------------------------------------------------------
    @classmethod
    def from_dlib(cls, net: DlibNet) -> DlibResNet:
        """The network with the weights of a decoded dlib .dat, after checking its layer structure."""
        check_structure(net)  # ModelError naming the first layer that differs
        inp = net.input.params
        model = cls()
        model.input_mean = tuple(float(v) for v in inp["avg"])
        layers = iter(la for la in net.layers if la.kind in ("con", "affine", "bn_con", "fc", "max_pool",
                                                              "avg_pool"))
        with torch.no_grad():
            _load_conv(model.conv, next(layers))
            _load_affine(model.aff, next(layers))
            _check_pool(next(layers), 3, 2)
            for block in model.blocks:
                _load_conv(block.conv1, next(layers))
                _load_affine(block.aff1, next(layers))
                _load_conv(block.conv2, next(layers))
                _load_affine(block.aff2, next(layers))
                if block.down:
                    _check_pool(next(layers), 2, 2)
            _check_pool(next(layers), 0, 1)
            fc = next(layers)
            if fc.params["bias"] is not None or fc.params["weight"].shape != (model.fc.in_features, EMBEDDING_DIM):
                raise ValueError(f"unexpected final fc layer {fc.params['weight'].shape}, bias {fc.params['use_bias']}")
            model.fc.weight.copy_(torch.from_numpy(fc.params["weight"].T.copy()))
        return model.eval()


def _load_conv(conv: nn.Conv2d, layer: Layer) -> None:
    p = layer.params
    geometry = ((p["nr"], p["nc"]), (p["stride_y"], p["stride_x"]), (p["padding_y"], p["padding_x"]))
    if layer.kind != "con" or geometry != (conv.kernel_size, conv.stride, conv.padding):
        raise ValueError(f"{layer.version}: geometry {geometry} does not match {conv}")
    if tuple(p["weight"].shape) != tuple(conv.weight.shape):
        raise ValueError(f"{layer.version}: weight shape {p['weight'].shape}, expected {tuple(conv.weight.shape)}")
    conv.weight.copy_(torch.from_numpy(p["weight"].copy()))
    assert conv.bias is not None
    if p["bias"] is None:
        conv.bias.zero_()
    else:
        conv.bias.copy_(torch.from_numpy(p["bias"]))


def _load_affine(aff: Affine, layer: Layer) -> None:
    scale, shift = affine_params(layer)
    if scale.size != aff.scale.numel():
        raise ValueError(f"{layer.version}: {scale.size} channels, expected {aff.scale.numel()}")
    aff.scale.copy_(torch.from_numpy(scale.reshape(aff.scale.shape)))
    aff.shift.copy_(torch.from_numpy(shift.reshape(aff.shift.shape)))


def _check_pool(layer: Layer, size: int, stride: int) -> None:
    p = layer.params
    got = (p["nr"], p["nc"], p["stride_y"], p["stride_x"], p["padding_y"], p["padding_x"])
    if got != (size, size, stride, stride, 0, 0):
        raise ValueError(f"{layer.version}: pool {got}, expected {size}×{size}/{stride} without padding")


def preprocess(rgb: torch.Tensor, model: DlibResNet) -> torch.Tensor:
    """(N, 150, 150, 3) RGB 0–255 → the normalised NCHW tensor dlib's input layer produces."""
    mean = torch.tensor(model.input_mean, dtype=torch.float32).view(1, 3, 1, 1)
    return (rgb.permute(0, 3, 1, 2).to(torch.float32) - mean) / model.input_scale
