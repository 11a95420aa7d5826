"""Calibrate a model's 1:1 operating threshold at a target false-accept rate, with its provenance.

Genuine scores come from the pairs file's matched pairs. Impostor scores come from its mismatched pairs when
they can resolve the target FAR (at least 10 expected false accepts); otherwise from every cross-identity
pair of the images the file names, which for LFW View 1 is millions of pairs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import FacegateError
from edge.eval.lfw import embed_paths, read_pairs, refuse_test_set, threshold_at_far
from edge.match import Scorer, accept_all
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


def cross_identity_scores(embeddings: dict[str, Any], block: int = 2048, scorer: Scorer | None = None
                          ) -> np.ndarray:
    """Scores of every pair of images of different people (identity = the path's folder): cosines of vectors,
    or with a scorer, its scores of probes ({embedder: vector}), a block of rows at a time."""
    rels = sorted(embeddings)
    if len(rels) < 2:
        return np.zeros(0)
    ids = np.array([r.split("/")[0] for r in rels])
    if scorer is None:
        x = np.stack([embeddings[r] for r in rels]).astype(np.float32)

        def rows_against_all(start: int, stop: int) -> np.ndarray:
            return x[start:stop] @ x.T
    else:
        probes = [embeddings[r] for r in rels]

        def rows_against_all(start: int, stop: int) -> np.ndarray:
            return scorer.pair_matrix(probes[start:stop], probes)
    out = []
    for start in range(0, len(rels), block):
        stop = min(start + block, len(rels))
        s = rows_against_all(start, stop)
        rows = np.arange(start, stop)
        upper = np.arange(len(rels))[None, :] > rows[:, None]  # each unordered pair once
        different = ids[rows][:, None] != ids[None, :]
        out.append(s[upper & different])
    return np.concatenate(out).astype(np.float64)


def embed_pairs_images(pipeline: FacePipeline, images: Path, pairs_file: Path, policy: str = "best",
                       desc: str = "calibrating") -> tuple[list, dict[str, Any], list[str], list[str]]:
    """(pairs, probes by relative path, images with no face, all relative paths) of a pairs file's images."""
    refuse_test_set(pairs_file)
    pairs = read_pairs(pairs_file)
    rels = sorted({p.a for p in pairs} | {p.b for p in pairs})
    missing = [r for r in rels if not (images / r).is_file()]
    if missing:
        raise FacegateError(f"{len(missing)} image(s) named by {pairs_file} are missing under {images}")
    probes, no_face = embed_paths(pipeline, images, rels, policy=policy, desc=desc, every=True)
    return pairs, probes, no_face, rels


def scorer_thresholds(scorer: Scorer, pairs: list, probes: dict[str, Any], far: float, fpir: float,
                      provenance: dict[str, Any], metric: str) -> dict[str, dict[str, Any]]:
    """The 1:1 threshold at `far` and the 1:N impostor tail of a scorer, from a pairs file's images."""
    from edge.eval.pairs import scorer_pair_scores

    if not 0 < far < 1:
        raise FacegateError(f"--far must be between 0 and 1, not {far}")
    scores = scorer_pair_scores(scorer, pairs, probes)
    same = np.array([p.same for p in pairs])
    genuine, impostor = scores[same], scores[~same]
    source = "mismatched pairs of the pairs file"
    cross = None
    if len(impostor) * far < MIN_EXPECTED_FALSE_ACCEPTS:
        impostor = cross = cross_identity_scores(probes, scorer=scorer)
        source = "all cross-identity pairs of the images the pairs file names"
    threshold = threshold_at_far(impostor, far)
    with np.errstate(invalid="ignore"):
        far_measured = float(accept_all(impostor, threshold).sum() / len(impostor))
        frr_measured = float(1.0 - accept_all(genuine, threshold).sum() / len(genuine))
    prov = {**provenance, "genuine_pairs": len(genuine), "impostor_pairs": len(impostor), "impostor_source": source,
            "far_target": far, "far_measured": round(far_measured, 6), "frr_measured": round(frr_measured, 6)}
    verify = {"value": round(threshold, 6), "metric": metric, "provenance": prov}
    cross = cross if cross is not None else cross_identity_scores(probes, scorer=scorer)
    ident_prov = {k: v for k, v in prov.items() if k not in ("far_target", "far_measured", "frr_measured")}
    ident_prov.update(impostor_pairs=len(cross), impostor_source="all cross-identity pairs of the images "
                      "the pairs file names", fpir_target=fpir, identities=len({r.split("/")[0] for r in probes}))
    identify = {"value": round(threshold_at_far(cross, fpir), 6), "metric": metric, "provenance": ident_prov,
                "tail": impostor_tail(cross)}
    return {"verify": verify, "identify": identify}


def _provenance(images: Path, pairs_file: Path, pipeline: FacePipeline, policy: str, rels: list[str],
                no_face: list[str], command: str) -> dict[str, Any]:
    return {
        "dataset": images.name if images.name != "images" else images.parent.name,
        "pairs_file": pairs_file.name,
        "pairs_sha256": hashlib.sha256(pairs_file.read_bytes()).hexdigest(),
        "images": len(rels),
        "no_face": len(no_face),
        "face_policy": policy,
        "detector": pipeline.detector.manifest.name,
        "date": dt.date.today().isoformat(),
        "command": command,
    }


def calibrate(model: str, images: Path, pairs_file: Path, far: float, registry: Registry | None = None,
              policy: str = "best", fpir: float = 0.01) -> dict[str, dict[str, Any]]:
    """An embedder's thresholds {"verify": 1:1 at `far`, "identify": 1:N impostor tail + value for one template
    at `fpir`}, its cosine scored through the device pipeline."""
    from edge.match.cosine import CosineScorer

    refuse_test_set(pairs_file)  # before anything is loaded
    registry = registry or Registry()
    pipeline = FacePipeline(registry, embedder=model)
    pairs, probes, no_face, rels = embed_pairs_images(pipeline, images, pairs_file, policy)
    prov = _provenance(images, pairs_file, pipeline, policy, rels, no_face,
                       f"facegate calibrate embedder --model {model} --images {images} --pairs {pairs_file} "
                       f"--far {far}")
    prov["model_sha256"] = pipeline.manifest.sha256
    return scorer_thresholds(CosineScorer(pipeline.manifest), pairs, probes, far, fpir, prov, "cosine")


def impostor_stats(probes: dict[str, Any], member: str) -> dict[str, float]:
    """Mean and standard deviation of one member's cosine over every cross-identity pair."""
    scores = cross_identity_scores({r: p[member] for r, p in probes.items()})
    return {"mu": round(float(scores.mean()), 6), "sigma": round(float(scores.std()), 6), "pairs": int(scores.size)}


def calibrate_fusion(name: str, members: tuple[str, ...], images: Path, pairs_file: Path, far: float,
                     registry: Registry | None = None, policy: str = "best", fpir: float = 0.01,
                     weights: dict[str, float] | None = None) -> dict[str, Any]:
    """A fusion manifest's calibrated part: each member's impostor mean and spread, then the fused score's 1:1
    threshold and 1:N tail, all from one (View 1) pairs file's images through the device pipeline."""
    from edge.match.fusion import FusionScorer
    from edge.models.manifest import Manifest

    refuse_test_set(pairs_file)  # before anything is loaded
    registry = registry or Registry()
    if len(members) < 2:
        raise FacegateError("a fusion needs two or more embedders")
    pipeline = FacePipeline(registry, embedder=members[0], extra_embedders=members[1:])
    pairs, probes, no_face, rels = embed_pairs_images(pipeline, images, pairs_file, policy)
    stats = {m: impostor_stats(probes, m) for m in members}
    extra = {"members": list(members), "stats": stats, "weights": {m: float((weights or {}).get(m, 1.0))
                                                                  for m in members},
             "member_sha256": {m: registry.manifest(m).sha256 for m in members},
             "member_flip": {m: registry.manifest(m).flip_average for m in members}}
    manifest = Manifest.from_dict({"name": name, "task": "fusion", "licence": "Apache-2.0",
                                   "source": {"recipe": "edge/eval/calibrate.py"}, "extra": extra})
    prov = _provenance(images, pairs_file, pipeline, policy, rels, no_face,
                       f"facegate calibrate fusion --name {name} --members {','.join(members)} --images {images} "
                       f"--pairs {pairs_file} --far {far}")
    thresholds = scorer_thresholds(FusionScorer(manifest), pairs, probes, far, fpir, prov, "fused z-score")
    calibrated = Manifest.from_dict({**manifest.to_dict(), "thresholds": thresholds})
    # Too few identities with two photos in the file: no margin rule (the 1:N threshold still holds).
    with contextlib.suppress(FacegateError):
        thresholds["margin"] = margin_threshold(FusionScorer(calibrated, fpir=fpir), probes, prov)
    return {"extra": extra, "thresholds": thresholds}


MARGIN_COST = 0.001  # share of correct identifications the margin rule may refuse


def margin_threshold(scorer: Scorer, probes: dict[str, Any], provenance: dict[str, Any], gallery_size: int = 100,
                     seeds: int = 5, cost: float = MARGIN_COST) -> dict[str, Any]:
    """The least lead over the runner-up a 1:N answer needs: the `cost` quantile of the leads of correct rank-1
    identifications (above the 1:N threshold) on draws from the calibration images. A decision whose best two
    candidates are closer than this is not taken on that frame: the next frames (or a better photo) decide."""
    from edge.match.gallery import Gallery

    by_person: dict[str, list[str]] = {}
    for rel in sorted(probes):
        by_person.setdefault(rel.split("/")[0], []).append(rel)
    eligible = sorted(n for n, r in by_person.items() if len(r) >= 2)
    k = min(gallery_size, len(eligible))
    if k < 10:
        raise FacegateError(f"too few identities with two photos ({len(eligible)}) to calibrate the margin")
    correct, wrong = [], []
    t = thresholds_for_k(scorer, k)
    for seed in range(seeds):
        chosen = np.random.default_rng(seed).choice(eligible, size=k, replace=False)
        gallery = Gallery(scorer.embedders)
        for n in chosen:
            gallery.add(n, {e: probes[by_person[n][0]][e][None] for e in scorer.embedders})
        drawn = scorer.over(gallery)
        for n in chosen:
            for rel in by_person[n][1:]:
                found = drawn.search(probes[rel], 2)
                if len(found) < 2 or found[0].score < t:
                    continue
                lead = found[0].score - found[1].score
                (correct if found[0].name == n else wrong).append(lead)
    value = float(np.quantile(correct, cost)) if correct else 0.0
    return {"value": round(max(value, 0.0), 6), "metric": "lead over the runner-up",
            "provenance": {**{k_: v for k_, v in provenance.items() if k_ in ("dataset", "pairs_file", "pairs_sha256",
                                                                           "date", "command")},
                           "gallery_size": k, "seeds": seeds, "correct_identifications": len(correct),
                           "misidentifications_above_threshold": len(wrong),
                           "misidentifications_refused": int(sum(w < value for w in wrong)),
                           "target_cost": cost}}


def thresholds_for_k(scorer: Scorer, k: int) -> float:
    from edge.match.thresholds import identify_threshold

    return identify_threshold(scorer.manifest, k, scorer.fpir)[0]
