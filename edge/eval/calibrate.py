"""Calibrate a model's 1:1 operating threshold at a target false-accept rate, with its provenance.

Genuine scores come from the pairs file's matched pairs. Impostor scores come from its mismatched pairs when
they can resolve the target FAR (at least 10 expected false accepts); otherwise from every cross-identity
pair of the images the file names, which for LFW View 1 is millions of pairs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import FacegateError
from edge.eval.lfw import embed_paths, pair_scores, read_pairs, threshold_at_far
from edge.models.registry import Registry
from edge.pipeline import FacePipeline

MIN_EXPECTED_FALSE_ACCEPTS = 10
MIN_TAIL_FALSE_ACCEPTS = 30
TAIL_FARS = tuple(float(f) for f in np.logspace(-1, -8, 29))  # 4 points a decade


def impostor_tail(impostor: np.ndarray) -> list[list[float]]:
    """(FAR, threshold) points of the impostor distribution, as far down as the sample resolves."""
    # A tail point needs more support than the 1:1 threshold: a handful of near-duplicate photos filed under
    # two names (LFW has some) would otherwise bend its far end.
    resolvable = [f for f in TAIL_FARS if f * len(impostor) >= MIN_TAIL_FALSE_ACCEPTS]
    return [[float(f"{f:.4g}"), round(threshold_at_far(impostor, f), 6)] for f in resolvable]


def cross_identity_scores(embeddings: dict[str, np.ndarray], block: int = 2048) -> np.ndarray:
    """Cosine scores of every pair of images of different people (identity = the path's folder)."""
    rels = sorted(embeddings)
    if len(rels) < 2:
        return np.zeros(0)
    ids = np.array([r.split("/")[0] for r in rels])
    x = np.stack([embeddings[r] for r in rels]).astype(np.float32)
    out = []
    for start in range(0, len(rels), block):
        s = x[start:start + block] @ x.T
        rows = np.arange(start, min(start + block, len(rels)))
        upper = np.arange(len(rels))[None, :] > rows[:, None]  # each unordered pair once
        different = ids[rows][:, None] != ids[None, :]
        out.append(s[upper & different])
    return np.concatenate(out).astype(np.float64)


def calibrate(model: str, images: Path, pairs_file: Path, far: float, registry: Registry | None = None,
              policy: str = "central", fpir: float = 0.01) -> dict[str, dict[str, Any]]:
    """Thresholds {"verify": 1:1 at `far`, "identify": 1:N impostor tail + value for one template at `fpir`}."""
    if not 0 < far < 1:
        raise FacegateError(f"--far must be between 0 and 1, not {far}")
    registry = registry or Registry()
    pipeline = FacePipeline(registry, embedder=model)
    pairs = read_pairs(pairs_file)
    rels = sorted({p.a for p in pairs} | {p.b for p in pairs})
    missing = [r for r in rels if not (images / r).is_file()]
    if missing:
        raise FacegateError(f"{len(missing)} image(s) named by {pairs_file} are missing under {images}")
    embeddings, no_face = embed_paths(pipeline, images, rels, policy=policy, desc="calibrating")
    scores = pair_scores(pairs, embeddings)
    same = np.array([p.same for p in pairs])
    genuine = scores[same]
    impostor = scores[~same]
    source = "mismatched pairs of the pairs file"
    if len(impostor) * far < MIN_EXPECTED_FALSE_ACCEPTS:
        impostor = cross_identity_scores(embeddings)
        source = "all cross-identity pairs of the images the pairs file names"
    threshold = threshold_at_far(impostor, far)
    with np.errstate(invalid="ignore"):
        far_measured = float((impostor >= threshold).sum() / len(impostor))
        frr_measured = float(1.0 - (genuine >= threshold).sum() / len(genuine))
    m = pipeline.manifest
    provenance = {
        "dataset": images.name if images.name != "images" else images.parent.name,
        "pairs_file": pairs_file.name,
        "pairs_sha256": hashlib.sha256(pairs_file.read_bytes()).hexdigest(),
        "genuine_pairs": len(genuine),
        "impostor_pairs": len(impostor),
        "impostor_source": source,
        "far_target": far,
        "far_measured": round(far_measured, 6),
        "frr_measured": round(frr_measured, 6),
        "images": len(rels),
        "no_face": len(no_face),
        "face_policy": policy,
        "detector": pipeline.detector.manifest.name,
        "model_sha256": m.sha256,
        "date": dt.date.today().isoformat(),
        "command": f"facegate calibrate embedder --model {model} --images {images} --pairs {pairs_file} "
                   f"--far {far}",
    }
    verify = {"value": round(threshold, 6), "metric": "cosine", "provenance": provenance}
    cross = impostor if source.startswith("all") else cross_identity_scores(embeddings)
    tail = impostor_tail(cross)
    ident_prov = {k: v for k, v in provenance.items() if k not in ("far_target", "far_measured", "frr_measured")}
    ident_prov.update(impostor_pairs=len(cross), impostor_source="all cross-identity pairs of the images "
                      "the pairs file names", fpir_target=fpir,
                      identities=len({r.split("/")[0] for r in embeddings}))
    identify = {"value": round(threshold_at_far(cross, fpir), 6), "metric": "cosine", "provenance": ident_prov,
                "tail": tail}
    return {"verify": verify, "identify": identify}
