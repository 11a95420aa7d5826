"""`facegate export torch`: any PyTorch module + weights from our own training → ONNX and TFLite bundles.

The module comes from a factory, `package.module:function` or `path/to/file.py:function`, called without
arguments; `--weights` (a state dict, or a checkpoint holding one under "state_dict") is loaded into it.
Parity is measured against the module itself on held-out face crops cut the way the device will cut them:
five-point alignment for embedders (the template of another model, scaled to the input size), the scaled
box crop for liveness models.
"""

from __future__ import annotations

import importlib
import importlib.util
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.embed import Embedder, l2_normalise, to_input
from edge.eval.lfw import images_named_by
from edge.models.manifest import TASKS, AlignmentTemplate, InputSpec, Manifest, Normalisation
from edge.models.registry import Registry
from edge.paths import data_dir
from export.bundle import ExportError, embedding_parity, heldout_face_crops, lfw_parity
from export.recipes import (
    EMBED_TARGETS,
    LFW_INT8_TARGET_PP,
    VARIANTS,
    Built,
    finish,
    precision,
    quiet,
    run_staged,
    stage_all,
    torch_outputs,
    torch_to_onnx,
    variant_name,
)
from export.recipes.minifasnet import crop_maker, liveness_parity

OFFERED = tuple(VARIANTS)


@dataclass
class ModelSpec:
    """What the device needs to know about the module's input and output, beyond the graph itself."""

    name: str
    task: str
    size: tuple[int, int]  # (width, height)
    colour: str = "RGB"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    licence: str = "proprietary"
    template: str = "sface"  # the model whose alignment template embedders use
    crop_scale: float | None = None  # liveness: the box crop's scale
    live_index: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


def load_module(factory: str, weights: Path | None = None) -> Any:
    """Call `module:function` (or `file.py:function`) and load `weights` into what it returns, in eval mode."""
    import torch

    if ":" not in factory:
        raise ExportError(f"--module must be 'package.module:function' or 'file.py:function', not {factory!r}")
    where, func = factory.rsplit(":", 1)
    if where.endswith(".py"):
        spec = importlib.util.spec_from_file_location(Path(where).stem, where)
        if spec is None or spec.loader is None:
            raise ExportError(f"{where}: cannot import it")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    else:
        mod = importlib.import_module(where)
    make = getattr(mod, func, None)
    if make is None:
        raise ExportError(f"{where} has no {func!r}")
    module = make if isinstance(make, torch.nn.Module) else make()
    if not isinstance(module, torch.nn.Module):
        raise ExportError(f"{factory} returned {type(module).__name__}, not a torch.nn.Module")
    if weights is not None:
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
        module.load_state_dict(state, strict=True)
    return module.eval()


def manifest_for(spec: ModelSpec, variant: str, output_dim: int, alignment: AlignmentTemplate | None,
                 factory: str, weights_sha256: str | None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": variant_name(spec.name, variant), "task": spec.task, "licence": spec.licence,
        "runtime": "litert" if variant.startswith("tflite") else "onnxruntime",
        "input": {"size": list(spec.size), "layout": "NCHW", "colour": spec.colour},
        "normalisation": {"mean": list(spec.mean), "std": list(spec.std)},
        "output_dim": output_dim,
        "source": {"module": factory, "recipe": f"facegate export torch ({variant})",
                   **({"weights_sha256": weights_sha256} if weights_sha256 else {})},
        "extra": dict(spec.extra),
    }
    if alignment is not None:
        data["alignment"] = {"size": list(alignment.size), "points": [list(p) for p in alignment.points]}
    if spec.task == "liveness":
        data["extra"].update(crop_scale=spec.crop_scale, live_index=spec.live_index)
    return data


def preprocessing(spec: ModelSpec) -> Manifest:
    """As much of a manifest as edge.embed.to_input reads: the device's own preprocessing of a crop."""
    return Manifest(name=spec.name, task=spec.task, file="", sha256="", source={}, licence=spec.licence,
                    runtime="onnxruntime", input=InputSpec(size=spec.size, layout="NCHW", colour=spec.colour),
                    normalisation=Normalisation(mean=spec.mean, std=spec.std))


def scaled_template(template: AlignmentTemplate, size: tuple[int, int]) -> AlignmentTemplate:
    sx, sy = size[0] / template.size[0], size[1] / template.size[1]
    return AlignmentTemplate(size=size, points=tuple((x * sx, y * sy) for x, y in template.points))


def build(module: Any, variant: str, shape: tuple[int, ...], calib_x: np.ndarray, out: Path,
          done: dict[str, Path]) -> Path:
    """Make one variant file at `out`; int8 and fp16 start from the fp32 file of their format when made."""
    from export import quantize, tflite

    fmt = variant.split("-")[0]
    fp32 = done.get(f"{fmt}-fp32")
    if variant == "onnx-fp32":
        return torch_to_onnx(module, shape, out)
    if variant in ("onnx-int8", "onnx-fp16"):
        fp32 = fp32 or torch_to_onnx(module, shape, out.with_name(out.stem + "-fp32.onnx"))
        return (quantize.quantize_int8(fp32, out, calib_x) if variant == "onnx-int8"
                else quantize.convert_fp16(fp32, out))
    with quiet():
        if variant == "tflite-fp32":
            return tflite.convert_fp32(module, shape, out)
        if variant == "tflite-int8":
            return tflite.convert_int8(module, shape, calib_x, out)
        if variant == "tflite-fp16":
            fp32 = fp32 or tflite.convert_fp32(module, shape, out.with_name(out.stem + "-fp32.tflite"))
            return tflite.to_fp16(fp32, out)
    raise ExportError(f"unknown variant {variant}")


def export(out: Path, factory: str, spec: ModelSpec, weights: Path | None = None,
           variants: tuple[str, ...] = OFFERED, images: Path | None = None, calib_images: int = 200,
           parity_images: int = 100, pairs: Path | None = None, lfw_folds: int | None = None,
           registry: Registry | None = None) -> list[tuple[Path, bool]]:
    """Export the module as each variant into `out`; returns (bundle folder, parity passed) for each."""
    from edge.models.registry import sha256_file

    if spec.task not in TASKS:
        raise ExportError(f"--task must be one of {', '.join(TASKS)}")
    if spec.task == "liveness" and not spec.crop_scale:
        raise ExportError("a liveness model needs --crop-scale (the face box scale its crops were cut with)")
    registry = registry or Registry()
    module = load_module(factory, weights)
    images = Path(images) if images else data_dir() / "lfw" / "images"
    if pairs is None and (images.parent / "pairs.txt").is_file():
        pairs = images.parent / "pairs.txt"
    alignment = None
    if spec.task == "liveness":
        cut: Any = crop_maker(float(spec.crop_scale or 1.0))
    else:
        base = registry.manifest(spec.template).alignment
        if base is None:
            raise ExportError(f"{spec.template}: has no alignment template to borrow")
        alignment = cut = scaled_template(base, spec.size)
    held_out = images_named_by([pairs] if pairs else [])
    calib, calib_paths = heldout_face_crops(images, cut, calib_images, skip=held_out, seed=1, registry=registry)
    crops, crop_paths = heldout_face_crops(images, cut, parity_images, skip=set(calib_paths), seed=0,
                                           registry=registry)
    w, h = spec.size
    shape = (1, 3, h, w)
    device = preprocessing(spec)
    calib_x, x = to_input(calib, device), to_input(crops, device)
    reference = torch_outputs(module, x)
    output_dim = int(np.prod(reference.shape[1:]))
    digest = sha256_file(weights) if weights else None
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        built: list[Built] = []
        for variant in sorted(variants, key=lambda v: precision(v) != "fp32"):  # fp32 first: the others reuse it
            manifest = manifest_for(spec, variant, output_dim, alignment, factory, digest)
            target = work / f"{manifest['name']}{VARIANTS[variant][0]}"
            done = {b.variant: b.file for b in built}
            built.append(Built(variant, manifest, build(module, variant, shape, calib_x, target, done)))
        staged = stage_all(work / "models", built)
        names = {b.variant: b.manifest["name"] for b in built}
        int8 = [names[v] for v in names if precision(v) == "int8"]
        lfw = {}
        if spec.task == "embed" and int8 and pairs and "onnx-fp32" in names:
            lfw = lfw_parity(names["onnx-fp32"], int8, images, pairs, folds=lfw_folds, registry=staged)
        targets: dict[str, dict[str, float]] = {}
        for b in built:
            parity: dict[str, Any] = {"reference": f"PyTorch module {factory}", "variant": b.variant,
                                      "crop_images": crop_paths}
            if precision(b.variant) == "int8":
                parity.update(calibration_images=len(calib_paths), calibration_paths=calib_paths)
            if spec.task == "embed":
                emb = Embedder(*staged.open(b.manifest["name"])).embed(crops)
                parity.update(embedding_parity(l2_normalise(reference.reshape(len(x), -1)), emb))
                targets[b.variant] = dict(EMBED_TARGETS[precision(b.variant)])
            elif spec.task == "liveness":
                parity.update(liveness_parity(reference, run_staged(staged, b.manifest["name"], x),
                                              spec.live_index))
                targets[b.variant] = {"max_abs_dp_live": 1e-3 if precision(b.variant) == "fp32" else 2e-2,
                                      "verdict_mismatches": 0}
            else:
                parity.update(embedding_parity(reference, run_staged(staged, b.manifest["name"], x)))
                targets[b.variant] = dict(EMBED_TARGETS[precision(b.variant)])
            if b.manifest["name"] in lfw:
                parity["lfw"] = lfw[b.manifest["name"]]
                targets[b.variant]["lfw.delta_pp"] = LFW_INT8_TARGET_PP
            b.parity = parity
        return finish(out, built, targets)
