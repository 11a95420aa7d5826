"""Export recipes: source model → variant files → measured on the device code path → bundles.

Shared plumbing lives here: naming variants, exporting a torch module to ONNX, running a staged model
through the registry and runtime the device uses, and writing every bundle with its parity report.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.models.registry import Registry
from export.bundle import ExportError, check_targets, stage_model, write_bundle

# format-precision → (file suffix, bundle-name suffix). ONNX fp32 is a model's plain name.
VARIANTS: dict[str, tuple[str, str]] = {
    "onnx-fp32": (".onnx", ""),
    "onnx-int8": (".onnx", "-int8"),
    "onnx-fp16": (".onnx", "-fp16"),
    "tflite-fp32": (".tflite", "-tflite"),
    "tflite-int8": (".tflite", "-tflite-int8"),
    "tflite-fp16": (".tflite", "-tflite-fp16"),
}

# Parity targets by precision: fp32 must be numerically the same model; fp16 loses ~3 decimal digits.
EMBED_TARGETS = {"fp32": {"min_cosine": 0.9999}, "fp16": {"min_cosine": 0.999}, "int8": {"min_cosine": 0.95}}
LFW_INT8_TARGET_PP = 0.15


def variant_name(base: str, variant: str) -> str:
    if variant not in VARIANTS:
        raise ExportError(f"unknown variant {variant!r} (known: {', '.join(VARIANTS)})")
    return base + VARIANTS[variant][1]


def precision(variant: str) -> str:
    return variant.rsplit("-", 1)[1]


def parse_variants(text: str | None, allowed: tuple[str, ...]) -> tuple[str, ...]:
    if not text:
        return allowed
    chosen = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in chosen if v not in allowed]
    if bad:
        raise ExportError(f"variant(s) {bad} not offered here (choose from {', '.join(allowed)})")
    return chosen


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The torch exporters narrate each step on stdout; keep the CLI's output to our own lines."""
    if os.environ.get("FACEGATE_VERBOSE"):
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def torch_to_onnx(module: Any, input_shape: tuple[int, ...], out: Path, input_name: str = "input",
                  output_name: str = "output", opset: int = 18) -> Path:
    """Export with a symbolic batch dimension, weights inside the file (a bundle is one model file).

    PReLU is rewritten with the device's own prelu_as_relu step: exact, and onnxruntime's PRelu kernel is
    slow (MiniFASNetV2: 6.7 → 1.1 ms a crop on one thread here).
    """
    import onnx
    import torch

    from edge.models.prepare import prelu_as_relu

    module = module.eval()
    sample = torch.zeros(input_shape, dtype=torch.float32)
    with quiet(), torch.no_grad():
        program = torch.onnx.export(module, (sample,), input_names=[input_name], output_names=[output_name],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=opset,
                                    dynamo=True)
    model = prelu_as_relu(program.model_proto)
    onnx.checker.check_model(model)
    onnx.save(model, str(out), save_as_external_data=False)
    return Path(out)


def torch_outputs(module: Any, inputs: np.ndarray, batch: int = 32) -> np.ndarray:
    import torch

    outs = []
    with torch.no_grad():
        for start in range(0, len(inputs), batch):
            x = torch.from_numpy(np.ascontiguousarray(inputs[start:start + batch], dtype=np.float32))
            outs.append(module.eval()(x).numpy())
    return np.concatenate(outs)


@dataclass
class Built:
    """A variant file and the manifest it will ship with (file, sha256 and source.file filled in later)."""

    variant: str
    manifest: dict[str, Any]
    file: Path
    parity: dict[str, Any] = field(default_factory=dict)


def stage_all(model_dir: Path, built: list[Built]) -> Registry:
    """A registry over `model_dir` that opens each built variant as if installed."""
    for b in built:
        stage_model(model_dir, b.manifest, b.file)
    return Registry(model_dir)


def run_staged(registry: Registry, name: str, inputs: np.ndarray) -> np.ndarray:
    """Raw outputs of a staged model on preprocessed inputs, through the device's runtime backend."""
    runtime, _ = registry.open(name, threads=1)
    return runtime.run({runtime.input_names[0]: np.ascontiguousarray(inputs, dtype=np.float32)})[0]


def finish(out_dir: Path, built: list[Built], targets: dict[str, dict[str, float]]) -> list[tuple[Path, bool]]:
    """Check each variant's parity against its targets and write its bundle; (bundle, passed) per variant."""
    results = []
    for b in built:
        parity = check_targets(b.parity, targets.get(b.variant, {}))
        results.append((write_bundle(out_dir, b.manifest, b.file, parity), bool(parity["passed"])))
    return results
