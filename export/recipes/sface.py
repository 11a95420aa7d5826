"""`facegate export sface`: the prepared SFace graph → ONNX int8 / fp16 and TFLite fp32 / int8 / fp16 bundles.

ONNX variants are made from the prepared graph the device already runs (onnxruntime's own tools). TFLite
variants go through a PyTorch re-implementation built from the same weights (export/nets/sface.py).

Calibration crops come from images the LFW View-2 pairs file does not name, so the LFW accuracy of the int8 variants is
measured on faces the quantiser never saw; parity crops come from images not used for calibration. Every
crop is cut by the device's detector and five-point alignment, and every variant runs through the device's
registry, runtime backend and embedder (edge.embed), against the source model run the same way.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from edge.embed import Embedder, to_input
from edge.errors import ModelError
from edge.eval.lfw import images_named_by
from edge.models.manifest import Manifest
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
    stage_all,
    variant_name,
)

OFFERED = ("onnx-int8", "onnx-fp16", "tflite-fp32", "tflite-int8", "tflite-fp16")


def variant_manifest(m: Manifest, variant: str) -> dict[str, Any]:
    """The source's manifest (template, thresholds, input spec) renamed for the variant, nothing to prepare."""
    data = m.to_dict()
    data.pop("quantize", None)  # the variant's file is already what the device runs
    data.update(name=variant_name(m.name, variant), prepare=[], default=False,
                runtime="litert" if variant.startswith("tflite") else "onnxruntime")
    data["source"] = {"derived_from": f"{m.name} (sha256 {m.sha256})", "recipe": f"facegate export sface ({variant})",
                      **({"upstream": m.source["upstream"]} if "upstream" in m.source else {})}
    for t in data["thresholds"].values():
        # Calibrated on the source model; fp32/fp16 reproduce its scores, int8 should be recalibrated.
        t["provenance"] = {**t["provenance"], "inherited_from": m.name}
    return data


def reference_manifest(m: Manifest) -> dict[str, Any]:
    """The source, staged as itself: its prepared graph as a plain bundle."""
    data = m.to_dict()
    data.pop("quantize", None)
    data.update(prepare=[], default=False, source={"derived_from": f"{m.name} (sha256 {m.sha256}), prepared"})
    return data


def build_variant(variant: str, m: Manifest, registry: Registry, calib_x: Any, out: Path,
                  done: dict[str, Path]) -> Path:
    """Make one variant file at `out`; `done` maps variants already made to their files (fp16 reuses fp32)."""
    from export import quantize

    src = registry.runtime_file(m)  # the prepared graph: what the device runs today
    if variant == "onnx-int8":
        # The device's int8 twin as one file: PRelu as Max, integer kernels end to end (export/int8_ranges.py).
        from export.int8_ranges import float_steps

        return quantize.quantize_prelu_net(registry.verify(m), out, float_steps(m), calib_x)
    if variant == "onnx-fp16":
        return quantize.convert_fp16(src, out)
    from export import tflite
    from export.nets import sface as net

    module = net.load(registry.verify(m))
    w, h = m.input.size or (112, 112)
    shape = (1, 3, h, w)
    if variant == "tflite-fp32":
        return tflite.convert_fp32(module, shape, out)
    if variant == "tflite-int8":
        return tflite.convert_int8(module, shape, calib_x, out)
    if variant == "tflite-fp16":
        fp32 = done.get("tflite-fp32") or tflite.convert_fp32(module, shape, out.with_name(out.stem + "-fp32.tflite"))
        return tflite.to_fp16(fp32, out)
    raise ExportError(f"SFace is offered as {', '.join(OFFERED)}, not {variant}")


def export(out: Path, variants: tuple[str, ...] = OFFERED, source: str = "sface", images: Path | None = None,
           calib_images: int = 200, parity_images: int = 100, pairs: Path | None = None,
           lfw_folds: int | None = None, registry: Registry | None = None) -> list[tuple[Path, bool]]:
    """Build the chosen variants of `source` into `out`; returns (bundle folder, parity passed) for each."""
    registry = registry or Registry()
    m = registry.manifest(source)
    if m.task != "embed" or m.alignment is None or m.runtime != "onnxruntime":
        raise ModelError(f"{source}: the sface recipe needs an ONNX embedder with an alignment template")
    images = Path(images) if images else data_dir() / "lfw" / "images"
    if pairs is None and (images.parent / "pairs.txt").is_file():
        pairs = images.parent / "pairs.txt"
    held_out = images_named_by([pairs] if pairs else [])
    calib, calib_paths = heldout_face_crops(images, m.alignment, calib_images, skip=held_out, seed=1,
                                            registry=registry)
    crops, crop_paths = heldout_face_crops(images, m.alignment, parity_images, skip=set(calib_paths), seed=0,
                                           registry=registry)
    calib_x = to_input(calib, m)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        built: list[Built] = []
        # fp32 first, so fp16 can reuse it
        for variant in sorted(variants, key=lambda v: precision(v) != "fp32"):
            manifest = variant_manifest(m, variant)
            target = work / f"{manifest['name']}{VARIANTS[variant][0]}"
            done = {b.variant: b.file for b in built}
            built.append(Built(variant, manifest, build_variant(variant, m, registry, calib_x, target, done)))
        ref = Built("reference", reference_manifest(m), registry.runtime_file(m))
        staged = stage_all(work / "models", [ref, *built])
        reference = Embedder(*staged.open(m.name)).embed(crops)
        int8 = [b.manifest["name"] for b in built if precision(b.variant) == "int8"]
        lfw = (lfw_parity(m.name, int8, images, pairs, folds=lfw_folds, registry=staged)
               if int8 and pairs else {})
        targets = {}
        for b in built:
            emb = Embedder(*staged.open(b.manifest["name"])).embed(crops)
            b.parity = {"reference": f"{m.name} (prepared ONNX, onnxruntime)", "variant": b.variant,
                        **embedding_parity(reference, emb), "crop_images": crop_paths}
            if precision(b.variant) == "int8":
                b.parity.update(calibration_images=len(calib_paths), calibration_paths=calib_paths)
            targets[b.variant] = dict(EMBED_TARGETS[precision(b.variant)])
            if b.manifest["name"] in lfw:
                b.parity["lfw"] = lfw[b.manifest["name"]]
                targets[b.variant]["lfw.delta_pp"] = LFW_INT8_TARGET_PP
        return finish(out, built, targets)
