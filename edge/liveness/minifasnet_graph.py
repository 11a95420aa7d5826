"""MiniFASNet (V2, V1SE) state dict → ONNX graph with `onnx.helper`, on the device: no PyTorch involved.

`facegate models install minifasnet-v2 | minifasnet-v1se | minifasnet` runs this on the published `.pth`
files (read by edge/models/torch_pickle.py, which runs none of the pickle's code). The graph is the one
export/nets/minifasnet.py defines in PyTorch, built node by node:

- conv → batch norm [→ PReLU] blocks, with each batch norm folded into its convolution (in float64, then
  stored as float32), so the graph holds Conv, PRelu, Add, ReduceMean, Relu, Sigmoid, Mul, Flatten, Gemm
  and Softmax only;
- inverted bottlenecks (1×1 expand, 3×3 depth-wise, 1×1 linear projection), an identity shortcut inside the
  residual stages, and in V1SE a squeeze-excitation step wherever the state dict has one;
- a depth-wise convolution covering the whole 5×5 map, then linear → batch norm (folded) → linear → softmax.

Channel widths are pruned per layer in these weights, so every width is read from the tensors' shapes.
Input `input` (N, 3, 80, 80) BGR 0–255; output `probabilities` (N, 3): print, live, replay — the names and
manifest of the PyTorch export recipe, so both kinds of bundle are interchangeable.

Before a bundle is installed, the graph is run on four synthetic images whose softmax outputs PyTorch gave
for the same published weights (REFERENCE; tests/export check them against PyTorch again), and it is refused
unless every probability agrees within PARITY_TOLERANCE.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edge.errors import ModelError
from edge.models.onnx_build import GraphBuilder
from edge.models.registry import sha256_file
from edge.models.torch_pickle import load_state_dict

SIZE = (80, 80)
LIVE_INDEX = 1
BN_EPS = 1e-5  # PyTorch's BatchNorm default, which the published nets were trained with
INPUT, OUTPUT = "input", "probabilities"
STRIDE2 = ("conv_23", "conv_34", "conv_45")  # the down-sampling bottlenecks between residual stages
STAGES = ("conv_3", "conv_4", "conv_5")
PARITY_TOLERANCE = 1e-5  # max |Δp| against PyTorch for a converted bundle (issue #18)


@dataclass(frozen=True)
class Upstream:
    file: str  # its name upstream; the URL and sha256 pins are edge.models.install.KNOWN[<model>]
    crop_scale: float
    title: str


UPSTREAM = {
    "minifasnet-v2": Upstream("2.7_80x80_MiniFASNetV2.pth", 2.7, "MiniFASNetV2"),
    "minifasnet-v1se": Upstream("4_0_0_80x80_MiniFASNetV1SE.pth", 4.0, "MiniFASNetV1SE"),
}

# PyTorch's softmax (print, live, replay) for synthetic_inputs(), per published state dict (export/nets,
# torch 2.13, CPU, float32). Checked against PyTorch by tests/export/test_minifasnet_graph.py.
REFERENCE = {
    "minifasnet-v2": [
        [1.1424135e-04, 4.0792844e-01, 5.9195733e-01],
        [1.7304468e-04, 7.1407431e-01, 2.8575268e-01],
        [2.9096207e-05, 5.9734809e-01, 4.0262285e-01],
        [2.0155750e-05, 4.8149613e-01, 5.1848370e-01],
    ],
    "minifasnet-v1se": [
        [2.6710904e-05, 4.3719658e-01, 5.6277674e-01],
        [5.7996758e-03, 4.4180474e-01, 5.5239552e-01],
        [6.4363400e-03, 1.7009585e-01, 8.2346779e-01],
        [1.7416949e-03, 4.6634227e-02, 9.5162404e-01],
    ],
}


def synthetic_inputs(n: int = 4) -> np.ndarray:
    """n (3, 80, 80) images of sine stripes, 27.5–227.5: defined by formula, so any numpy gives the same
    bits, and not saturating the nets (their live probabilities range from 0.05 to 0.71)."""
    y, x = np.mgrid[0:SIZE[1], 0:SIZE[0]].astype(np.float64)
    return np.stack([np.stack([127.5 + 100.0 * np.sin((x * (c + 1) + y * (k + 1)) / (7.0 + 3 * k + c))
                               for c in range(3)]) for k in range(n)]).astype(np.float32)


# -- the graph --------------------------------------------------------------------------------------------------
class _Builder(GraphBuilder):
    def __init__(self, sd: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.sd = sd

    def tensor(self, key: str) -> np.ndarray:
        try:
            return np.asarray(self.sd[key], np.float64)
        except KeyError:
            raise ModelError(f"the state dict has no {key!r}: not a MiniFASNet") from None

    def _folded(self, weight: np.ndarray, bn: str) -> tuple[np.ndarray, np.ndarray]:
        """Fold the batch norm `bn` (eval mode: running statistics) into the preceding layer's weight."""
        scale = self.tensor(f"{bn}.weight") / np.sqrt(self.tensor(f"{bn}.running_var") + BN_EPS)
        bias = self.tensor(f"{bn}.bias") - self.tensor(f"{bn}.running_mean") * scale
        return weight * scale.reshape(-1, *([1] * (weight.ndim - 1))), bias

    def conv_bn(self, x: str, prefix: str, conv: str = "conv", bn: str = "bn", stride: int = 1,
                act: str | None = "prelu", depthwise: bool = False, pad: int | None = None) -> str:
        """Conv (no bias) → BN → activation: PReLU (`<prefix>.prelu`), ReLU, Sigmoid or none."""
        w, b = self._folded(self.tensor(f"{prefix}.{conv}.weight"), f"{prefix}.{bn}")
        k = w.shape[-1]
        p = k // 2 if pad is None else pad
        name = f"{prefix}.{conv}"
        y = self.node("Conv", [x, self.const(f"{name}.w", w), self.const(f"{name}.b", b)], f"{name}.out",
                      kernel_shape=[k, k], strides=[stride, stride], pads=[p, p, p, p],
                      group=w.shape[0] if depthwise else 1)
        if act == "prelu":
            slope = self.tensor(f"{prefix}.prelu.weight").reshape(-1, 1, 1)
            return self.node("PRelu", [y, self.const(f"{prefix}.prelu.slope", slope)], f"{prefix}.out")
        if act == "relu":
            return self.node("Relu", [y], f"{name}.relu")
        if act == "sigmoid":
            return self.node("Sigmoid", [y], f"{name}.sigmoid")
        return y

    def bottleneck(self, x: str, prefix: str, stride: int, residual: bool) -> str:
        y = self.conv_bn(x, f"{prefix}.conv")
        y = self.conv_bn(y, f"{prefix}.conv_dw", stride=stride, depthwise=True)
        y = self.conv_bn(y, f"{prefix}.project", act=None)
        if f"{prefix}.se_module.fc1.weight" in self.sd:
            se = f"{prefix}.se_module"
            s = self.node("ReduceMean", [y], f"{se}.mean", axes=[2, 3], keepdims=1)
            s = self.conv_bn(s, se, conv="fc1", bn="bn1", act="relu", pad=0)
            s = self.conv_bn(s, se, conv="fc2", bn="bn2", act="sigmoid", pad=0)
            y = self.node("Mul", [y, s], f"{se}.out")
        return self.node("Add", [x, y], f"{prefix}.sum") if residual else y

    def head(self, x: str) -> str:
        y = self.node("Flatten", [x], "features", axis=1)  # (N, C, 1, 1) → (N, C)
        w, b = self._folded(self.tensor("linear.weight"), "bn")
        y = self.node("Gemm", [y, self.const("linear.w", w), self.const("linear.b", b)], "embedding", transB=1)
        logits = self.node("Gemm", [y, self.const("prob.w", self.tensor("prob.weight"))], "logits", transB=1)
        return self.node("Softmax", [logits], OUTPUT, axis=1)


def stage_count(sd: dict[str, np.ndarray], stage: str) -> int:
    blocks = {int(k.split(".")[2]) for k in sd if k.startswith(f"{stage}.model.")}
    if not blocks or blocks != set(range(max(blocks) + 1)):
        raise ModelError(f"the state dict's {stage} blocks are not numbered 0…n-1: not a MiniFASNet")
    return len(blocks)


def build_graph(sd: dict[str, np.ndarray], name: str = "minifasnet") -> onnx.ModelProto:
    """The ONNX model (softmax output) of a prefix-free MiniFASNet state dict."""
    b = _Builder(sd)
    x = b.conv_bn(INPUT, "conv1", stride=2)
    x = b.conv_bn(x, "conv2_dw", depthwise=True)
    for down, stage in zip(STRIDE2, STAGES, strict=True):
        x = b.bottleneck(x, down, 2, residual=False)
        for i in range(stage_count(sd, stage)):
            x = b.bottleneck(x, f"{stage}.model.{i}", 1, residual=True)
    x = b.conv_bn(x, "conv_6_sep")
    x = b.conv_bn(x, "conv_6_dw", act=None, depthwise=True, pad=0)  # covers the whole 5×5 map
    out = b.head(x)
    classes = int(sd["prob.weight"].shape[0]) if "prob.weight" in sd else 0
    return b.model(name, INPUT, ["batch", 3, SIZE[1], SIZE[0]], out, ["batch", classes],
                   "MiniFASNet built by edge.liveness.minifasnet_graph from a state dict",
                   hint=": not a MiniFASNet state dict?")


# -- bundles ----------------------------------------------------------------------------------------------------
def manifest(model: str, weights_sha256: str, runtime: str = "onnxruntime",
             recipe: str = "facegate models install (edge.liveness.minifasnet_graph)") -> dict[str, Any]:
    """The bundle manifest of `model` (without file and sha256): the same for every converter."""
    from edge.models.install import KNOWN

    up = UPSTREAM[model]
    known = KNOWN.get(model)
    return {
        "name": model if runtime == "onnxruntime" else f"{model}-tflite",
        "task": "liveness",
        "licence": "Apache-2.0",
        "runtime": runtime,
        "input": {"size": list(SIZE), "layout": "NCHW", "colour": "BGR"},
        "normalisation": {"mean": [0, 0, 0], "std": [1, 1, 1]},  # 0–255 pixels, as trained
        "output_dim": 3,
        "source": {"upstream": known.url if known else up.file, "weights_sha256": weights_sha256, "recipe": recipe},
        "extra": {"crop_scale": up.crop_scale, "live_index": LIVE_INDEX, "output": "softmax",
                  "classes": ["spoof (print)", "live", "spoof (replay)"]},
    }


def run(model_file: Path, x: np.ndarray) -> np.ndarray:
    """The graph's softmax for (N, 3, 80, 80) inputs, through the device runtime."""
    from edge.runtime import open_runtime

    rt = open_runtime("onnxruntime", model_file, threads=1)
    return np.asarray(rt.run({rt.input_names[0]: np.ascontiguousarray(x, np.float32)})[0], np.float64)


def self_check(model_file: Path, model: str) -> dict[str, Any]:
    """Run the built graph on synthetic_inputs() and compare with PyTorch's stored outputs (REFERENCE)."""
    ref = np.asarray(REFERENCE[model], np.float64)
    out = run(model_file, synthetic_inputs(len(ref)))
    diff = float(np.abs(out - ref).max())
    return {"reference": "PyTorch softmax of the same state dict on 4 synthetic images (stored REFERENCE)",
            "inputs": "edge.liveness.minifasnet_graph.synthetic_inputs()", "crops": len(ref),
            "max_abs_diff": diff, "max_abs_dp_live": float(np.abs(out - ref)[:, LIVE_INDEX].max()),
            "target": PARITY_TOLERANCE, "passed": diff <= PARITY_TOLERANCE}


def model_for(weights: Path) -> str:
    """Which published MiniFASNet `weights` is, by its sha256."""
    from edge.models.install import KNOWN

    digest = sha256_file(weights)
    for name in UPSTREAM:
        if KNOWN[name].sha256 == digest:
            return name
    raise ModelError(f"{weights}: sha256 {digest} is not one of the published MiniFASNet state dicts "
                     f"({', '.join(f'{UPSTREAM[n].file} {KNOWN[n].sha256[:12]}…' for n in UPSTREAM)})")


def install_from_weights(weights: Path, model_dir: Path) -> list[str]:
    """`facegate models install minifasnet-…`: the published weights → an ONNX bundle in `model_dir`."""
    from edge.models.install import install_model_file, staging_dir

    model = model_for(weights)
    graph = build_graph(load_state_dict(weights), model)
    with tempfile.TemporaryDirectory(dir=staging_dir(Path(model_dir)), prefix=f"{model}.onnx.") as tmp:
        onnx_file = Path(tmp) / "model.onnx"
        onnx_file.write_bytes(graph.SerializeToString())
        parity = self_check(onnx_file, model)
        if not parity["passed"]:
            raise ModelError(f"{model}: the converted graph differs from PyTorch's outputs by "
                             f"{parity['max_abs_diff']:.2e} (> {PARITY_TOLERANCE:g}); not installed")
        return [install_model_file(onnx_file, manifest(model, sha256_file(weights)), Path(model_dir), parity)]
