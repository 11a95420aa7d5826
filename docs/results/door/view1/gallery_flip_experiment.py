"""View-1-only experiment (2026-12-06): the enrolment photo's SFace template as the mean of the crop and its
mirror, the probe unchanged (the door would pay nothing per face) — not shipped.

The draws of tnorm_experiment.py (pairsDevTest identities not in pairsDevTrain, K = 100, first photo enrolled,
10 seeds); prints DIR at FPIR 1 % and 0.1 % of the built-in fusion without and with it. Run from the
repository root:
    FACEGATE_DATA=../shared python docs/results/door/view1/gallery_flip_experiment.py
"""
import os
from pathlib import Path

import cv2
import numpy as np

from edge.enroll import person_folders
from edge.eval.identify import dir_at_fpir
from edge.eval.lfw import embed_paths, pair_identities, read_pairs
from edge.match.fusion import Fusion
from edge.models.registry import Registry
from edge.pipeline import FacePipeline
from edge.vision.align import align
from edge.vision.detect import select_face

root = Path(os.environ.get("FACEGATE_DATA", "../shared")) / "lfw"
images = root / "images"
reg = Registry()
fus = Fusion(reg.manifest("fused"))
pipe = FacePipeline(reg, embedder=fus.members[0], extra_embedders=fus.members[1:], threads=1)
dev = pair_identities(read_pairs(root / "pairsDevTest.txt"))
trn = pair_identities(read_pairs(root / "pairsDevTrain.txt"))
people = [(n, f) for n, f in person_folders(images) if n in dev and n not in trn]
rels = [f"{n}/{p.name}" for n, fs in people for p in fs]
emb, _ = embed_paths(pipe, images, rels, policy="best", every=True, cache=True)
members = fus.members
eligible = [n for n, f in people if len(f) >= 2]
files = dict(people)
sface = pipe.by_name["sface-int8"]
mirrored = {}
for n in eligible:
    rel = f"{n}/{files[n][0].name}"
    img = cv2.imread(str(images / rel))
    crop = align(img, select_face(pipe.detect(img), img.shape, "best").landmarks, sface.manifest.alignment)
    v = sface.embed(np.stack([crop, crop[:, ::-1]])).mean(0)
    mirrored[rel] = v / np.linalg.norm(v)
probes = [r for r in rels if r in emb]
P = {m: np.stack([emb[k][m] for k in probes]) for m in members}
for variant in ("plain", "gallery crop + mirror"):
    known, correct, unknown = [], [], []
    for seed in range(10):
        chosen = sorted(np.random.default_rng(seed).choice(eligible, size=100, replace=False).tolist())
        gallery = [f"{n}/{files[n][0].name}" for n in chosen]
        G = {m: np.stack([emb[k][m] for k in gallery]) for m in members}
        if variant != "plain":
            G["sface-int8"] = np.stack([mirrored[k] for k in gallery])
        S = fus.combine(np.stack([P[m] @ G[m].T for m in members], axis=-1))
        best, top = S.argmax(1), S.max(1)
        for i, r in enumerate(probes):
            name = r.split("/")[0]
            if name not in chosen:
                unknown.append(top[i])
            elif r not in gallery:
                known.append(top[i])
                correct.append(chosen[best[i]] == name)
    k, c, u = np.array(known), np.array(correct), np.array(unknown)
    one, tenth = dir_at_fpir(k, c, u, 0.01)[0], dir_at_fpir(k, c, u, 0.001)[0]
    print(f"{variant}: DIR at FPIR 1 % {one:.4f}, at 0.1 % {tenth:.4f} ({len(k)} known, {len(u)} unknown probes)")
