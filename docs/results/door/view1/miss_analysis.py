"""View-1-only look at what the fused 1:N still misses (2026-12-06): the draws of tnorm_experiment.py (pairsDevTest
identities not in pairsDevTrain, K = 100, first photo enrolled, 10 seeds), the operating threshold at FPIR 1 %,
then every known probe missed (below it, or another identity first) and every unknown above it, with the photos
involved; `--sheet OUT.jpg A.jpg B.jpg …` draws the faces found (green: the one chosen) for a look.
Run from the repository root:
    FACEGATE_DATA=../shared python docs/results/door/view1/miss_analysis.py
"""
import collections
import sys
from pathlib import Path

import cv2
import numpy as np
from view1_draws import draw, embed, fused, images, matrix, pipe, rels

from edge.eval.identify import dir_at_fpir
from edge.vision.detect import select_face


def sheet(out: str, names: list[str]) -> None:
    tiles = []
    for name in names:
        img = cv2.imread(str(images / name))
        faces = pipe.detect(img)
        chosen = select_face(faces, img.shape, "best")
        for f in faces:
            x1, y1, x2, y2 = f.box.astype(int)
            cv2.rectangle(img, (x1, y1), (x2, y2), (0, 255, 0) if f is chosen else (0, 0, 255), 2)
        cv2.putText(img, f"{Path(name).stem[:22]} {chosen.score:.2f}", (2, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (255, 255, 255), 1)
        tiles.append(img)
    while len(tiles) % 4:
        tiles.append(np.zeros_like(tiles[0]))
    cv2.imwrite(out, np.vstack([np.hstack(tiles[i:i + 4]) for i in range(0, len(tiles), 4)]))


if len(sys.argv) > 2 and sys.argv[1] == "--sheet":
    sheet(sys.argv[2], sys.argv[3:])
    sys.exit(0)

emb, no_face = embed(rels)
probes = [r for r in rels if r in emb]
P = matrix(emb, probes)
known, correct, unknown, records = [], [], [], []
for seed in range(10):
    chosen, gallery = draw(seed)
    S = fused(P, matrix(emb, gallery))
    best, top = S.argmax(1), S.max(1)
    for i, r in enumerate(probes):
        name, first = r.split("/")[0], gallery[best[i]]
        if name in chosen:
            if r not in gallery:
                known.append(top[i])
                correct.append(chosen[best[i]] == name)
                records.append(("known", r, float(top[i]), first, gallery[chosen.index(name)]))
        else:
            unknown.append(top[i])
            records.append(("unknown", r, float(top[i]), first, None))
rate, t = dir_at_fpir(np.array(known), np.array(correct), np.array(unknown), 0.01)
print(f"DIR at FPIR 1 %: {rate:.4f} (threshold {t:.3f}; {len(known)} known, {len(unknown)} unknown probes, "
      f"{len(no_face)} without a face)")
missed = collections.Counter((r, own) for kind, r, s, first, own in records
                             if kind == "known" and (s < t or first.split("/")[0] != r.split("/")[0]))
print(f"known probes missed: {sum(missed.values())} over {len(missed)} (probe, enrolled photo) pairs")
for (r, own), k in missed.most_common():
    print(f"  {k}× {r} (enrolled {own})")
alarms = collections.Counter((r, first) for kind, r, s, first, _ in records if kind == "unknown" and s >= t)
print(f"unknown probes above the threshold: {sum(alarms.values())} over {len(alarms)} (probe, gallery photo) pairs")
for (r, first), k in alarms.most_common(15):
    print(f"  {k}× {r} → {first}")
