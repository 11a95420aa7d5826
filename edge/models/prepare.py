"""One-time graph repairs for third-party ONNX files, and conversions of other formats, with onnx and numpy only.

Each step is a named function over an onnx.ModelProto; a manifest lists the steps its file needs, and the
registry runs them once and caches the result under the model directory with its own sha256. A list may
begin with a converter (CONVERTERS): a function from the verified source file to an onnx.ModelProto, for a
file that is not ONNX (dlib's .dat); the repairs then apply to its result.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

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


def _consumers(g: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in g.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _set_initializer(g: onnx.GraphProto, name: str, value: np.ndarray) -> None:
    for init in g.initializer:
        if init.name == name:
            init.CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
            return
    raise ModelError(f"initializer {name!r} not found")


def fold_batchnorm(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold each BatchNormalization that follows a Conv (its only reader) into the Conv's weights and bias.

    Exact up to float rounding; a quantised graph then carries one scale per convolution output instead of a
    float affine between two integer kernels.
    """
    g = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    readers = _consumers(g)
    outputs = {o.name for o in g.output}
    drop: set[int] = set()
    for node in g.node:
        if node.op_type != "BatchNormalization" or not all(i in consts for i in node.input[1:5]):
            continue
        conv = producer.get(node.input[0])
        if (conv is None or conv.op_type != "Conv" or conv.input[1] not in consts
                or len(readers.get(conv.output[0], [])) != 1 or conv.output[0] in outputs):
            continue
        gamma, beta, mean, var = (consts[i].astype(np.float64) for i in node.input[1:5])
        k = gamma / np.sqrt(var + float(_attr(node, "epsilon", 1e-5)))  # type: ignore[arg-type]
        w = consts[conv.input[1]].astype(np.float64)
        b = consts[conv.input[2]].astype(np.float64) if len(conv.input) > 2 and conv.input[2] else np.zeros(len(k))
        w_name, b_name = conv.output[0] + "_folded_w", conv.output[0] + "_folded_b"
        g.initializer.extend([numpy_helper.from_array((w * k.reshape(-1, *[1] * (w.ndim - 1))).astype(np.float32),
                                                      w_name),
                              numpy_helper.from_array(((b - mean) * k + beta).astype(np.float32), b_name)])
        x = conv.input[0]
        del conv.input[:]
        conv.input.extend([x, w_name, b_name])
        conv.output[0] = node.output[0]
        drop.add(id(node))
    _replace(g.node, [n for n in g.node if id(n) not in drop])
    _drop_unused_initializers(model)
    _drop_stale_value_info(model)
    return model


def _relu_form(x: str, a: str, y: str) -> list[onnx.NodeProto]:
    return [
        helper.make_node("Relu", [x], [y + "_relu"]),
        helper.make_node("Mul", [y + "_relu", a + "_one_minus"], [y + "_pos"]),
        helper.make_node("Mul", [x, a], [y + "_lin"]),
        helper.make_node("Add", [y + "_pos", y + "_lin"], [y]),
    ]


def prelu_as_max(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite PRelu(x, a) with per-channel slopes as Max(x, a·x), a·x a 1×1 depthwise Conv.

    For a ≤ 1, PRelu(x) = max(x, a·x) (negative slopes included). A channel with a > 1 would need min(x, a·x)
    instead, so it is negated on both sides: its row of the producing Conv (weights and bias) and its input
    column of every Conv that reads the result; max(−x, −a·x) = −PRelu(x), and the reader undoes the sign.
    Exact in float. Why: quantised, both terms and the result share one scale, so the Max runs on the uint8
    tensors themselves and a·x is an integer depthwise kernel; the Relu/Mul/Add form (prelu_as_relu) leaves
    seven float passes per layer between integer convolutions, as costly as the convolutions on x86.
    A PRelu whose slopes are not per channel, or whose a > 1 channels cannot be negated in neighbouring
    Convs, gets the prelu_as_relu form instead. Run fold_batchnorm first so the producer is the Conv.
    """
    g = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    readers = _consumers(g)
    outputs = {o.name for o in g.output}
    nodes: list[onnx.NodeProto] = []
    for node in g.node:
        if node.op_type != "PRelu" or node.input[1] not in consts:
            nodes.append(node)
            continue
        x, a_name = node.input
        y = node.output[0]
        slope = consts[a_name]
        if slope.ndim not in (3, 4) or slope.size != slope.shape[-3] or slope.shape[-3] < 1:
            g.initializer.append(numpy_helper.from_array((1.0 - slope).astype(np.float32), a_name + "_one_minus"))
            nodes += _relu_form(x, a_name, y)
            continue
        a = slope.reshape(-1).astype(np.float32)
        flip = a > 1.0
        if flip.any() and not _negate_channels(g, consts, producer.get(x), readers, x, y, flip, outputs):
            g.initializer.append(numpy_helper.from_array((1.0 - slope).astype(np.float32), a_name + "_one_minus"))
            nodes += _relu_form(x, a_name, y)
            continue
        w_name = y + "_slope_w"
        g.initializer.append(numpy_helper.from_array(a.reshape(-1, 1, 1, 1), w_name))
        nodes += [
            helper.make_node("Conv", [x, w_name], [y + "_slope"], group=len(a), kernel_shape=[1, 1]),
            helper.make_node("Max", [x, y + "_slope"], [y]),
        ]
    _replace(g.node, nodes)
    _drop_unused_initializers(model)
    _drop_stale_value_info(model)
    return model


def _negate_channels(g: onnx.GraphProto, consts: dict[str, np.ndarray], conv: onnx.NodeProto | None,
                     readers: dict[str, list[onnx.NodeProto]], x: str, y: str, flip: np.ndarray,
                     outputs: set[str]) -> bool:
    """Negate the `flip` channels of x (in the Conv producing it) and y (in every Conv reading it)."""
    after = readers.get(y, [])
    if (conv is None or conv.op_type != "Conv" or conv.input[1] not in consts or len(readers.get(x, [])) != 1
            or x in outputs or y in outputs or not after
            or any(r.op_type != "Conv" or r.input[0] != y or r.input[1] not in consts for r in after)):
        return False
    sign = np.where(flip, -1.0, 1.0).astype(np.float32)
    w = consts[conv.input[1]]
    _set_initializer(g, conv.input[1], w * sign.reshape(-1, *[1] * (w.ndim - 1)))
    if len(conv.input) > 2 and conv.input[2]:
        _set_initializer(g, conv.input[2], consts[conv.input[2]] * sign)
    for r in after:
        w = consts[r.input[1]].copy()
        groups = int(_attr(r, "group", 1))  # type: ignore[arg-type]
        per_group_out, per_group_in = w.shape[0] // groups, w.shape[1]
        for o in range(w.shape[0]):  # output o reads input channels of its group
            first = (o // per_group_out) * per_group_in
            w[o] *= sign[first:first + per_group_in].reshape(-1, *[1] * (w.ndim - 2))
        _set_initializer(g, r.input[1], w)
        consts[r.input[1]] = w
    return True


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {n for node in model.graph.node for n in node.input} | {o.name for o in model.graph.output}
    _replace(model.graph.initializer, [i for i in model.graph.initializer if i.name in used])


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
    "fold_batchnorm": fold_batchnorm,
    "prelu_as_max": prelu_as_max,
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


def steps_key(steps: tuple[str, ...] | list[str], quantize: Mapping[str, Any] | None = None) -> str:
    """The prepared file's cache key: the step names, a leading converter's version, and the int8 settings (a
    manifest with new ranges prepares afresh)."""
    text = ",".join(steps)
    if steps and steps[0] in CONVERTERS:
        text += "@" + CONVERTERS[steps[0]][1]()
    if quantize:
        text += json.dumps(quantize, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def prepare_file(source: Path, steps: tuple[str, ...] | list[str],
                 quantize: Mapping[str, Any] | None = None) -> onnx.ModelProto:
    """The runtime's graph from a verified source file: converted first if the steps begin with a converter. A
    file that is not a valid model (not ONNX at all, or a graph the checker refuses) is a ModelError naming it."""
    try:
        if steps and steps[0] in CONVERTERS:
            return prepare(CONVERTERS[steps[0]][0](Path(source)), steps[1:], quantize)
        return prepare(onnx.load(str(source)), steps, quantize)
    except ModelError:
        raise
    except Exception as exc:  # protobuf's DecodeError, onnx's ValidationError, a step meeting a foreign graph
        first = (str(exc).splitlines() or [""])[0][:300]
        raise ModelError(f"{source}: not a valid model for its manifest ({type(exc).__name__}: {first})") from None


def quantize_int8(model: onnx.ModelProto, settings: Mapping[str, Any]) -> onnx.ModelProto:
    """int8 QDQ graph from the manifest's activation ranges (edge/models/int8.py)."""
    from edge.models.int8 import WEIGHT_BITS, quantize

    return quantize(model, settings.get("ranges") or {}, int(settings.get("weight_bits", WEIGHT_BITS)))


def prepare(model: onnx.ModelProto, steps: tuple[str, ...] | list[str],
            quantize: Mapping[str, Any] | None = None) -> onnx.ModelProto:
    """Run the named steps in order; `quantize` is the manifest's quantize block (for quantize_int8)."""
    for step in steps:
        if step in CONVERTERS:
            raise ModelError(f"preparation step {step!r} converts a source file: it must come first")
        if step == "quantize_int8":
            model = quantize_int8(model, quantize or {})
            continue
        if step not in STEPS:
            raise ModelError(f"unknown preparation step {step!r} "
                             f"(known: {sorted([*CONVERTERS, *STEPS, 'quantize_int8'])})")
        model = STEPS[step](model)
    onnx.checker.check_model(model)
    return model
