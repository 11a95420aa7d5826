"""The walk-up benchmark (`facegate bench door`): what a door sees, from LFW.

Per seed and per cell (gallery size K, enrolment photos e, probe frames m, scorer):
- the gallery: K identities with at least e usable photos, each enrolled from its e lowest-numbered photos;
- known tracks: every gallery identity with at least e + m usable photos walks up as a track of its next m
  distinct photos, scored as the daemon scores a track's best frames (Scorer.identify_track: each candidate's
  mean score over the frames);
- unknown tracks: every identity outside the gallery with at least m usable photos, its first m photos.
Pooled over seeds: rank-1 of the known tracks, DIR at FPIR 1 % and 0.1 % (the threshold that lets that share
of unknown tracks through, as on a DET curve), and FNIR / FPIR at the scorer's own operating threshold for K
(its manifest's impostor tail, calibrated on View 1). Identities any scorer's thresholds were calibrated on
are left out of every draw; so are those of `--exclude-pairs`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge.enroll import person_folders
from edge.errors import FacegateError
from edge.eval.identify import dir_at_fpir
from edge.eval.lfw import embed_paths, identities_of_files, pair_identities, read_pairs
from edge.match import Scorer, accept_all
from edge.match.gallery import Gallery
from edge.match.thresholds import identify_threshold
from edge.pipeline import FacePipeline

FPIRS = {"0.01": 0.01, "0.001": 0.001}


def fitted_identities(scorers: dict[str, Scorer], images: Path) -> tuple[set[str], list[str]]:
    """Identities of every pairs file a scorer's thresholds (or statistics) were calibrated on."""
    files: list[str] = []
    for s in scorers.values():
        for t in s.manifest.thresholds.values():
            name = t.provenance.get("pairs_file")
            if name:
                files.append(name)
    return identities_of_files(images, files, "a scorer was calibrated")


def _cell(scorer: Scorer, people: dict[str, list[str]], probes: dict[str, Any], k: int, e: int, m: int,
          seeds: int, templates: str = "max") -> dict[str, Any]:
    usable = {n: [r for r in rels if r in probes] for n, rels in people.items()}
    eligible = sorted(n for n, r in usable.items() if len(r) >= e)
    if len(eligible) < k:
        return {"skipped": f"only {len(eligible)} identities with {e} usable photos for K = {k}"}
    # Identities that can also walk up (e + m photos) are drawn first, the rest of the gallery from those with
    # e photos (enrolled people who do not come by): as many known tracks per draw as the data allows.
    walkers = sorted(n for n in eligible if len(usable[n]) >= e + m)
    others = sorted(n for n in eligible if len(usable[n]) < e + m)
    known_scores, known_correct, margins, unknown_scores = [], [], [], []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        # Half the gallery at most from the walkers, so unknown walkers remain (at least half of them).
        take = max(min(len(walkers) // 2, k), k - len(others))
        chosen = set(rng.choice(walkers, size=take, replace=False).tolist()) if take else set()
        if k > take:
            chosen |= set(rng.choice(others, size=k - take, replace=False).tolist())
        gallery = Gallery(scorer.embedders)
        for n in sorted(chosen):
            rows = [probes[r] for r in usable[n][:e]]
            gallery.add(n, {emb: np.stack([p[emb] for p in rows]) for emb in scorer.embedders})
        drawn = scorer.over(gallery, templates)
        for n, rels in usable.items():
            if n in chosen:
                if len(rels) < e + m:
                    continue
                track = rels[e:e + m]
            else:
                if len(rels) < m:
                    continue
                track = rels[:m]
            r = drawn.identify_track([probes[x] for x in track], top=2, threshold=np.inf)
            score = r.score if r.score is not None else -np.inf
            if n in chosen:
                known_scores.append(score)
                known_correct.append(r.candidate == n)
                margins.append(r.margin if r.margin is not None else np.inf)
            else:
                unknown_scores.append(score)
    ks, kc, us = np.array(known_scores), np.array(known_correct), np.array(unknown_scores)
    if not len(ks) or not len(us):
        return {"skipped": "no known or no unknown tracks for this cell"}
    threshold = identify_threshold(scorer.manifest, k, scorer.fpir)[0]
    dirs = {key: dir_at_fpir(ks, kc, us, f) for key, f in FPIRS.items()}
    return {
        "known_tracks": len(ks), "unknown_tracks": len(us),
        "rank1": round(float(kc.mean()), 4),
        "dir_at_fpir": {key: round(v[0], 4) for key, v in dirs.items()},
        "fpir_resolvable": {key: bool(len(us) * f >= 1) for key, f in FPIRS.items()},
        "operating_threshold": round(threshold, 4),
        "fnir": round(float(1.0 - (kc & accept_all(ks, threshold)).mean()), 4),
        "fpir": round(float(accept_all(us, threshold).mean()), 4),
        "median_margin_correct": round(float(np.median(np.array(margins)[kc])), 4) if kc.any() else None,
    }


def face_cost_ms(pipeline: FacePipeline, images: Path, rels: list[str], embedders: Sequence[str],
                 n: int = 40) -> float:
    """Median milliseconds per face: detect, align and embed under the given embedders."""
    from edge.imageio import load_bgr
    from edge.vision.detect import select_face

    out = []
    for rel in rels[:n]:
        image = load_bgr(Path(images) / rel)
        t = time.perf_counter()
        faces = pipeline.detect(image)
        if faces:
            pipeline.embed(image, [select_face(faces, image.shape, "largest")], list(embedders))
            out.append((time.perf_counter() - t) * 1e3)
    return round(float(np.median(out)), 2) if out else 0.0


def run(images: Path, pipeline: FacePipeline, scorers: dict[str, Scorer], gallery_sizes: Sequence[int] = (100,),
        enrol: Sequence[int] = (1, 3), probes_per_track: Sequence[int] = (1, 3, 5), seeds: int = 10,
        exclude_pairs: Sequence[Path] = (), only_pairs: Path | None = None, policy: str = "best",
        templates: str | None = None) -> dict[str, Any]:
    """`templates`: how an identity's enrolment photos make its score, "max" or "mean" (default: each scorer's
    own setting)."""
    images = Path(images)
    excluded, excluded_from = fitted_identities(scorers, images)
    for f in exclude_pairs:
        excluded |= pair_identities(read_pairs(f))
        excluded_from.append(str(f))
    people = {n: [f"{n}/{p.name}" for p in files] for n, files in person_folders(images) if n not in excluded}
    if only_pairs is not None:  # a development draw: only the identities one pairs file names
        keep = pair_identities(read_pairs(only_pairs))
        people = {n: r for n, r in people.items() if n in keep}
    missing = [e for s in scorers.values() for e in s.embedders if e not in pipeline.names]
    if missing:
        raise FacegateError(f"the pipeline does not compute {', '.join(sorted(set(missing)))}")
    rels = [r for rs in people.values() for r in rs]
    probes, no_face = embed_paths(pipeline, images, rels, policy=policy, every=True, cache=True)
    cells = []
    for name, scorer in scorers.items():
        for k in gallery_sizes:
            for e in enrol:
                for m in probes_per_track:
                    cells.append({"scorer": name, "model": scorer.name, "gallery_size": k, "enrol_photos": e,
                                  "track_frames": m, **_cell(scorer, people, probes, k, e, m, seeds, templates)})
    cost = {name: face_cost_ms(pipeline, images, rels, s.embedders) for name, s in scorers.items()}
    return {"identities": len(people), "images": len(rels), "no_face": len(no_face), "seeds": seeds,
            "excluded_identities": len(excluded), "excluded_from": excluded_from,
            "only_identities_of": str(only_pairs) if only_pairs else None, "face_policy": policy,
            "templates": templates,
            "ms_per_face": cost, "cells": cells}
