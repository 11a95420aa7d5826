"""dlib's face-recognition ResNet (.dat) → ONNX graph with `onnx.helper`, on the device: no PyTorch, no dlib.

The built-in manifest `dlib-resnet` names `dlib_face_recognition_resnet_model_v1.dat` of the
face-recognition-models package (CC0) with its sha256 and the preparation step `dlib_dat_to_onnx`; the
registry runs `convert()` once on first use and caches the graph under `<model dir>/prepared/`
(edge/models/prepare.py). The file is read by edge/models/dlib_dat.py, which runs no code from it.

The network (`anet_type` of dlib's dnn_face_recognition_ex.cpp), input first:

    input 150×150 RGB, (x − channel mean) / 256   (done by the embedder from the manifest's normalisation)
    con 32 7×7/2 → affine → relu → max_pool 3×3/2
    level4: 3 × ares 32      level3: ares_down 64, 3 × ares 64     level2: ares_down 128, 2 × ares 128
    level1: ares_down 256, 2 × ares 256                             level0: ares_down 256
    avg_pool_everything → fc_no_bias 128

A block is con 3×3/s → affine → relu → con 3×3/1 → affine, added to its input (`ares`) or, for `ares_down`
(stride 2, no padding), to a 2×2/2 average pool of its input; then relu. Each `affine` (a frozen batch norm,
per-channel scale and shift) is folded into the convolution before it, in float64, so the graph holds Conv,
Relu, MaxPool, AveragePool, Pad, Add, ReduceMean, Flatten and Gemm only.

dlib's add_prev adds tensors of different shapes by zero-filling both to their larger (C, H, W), aligned at
channel 0 and the top-left pixel: the pooled shortcut of a down-sampling block has half the channels of its
main path, and at 8×8 → 3×3 (main) vs 4×4 (pool) and 4×4 → 1×1 vs 2×2 the main path is the smaller one. The
input size is fixed, so every shape is known here and each zero-fill is a Pad node with constant pads.

Output `output` (N, 128): dlib's descriptor, unnormalised (the embedder normalises it), the names of the
PyTorch export recipe's bundle so both are interchangeable. Before the graph is used it is run on synthetic
chips whose descriptors dlib itself computed (REFERENCE), and refused unless they agree within
PARITY_TOLERANCE (tests check REFERENCE against dlib and the graph against the PyTorch rebuild).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from edge.errors import ModelError
from edge.models.dlib_dat import DlibFormatError, DlibNet, Layer, bn_as_affine, load_net
from edge.models.onnx_build import GraphBuilder

# (width, number of blocks, whether the first block down-samples), from the input upwards.
STAGES: tuple[tuple[int, int, bool], ...] = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True),
                                             (256, 1, True))
INPUT_SIZE = 150
STEM_WIDTH = 32
EMBEDDING_DIM = 128

# The layer kinds the .dat lists, input first, for each part of the network ("mark" = a tag or skip layer).
STEM_KINDS = ("con", "affine", "relu", "max_pool")
BLOCK_KINDS = ("mark", "con", "affine", "relu", "con", "affine", "add_prev", "relu")
DOWN_BLOCK_KINDS = ("mark", "con", "affine", "relu", "con", "affine", "mark", "mark", "avg_pool", "add_prev", "relu")
HEAD_KINDS = ("avg_pool", "fc")

INPUT, OUTPUT = "input", "output"
# Converter version: part of the prepared file's cache key, so a changed converter rebuilds old caches.
VERSION = "1"
# Max |Δ| of the raw descriptors against dlib's own (REFERENCE); the PyTorch rebuild is within 1e-4 of dlib
# on real chips too (tests/export/test_dlib_resnet.py), the values themselves are about ±0.2.
PARITY_TOLERANCE = 1e-4


def expected_kinds() -> list[str]:
    kinds = list(STEM_KINDS)
    for _, n, down in STAGES:
        for i in range(n):
            kinds += DOWN_BLOCK_KINDS if down and i == 0 else BLOCK_KINDS
    return kinds + list(HEAD_KINDS)


def check_structure(net: DlibNet) -> None:
    """Refuse any network but dlib's face-recognition ResNet, naming the first layer that differs."""
    kinds = [la.kind if la.kind != "bn_con" else "affine" for la in net.layers]
    want = expected_kinds()
    if kinds != want:
        first = next((i for i, (a, b) in enumerate(zip(kinds, want, strict=False)) if a != b),
                     min(len(kinds), len(want)))
        raise ModelError(f"not dlib's face-recognition ResNet: layer {first} is "
                         f"{kinds[first] if first < len(kinds) else 'missing'}, expected "
                         f"{want[first] if first < len(want) else 'nothing'}")
    inp = net.input.params
    if (inp.get("nr"), inp.get("nc")) != (INPUT_SIZE, INPUT_SIZE):
        raise ModelError(f"expected a {INPUT_SIZE}×{INPUT_SIZE} input layer, found {inp}")


def affine_params(layer: Layer) -> tuple[np.ndarray, np.ndarray]:
    """A per-channel affine layer's (scale, shift); a batch norm is folded as dlib's affine_(bn_) does."""
    p = layer.params
    if layer.kind == "bn_con":
        return bn_as_affine(p)
    if layer.kind == "affine" and p["mode"] == 0 and not p["disabled"]:
        return p["gamma"].reshape(-1), p["beta"].reshape(-1)
    raise ModelError(f"{layer.version}: expected a per-channel affine or batch-norm layer")


def input_mean(net: DlibNet) -> tuple[float, float, float]:
    """The input layer's per-channel means (R, G, B), as the manifest's normalisation must hold them."""
    return tuple(float(v) for v in net.input.params["avg"])  # type: ignore[return-value]


# -- the graph --------------------------------------------------------------------------------------------------
class _Builder(GraphBuilder):
    """Emits nodes while tracking each tensor's (C, H, W): the input size is fixed, so every shape is known."""

    def __init__(self, layers: list[Layer]) -> None:
        super().__init__()
        self.layers = iter(layers)

    def take(self, kind: str) -> Layer:
        layer = next(self.layers)
        if layer.kind != kind and not (kind == "affine" and layer.kind == "bn_con"):
            raise ModelError(f"{layer.version}: expected a {kind} layer")  # check_structure makes this unreachable
        return layer

    def conv_affine(self, x: str, shape: tuple[int, int, int]) -> tuple[str, tuple[int, int, int]]:
        """con → affine as one Conv: W·s and b·s + t per output channel, folded in float64."""
        con, aff = self.take("con"), self.take("affine")
        p = con.params
        if p["use_relu"]:
            raise ModelError(f"{con.version}: convolutions with a fused relu are not supported")
        w = np.asarray(p["weight"], np.float64)
        if w.ndim != 4 or w.shape[1] != shape[0] or w.shape[2:] != (p["nr"], p["nc"]):
            raise ModelError(f"{con.version}: weight shape {w.shape} does not fit a {shape} input")
        bias = np.zeros(w.shape[0]) if p["bias"] is None else np.asarray(p["bias"], np.float64)
        scale, shift = (np.asarray(v, np.float64) for v in affine_params(aff))
        if scale.size != w.shape[0] or bias.size != w.shape[0]:
            raise ModelError(f"{aff.version}: {scale.size} channels after a {w.shape[0]}-filter convolution")
        k = self.count + 1
        y = self.node("Conv", [x, self.const(f"conv{k}.w", w * scale.reshape(-1, 1, 1, 1)),
                               self.const(f"conv{k}.b", bias * scale + shift)],
                      kernel_shape=[p["nr"], p["nc"]], strides=[p["stride_y"], p["stride_x"]],
                      pads=[p["padding_y"], p["padding_x"], p["padding_y"], p["padding_x"]])
        return y, (w.shape[0], *_pooled(shape[1:], p))

    def pool(self, op: str, x: str, shape: tuple[int, int, int]) -> tuple[str, tuple[int, int, int]]:
        p = self.take("max_pool" if op == "MaxPool" else "avg_pool").params
        if p["nr"] <= 0 or p["nc"] <= 0:
            raise ModelError(f"a whole-map pool where a {p['nr']}×{p['nc']} window was expected")
        y = self.node(op, [x], kernel_shape=[p["nr"], p["nc"]], strides=[p["stride_y"], p["stride_x"]],
                      pads=[p["padding_y"], p["padding_x"], p["padding_y"], p["padding_x"]])
        return y, (shape[0], *_pooled(shape[1:], p))

    def relu(self, x: str) -> str:
        if self.take("relu").params["disabled"]:
            raise ModelError("disabled relu layers are not supported")
        return self.node("Relu", [x])

    def grow(self, x: str, shape: tuple[int, ...], to: tuple[int, ...]) -> str:
        """Zero-fill (C, H, W) `shape` to `to` at the end of each axis, as dlib's add_prev does."""
        extra = [t - s for s, t in zip(shape, to, strict=True)]
        if not any(extra):
            return x
        k = self.count + 1
        pads = self.const(f"pads{k}", np.array([0, 0, 0, 0, 0, *extra], np.int64), np.int64)
        return self.node("Pad", [x, pads], mode="constant")

    def add_prev(self, a: str, sa: tuple[int, int, int], b: str, sb: tuple[int, int, int]) -> tuple[str, tuple]:
        self.take("add_prev")
        to = tuple(max(u, v) for u, v in zip(sa, sb, strict=True))
        return self.node("Add", [self.grow(a, sa, to), self.grow(b, sb, to)]), to

    def block(self, x: str, shape: tuple[int, int, int], down: bool) -> tuple[str, tuple[int, int, int]]:
        self.take("mark")  # tag1: the block's input
        y, sy = self.conv_affine(x, shape)
        y = self.relu(y)
        y, sy = self.conv_affine(y, sy)
        short, ss = x, shape
        if down:  # tag2 + skip1, then the 2×2/2 average pool of the block's input
            self.take("mark")
            self.take("mark")
            short, ss = self.pool("AveragePool", x, shape)
        # add_prev's operands: its subnetwork's output (the shortcut) first, the tagged block output second.
        out, so = self.add_prev(short, ss, y, sy)
        return self.relu(out), so

    def head(self, x: str, shape: tuple[int, int, int]) -> str:
        p = self.take("avg_pool").params
        if (p["nr"], p["nc"]) != (0, 0):
            raise ModelError(f"expected avg_pool_everything before the fc layer, found a {p['nr']}×{p['nc']} pool")
        x = self.node("ReduceMean", [x], axes=[2, 3], keepdims=1)
        x = self.node("Flatten", [x], axis=1)
        fc = self.take("fc").params
        if fc["bias"] is not None or fc["weight"].shape != (shape[0], EMBEDDING_DIM):
            raise ModelError(f"unexpected final fc layer {fc['weight'].shape}, bias {fc['use_bias']}")
        # dlib multiplies (samples × inputs) by its (inputs × outputs) matrix: Gemm without a transpose.
        self.nodes.append(helper.make_node("Gemm", [x, self.const("fc.w", fc["weight"])], [OUTPUT], name="Gemm_fc"))
        return OUTPUT


def _pooled(hw: tuple[int, ...], p: dict[str, Any]) -> tuple[int, int]:
    """dlib's (and ONNX's) output size of a window: 1 + (n + 2·pad − window) / stride, rounded down."""
    out = (1 + (hw[0] + 2 * p["padding_y"] - p["nr"]) // p["stride_y"],
           1 + (hw[1] + 2 * p["padding_x"] - p["nc"]) // p["stride_x"])
    if min(out) < 1:
        raise ModelError(f"a {p['nr']}×{p['nc']} window leaves nothing of a {hw} map")
    return out


def build_graph(net: DlibNet, name: str = "dlib-resnet") -> onnx.ModelProto:
    """The ONNX model of a decoded dlib face-recognition ResNet: normalised NCHW RGB → raw 128-D descriptor."""
    check_structure(net)
    b = _Builder(net.layers)
    x, shape = b.conv_affine(INPUT, (3, INPUT_SIZE, INPUT_SIZE))
    x, shape = b.pool("MaxPool", b.relu(x), shape)
    for _, n, down in STAGES:
        for i in range(n):
            x, shape = b.block(x, shape, down and i == 0)
    out = b.head(x, shape)
    return b.model(name, INPUT, ["batch", 3, INPUT_SIZE, INPUT_SIZE], out, ["batch", EMBEDDING_DIM],
                   "dlib face-recognition ResNet built by edge.models.dlib_resnet_graph")


# -- the check before use ---------------------------------------------------------------------------------------
def synthetic_chips(n: int = 3) -> np.ndarray:
    """n (150, 150, 3) RGB uint8 chips of sine stripes: defined by formula, so any numpy gives the same bytes."""
    y, x = np.mgrid[0:INPUT_SIZE, 0:INPUT_SIZE].astype(np.float64)
    return np.stack([np.stack([127.5 + 100.0 * np.sin((x * (c + 1) + y * (k + 1)) / (7.0 + 3 * k + c))
                               for c in range(3)], axis=-1) for k in range(n)]).round().astype(np.uint8)


# dlib's own descriptors of synthetic_chips(): dlib 20.0.1 (dlib-bin), face_recognition_model_v1
# .compute_face_descriptor(chip) on the pinned .dat. Checked against dlib by tests/edge/test_dlib_resnet_graph.py.
REFERENCE: list[list[float]] = [
    [
        -0.063511625, 0.13614455, 0.044794749, 0.0062263464, -0.04657596, -0.063137934, -0.036778998, 0.0049475096,
        0.10137557, -0.015567401, 0.24628319, -0.065636627, -0.26018286, -0.045880873, -0.0021249531, 0.097921744,
        -0.13866886, -0.060598165, -0.18481258, -0.11287796, 0.048219629, -0.030657083, -0.0095165614, 0.022625554,
        -0.086811975, -0.3132354, -0.03361256, -0.092073537, 0.074617662, -0.19030431, 0.034989487, 0.037222307,
        -0.12970987, -0.076210126, -0.014200701, 0.023205405, 0.017272504, -0.099245705, 0.142222, -0.07386367,
        -0.12955174, -0.064078316, 0.012452248, 0.26147318, 0.17163083, 0.028479423, 0.039848022, -0.072597191,
        0.035752639, -0.24357709, -0.022041675, 0.13354971, 0.066704161, 0.1071316, 0.068697661, -0.15141582,
        0.016560351, 0.083715215, -0.14136766, 0.024430463, 0.012738923, -0.088826768, -0.057124194, -0.13804899,
        0.22140126, 0.064066835, -0.10204625, -0.14395522, 0.13020566, -0.14469531, -0.034932695, 0.095528521,
        -0.069989972, -0.16340898, -0.24222828, 0.037491068, 0.3188124, 0.15998493, -0.19819273, 0.0044489186,
        -0.13733438, -0.057632461, 0.011871653, 0.03201066, -0.061307669, -0.00031572394, -0.10118298, 0.080719598,
        0.1926467, -0.076525532, -0.0094013698, 0.15774831, -0.026707575, -0.017322464, -0.018546436, 0.012983401,
        -0.12463745, 0.0522574, -0.075199783, -0.0035088714, 0.14743832, -0.097008064, 0.0040173214, 0.061754931,
        -0.1347644, 0.10947859, 0.0013158356, -0.0067834221, 0.041548174, -0.016508926, -0.079053864, -0.031690504,
        0.23316023, -0.23704593, 0.21234162, 0.22557808, 0.066761911, 0.10959146, 0.046413623, 0.09837456,
        0.002376996, -0.041063488, -0.15042323, -0.039107352, 0.013794208, -0.020432185, -0.029496521, -0.013405895
    ],
    [
        -0.051239051, 0.098503135, 0.03608099, -0.039039429, -0.046151429, -0.057210512, -0.044823147, 0.031534147,
        0.13470863, -0.032478753, 0.22080548, -0.016343001, -0.25769272, -0.0086404458, -0.019756533, 0.064493008,
        -0.11696328, -0.034000952, -0.1994912, -0.13738447, 0.063318759, 0.037170641, 0.018486699, -0.022703031,
        -0.10501941, -0.26979744, -0.05140017, -0.10887833, 0.071313716, -0.180749, 0.057737011, 0.017443758,
        -0.12521806, -0.070882887, -0.0097056422, 0.011379944, -0.02947923, -0.088416785, 0.16910352, -0.019073043,
        -0.1252221, -0.047231391, 0.019201886, 0.24361835, 0.19788511, 0.049191445, -0.0023631714, -0.070148736,
        0.070156664, -0.28448939, 0.016352767, 0.13889389, 0.049179338, 0.1263016, 0.12023705, -0.14203276,
        0.047142193, 0.082733706, -0.11104069, 0.030494863, 0.022344358, -0.11374708, -0.045385256, -0.12378018,
        0.16662598, 0.021009577, -0.074453056, -0.095685765, 0.12775002, -0.13644022, -0.031346139, 0.11384137,
        -0.077492155, -0.15645464, -0.21165703, 0.058235392, 0.34062612, 0.19254725, -0.13026805, 0.026493579,
        -0.11309752, -0.055100773, 0.0065475991, -0.0099183153, -0.07668265, -0.032595605, -0.077878907, 0.081355676,
        0.18824707, -0.095264509, 0.0065502673, 0.1697399, -0.030443868, 0.027106687, -0.006138823, -0.013042722,
        -0.13287653, 0.024352353, -0.067633323, 0.0061714547, 0.1440322, -0.13619217, 0.015248831, 0.048647195,
        -0.13678533, 0.10715437, -0.0016765678, -0.040330905, 0.040047932, -0.0054819332, -0.072841533, -0.020752683,
        0.22932778, -0.19257954, 0.23132774, 0.21894923, 0.058688559, 0.12299605, 0.066366903, 0.10486388,
        -0.028223887, -0.01417497, -0.14741175, -0.059380867, -0.0013965843, 0.022098955, -0.027373377, -0.0034896773
    ],
    [
        -0.055873681, 0.10613859, 0.047437478, -0.037836827, -0.020133903, -0.058389932, -0.063416645, 0.027029535,
        0.15245314, -0.022498593, 0.23966293, 0.028695796, -0.24246451, -0.032957256, -0.010894664, 0.073134437,
        -0.11863319, -0.04646863, -0.16294366, -0.13071162, 0.051511582, 0.06871587, -0.0015333476, -0.019430695,
        -0.11493339, -0.24546978, -0.051847167, -0.11469714, 0.088024043, -0.19460298, 0.022652719, -0.010881458,
        -0.13507658, -0.077595249, -0.012632817, -0.0038062427, -0.040762525, -0.10049935, 0.14974745, 0.01645736,
        -0.11931367, -0.057440937, -0.0013234541, 0.25567749, 0.20498145, 0.035233825, 0.014211999, -0.054143347,
        0.048732828, -0.28304908, 0.027655315, 0.12772027, 0.05097238, 0.12490584, 0.11498539, -0.18894179,
        0.012084393, 0.078827366, -0.11825199, 0.034368113, 0.019738235, -0.081193253, -0.047500685, -0.10278784,
        0.17760609, 0.023198834, -0.092069685, -0.107186, 0.1078641, -0.1339028, -0.011540425, 0.12532552,
        -0.072411679, -0.17244223, -0.20016426, 0.10080751, 0.32930046, 0.18402067, -0.12845491, 0.052646011,
        -0.10898042, -0.044684336, 0.0084916782, -0.015461195, -0.056389615, -0.0042717168, -0.072254516, 0.047223136,
        0.16228236, -0.070000261, 0.010489818, 0.16048075, -0.055046503, 0.0060487371, 0.012096202, 0.0037831217,
        -0.12322749, 0.031293131, -0.028111057, 0.006744829, 0.12350501, -0.14421226, 0.020514352, 0.051602796,
        -0.11639, 0.11514286, 0.0097770886, -0.029767748, 0.038041014, 0.0099397209, -0.073044717, -0.049804442,
        0.20924047, -0.223572, 0.24037257, 0.20391278, 0.039763745, 0.14532684, 0.051679328, 0.1298586, -0.040135797,
        0.0093849897, -0.11891882, -0.058021855, -0.016326755, 0.010523976, -0.015890457, -0.0073200837
    ],
]


def normalise(chips: np.ndarray, mean: tuple[float, float, float]) -> np.ndarray:
    """RGB uint8 (N, 150, 150, 3) → the NCHW input dlib's input layer makes: (x − mean) / 256."""
    x = (chips.astype(np.float32) - np.asarray(mean, np.float32)) / np.float32(256.0)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The graph's raw descriptors for normalised (N, 3, 150, 150) inputs, on onnxruntime's CPU provider."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {INPUT: np.ascontiguousarray(x, np.float32)})[0], np.float64)


def self_check(model: onnx.ModelProto, net: DlibNet) -> dict[str, Any]:
    """Run the graph on synthetic_chips() and compare with dlib's stored descriptors (REFERENCE)."""
    ref = np.asarray(REFERENCE, np.float64)
    out = run(model, normalise(synthetic_chips(len(ref)), input_mean(net)))
    diff = float(np.abs(out - ref).max())
    cos = (out * ref).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
    return {"reference": "dlib's descriptors of synthetic_chips() (stored REFERENCE)", "chips": len(ref),
            "max_abs_diff": diff, "min_cosine": float(cos.min()), "target": PARITY_TOLERANCE,
            "passed": diff <= PARITY_TOLERANCE}


def convert(dat: Path) -> onnx.ModelProto:
    """The preparation step `dlib_dat_to_onnx`: a (hash-checked) .dat → the checked ONNX graph."""
    try:
        net = load_net(dat)
    except DlibFormatError as exc:
        raise ModelError(f"{dat}: not a dlib network file ({exc})") from None
    model = build_graph(net)
    parity = self_check(model, net)
    if not parity["passed"]:
        raise ModelError(f"{dat}: the converted graph differs from dlib's descriptors by "
                         f"{parity['max_abs_diff']:.2e} (> {PARITY_TOLERANCE:g}); not used")
    return model
