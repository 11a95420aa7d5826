"""Tuning the face-choice rule and checking the rescue on a wild set (edge/eval/wild.py), offline.

Detects every wild image once (first pass and rescue kept apart), embeds every face found, then scores any
face-choice rule on the pairs without detecting again: choice accuracy (the chosen face is the subject's, from
wild.json) and pair accuracy (10 interleaved folds, as `facegate bench pairs` does for a View-1 file).

    python3 docs/results/wild/tune_choice.py collect WILD_DIR CACHE.pkl
    python3 docs/results/wild/tune_choice.py grid WILD_DIR CACHE.pkl --pairs pairsDevTrain.txt

Run from the repository root with PYTHONPATH=. ; View 2 never enters: the wild set is built from View 1.
"""

from __future__ import annotations

import argparse
import itertools
import json
import pickle
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge.eval.lfw import cross_validate, read_pairs
from edge.eval.wild import chose_subject, load_truth
from edge.imageio import load_bgr
from edge.pipeline import FacePipeline
from edge.vision.detect import best_scores, select_face
from edge.vision.rescue import decide


def collect(wild: Path, cache: Path) -> None:
    """Per image: the first pass's faces and the four full-resolution looks (down to the manifest's rescue
    threshold), every face embedded; the rescue's steps are then replayed from these (edge.vision.rescue.decide)."""
    pipe = FacePipeline(rescue="off")
    rels = sorted(str(p.relative_to(wild / "images")) for p in (wild / "images").glob("*/*.jpg"))
    out = {}
    for rel in tqdm(rels, file=sys.stderr, mininterval=30):
        img = load_bgr(wild / "images" / rel)
        views = {"first": pipe.detector.detect(img)} | {k: pipe.rescue.look(img, k) for k in range(4)}
        out[rel] = {"shape": img.shape,
                    "views": {k: [(f, pipe.embed_faces(img, [f])[0]) for f in v] for k, v in views.items()}}
    cache.write_bytes(pickle.dumps(out))


def enlarge_missed(wild: Path, data: dict) -> None:
    """The rescue's last step (an image with nothing found at its own size, enlarged twice): looked at live
    for the few images that reach it, added to their records as views ("x2", k)."""
    pipe = None
    for rel, rec in data.items():
        if any(rec["views"][k] for k in ("first", 0, 1, 2, 3)) or ("x2", 0) in rec["views"]:
            continue
        pipe = pipe or FacePipeline(rescue="off")
        img = load_bgr(wild / "images" / rel)
        for k in range(4):
            rec["views"][("x2", k)] = [(f, pipe.embed_faces(img, [f])[0]) for f in pipe.rescue.look(img, k, 2.0)]


def detect(rec: dict, rescue: bool, sure: float, low: float) -> tuple[list, str]:
    """(faces with their embeddings, step) as the pipeline would find them."""
    views = rec["views"]
    emb = {id(f): e for v in views.values() for f, e in v}
    first = [f for f, _ in views["first"]]
    if not rescue or (first and max(f.score for f in first) >= sure):
        return [(f, emb[id(f)]) for f in first], "first"
    faces, step = decide(first, lambda k: [f for f, _ in views[k] if f.score >= low], 0.6, sure, True,
                         lambda k: [f for f, _ in views.get(("x2", k), []) if f.score >= low])
    return [(f, emb[id(f)]) for f in faces], step or "none"


def choose(faces: list, shape: tuple, rule: str, w: tuple[float, float, float] | None = None) -> int | None:
    if not faces:
        return None
    fs = [f for f, _ in faces]
    if rule == "largest":
        return int(np.argmax([f.width * f.height for f in fs]))
    if rule == "central":
        return select_index(fs, shape, "central")
    kw = {} if w is None else {"score_power": w[0], "size_power": w[1], "centre_sigma": w[2]}
    return int(np.argmax(best_scores(fs, shape, **kw)))


def select_index(fs: list, shape: tuple, policy: str) -> int:
    chosen = select_face(fs, shape, policy)
    return next(i for i, f in enumerate(fs) if f is chosen)


def evaluate(data: dict, truth: dict, pairs: list, rule: str, rescue: bool, w=None, sure: float = 0.9,
             low: float = 0.3) -> dict:
    rels = sorted({r for p in pairs for r in (p.a, p.b)})
    found = {r: detect(data[r], rescue, sure, low) for r in rels}
    chosen = {r: choose(found[r][0], data[r]["shape"], rule, w) for r in rels}
    right = {r for r in rels if chosen[r] is not None and chose_subject(truth[r], found[r][0][chosen[r]][0].box)}
    multi = [r for r in rels if len(found[r][0]) > 1]
    scores = np.full(len(pairs), np.nan)
    for k, p in enumerate(pairs):
        a, b = chosen[p.a], chosen[p.b]
        if a is not None and b is not None:
            scores[k] = float(found[p.a][0][a][1] @ found[p.b][0][b][1])
    same = np.array([p.same for p in pairs])
    accs, _ = cross_validate(scores, same, np.arange(len(pairs)) % 10)
    steps: dict[str, int] = {}
    for r in rels:
        steps[found[r][1]] = steps.get(found[r][1], 0) + 1
    return {"rule": rule, "rescue": rescue, "weights": w, "sure": sure, "low": low,
            "accuracy": round(float(np.mean(accs)), 4), "no_face_images": sum(chosen[r] is None for r in rels),
            "unscored_pairs": int(np.isnan(scores).sum()), "subject_chosen": round(len(right) / len(rels), 4),
            "subject_chosen_of_several": round(len(right.intersection(multi)) / max(len(multi), 1), 4),
            "several_faces": len(multi), "steps": steps}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("collect", "grid", "report", "rescue"))
    ap.add_argument("wild", type=Path)
    ap.add_argument("cache", type=Path)
    ap.add_argument("--pairs", default="pairsDevTrain.txt")
    ap.add_argument("--weights", type=float, nargs=3, help="p q sigma for best (default: the shipped ones)")
    ap.add_argument("--sure", type=float, default=0.9)
    ap.add_argument("--low", type=float, default=0.3)
    a = ap.parse_args()
    if a.what == "collect":
        collect(a.wild, a.cache)
        return
    data = pickle.loads(a.cache.read_bytes())
    enlarge_missed(a.wild, data)
    truth = load_truth(a.wild / "images")
    pairs = read_pairs(a.wild / a.pairs)
    if a.what == "report":
        for rescue in (False, True):
            for rule in ("central", "largest", "best"):
                print(json.dumps(evaluate(data, truth, pairs, rule, rescue, a.weights, a.sure, a.low)))
        return
    if a.what == "rescue":
        for sure in (0.0, 0.6, 0.8, 0.85, 0.9, 0.95, 1.01):
            for low in (0.3, 0.4, 0.5, 0.6):
                print(json.dumps(evaluate(data, truth, pairs, "best", True, a.weights, sure, low)))
        return
    rows = []
    for w in itertools.product((0.0, 0.5, 1.0, 2.0, 4.0), (0.0, 0.5, 1.0, 2.0, 4.0), (0.25, 0.35, 0.5, 0.7, 1.0, 2.0)):
        rows.append(evaluate(data, truth, pairs, "best", True, w, a.sure, a.low))
    rows.sort(key=lambda r: (-r["subject_chosen"], -r["accuracy"]))
    for r in rows[:15]:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
