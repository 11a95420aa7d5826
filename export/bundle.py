"""Bundles: what every export writes, and the parity evidence that goes with it.

A bundle is a folder `<out>/<name>/` holding `model.<ext>`, `manifest.json` (the registry's format, so the
folder can be copied or installed into the model directory as it is) and `parity.json`, which compares the
exported file with its source model on real face crops cut by the device's own detector and alignment.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge.atomic import staged_folder
from edge.errors import FacegateError, ImageError, NoFaceError
from edge.eval.lfw import cross_validate, embed_paths, pair_scores, read_pairs
from edge.imageio import image_files, load_bgr
from edge.models.install import staging_dir
from edge.models.manifest import AlignmentTemplate, Manifest
from edge.models.registry import Registry, sha256_file
from edge.vision.align import align
from edge.vision.detect import Face, make_detector, select_face

RUNTIME_BY_SUFFIX = {".onnx": "onnxruntime", ".tflite": "litert"}

# A crop maker turns (image, chosen face) into the model's input crop; an alignment template is the usual one.
CropMaker = Callable[[np.ndarray, Face], np.ndarray]


class ExportError(FacegateError):
    """An export could not be completed (missing input, failed conversion, invalid bundle)."""


# -- writing ---------------------------------------------------------------------------------------------------
def write_bundle(out_dir: Path, manifest: dict[str, Any], model_file: Path, parity: dict[str, Any]) -> Path:
    """Write `out_dir/<name>/` with the model, its manifest and parity report; returns the bundle folder.

    The manifest's file, sha256 and source.file are filled in here (its runtime too, from the file's suffix,
    when absent), and it is validated before anything becomes visible. The bundle is assembled in
    `out_dir/.staging/` and renamed into place, so a failure leaves either the old bundle or none.
    """
    name = str(manifest.get("name") or "")
    if not name or "/" in name or name.startswith("."):
        raise ExportError(f"bundle name {name!r} is not a plain folder name")
    model_file = Path(model_file)
    if not model_file.is_file():
        raise ExportError(f"{model_file}: exported model file is missing")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / name
    # out_dir may be a model directory: its .staging/ is where the registry never looks
    with staged_folder(target, staging_dir(out_dir)) as tmp:
        stage_model(tmp, manifest, model_file, flat=True)
        report = {"name": name, **parity, "summary": parity_summary(name, parity)}
        (tmp / "parity.json").write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    print(report["summary"], flush=True)
    return target


def stage_model(model_dir: Path, manifest: dict[str, Any], model_file: Path, flat: bool = False) -> dict[str, Any]:
    """Lay `model.<ext>` and a completed, validated `manifest.json` in `model_dir/<name>/` (or in `model_dir`
    itself when `flat`); returns the completed manifest.

    A registry on `model_dir` then opens the model like an installed one: how recipes measure a variant
    through the device code path before its bundle is written.
    """
    name = str(manifest["name"])
    folder = Path(model_dir) if flat else Path(model_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    fname = "model" + Path(model_file).suffix.lower()
    shutil.copyfile(model_file, folder / fname)
    data = dict(manifest)
    data["file"] = fname
    data["sha256"] = sha256_file(folder / fname)
    # Keep provenance keys (upstream, recipe) but never a package source: the file lives in the bundle.
    source = {k: str(v) for k, v in (manifest.get("source") or {}).items() if k not in ("package", "path")}
    data["source"] = {**source, "file": fname}
    data.setdefault("runtime", RUNTIME_BY_SUFFIX.get(Path(model_file).suffix.lower(), "onnxruntime"))
    Manifest.from_dict(data, origin=f"bundle {name!r}")  # refuse to write what the registry would refuse
    (folder / "manifest.json").write_text(json.dumps(data, indent=2) + "\n")
    return data


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def parity_summary(name: str, parity: dict[str, Any]) -> str:
    """One line: what was compared, on how many crops, the figures, and whether the targets were met."""
    parts = []
    if "min_cosine" in parity:
        parts.append(f"min cosine {parity['min_cosine']:.6f}")
    if "mean_cosine" in parity:
        parts.append(f"mean cosine {parity['mean_cosine']:.6f}")
    if "max_abs_diff" in parity:
        parts.append(f"max |Δ| {parity['max_abs_diff']:.2e}")
    if "max_abs_dp_live" in parity:
        parts.append(f"max |Δp_live| {parity['max_abs_dp_live']:.2e}")
    if "verdict_mismatches" in parity:
        parts.append(f"verdict mismatches {parity['verdict_mismatches']}")
    lfw = parity.get("lfw")
    if lfw:
        parts.append(f"LFW accuracy {lfw['accuracy']:.4f} vs {lfw['accuracy_reference']:.4f} "
                     f"(Δ {lfw['delta_pp']:+.2f} pp, {lfw['pairs']} pairs)")
    verdict = {True: "PASS", False: "FAIL"}.get(parity.get("passed"), "")  # type: ignore[arg-type]
    against = parity.get("reference", "source")
    return (f"{name}: parity vs {against} on {parity.get('crops', '?')} held-out face crops: "
            + ", ".join(parts) + (f" — {verdict}" if verdict else ""))


def check_targets(parity: dict[str, Any], targets: dict[str, float]) -> dict[str, Any]:
    """Record the targets in the report and whether each figure met its own ("min_*" ≥, others ≤)."""
    failed = []
    for key, bound in targets.items():
        value = _lookup(parity, key)
        ok = value is not None and (value >= bound if key.split(".")[-1].startswith("min") else abs(value) <= bound)
        if not ok:
            failed.append(key)
    return {**parity, "targets": dict(targets), "failed": failed, "passed": not failed}


def _lookup(d: dict[str, Any], dotted: str) -> float | None:
    cur: Any = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return float(cur)


# -- parity figures --------------------------------------------------------------------------------------------
def embedding_parity(ref: np.ndarray, out: np.ndarray) -> dict[str, Any]:
    """Cosine (min, mean) and max absolute difference between two (N, D) embedding sets, row by row."""
    a = np.asarray(ref, np.float64).reshape(len(ref), -1)
    b = np.asarray(out, np.float64).reshape(len(out), -1)
    if a.shape != b.shape or len(a) == 0:
        raise ExportError(f"cannot compare embeddings of shapes {a.shape} and {b.shape}")
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return {"crops": len(a), "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
            "max_abs_diff": float(np.abs(a - b).max())}


# -- real face crops -------------------------------------------------------------------------------------------
def list_images(images_dir: Path) -> list[str]:
    """Every image under the folder, as sorted POSIX paths relative to it."""
    root = Path(images_dir)
    if not root.is_dir():
        raise ExportError(f"{root}: not a directory")
    return [p.relative_to(root).as_posix() for p in image_files(root)]


def _crop_maker(template: AlignmentTemplate | CropMaker) -> CropMaker:
    if isinstance(template, AlignmentTemplate):
        return lambda image, face: align(image, face.landmarks, template)
    return template


def heldout_face_crops(images_dir: Path, template: AlignmentTemplate | CropMaker, n: int,
                       skip: set[str] | frozenset[str] = frozenset(), seed: int = 0,
                       registry: Registry | None = None, policy: str = "central") -> tuple[np.ndarray, list[str]]:
    """Up to `n` face crops from images under `images_dir` not in `skip`, in a seeded random order.

    Faces are found by the device's detector (the registry's "yunet") and cut by `template`: an alignment
    template (the device's five-point alignment) or any function of (image, face). Images without a face
    are passed over. Returns (crops (N, H, W, 3) BGR uint8, the relative paths they came from).
    """
    rels = [r for r in list_images(images_dir) if r not in skip]
    if not rels:
        raise ExportError(f"{images_dir}: no images left once the {len(skip)} held-out ones are set aside")
    order = np.random.default_rng(seed).permutation(len(rels))
    detector = make_detector(registry or Registry(), "yunet", threads=1)
    make = _crop_maker(template)
    crops: list[np.ndarray] = []
    used: list[str] = []
    for k in order:
        if len(crops) >= n:
            break
        rel = rels[int(k)]
        try:
            image = load_bgr(Path(images_dir) / rel)
            face = select_face(detector.detect(image), image.shape, policy)
        except (ImageError, NoFaceError):
            continue
        crops.append(make(image, face))
        used.append(rel)
    if not crops:
        raise ExportError(f"{images_dir}: no face found in any usable image")
    return np.stack(crops), used


# -- LFW accuracy ----------------------------------------------------------------------------------------------
def lfw_accuracy(models: list[str], images_dir: Path, pairs_file: Path, folds: int | None = None,
                 registry: Registry | None = None, policy: str = "central") -> dict[str, dict[str, Any]]:
    """LFW View-2 accuracy of several embedders on the same detections, through the device pipeline.

    Each image is detected once; each model aligns with its own template and embeds (FacePipeline.embed_all),
    then the protocol of edge.eval.lfw scores the pairs fold by fold. `folds` keeps only the first k folds
    (at least 2, as each fold's threshold is chosen on the others) for a quicker, noisier figure.
    """
    from edge.pipeline import FacePipeline

    pairs = read_pairs(pairs_file)
    if folds is not None:
        if folds < 2:
            raise ExportError("LFW accuracy needs at least 2 folds")
        pairs = [p for p in pairs if p.fold < folds]
    rels = sorted({p.a for p in pairs} | {p.b for p in pairs})
    pipe = FacePipeline(registry or Registry(), embedder=models[0], extra_embedders=tuple(models[1:]))
    per_image, missing = embed_paths(pipe, Path(images_dir), rels, policy=policy, desc="LFW", every=True)
    embeddings = {m: {rel: embs[m] for rel, embs in per_image.items()} for m in models}
    no_face = len(missing)
    same = np.array([p.same for p in pairs])
    fold_ids = np.array([p.fold for p in pairs])
    out = {}
    for name in models:
        accs, _ = cross_validate(pair_scores(pairs, embeddings[name]), same, fold_ids)
        out[name] = {"accuracy": float(np.mean(accs)), "pairs": len(pairs), "folds": len(accs),
                     "images": len(rels), "no_face": no_face, "pairs_file": Path(pairs_file).name}
    return out


def lfw_parity(reference: str, variants: list[str], images_dir: Path, pairs_file: Path, folds: int | None = None,
               registry: Registry | None = None) -> dict[str, dict[str, Any]]:
    """For each variant, {"accuracy", "accuracy_reference", "delta_pp", "pairs", …} against the reference."""
    acc = lfw_accuracy([reference, *variants], images_dir, pairs_file, folds=folds, registry=registry)
    ref = acc[reference]
    return {v: {**acc[v], "accuracy_reference": ref["accuracy"],
                "delta_pp": round((acc[v]["accuracy"] - ref["accuracy"]) * 100, 4)} for v in variants}
