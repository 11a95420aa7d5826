"""SFace in PyTorch, built from the weights of the ONNX file the device runs.

The graph is a plain chain: input scaling, 27 convolutions (3×3 stem, then depth-wise 3×3 / point-wise 1×1
pairs), each followed by batch norm and PReLU, then batch norm, a fully connected layer to 128 and a last batch
norm. Strides, groups and padding are read from the ONNX nodes, weights from the de-quantised initializers.

For the exporters the net is rewritten, not transcribed: every batch norm is folded into the convolution
before it (or, at the tail, into the fully connected layer), and that layer becomes a 7×7 convolution over
the final 1024×7×7 map, so no flatten of the batch dimension is needed. The output is L2-normalised by hand
(torch.nn.functional.normalize lowers to ops not every converter takes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from edge.errors import ModelError
from edge.models.prepare import prepare

# The repairs that turn the shipped file into plain float weights; PRelu is kept as PRelu here.
WEIGHT_STEPS = ("drop_dangling_inputs", "freeze_initializers", "materialize_weights")


@dataclass
class ConvSpec:
    weight: np.ndarray
    stride: int
    padding: int
    groups: int
    bias: np.ndarray | None = None
    bn: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float] | None = None  # γ, β, mean, var, ε
    slope: np.ndarray | None = None  # PReLU slopes, one per channel


@dataclass
class SFaceWeights:
    offset: float = 0.0  # x' = (x − offset) · scale
    scale: float = 1.0
    convs: list[ConvSpec] = field(default_factory=list)
    tail_bn: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float] | None = None  # before the FC
    fc_weight: np.ndarray | None = None  # (out, in)
    fc_bias: np.ndarray | None = None
    out_bn: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float] | None = None  # after the FC


def read_onnx(path: Path) -> SFaceWeights:
    """Walk the SFace graph in order and collect its layers; refuses any node it does not understand."""
    model = prepare(onnx.load(str(path)), WEIGHT_STEPS)
    g = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    w = SFaceWeights()

    def bn_params(node: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
        eps = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (consts[n].astype(np.float64) for n in node.input[1:5])
        return gamma, beta, mean, var, float(eps)

    for node in g.node:
        op = node.op_type
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if op == "Sub" and not w.convs:
            w.offset = float(consts[node.input[1]].reshape(-1)[0])
        elif op == "Mul" and not w.convs:
            w.scale = float(consts[node.input[1]].reshape(-1)[0])
        elif op == "Conv":
            stride, pads = attrs.get("strides", [1, 1]), attrs.get("pads", [0, 0, 0, 0])
            if len(set(stride)) != 1 or len(set(pads)) != 1:
                raise ModelError(f"SFace conv {node.name}: only square strides and symmetric padding are expected")
            bias = consts[node.input[2]] if len(node.input) > 2 and node.input[2] else None
            w.convs.append(ConvSpec(consts[node.input[1]].astype(np.float64), stride[0], pads[0],
                                    attrs.get("group", 1), bias))
        elif op == "BatchNormalization":
            if w.fc_weight is not None:
                w.out_bn = bn_params(node)
            elif w.convs and w.convs[-1].bn is None:
                w.convs[-1].bn = bn_params(node)
            else:
                w.tail_bn = bn_params(node)
        elif op == "PRelu":
            w.convs[-1].slope = consts[node.input[1]].reshape(-1).astype(np.float32)
        elif op == "Gemm":
            weight = consts[node.input[1]]
            w.fc_weight = (weight if attrs.get("transB", 0) else weight.T).astype(np.float64)
            w.fc_bias = consts[node.input[2]].astype(np.float64) if len(node.input) > 2 else None
        elif op in ("Dropout", "Flatten", "Constant"):
            continue  # inference no-ops, or the flatten the 7×7 convolution replaces
        else:
            raise ModelError(f"SFace graph has an unexpected {op} node ({node.name})")
    if w.fc_weight is None or not w.convs:
        raise ModelError(f"{path}: not an SFace graph (no convolutions or no fully connected layer)")
    return w


def _fold(weight: np.ndarray, bias: np.ndarray | None,
          bn: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float] | None) -> tuple[np.ndarray, np.ndarray]:
    """Conv/FC weight and bias with a following batch norm folded in (output channels on axis 0)."""
    b = np.zeros(weight.shape[0]) if bias is None else bias.astype(np.float64)
    if bn is None:
        return weight, b
    gamma, beta, mean, var, eps = bn
    k = gamma / np.sqrt(var + eps)
    return weight * k.reshape(-1, *([1] * (weight.ndim - 1))), (b - mean) * k + beta


class SFace(nn.Module):
    def __init__(self, w: SFaceWeights, normalise: bool = True) -> None:
        super().__init__()
        self.offset, self.scale = w.offset, w.scale
        layers: list[nn.Module] = []
        for spec in w.convs:
            weight, bias = _fold(spec.weight, spec.bias, spec.bn)
            conv = nn.Conv2d(weight.shape[1] * spec.groups, weight.shape[0], weight.shape[2], spec.stride,
                             spec.padding, groups=spec.groups)
            conv.weight.data = torch.from_numpy(weight.astype(np.float32))
            conv.bias.data = torch.from_numpy(bias.astype(np.float32))
            layers.append(conv)
            if spec.slope is not None:
                act = nn.PReLU(len(spec.slope))
                act.weight.data = torch.from_numpy(spec.slope.copy())
                layers.append(act)
        self.features = nn.Sequential(*layers)
        channels = w.convs[-1].weight.shape[0]
        fc = w.fc_weight
        assert fc is not None
        side = round((fc.shape[1] / channels) ** 0.5)
        if side * side * channels != fc.shape[1]:
            raise ModelError(f"SFace FC input {fc.shape[1]} is not {channels}×k×k")
        kernel = fc.reshape(fc.shape[0], channels, side, side)
        bias = np.zeros(fc.shape[0]) if w.fc_bias is None else w.fc_bias
        if w.tail_bn is not None:  # FC(a·x + b) = (FC·a) x + FC·b: fold the pre-FC batch norm into the FC
            gamma, beta, mean, var, eps = w.tail_bn
            a = gamma / np.sqrt(var + eps)
            shift = beta - mean * a
            bias = bias + (kernel * shift.reshape(1, -1, 1, 1)).sum(axis=(1, 2, 3))
            kernel = kernel * a.reshape(1, -1, 1, 1)
        kernel, bias = _fold(kernel, bias, w.out_bn)
        self.embed = nn.Conv2d(channels, fc.shape[0], side)
        self.embed.weight.data = torch.from_numpy(kernel.astype(np.float32))
        self.embed.bias.data = torch.from_numpy(bias.astype(np.float32))
        self.normalise = normalise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 112, 112) RGB 0–255 → (N, 128) embeddings (unit length when `normalise`)."""
        x = self.features((x - self.offset) * self.scale)
        x = self.embed(x)[:, :, 0, 0]
        if self.normalise:
            x = x * torch.rsqrt((x * x).sum(dim=1, keepdim=True) + 1e-12)
        return x


def load(path: Path, normalise: bool = True) -> SFace:
    return SFace(read_onnx(path), normalise=normalise).eval()


def from_registry(name: str = "sface") -> SFace:
    """The net of an installed SFace-family model (a factory for `facegate export torch --module`)."""
    from edge.models.registry import Registry

    registry = Registry()
    return load(registry.verify(registry.manifest(name)))
