"""Receptive fields of an ONNX graph's feature maps, by walking its Conv and pooling nodes.

Per spatial axis, a feature map's unit i sees input pixels [offset + i·jump, offset + i·jump + size): `size`
grows by (k_eff − 1)·jump at every window op (k_eff = dilation·(k − 1) + 1), `jump` multiplies by the
stride, and `offset` moves back by the leading padding times the incoming jump (negative where padding lets
a unit see past the image border; a Pad node moves it the same way). Where branches meet (Add, Concat, …)
the fields must share a jump and the union is taken. Element-wise ops (normalisation, activations, the
prepared PReLU's Mul/Add) leave the field alone; a map gated by a global statistic (squeeze-excitation) keeps
its local field — the gate's whole-image input is not counted. Flatten, Gemm and global pooling end the
spatial path. The field is the usual bound: dilation leaves holes in it, and where a strided layer stops
short of the last pixels the last units' fields cover pixels they never see.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edge.errors import ModelError

WINDOW_OPS = frozenset({"Conv", "MaxPool", "AveragePool", "LpPool"})
GLOBAL_OPS = frozenset({"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "Flatten", "Gemm", "MatMul",
                        "Reshape", "ReduceMean", "ReduceMax", "ReduceSum", "Squeeze"})
# Ops that work pixel by pixel (possibly mixing channels, or broadcasting a per-channel constant).
POINTWISE_OPS = frozenset({
    "Relu", "PRelu", "LeakyRelu", "Elu", "Selu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus",
    "Clip", "BatchNormalization", "Dropout", "Identity", "Add", "Sub", "Mul", "Div", "Sum", "Max", "Min",
    "Mean", "Concat", "Cast", "Abs", "Neg", "Exp", "Log", "Sqrt", "Pow", "Reciprocal", "QuantizeLinear",
    "DequantizeLinear", "Where", "Greater", "Less", "Equal", "Not", "And", "Or"})


@dataclass(frozen=True)
class Field:
    """One feature map's receptive field, per axis (y, x), in input pixels."""

    size: tuple[int, int]  # side of one unit's field
    jump: tuple[int, int]  # input pixels between neighbouring units
    offset: tuple[int, int]  # top-left input pixel of unit (0, 0); negative where padding reaches outside
    shape: tuple[int, int]  # the map's height and width

    def box(self, i: int, j: int) -> tuple[int, int, int, int]:
        """(y0, x0, y1, x1), end exclusive, of unit (i, j)'s field; may extend past the image."""
        y0 = self.offset[0] + i * self.jump[0]
        x0 = self.offset[1] + j * self.jump[1]
        return y0, x0, y0 + self.size[0], x0 + self.size[1]

    def to_dict(self) -> dict[str, Any]:
        return {"size": list(self.size), "jump": list(self.jump), "offset": list(self.offset),
                "shape": list(self.shape)}


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _window(node: onnx.NodeProto, inp: Field, initializers: dict[str, onnx.TensorProto]) -> Field:
    a = _attrs(node)
    kernel = a.get("kernel_shape")
    if kernel is None and node.op_type == "Conv":  # optional for Conv: read it off the weight
        weight = initializers.get(node.input[1])
        if weight is None:
            raise ModelError(f"{node.op_type} node {node.name!r}: no kernel_shape and no constant weight")
        kernel = list(weight.dims[2:])
    if kernel is None or len(kernel) != 2:
        raise ModelError(f"{node.op_type} node {node.name!r}: only 2-D windows are supported")
    strides = a.get("strides") or [1, 1]
    dilations = a.get("dilations") or [1, 1]
    pads = list(a.get("pads") or [0, 0, 0, 0])
    auto_pad = a.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    ceil_mode = bool(a.get("ceil_mode", 0))
    size, jump, offset, shape = [], [], [], []
    for ax in range(2):
        k_eff = dilations[ax] * (kernel[ax] - 1) + 1
        n, s = inp.shape[ax], strides[ax]
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            total = max((math.ceil(n / s) - 1) * s + k_eff - n, 0)
            small, large = total // 2, total - total // 2
            pads[ax], pads[ax + 2] = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
        elif auto_pad == "VALID":
            pads[ax] = pads[ax + 2] = 0
        span = n + pads[ax] + pads[ax + 2] - k_eff
        if span < 0:
            raise ModelError(f"{node.op_type} node {node.name!r}: window larger than its padded input")
        out = (math.ceil(span / s) if ceil_mode else span // s) + 1
        size.append(inp.size[ax] + (k_eff - 1) * inp.jump[ax])
        jump.append(inp.jump[ax] * s)
        offset.append(inp.offset[ax] - pads[ax] * inp.jump[ax])
        shape.append(out)
    return Field(tuple(size), tuple(jump), tuple(offset), tuple(shape))  # type: ignore[arg-type]


def _pad(node: onnx.NodeProto, inp: Field, constants: dict[str, np.ndarray]) -> Field:
    """Pad (opset ≥ 11: the pads are an input): a border that shifts the map's origin and grows its size."""
    if len(node.input) < 2 or node.input[1] not in constants:
        raise ModelError(f"Pad node {node.name!r}: its pads are not a constant")
    pads = [int(v) for v in constants[node.input[1]].ravel()]
    rank = len(pads) // 2
    axes = list(range(rank))
    if len(node.input) > 3 and node.input[3]:  # opset 18: pads name only these axes
        if node.input[3] not in constants:
            raise ModelError(f"Pad node {node.name!r}: its axes are not a constant")
        axes = [int(a) for a in constants[node.input[3]].ravel()]
    begin, end = [0, 0], [0, 0]
    for k, axis in enumerate(axes):
        axis = axis + 4 if axis < 0 else axis
        if axis in (2, 3):  # NCHW: padding channels or the batch leaves the field alone
            begin[axis - 2], end[axis - 2] = pads[k], pads[k + rank]
    offset = tuple(inp.offset[ax] - begin[ax] * inp.jump[ax] for ax in range(2))
    shape = tuple(inp.shape[ax] + begin[ax] + end[ax] for ax in range(2))
    return Field(inp.size, inp.jump, offset, shape)  # type: ignore[arg-type]


def _union(node: onnx.NodeProto, fields: list[Field]) -> Field:
    first = fields[0]
    for f in fields[1:]:
        if f.jump != first.jump or f.shape != first.shape:
            raise ModelError(f"{node.op_type} node {node.name!r} joins maps of different strides or sizes "
                             f"({first.jump} {first.shape} vs {f.jump} {f.shape})")
    offset = tuple(min(f.offset[ax] for f in fields) for ax in range(2))
    end = tuple(max(f.offset[ax] + f.size[ax] for f in fields) for ax in range(2))
    size = tuple(end[ax] - offset[ax] for ax in range(2))
    return Field(size, first.jump, offset, first.shape)  # type: ignore[arg-type]


def receptive_fields(model: onnx.ModelProto, input_hw: tuple[int, int], input_name: str | None = None
                     ) -> dict[str, Field]:
    """The field of every tensor on the spatial path from the image input, by tensor name.

    Nodes are visited in the graph's order (ONNX requires a topological one). A node that reads a spatial
    map and is neither a window, a point-wise op nor one that ends the spatial path is refused by name:
    better no picture than a wrong box.
    """
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    constants = {name: numpy_helper.to_array(t) for name, t in initializers.items()}
    constants.update({n.output[0]: numpy_helper.to_array(helper.get_attribute_value(n.attribute[0]))
                      for n in graph.node if n.op_type == "Constant" and n.attribute
                      and n.attribute[0].name == "value"})
    inputs = [i.name for i in graph.input if i.name not in initializers]
    name = input_name or (inputs[0] if inputs else None)
    if name is None:
        raise ModelError("the graph has no image input")
    h, w = (int(v) for v in input_hw)
    fields: dict[str, Field] = {name: Field((1, 1), (1, 1), (0, 0), (h, w))}
    for node in graph.node:
        spatial = [fields[i] for i in node.input if i in fields]
        if not spatial:
            continue  # not on the image's path (constants, shapes, a global gate's own branch)
        op = node.op_type
        if op in GLOBAL_OPS:
            continue
        if op in WINDOW_OPS:
            out = _window(node, spatial[0], initializers)
        elif op == "Pad":
            out = _pad(node, spatial[0], constants)
        elif op in POINTWISE_OPS:
            out = _union(node, spatial)
        else:
            raise ModelError(f"cannot follow receptive fields through {op} node {node.name!r}")
        for o in node.output[:1]:  # Dropout/MaxPool may add a mask or indices output: not feature maps
            fields[o] = out
    return fields


def feature_maps(model: onnx.ModelProto, fields: dict[str, Field]) -> list[str]:
    """The maps worth showing, in graph order: those a window op or the end of the spatial path reads.

    In a conv net these are the layers' outputs after normalisation and activation (what the next layer
    sees), not the raw convolution outputs in between.
    """
    out: list[str] = []
    for node in model.graph.node:
        if node.op_type in WINDOW_OPS or node.op_type in GLOBAL_OPS:
            t = node.input[0]
            if t in fields and t not in out and fields[t].size != (1, 1):  # (1, 1): the image itself
                out.append(t)
    return out
