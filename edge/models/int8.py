"""int8 on the device: a float ONNX graph plus activation ranges → a QDQ graph onnxruntime runs on integer kernels.

onnx and numpy only, and deterministic: the ranges come from the manifest (measured once on face crops by
`facegate export int8`, see export/int8_ranges.py), so every device quantises the same file to the same
bytes without calibration images, and no third-party weights need to be shipped in quantised form.

Conventions (what onnxruntime's CPU kernels fuse into QLinearConv / QGemm / QLinearAdd):
- activations: uint8, asymmetric, one scale per tensor, the range widened to contain 0;
- weights: int8, symmetric, one scale per output channel, 7 bits (±63). x86 CPUs without VNNI multiply
  uint8 × int8 with VPMADDUBSW, which adds two products in int16: 255·127·2 overflows it, 255·63·2 does not.
  Measured on SFace on an AVX2-only EPYC: 8-bit weights gave min cosine 0.79 to fp32, 7-bit 0.98;
- biases: int32 at scale (input scale × weight scale), zero point 0;
- a Max whose inputs and output all carry a range gets one shared scale (their union) and runs on the uint8
  tensors directly — exact, since max commutes with a common monotone affine map (see prelu_as_max).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edge.errors import ModelError

WEIGHT_BITS = 7
QUANTISED_OPS = ("Conv", "Gemm")  # ops whose weights are quantised when their activation input is
# ops whose output is kept in uint8 when something other than a Relu reads it (see tensors_to_range)
INTEGER_OUTPUT_OPS = ("Conv", "Add", "Max", "Relu", "MaxPool", "AveragePool", "Pad")


def activation_params(lo: float, hi: float) -> tuple[float, int]:
    """uint8 scale and zero point for a float range (widened to contain 0, so zero padding is exact)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-12:
        return 1.0, 0
    scale = (hi - lo) / 255.0
    return scale, int(np.clip(round(-lo / scale), 0, 255))


def quantise_weights(w: np.ndarray, axis: int, bits: int = WEIGHT_BITS) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel int8 along `axis`: (quantised weights, scales)."""
    qmax = 2 ** (bits - 1) - 1
    moved = np.moveaxis(w.astype(np.float64), axis, 0)
    peak = np.abs(moved.reshape(len(moved), -1)).max(axis=1)
    scale = np.where(peak > 0, peak / qmax, 1.0)
    q = np.clip(np.round(moved / scale.reshape(-1, *[1] * (moved.ndim - 1))), -qmax, qmax)
    return np.moveaxis(q, 0, axis).astype(np.int8), scale.astype(np.float32)


def tensors_to_range(model: onnx.ModelProto) -> list[str]:
    """The activations a quantised graph needs ranges for, in graph order.

    The activation input of every Conv / Gemm with constant weights, and the output of every node onnxruntime
    has an integer kernel for (Conv, Add, the pools, Pad, Relu, Max) when something reads it, so the integer
    result flows on without a float round trip. An output read only by Relu nodes is ranged after the Relu
    instead: the Relu then disappears into the uint8 clamp of its producer (zero point 0), as onnxruntime fuses
    Conv → Relu → QuantizeLinear and Add → Relu → QuantizeLinear into QLinearConv and QLinearAdd.
    """
    g = model.graph
    consts = {i.name for i in g.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in g.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in g.output}
    names: list[str] = []
    for node in g.node:
        if node.op_type in QUANTISED_OPS and len(node.input) > 1 and node.input[1] in consts:
            names.append(node.input[0])
        if node.op_type in INTEGER_OUTPUT_OPS and node.output[0] not in outputs:
            after = readers.get(node.output[0], [])
            if after and not all(r.op_type == "Relu" for r in after):
                names.append(node.output[0])
    return list(dict.fromkeys(n for n in names if n not in consts and n not in outputs))


def quantize(model: onnx.ModelProto, ranges: Mapping[str, Sequence[float]],
             weight_bits: int = WEIGHT_BITS) -> onnx.ModelProto:
    """Insert QuantizeLinear / DequantizeLinear pairs for every ranged tensor and quantise the weights and
    biases of every Conv / Gemm whose activation input is ranged; returns the QDQ graph (float in, float out)."""
    g = model.graph
    if any(o.domain in ("", "ai.onnx") and o.version < 13 for o in model.opset_import):
        raise ModelError("int8 quantisation needs opset 13 or later (per-channel DequantizeLinear)")
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    known = {n for node in g.node for n in node.output} | {i.name for i in g.input}
    missing = sorted(set(ranges) - known)
    if missing:
        raise ModelError(f"int8 ranges name tensors the graph does not have: {missing[:5]}")
    outputs = {o.name for o in g.output}
    params = {t: activation_params(*r) for t, r in ranges.items() if t not in outputs}

    # Max nodes on ranged tensors share one scale: the union of their inputs' and output's ranges.
    integer_max = [n for n in g.node if n.op_type == "Max" and len(n.input) == 2
                   and all(t in params for t in (*n.input, n.output[0]))]
    for node in integer_max:
        members = [*node.input, node.output[0]]
        lo = min(_range(*params[t])[0] for t in members)
        hi = max(_range(*params[t])[1] for t in members)
        for t in members:
            params[t] = activation_params(lo, hi)
    integer_max_ids = {id(n) for n in integer_max}

    inits: list[onnx.TensorProto] = []
    qparam_names: dict[str, tuple[str, str]] = {}

    def qparams(t: str) -> tuple[str, str]:
        if t not in qparam_names:
            scale, zero = params[t]
            s, z = f"{t}__scale", f"{t}__zero"
            inits.extend([numpy_helper.from_array(np.array(scale, np.float32), s),
                          numpy_helper.from_array(np.array(zero, np.uint8), z)])
            qparam_names[t] = (s, z)
        return qparam_names[t]

    new_nodes: list[onnx.NodeProto] = []
    dq_count: dict[str, int] = {}

    def quantise_output(t: str) -> None:
        s, z = qparams(t)
        new_nodes.append(helper.make_node("QuantizeLinear", [t, s, z], [t + "__q"], name=t + "__Q"))

    def dequantised(t: str) -> str:
        """A DequantizeLinear of t's uint8 tensor for one reader (onnxruntime fuses per reader)."""
        k = dq_count.get(t, 0)
        dq_count[t] = k + 1
        s, z = qparams(t)
        out = f"{t}__dq{k}"
        new_nodes.append(helper.make_node("DequantizeLinear", [t + "__q", s, z], [out], name=out))
        return out

    for inp in g.input:
        if inp.name in params:
            quantise_output(inp.name)
    for node in g.node:
        if id(node) in integer_max_ids:
            new_nodes.append(helper.make_node("Max", [t + "__q" for t in node.input], [node.output[0] + "__q"],
                                              name=(node.name or node.output[0]) + "__int"))
            continue
        ins = list(node.input)
        if (node.op_type in QUANTISED_OPS and len(ins) > 1 and ins[0] in params and ins[1] in consts):
            ins[1:] = _quantised_weights(node, ins, consts, params[ins[0]][0], weight_bits, inits, new_nodes)
        ins = [dequantised(t) if t in params else t for t in ins]
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        del copy.input[:]
        copy.input.extend(ins)
        new_nodes.append(copy)
        for t in node.output:
            if t in params:
                quantise_output(t)
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(inits)
    used = {n for node in g.node for n in node.input} | outputs
    kept = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    del g.value_info[:]
    return model


def _range(scale: float, zero: int) -> tuple[float, float]:
    return -zero * scale, (255 - zero) * scale


def _quantised_weights(node: onnx.NodeProto, ins: list[str], consts: dict[str, np.ndarray], x_scale: float,
                       bits: int, inits: list[onnx.TensorProto], new_nodes: list[onnx.NodeProto]) -> list[str]:
    """Weight (and bias) of a Conv / Gemm as DequantizeLinear of int8 / int32 initialisers."""
    w = consts[ins[1]]
    if node.op_type == "Gemm":
        trans_b = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "transB"), 0)
        axis = 0 if trans_b else 1
    else:
        axis = 0
    qw, w_scale = quantise_weights(w, axis, bits)
    base = node.output[0]
    names = [f"{base}__w_q", f"{base}__w_scale", f"{base}__w_zero"]
    inits.extend([numpy_helper.from_array(qw, names[0]), numpy_helper.from_array(w_scale, names[1]),
                  numpy_helper.from_array(np.zeros(len(w_scale), np.int8), names[2])])
    new_nodes.append(helper.make_node("DequantizeLinear", names, [f"{base}__w"], axis=axis, name=f"{base}__w_DQ"))
    out = [f"{base}__w"]
    if len(ins) > 2 and ins[2]:
        if ins[2] not in consts:
            raise ModelError(f"{node.name or base}: a bias that is not a constant cannot be quantised")
        b_scale = (np.float64(x_scale) * w_scale.astype(np.float64)).astype(np.float32)
        b = consts[ins[2]].astype(np.float64).reshape(-1)
        if b.shape != b_scale.shape:
            raise ModelError(f"{node.name or base}: bias of {b.shape} for {b_scale.shape} output channels")
        qb = np.clip(np.round(b / b_scale), -(2 ** 31), 2 ** 31 - 1).astype(np.int32)
        bnames = [f"{base}__b_q", f"{base}__b_scale", f"{base}__b_zero"]
        inits.extend([numpy_helper.from_array(qb, bnames[0]), numpy_helper.from_array(b_scale, bnames[1]),
                      numpy_helper.from_array(np.zeros(len(qb), np.int32), bnames[2])])
        new_nodes.append(helper.make_node("DequantizeLinear", bnames, [f"{base}__b"], axis=0, name=f"{base}__b_DQ"))
        out.append(f"{base}__b")
    return out
