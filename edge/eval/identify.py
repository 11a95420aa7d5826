"""Open-set 1:N identification on a folder-per-person set (`facegate bench identify`).

Per seed: K identities with at least two images are enrolled from their lowest-numbered image; their other
images are known probes; every image of every other identity is an unknown probe. Results are pooled over
seeds. A probe with no detected face is a miss when known and a correct rejection when unknown, and is
counted separately. Identities named by the calibration pairs file are left out of every draw, so the 1:N
threshold is never evaluated on the identities it was calibrated on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge.enroll import person_folders
from edge.errors import FacegateError
from edge.eval.lfw import embed_paths, pair_identities, read_pairs
from edge.match import Scorer, accept_all
from edge.match.factory import make_scorer
from edge.match.gallery import Gallery
from edge.match.thresholds import identify_threshold
from edge.pipeline import FacePipeline

FPIRS = {"0.01": 0.01, "0.001": 0.001}


def calibration_identities(manifest, images: Path, explicit: Path | None) -> tuple[set[str], str | None]:
    """Identities of the pairs file the 1:N threshold was calibrated on (found beside the images folder)."""
    path = explicit
    if path is None:
        name = manifest.threshold("identify").provenance.get("pairs_file") if "identify" in manifest.thresholds \
            else None
        candidate = images.parent / name if name else None
        path = candidate if candidate and candidate.is_file() else None
    if path is None:
        return set(), None
    return pair_identities(read_pairs(path)), str(path)


def dir_at_fpir(known_scores: np.ndarray, known_correct: np.ndarray, unknown_scores: np.ndarray,
                fpir: float) -> tuple[float, float]:
    """(DIR, threshold): the lowest threshold whose FPIR on the unknowns is ≤ fpir, as on a DET curve."""
    s = np.sort(unknown_scores)[::-1]
    allowed = int(np.floor(fpir * len(s)))
    t = float(np.nextafter(s[allowed], np.inf)) if allowed < len(s) else -np.inf
    return float((known_correct & accept_all(known_scores, t)).mean()), t


def run(images: Path, pipeline: FacePipeline, gallery_size: int = 100, seeds: int = 10,
        exclude_pairs: Path | None = None, fpir: float = 0.01, policy: str = "best",
        verifier: str | Path | None = None, scorer: Scorer | None = None) -> dict[str, Any]:
    """K identities per seed from their lowest-numbered image; every probe scored by the one Scorer (the
    embedder's cosine, a head with `verifier`, or the `scorer` given) over an in-memory gallery of the draw."""
    images = Path(images)
    manifest = pipeline.embedder.manifest
    excluded, excluded_from = calibration_identities(manifest, images, exclude_pairs)
    if scorer is None:
        scorer = make_scorer(pipeline.registry, manifest.name, str(verifier or ""), fpir=fpir)
    if verifier is not None:  # a head is never benchmarked on the identities it was trained or calibrated on
        from edge.verifier import head_identities

        head_ids, head_from = head_identities(scorer.head, images)  # type: ignore[attr-defined]
        excluded |= head_ids
        excluded_from = ", ".join(dict.fromkeys([*([excluded_from] if excluded_from else []), *head_from]))
    missing = [e for e in scorer.embedders if e not in pipeline.names]
    if missing:
        pipeline = FacePipeline(pipeline.registry, detector=pipeline.detector.manifest.name,
                                embedder=manifest.name, extra_embedders=(*pipeline.names, *missing),
                                min_face_px=pipeline.detector.min_face_px)
    people = [(n, f) for n, f in person_folders(images) if n not in excluded]
    eligible = [n for n, f in people if len(f) >= 2]
    if len(eligible) < gallery_size:
        raise FacegateError(f"only {len(eligible)} identities with ≥ 2 images; --gallery-size {gallery_size} "
                            "is too large")
    files = {n: f for n, f in people}
    rels = [f"{n}/{p.name}" for n, fs in people for p in fs]
    probes_by_rel, no_face = embed_paths(pipeline, images, rels, policy=policy, every=True, cache=True)
    threshold, details = identify_threshold(scorer.manifest, gallery_size, fpir)

    known_scores, known_correct, unknown_scores = [], [], []
    known_no_face = unknown_no_face = 0
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        chosen = set(rng.choice(eligible, size=gallery_size, replace=False).tolist())
        gallery = Gallery(scorer.embedders)
        for n in sorted(chosen):
            enrol = f"{n}/{files[n][0].name}"  # lowest-numbered image (files are sorted)
            if enrol in probes_by_rel:
                gallery.add(n, probes_by_rel[enrol])
        drawn = scorer.over(gallery)
        for n, fs in people:
            for p in (fs[1:] if n in chosen else fs):
                rel = f"{n}/{p.name}"
                if rel not in probes_by_rel:
                    if n in chosen:
                        known_no_face += 1
                        known_scores.append(-np.inf)
                        known_correct.append(False)
                    else:
                        unknown_no_face += 1
                        unknown_scores.append(-np.inf)
                    continue
                found = drawn.search(probes_by_rel[rel], 1)
                score = found[0].score if found else -np.inf
                if n in chosen:
                    known_scores.append(score)
                    known_correct.append(bool(found) and found[0].name == n)
                else:
                    unknown_scores.append(score)
    ks, kc, us = np.array(known_scores), np.array(known_correct), np.array(unknown_scores)
    dirs = {key: dir_at_fpir(ks, kc, us, f) for key, f in FPIRS.items()}
    head = getattr(scorer, "head", None)
    return {
        "model": scorer.name if head is None else f"{head.name} ({'+'.join(head.embedders)} head)",
        "gallery_size": gallery_size,
        "seeds": seeds,
        "probes": len(ks),
        "unknown_probes": len(us),
        "no_face": {"known": known_no_face, "unknown": unknown_no_face, "images": len(no_face)},
        "rank1": float(kc.mean()),
        "dir_at_fpir": {k: round(v[0], 4) for k, v in dirs.items()},
        "threshold_at_fpir": {k: round(v[1], 4) for k, v in dirs.items()},
        "operating_threshold": round(threshold, 4),
        "operating_fpir_target": fpir,
        "fnir": round(float(1.0 - (kc & accept_all(ks, threshold)).mean()), 4),
        "fpir": round(float(accept_all(us, threshold).mean()), 4),
        "threshold_extrapolated": details["extrapolated"],
        "identities": len(people),
        "eligible_identities": len(eligible),
        "excluded_identities": len(excluded),
        "excluded_from": excluded_from,
    }
