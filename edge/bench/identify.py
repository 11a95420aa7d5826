"""`facegate bench identify`: open-set 1:N identification on a folder-per-person set.

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

from edge.bench.lfw import embed_paths, pair_identities, read_pairs
from edge.enroll import person_folders
from edge.errors import FacegateError
from edge.identify_threshold import threshold_for
from edge.pipeline import FacePipeline
from edge.store.matcher import Matcher

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
    return float((known_correct & (known_scores >= t)).mean()), t


def run(images: Path, pipeline: FacePipeline, gallery_size: int = 100, seeds: int = 10,
        exclude_pairs: Path | None = None, fpir: float = 0.01, policy: str = "central",
        verifier: str | Path | None = None) -> dict[str, Any]:
    images = Path(images)
    manifest = pipeline.embedder.manifest
    excluded, excluded_from = calibration_identities(manifest, images, exclude_pairs)
    head = None
    if verifier is not None:  # a verification head scores pairs instead of the cosine (edge/verifier.py)
        from edge.verifier import HeadMatcher, head_identities, pipeline_for, resolve_head

        head = resolve_head(verifier, pipeline.registry)
        head_ids, head_from = head_identities(head, images)  # never benchmark on its training identities
        excluded |= head_ids
        excluded_from = ", ".join(dict.fromkeys([*([excluded_from] if excluded_from else []), *head_from]))
        pipeline = pipeline_for(head, pipeline)
    people = [(n, f) for n, f in person_folders(images) if n not in excluded]
    eligible = [n for n, f in people if len(f) >= 2]
    if len(eligible) < gallery_size:
        raise FacegateError(f"only {len(eligible)} identities with ≥ 2 images; --gallery-size {gallery_size} "
                            "is too large")
    files = {n: f for n, f in people}
    rels = [f"{n}/{p.name}" for n, fs in people for p in fs]
    embeddings, no_face = embed_paths(pipeline, images, rels, policy=policy, every=head is not None)
    dim = manifest.output_dim
    threshold, details = threshold_for(manifest if head is None else head.manifest, gallery_size, fpir)

    known_scores, known_correct, unknown_scores = [], [], []
    known_no_face = unknown_no_face = 0
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        chosen = set(rng.choice(eligible, size=gallery_size, replace=False).tolist())
        matcher = Matcher(embedder=manifest.name, dim=dim) if head is None else HeadMatcher(head)
        for n in chosen:
            enrol = f"{n}/{files[n][0].name}"  # lowest-numbered image (files are sorted)
            if enrol in embeddings:
                matcher.add(n, embeddings[enrol])
        probes, truth = [], []
        for n, fs in people:
            for p in (fs[1:] if n in chosen else fs):
                rel = f"{n}/{p.name}"
                if rel not in embeddings:
                    if n in chosen:
                        known_no_face += 1
                        known_scores.append(-np.inf)
                        known_correct.append(False)
                    else:
                        unknown_no_face += 1
                        unknown_scores.append(-np.inf)
                    continue
                probes.append(embeddings[rel])
                truth.append(n if n in chosen else None)
        results = matcher.search(np.stack(probes) if head is None else probes, k=1)
        for t, res in zip(truth, results, strict=True):
            score = res[0].score if res else -np.inf
            if t is None:
                unknown_scores.append(score)
            else:
                known_scores.append(score)
                known_correct.append(bool(res) and res[0].name == t)
    ks, kc, us = np.array(known_scores), np.array(known_correct), np.array(unknown_scores)
    dirs = {key: dir_at_fpir(ks, kc, us, f) for key, f in FPIRS.items()}
    return {
        "model": manifest.name if head is None else f"{head.name} ({'+'.join(head.embedders)} head)",
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
        "fnir": round(float(1.0 - (kc & (ks >= threshold)).mean()), 4),
        "fpir": round(float((us >= threshold).mean()), 4),
        "threshold_extrapolated": details["extrapolated"],
        "identities": len(people),
        "eligible_identities": len(eligible),
        "excluded_identities": len(excluded),
        "excluded_from": excluded_from,
    }
