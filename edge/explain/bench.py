"""`facegate explain bench`: do occlusion maps point at the face? Measured on LFW View-1 genuine pairs.

For each pair both faces are occluded in turn. A pair passes when the `top` strongest cells (default: the
strongest one) of *both* maps have their patch centres inside the central box: the aligned template's eyes,
nose and mouth corners, widened by the explainer's margin (half the eye distance by default, see
occlusion.CENTRAL_MARGIN). The shares for the strongest cell alone and for the top three are reported beside
it. As a check that the map ranks regions by their real effect, each face is also scored with its top three
cells greyed together, against as many random cells greyed together.
View 2 (pairs.txt, the test set) is refused: this is a development measurement.
"""

from __future__ import annotations

import sys
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
from tqdm import tqdm

from edge.errors import FacegateError, ImageError, NoFaceError
from edge.eval.lfw import read_pairs
from edge.explain.match import MatchExplainer
from edge.explain.occlusion import inside
from edge.imageio import load_bgr


def view1_genuine(pairs_file: Path, limit: int) -> list[tuple[str, str]]:
    if limit < 1:
        raise FacegateError(f"--limit must be at least 1, not {limit}")
    pairs = read_pairs(pairs_file)
    if Path(pairs_file).name == "pairs.txt" or any(p.fold > 0 for p in pairs):
        raise FacegateError(f"{pairs_file} is LFW View 2 (the test set): use pairsDevTrain.txt or pairsDevTest.txt")
    genuine = [(p.a, p.b) for p in pairs if p.same]
    if not genuine:
        raise FacegateError(f"{pairs_file}: no genuine pairs")
    if limit < len(genuine):  # evenly spread over the file, so many identities are drawn
        genuine = [genuine[i] for i in np.unique(np.linspace(0, len(genuine) - 1, limit).astype(int))]
    return genuine


def masking_check(side: Any, top: int, draws: int, rng: np.random.Generator) -> tuple[float, float]:
    """(drop with the top cells greyed together, mean drop with as many random cells greyed together)."""
    grid, occ = side.map.grid, side.occluder
    cells = grid.cells()
    chosen = [[cells[k] for k in rng.choice(len(cells), size=top, replace=False)] for _ in range(draws)]
    masks = np.stack([grid.mask(side.map.top_cells(top))] + [grid.mask(c) for c in chosen])
    drops = side.map.score - occ.scores(masks)
    return float(drops[0]), float(drops[1:].mean())


def run(explainer: MatchExplainer, images: Path, pairs_file: Path, limit: int = 50, top: int = 1,
        draws: int = 10, seed: int = 0, policy: str = "central", out: Path | None = None) -> dict[str, Any]:
    if top < 1:
        raise FacegateError(f"--top must be at least 1, not {top}")
    genuine = view1_genuine(pairs_file, limit)
    rng = np.random.default_rng(seed)
    rows, no_face, ms = [], [], []
    box, cells = None, 0
    ks = sorted({1, 3, top})  # the chosen count, and the strongest cell alone and the top three for comparison
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    for a, b in tqdm(genuine, desc="explaining pairs", unit="pair", file=sys.stderr, disable=None):
        try:
            views = [explainer.view(load_bgr(Path(images) / rel), policy) for rel in (a, b)]
        except (ImageError, NoFaceError):
            no_face.append([a, b])
            continue
        ex = explainer.pair(views[0], views[1], (a, b))
        box = ex.central
        faces = []
        for side in ex.sides:
            m = side.map
            centres = [m.grid.centre(i, j) for i, j in m.top_cells(max(ks))]
            top_drop, random_drop = masking_check(side, max(ks), draws, rng)
            ms.append(m.ms)
            cells = int(m.drops.size)
            faces.append({"image": side.label, "top_centres_xy": centres[:max(ks)],
                          "inside": {k: all(inside(c, box) for c in centres[:k]) for k in ks},
                          "max_drop": round(float(m.drops.max()), 5), "mask_top_drop": round(top_drop, 5),
                          "mask_random_drop": round(random_drop, 5)})
        rows.append({"a": a, "b": b, "score": round(ex.score, 5), "faces": faces,
                     "inside": {k: all(f["inside"][k] for f in faces) for k in ks}})
        if out is not None:
            (out / f"{Path(a).stem}__{Path(b).stem}.png").write_bytes(ex.png())
    if not rows:
        raise FacegateError(f"no pair of {pairs_file} had a face in both images")
    n = len(genuine)  # a pair without a face counts as a failure
    faces = [f for r in rows for f in r["faces"]]
    return {
        "model": explainer.model, "pairs_file": str(pairs_file), "pairs": n, "scored": len(rows),
        "no_face": no_face, "patch": explainer.patch, "stride": explainer.stride, "fill": explainer.fill,
        "top_cells": top,
        "margin_eye_distances": explainer.margin,
        "central_box_xyxy": [round(v, 2) for v in box] if box else None,
        "inside_fraction": round(sum(r["inside"][top] for r in rows) / n, 4),
        "faces_inside_fraction": round(sum(f["inside"][top] for f in faces) / (2 * n), 4),
        "inside_fraction_by_top": {k: round(sum(r["inside"][k] for r in rows) / n, 4) for k in ks},
        "mask_top_drop_mean": round(float(np.mean([f["mask_top_drop"] for f in faces])), 5),
        "mask_random_drop_mean": round(float(np.mean([f["mask_random_drop"] for f in faces])), 5),
        "top_beats_random_fraction": round(float(np.mean([f["mask_top_drop"] > f["mask_random_drop"]
                                                          for f in faces])), 4),
        "mask_cells": max(ks), "random_draws": draws, "seed": seed,
        "ms_per_map_median": round(median(ms), 1),
        "cells_per_map": cells,
        "details": rows,
    }
