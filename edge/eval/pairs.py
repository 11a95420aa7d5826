"""Verification accuracy under the LFW protocol (`facegate bench pairs`), on the device code path: every pair
scored by the one Scorer (edge/match)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import FacegateError
from edge.eval.lfw import cross_validate, embed_paths, read_pairs, tar_at_far
from edge.eval.wild import chose_subject, load_truth
from edge.match import Scorer
from edge.match.factory import make_scorer
from edge.pipeline import FacePipeline
from edge.vision.detect import Face

FARS = {"1e-2": 1e-2, "1e-3": 1e-3}


def scorer_pair_scores(scorer: Scorer, pairs: list, probes: dict[str, Any]) -> np.ndarray:
    """The scorer's score per pair; NaN where either image had no face (such a pair is scored as wrong)."""
    out = np.full(len(pairs), np.nan)
    for k, p in enumerate(pairs):
        a, b = probes.get(p.a), probes.get(p.b)
        if a is not None and b is not None:
            out[k] = scorer.pair(a, b)
    return out


def run(images: Path, pairs_file: Path, pipeline: FacePipeline, policy: str = "best",
        plot: Path | None = None, scorer: Scorer | None = None) -> dict[str, Any]:
    if not Path(images).is_dir():
        raise FacegateError(f"{images}: not a directory")
    pairs = read_pairs(pairs_file)
    rels = sorted({p.a for p in pairs} | {p.b for p in pairs})
    missing = [r for r in rels if not (Path(images) / r).is_file()]
    if missing:
        raise FacegateError(f"{len(missing)} image(s) named by {pairs_file} are missing under {images}, "
                            f"e.g. {missing[0]}")
    scorer = scorer or make_scorer(pipeline.registry, pipeline.manifest.name)
    truth = load_truth(Path(images))  # a wild set (edge/eval/wild.py) says where each subject is
    chosen: dict[str, tuple[Face, int]] = {}
    rescued_before = Counter(pipeline.rescued)
    probes, no_face = embed_paths(pipeline, Path(images), rels, policy=policy, every=True, chosen=chosen)
    scores = scorer_pair_scores(scorer, pairs, probes)
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    if len(np.unique(folds)) == 1:
        # A View-1 file is one fold: cross-validate over ten interleaved ones (matched and mismatched pairs
        # alike spread over all ten), so the threshold is never chosen on the pairs it is scored on.
        folds = np.arange(len(pairs)) % 10
    accs, thresholds = cross_validate(scores, same, folds)
    tar = {key: tar_at_far(scores, same, far) for key, far in FARS.items()}
    t = pipeline.timings
    result: dict[str, Any] = {
        "model": scorer.name,
        "pairs": len(pairs),
        "folds": len(accs),
        "accuracy": round(float(np.mean(accs)), 10),  # float summation noise off, not information
        "accuracy_std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
        "accuracy_sem": float(np.std(accs, ddof=1) / np.sqrt(len(accs))) if len(accs) > 1 else 0.0,
        "fold_accuracy": [round(a, 4) for a in accs],
        "fold_thresholds": [round(x, 4) for x in thresholds],
        "tar_at_far": {k: round(v[0], 4) for k, v in tar.items()},
        "threshold_at_far": {k: round(v[1], 4) for k, v in tar.items()},
        "genuine_pairs": int(same.sum()),
        "impostor_pairs": int((~same).sum()),
        "images": len(rels),
        "no_face": len(no_face),
        "no_face_images": no_face,
        "unscored_pairs": int(np.isnan(scores).sum()),
        "face_policy": policy,
        "rescue": pipeline.rescue_mode,
        "rescued": {k: v for k, v in (pipeline.rescued - rescued_before).items() if k != "none"},
        "ms": {"detect": _median(t.detect), "align": _median(t.align), "embed": _median(t.embed)},
    }
    if truth is not None:
        # How often the chosen face is the subject's: of all images (no face counts as wrong), and of those
        # where the detector found several faces (where the policy matters).
        right = {r for r, (f, _) in chosen.items() if r in truth and chose_subject(truth[r], f.box)}
        several = [r for r, (_, n) in chosen.items() if n > 1]
        result["subject_chosen"] = round(len(right) / len(rels), 4)
        result["several_faces"] = len(several)
        result["subject_chosen_of_several"] = round(len(right.intersection(several)) / max(len(several), 1), 4)
    if plot:
        roc_plot(scores, same, plot, title=f"{scorer.name} on {Path(pairs_file).name}")
        result["plot"] = str(plot)
    return result


def _median(values: list[float]) -> float:
    return round(float(np.median(values)), 3) if values else 0.0


def roc_plot(scores: np.ndarray, same: np.ndarray, out: Path, title: str) -> None:
    """ROC curve (TAR against FAR, log FAR axis) written as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise FacegateError("--plot needs matplotlib (pip install 'facegate[dev]')") from None
    valid = ~np.isnan(scores)
    thresholds = np.unique(scores[valid])[::-1]
    g, im = scores[same], scores[~same]
    with np.errstate(invalid="ignore"):
        tar = np.array([(g >= t).sum() / len(g) for t in thresholds])
        far = np.array([(im >= t).sum() / len(im) for t in thresholds])
    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    ax.plot(np.maximum(far, 1.0 / max(len(im), 1) / 2), tar)
    ax.set_xscale("log")
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
