"""`facegate export minifasnet`: the published MiniFASNet state dicts → ONNX and TFLite liveness bundles.

Parity is measured against the PyTorch state dicts themselves, on real face crops cut the way the weights
were trained (a box scaled about its centre, kept inside the image, resized to 80×80): max |Δ p_live| and
whether every live/spoof verdict (the arg-max class) is the same.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.embed import to_input
from edge.liveness.minifasnet_graph import UPSTREAM
from edge.liveness.minifasnet_graph import manifest as graph_manifest
from edge.models.install import KNOWN, fetch_known
from edge.models.registry import sha256_file
from edge.paths import data_dir, state_dir
from edge.vision.detect import Face
from export.bundle import ExportError, heldout_face_crops
from export.recipes import (
    Built,
    finish,
    quiet,
    run_staged,
    stage_all,
    torch_outputs,
    torch_to_onnx,
    variant_name,
)

OFFERED = ("onnx-fp32", "tflite-fp32")
TARGETS = {"max_abs_dp_live": 1e-3, "verdict_mismatches": 0}
LIVE_INDEX = 1
SIZE = (80, 80)


MODELS = UPSTREAM  # file, crop scale and title of each published net (shared with the device's converter)


def scaled_box_crop(image: np.ndarray, box: np.ndarray, scale: float, size: tuple[int, int] = SIZE) -> np.ndarray:
    """The face box grown `scale`× about its centre, shifted to stay inside the image, resized to `size`.

    The scale shrinks when the image is too small for it, as in the weights' training code, so the crop's
    context (hair, background, a phone's bezel) is what the nets learned from.
    """
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    bw, bh = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    scale = min((h - 1) / bh, (w - 1) / bw, scale)
    cw, ch = bw * scale, bh * scale
    cx, cy = x1 + bw / 2, y1 + bh / 2
    left, top, right, bottom = cx - cw / 2, cy - ch / 2, cx + cw / 2, cy + ch / 2
    if left < 0:
        right, left = right - left, 0.0
    if top < 0:
        bottom, top = bottom - top, 0.0
    if right > w - 1:
        left, right = left - (right - w + 1), w - 1.0
    if bottom > h - 1:
        top, bottom = top - (bottom - h + 1), h - 1.0
    patch = image[int(top):int(bottom) + 1, int(left):int(right) + 1]
    return cv2.resize(patch, size)


def crop_maker(scale: float) -> Callable[[np.ndarray, Face], np.ndarray]:
    return lambda image, face: scaled_box_crop(image, face.box, scale)


def manifest_for(model: str, variant: str, weights_sha256: str) -> dict[str, Any]:
    """The device converter's manifest (edge.liveness.minifasnet_graph.manifest), as this recipe's variant."""
    data = graph_manifest(model, weights_sha256, runtime="litert" if variant.startswith("tflite") else "onnxruntime",
                          recipe=f"facegate export minifasnet ({variant})")
    data["name"] = variant_name(model, variant)
    return data


def weights_path(model: str, weights_dir: Path | None, download: bool, mirror: str | None = None) -> Path:
    """The state dict: from `weights_dir` when there, else (with `download`) fetched from the pinned URL."""
    up = MODELS[model]
    for folder in [weights_dir, data_dir() / "models" / "minifasnet"]:
        if folder and (Path(folder) / up.file).is_file():
            path = Path(folder) / up.file
            if model in KNOWN and sha256_file(path) != KNOWN[model].sha256:
                raise ExportError(f"{path}: sha256 differs from the published {KNOWN[model].sha256}")
            return path
    if not download:
        raise ExportError(f"{up.file} not found (looked in {weights_dir or '-'} and {data_dir()}/models/minifasnet); "
                          "pass --weights-dir DIR, or --download to fetch it from the pinned upstream URL")
    return fetch_known(model, state_dir() / "downloads", mirror=mirror)


def liveness_parity(torch_p: np.ndarray, out_p: np.ndarray, live_index: int = LIVE_INDEX) -> dict[str, Any]:
    """max |Δ p_live| and verdict (arg-max) agreement between two (N, 3) probability sets."""
    dp = np.abs(torch_p[:, live_index] - out_p[:, live_index])
    same = torch_p.argmax(1) == out_p.argmax(1)
    return {"crops": len(torch_p), "max_abs_dp_live": float(dp.max()), "mean_abs_dp_live": float(dp.mean()),
            "max_abs_diff": float(np.abs(torch_p - out_p).max()), "verdict_mismatches": int((~same).sum()),
            "live_verdicts": int((torch_p.argmax(1) == live_index).sum())}


def parity_crops(scale: float, images: Path, n: int, samples: Path | None) -> tuple[np.ndarray, list[str]]:
    """`n` held-out LFW-style crops plus every image in `samples` (live and spoof examples, when given)."""
    crops, paths = heldout_face_crops(images, crop_maker(scale), n, seed=0)
    if samples and Path(samples).is_dir():
        extra, extra_paths = heldout_face_crops(samples, crop_maker(scale), 10_000, seed=0, policy="largest")
        crops = np.concatenate([crops, extra])
        paths += [f"{Path(samples).name}/{p}" for p in extra_paths]
    return crops, paths


def export(out: Path, models: tuple[str, ...] = tuple(MODELS), variants: tuple[str, ...] = OFFERED,
           weights_dir: Path | None = None, download: bool = False, images: Path | None = None,
           parity_images: int = 100, samples: Path | None = None, mirror: str | None = None
           ) -> list[tuple[Path, bool]]:
    """Build every (model, variant) bundle into `out`; returns (bundle folder, parity passed) for each."""
    from export.nets import minifasnet as nets
    from export.tflite import convert_fp32

    images = Path(images) if images else data_dir() / "lfw" / "images"
    samples = samples if samples is not None else data_dir() / "liveness"
    results: list[tuple[Path, bool]] = []
    for model in models:
        if model not in MODELS:
            raise ExportError(f"unknown MiniFASNet {model!r} (known: {', '.join(MODELS)})")
        weights = weights_path(model, weights_dir, download, mirror)
        up = MODELS[model]
        net = nets.load(str(weights), softmax=True)
        crops, paths = parity_crops(up.crop_scale, images, parity_images, samples)
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            built = []
            for variant in variants:
                manifest = manifest_for(model, variant, sha256_file(weights))
                target = work / f"{manifest['name']}{'.tflite' if variant.startswith('tflite') else '.onnx'}"
                if variant == "onnx-fp32":
                    torch_to_onnx(net, (1, 3, *SIZE[::-1]), target, output_name="probabilities")
                elif variant == "tflite-fp32":
                    with quiet():
                        convert_fp32(net, (1, 3, *SIZE[::-1]), target)
                else:
                    raise ExportError(f"MiniFASNet is offered as {', '.join(OFFERED)}, not {variant}")
                built.append(Built(variant, manifest, target))
            registry = stage_all(work / "models", built)
            x = to_input(crops, registry.manifest(built[0].manifest["name"]))  # the device's own preprocessing
            reference = torch_outputs(net, x)
            for b in built:
                out_p = run_staged(registry, b.manifest["name"], x)
                b.parity = {"reference": f"PyTorch state dict {up.file}", "variant": b.variant,
                            "crop_images": paths, **liveness_parity(reference, out_p)}
            results += finish(out, built, {v: TARGETS for v in variants})
    from edge.liveness.minifasnet import write_fused

    write_fused(Path(out))  # the fused V2 + V1SE check, once both members are in `out`
    return results
