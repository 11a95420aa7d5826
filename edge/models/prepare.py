"""One-time graph repairs for third-party ONNX files, and conversions of other formats, with onnx and numpy only.

Each step is a named function over an onnx.ModelProto; a manifest lists the steps its file needs, and the
registry runs them once and caches the result under the model directory with its own sha256. A list may
begin with a converter (CONVERTERS): a function from the verified source file to an onnx.ModelProto, for a
file that is not ONNX (dlib's .dat); the repairs then apply to its result.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edge.errors import ModelError


def drop_dangling_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove graph inputs that no node reads: onnxruntime refuses a graph that declares them."""
    g = model.graph
    used = {name for node in g.node for name in node.input} | {o.name for o in g.output}
    _replace(g.input, [i for i in g.input if i.name in used])
    return model


def freeze_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove graph inputs that merely shadow initializers, making the weights constants.

    Old exporters list every weight as an overridable input; onnxruntime must then assume a caller may
    replace them and cannot constant-fold or fuse through them.
    """
    g = model.graph
    inits = {i.name for i in g.initializer}
    _replace(g.input, [i for i in g.input if i.name not in inits])
    return model


def _dequantize(x: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int, block: int) -> np.ndarray:
    xf = x.astype(np.float32)
    zf = np.zeros_like(scale, dtype=np.float32) if zero is None else zero.astype(np.float32)
    if scale.size == 1:  # per-tensor, whatever block_size claims
        return (xf - zf.reshape(())) * scale.astype(np.float32).reshape(())
    axis = axis % x.ndim
    if block > 0:  # blocked: each scale covers `block` consecutive elements along `axis`
        scale = np.repeat(scale, block, axis=axis)
        zf = np.repeat(zf, block, axis=axis)
        index = [slice(None)] * x.ndim
        index[axis] = slice(0, x.shape[axis])
        scale, zf = scale[tuple(index)], zf[tuple(index)]
    else:  # per-axis
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zf = scale.reshape(shape), zf.reshape(shape)
    return (xf - zf) * scale.astype(np.float32)


def materialize_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold DequantizeLinear (and Reshape) of constant weights into plain float32 initializers.

    Block-quantised weights make onnxruntime de-quantise on every call; some files it refuses outright.
    """
    g = model.graph
    consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    kept = []
    folded: dict[str, np.ndarray] = {}
    for node in g.node:
        if node.op_type == "Constant" and not node.input:
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
            kept.append(node)
            continue
        if node.op_type in ("DequantizeLinear", "Reshape") and all(n in consts for n in node.input if n):
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "DequantizeLinear":
                zero = consts[node.input[2]] if len(node.input) > 2 and node.input[2] else None
                value = _dequantize(consts[node.input[0]], consts[node.input[1]], zero,
                                    attrs.get("axis", 1), attrs.get("block_size", 0))
            else:
                value = consts[node.input[0]].reshape(consts[node.input[1]])
            consts[node.output[0]] = value
            folded[node.output[0]] = value
            continue
        kept.append(node)
    used = {n for node in kept for n in node.input} | {o.name for o in g.output}
    new_inits = [i for i in g.initializer if i.name in used]
    new_inits += [numpy_helper.from_array(v.astype(np.float32), name) for name, v in folded.items() if name in used]
    _replace(g.node, kept)
    _replace(g.initializer, new_inits)
    _drop_stale_value_info(model)
    return model


def dynamic_input(model: onnx.ModelProto) -> onnx.ModelProto:
    """Make the image input's height and width symbolic so one graph serves any (stride-padded) size."""
    g = model.graph
    dims = g.input[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        raise ModelError("dynamic_input expects a 4-D image input")
    dims[2].Clear()
    dims[2].dim_param = "height"
    dims[3].Clear()
    dims[3].dim_param = "width"
    for out in g.output:
        for d in out.type.tensor_type.shape.dim[1:-1]:
            d.Clear()
            d.dim_param = "anchors"
    del g.value_info[:]
    return model


def dynamic_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """Make the leading (batch) dimension symbolic so several faces run in one call."""
    g = model.graph
    for v in list(g.input) + list(g.output):
        dims = v.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_param = "batch"
    del g.value_info[:]
    return model


def prelu_as_relu(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite PRelu(x, a) as a·x + (1 − a)·Relu(x).

    Identical for any slope (SFace's range from −0.8 to 1.1, so max(x, a·x) would be wrong), and
    onnxruntime's broadcasting PRelu kernel took 64 % of SFace's time where Relu, Mul and Add are
    vectorised: 21.5 → 7.5 ms a face on one thread here.
    """
    g = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    nodes = []
    for node in g.node:
        if node.op_type != "PRelu" or node.input[1] not in consts:
            nodes.append(node)
            continue
        x, a = node.input
        y = node.output[0]
        one_minus = a + "_one_minus"
        g.initializer.append(numpy_helper.from_array((1.0 - consts[a]).astype(np.float32), one_minus))
        nodes += [
            helper.make_node("Relu", [x], [y + "_relu"]),
            helper.make_node("Mul", [y + "_relu", one_minus], [y + "_pos"]),
            helper.make_node("Mul", [x, a], [y + "_lin"]),
            helper.make_node("Add", [y + "_pos", y + "_lin"], [y]),
        ]
    _replace(g.node, nodes)
    _drop_stale_value_info(model)
    return model


def _drop_stale_value_info(model: onnx.ModelProto) -> None:
    produced = {o for n in model.graph.node for o in n.output}
    _replace(model.graph.value_info, [v for v in model.graph.value_info if v.name in produced])


def _replace(field, items: list) -> None:  # type: ignore[type-arg]
    """Replace a repeated protobuf field's contents; copies first, since deleting invalidates the originals."""
    copies = []
    for item in items:
        c = type(item)()
        c.CopyFrom(item)
        copies.append(c)
    del field[:]
    field.extend(copies)


STEPS: dict[str, Callable[[onnx.ModelProto], onnx.ModelProto]] = {
    "drop_dangling_inputs": drop_dangling_inputs,
    "freeze_initializers": freeze_initializers,
    "materialize_weights": materialize_weights,
    "dynamic_input": dynamic_input,
    "dynamic_batch": dynamic_batch,
    "prelu_as_relu": prelu_as_relu,
}


def _dlib_dat_to_onnx(source: Path) -> onnx.ModelProto:
    from edge.models.dlib_resnet_graph import convert

    return convert(source)


def _dlib_version() -> str:
    from edge.models.dlib_resnet_graph import VERSION

    return VERSION


# name → (converter, its version): the version is part of the cache key, so a changed converter rebuilds.
CONVERTERS: dict[str, tuple[Callable[[Path], onnx.ModelProto], Callable[[], str]]] = {
    "dlib_dat_to_onnx": (_dlib_dat_to_onnx, _dlib_version),
}


def steps_key(steps: tuple[str, ...] | list[str]) -> str:
    """The prepared file's cache key: the step names, and a leading converter's version."""
    text = ",".join(steps)
    if steps and steps[0] in CONVERTERS:
        text += "@" + CONVERTERS[steps[0]][1]()
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def prepare_file(source: Path, steps: tuple[str, ...] | list[str]) -> onnx.ModelProto:
    """The runtime's graph from a verified source file: converted first if the steps begin with a converter."""
    if steps and steps[0] in CONVERTERS:
        return prepare(CONVERTERS[steps[0]][0](Path(source)), steps[1:])
    return prepare(onnx.load(str(source)), steps)


def prepare(model: onnx.ModelProto, steps: tuple[str, ...] | list[str]) -> onnx.ModelProto:
    for step in steps:
        if step in CONVERTERS:
            raise ModelError(f"preparation step {step!r} converts a source file: it must come first")
        if step not in STEPS:
            raise ModelError(f"unknown preparation step {step!r} (known: {sorted([*CONVERTERS, *STEPS])})")
        model = STEPS[step](model)
    onnx.checker.check_model(model)
    return model
