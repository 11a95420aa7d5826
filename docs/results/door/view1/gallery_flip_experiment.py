"""View-1-only experiment (2026-12-06): the enrolment photo's SFace template as the mean of the crop and its
mirror, the probe unchanged (the door would pay nothing per face) — not shipped.

The draws of tnorm_experiment.py (pairsDevTest identities not in pairsDevTrain, K = 100, first photo enrolled,
10 seeds); prints DIR at FPIR 1 % and 0.1 % of the built-in fusion without and with it. Run from the
repository root:
    FACEGATE_DATA=../shared python docs/results/door/view1/gallery_flip_experiment.py
"""
import cv2
import numpy as np
from view1_draws import draw, eligible, embed, files, fused, images, matrix, pipe, rels

from edge.eval.identify import dir_at_fpir
from edge.vision.align import align
from edge.vision.detect import select_face

emb, _ = embed(rels)
sface = pipe.by_name["sface-int8"]
mirrored = {}
for n in eligible:
    rel = f"{n}/{files[n][0].name}"
    img = cv2.imread(str(images / rel))
    crop = align(img, select_face(pipe.detect(img), img.shape, "best").landmarks, sface.manifest.alignment)
    v = sface.embed(np.stack([crop, crop[:, ::-1]])).mean(0)
    mirrored[rel] = v / np.linalg.norm(v)
probes = [r for r in rels if r in emb]
P = matrix(emb, probes)
for variant in ("plain", "gallery crop + mirror"):
    known, correct, unknown = [], [], []
    for seed in range(10):
        chosen, gallery = draw(seed)
        G = matrix(emb, gallery)
        if variant != "plain":
            G["sface-int8"] = np.stack([mirrored[k] for k in gallery])
        S = fused(P, G)
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
