"""Checkpoint → bundles: style-<name> (ONNX, fp16, any size) and style-<name>-litert (TFLite fp32, tile²).

Each bundle's parity.json compares the exported files with the PyTorch checkpoint on the held-out portraits
at tile² (PSNR), and records the style-loss figures of the ONNX output there: J, J_content, J_style, and
J_style over the reference — J_style after 500 Adam steps from C on the same portrait (bench.py).

`ship=True` writes only the ONNX bundle into the package's own style folder (edge/models/styles/), with a
manifest whose source is the package, so the registry finds it right after install; each shipped file must
stay under SHIP_MAX_BYTES.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge.atomic import atomic_write_bytes
from edge.models.manifest import Manifest
from edge.paths import data_dir
from export.nets.style_net import STRIDE, ClampedStyleNet, parameter_count
from export.style import StyleError
from export.style.content import default_portraits
from export.style.costs import build_cost
from export.style.images import load_image, psnr
from export.style.reference import content_key, reference_for
from export.style.train import TrainSettings, load_style_net

PARITY_MIN_PSNR_DB = 40.0
SHIP_MAX_BYTES = 2_000_000  # ≤ 2 MB per shipped model file (the repository refuses bigger blobs)
SHIP_PACKAGE = "edge.models"  # shipped bundles live in <package>/styles/<bundle name>/


def shipped_dir() -> Path:
    """edge/models/styles/: where the registry looks for the style bundles that come with the package."""
    from edge.models.registry import STYLES_DIR

    return STYLES_DIR


def onnx_export(module: nn.Module, tile: int, out: Path) -> Path:
    sample = torch.rand(1, 3, tile, tile)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and instance-norm notes
        # dynamo=False: the TorchScript exporter keeps height and width symbolic without shape guards.
        torch.onnx.export(module, (sample,), str(out), input_names=["image"], output_names=["stylized"],
                          opset_version=17, dynamo=False,
                          dynamic_axes={"image": {2: "height", 3: "width"}, "stylized": {2: "height", 3: "width"}})
    return out


def training_record(settings: TrainSettings, meta: dict[str, Any]) -> dict[str, Any]:
    """The run's settings and progress as the manifest keeps them (folders and paintings by name only),
    with the same record for the checkpoint it was warm-started from, and so on back to a random start."""
    d = settings.to_dict()
    d["style"] = Path(settings.style).name
    d["content"] = [_data_relative(c) for c in settings.content]
    d["init"] = Path(settings.init).name if settings.init else ""
    record = {"settings": d, "iterations": meta.get("iteration"), "images_seen": meta.get("images"),
              "seconds": round(float(meta.get("elapsed_s") or 0.0), 1), "device": meta.get("device"),
              "torch": meta.get("torch")}
    warm = meta.get("warm_start")
    if warm and warm.get("settings"):
        record["warm_start"] = {"checkpoint": warm.get("checkpoint"),
                                **training_record(TrainSettings.from_dict(warm["settings"]), warm)}
    return record


def _data_relative(path: str | Path) -> str:
    """A training folder as a path under the data directory (e.g. lfw/images), else by its name alone."""
    try:
        return Path(path).resolve().relative_to(data_dir().resolve()).as_posix()
    except ValueError:
        return Path(path).name


def export_style(checkpoint: Path, out_dir: Path | None = None, tile: int = 512, overlap: int = 64,
                 parity_images: Sequence[Path] | None = None, name: str | None = None, ship: bool = False,
                 paintings: Path | None = None, reference: dict[str, Any] | None = None,
                 weights: Path | None = None) -> dict[str, Any]:
    """Write the style's bundles into `out_dir` (with `ship`: only the ONNX one, into edge/models/styles/)."""
    from edge.runtime import open_runtime
    from export.bundle import check_targets, write_bundle
    from export.quantize import convert_fp16
    from export.tflite import convert_fp32

    if tile % STRIDE:
        raise StyleError(f"tile {tile} must be a multiple of {STRIDE}")
    if out_dir is None and not ship:
        raise StyleError("give an output folder, or ship")
    net, settings, meta = load_style_net(checkpoint)
    style = name or settings.name
    module = ClampedStyleNet(net).eval()
    images = list(parity_images or default_portraits())
    painting = (Path(paintings) if paintings else data_dir() / "style") / Path(settings.style).name
    if not painting.is_file():
        painting = Path(settings.style)
    cost = build_cost(painting, settings.costs, weights)
    ref = reference_for(reference, style, settings.costs, tile)
    with tempfile.TemporaryDirectory() as tmp:
        fp32_file = onnx_export(module, tile, Path(tmp) / "fp32.onnx")
        onnx_file = convert_fp16(fp32_file, Path(tmp) / "model.onnx")
        tfl_file = None if ship else convert_fp32(module, (1, 3, tile, tile), Path(tmp) / "model.tflite")
        ort = open_runtime("onnxruntime", onnx_file)
        lrt = open_runtime("litert", tfl_file) if tfl_file else None
        rows = []
        for p in images:
            x = load_image(p, size=(tile, tile))
            with torch.no_grad():
                want = module(x).numpy()
            a = ort.run({ort.input_names[0]: x.numpy()})[0]
            with torch.no_grad():
                j = cost(torch.from_numpy(a).float(), cost.content_target(x)).item()
            row: dict[str, Any] = {"image": Path(p).name, "psnr_onnx_torch": psnr(a, want),
                                   "max_abs_onnx_torch": float(np.abs(a - want).max()),
                                   "J": j["J"], "J_content": j["content"], "J_style": j["style"], "J_tv": j["tv"]}
            if ref is not None and content_key(p) in ref:
                row["style_loss_ratio"] = j["style"] / ref[content_key(p)]
            if lrt is not None:
                b = lrt.run({lrt.input_names[0]: x.numpy()})[0]
                row |= {"psnr_onnx_tflite": psnr(a, b), "psnr_tflite_torch": psnr(b, want),
                        "max_abs_onnx_tflite": float(np.abs(a - b).max())}
            rows.append(row)
        parity: dict[str, Any] = {
            "reference": "PyTorch checkpoint (fp32)", "crops": len(rows), "tile": tile, "onnx_precision": "fp16",
            "min_psnr_db_onnx_torch": min(r["psnr_onnx_torch"] for r in rows),
            "max_abs_diff": max(r["max_abs_onnx_torch"] for r in rows),
            "style_loss": _style_loss_summary(rows), "images": rows}
        targets = {"min_psnr_db_onnx_torch": PARITY_MIN_PSNR_DB}
        if lrt is not None:
            parity |= {"min_psnr_db_onnx_tflite": min(r["psnr_onnx_tflite"] for r in rows),
                       "min_psnr_db_tflite_torch": min(r["psnr_tflite_torch"] for r in rows)}
            targets["min_psnr_db_onnx_tflite"] = PARITY_MIN_PSNR_DB
        parity = check_targets(parity, targets)
        base = {
            "task": "stylize", "licence": "Apache-2.0",
            "source": {"recipe": "export.style", "checkpoint": Path(checkpoint).name, "painting": painting.name},
            "input": {"size": None, "layout": "NCHW", "colour": "RGB", "stride": STRIDE},
            "normalisation": {"mean": [0, 0, 0], "std": [255, 255, 255]},
            "extra": {"style": style, "painting": painting.name, "tile": tile, "overlap": overlap,
                      "costs": settings.costs.to_dict(), "channels": list(settings.channels),
                      "res_blocks": settings.res_blocks, "parameters": parameter_count(net),
                      "iterations": meta.get("iteration"), "train_size": settings.size,
                      "training": training_record(settings, meta), "style_loss": parity["style_loss"],
                      "parity": {k: parity[k] for k in parity if k.startswith("min_psnr")} | {
                          "images": len(rows), "tile": tile, "passed": parity["passed"]}},
        }
        dest = shipped_dir() if ship and out_dir is None else Path(out_dir)  # type: ignore[arg-type]
        onnx_bundle = write_bundle(dest, {**base, "name": f"style-{style}", "runtime": "onnxruntime"},
                                   onnx_file, parity)
        tfl_bundle = None
        if tfl_file is not None:
            tfl_manifest = {**base, "name": f"style-{style}-litert", "runtime": "litert",
                            "input": {**base["input"], "size": [tile, tile]}}
            tfl_bundle = write_bundle(dest, tfl_manifest, tfl_file, parity)
    if ship:
        _as_package_data(onnx_bundle)
    return {"style": style, "onnx": str(onnx_bundle), "tflite": str(tfl_bundle) if tfl_bundle else None,
            "parity": parity}


def _style_loss_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"mean_J": float(np.mean([r["J"] for r in rows])),
                           "mean_J_style": float(np.mean([r["J_style"] for r in rows]))}
    ratios = [r["style_loss_ratio"] for r in rows if "style_loss_ratio" in r]
    if ratios:
        out |= {"mean_ratio": float(np.mean(ratios)), "max_ratio": float(np.max(ratios)),
                "ratio_is": "J_style of the ONNX output / J_style after 500 Adam steps from C (reference)"}
    return out


def _as_package_data(bundle: Path) -> None:
    """Point the bundle's manifest at the package copy of its model file, and refuse one that is too big."""
    manifest_file = bundle / "manifest.json"
    data = json.loads(manifest_file.read_text())
    model = bundle / data["file"]
    if model.stat().st_size > SHIP_MAX_BYTES:
        raise StyleError(f"{model}: {model.stat().st_size} bytes, over the {SHIP_MAX_BYTES} a shipped style may have")
    source = {k: v for k, v in data["source"].items() if k != "file"}
    data["source"] = {**source, "package": SHIP_PACKAGE, "path": f"styles/{bundle.name}/{data['file']}"}
    Manifest.from_dict(data, origin=str(manifest_file))
    atomic_write_bytes(manifest_file, (json.dumps(data, indent=2) + "\n").encode())
    os.chmod(manifest_file, 0o644)  # atomic writes are private (0600); package data is read by anyone
