"""View-1-only experiment (2026-12-05): cohort normalisation of the fused score for open-set 1:N — rejected.

Gallery K (argv[1], default 100) drawn from pairsDevTest identities (not in pairsDevTrain), first photo
enrolled, every other photo a known probe, every photo of the others an unknown probe, 10 seeds; the cohort
is one photo of each pairsDevTrain identity. Run from the repository root:
    FACEGATE_DATA=../shared python docs/results/door/view1/tnorm_experiment.py 100 > tnorm_k100.json
"""
import json
import sys

import numpy as np
from view1_draws import draw, embed, fused, images, people, rels, train
from view1_draws import matrix as _matrix

from edge.enroll import person_folders
from edge.eval.identify import dir_at_fpir

dev_names = {n for n, _ in people}
cohort_people = [(n, f) for n, f in person_folders(images) if n in train and n not in dev_names]
crels = [f"{n}/{fs[0].name}" for n, fs in cohort_people]
emb, nf = embed(rels + crels)
print(len(people), len(rels), len(cohort_people), 'noface', len(nf), file=sys.stderr)
def mat(keys):
    return _matrix(emb, keys)
crels_kept = [c for c in crels if c in emb]
C = mat(crels_kept)
K = int(sys.argv[1]) if len(sys.argv) > 1 else 100
ncoh = int(sys.argv[2]) if len(sys.argv) > 2 else 10**6
Csub = {m: v[:ncoh] for m, v in C.items()}
res = {k: ([], [], []) for k in ('raw', 'gallery_tnorm', 'cohort_tnorm', 'cohort_znorm_mu', 'top1_minus_top2')}
allrels = [r for r in rels if r in emb]
P = mat(allrels)
coh = fused(P, Csub)  # (probes, cohort)
cmu, csd = coh.mean(1), coh.std(1)
ctop = np.sort(coh, 1)[:, -20:].mean(1)
idx = {r: i for i, r in enumerate(allrels)}
for seed in range(10):
    chosen, gkeys = draw(seed, K)
    G = mat(gkeys)
    S = fused(P, G)  # (probes, K)
    order = np.argsort(-S, 1)
    top = S[np.arange(len(S)), order[:, 0]]
    second = S[np.arange(len(S)), order[:, 1]]
    rest_mu = (S.sum(1) - top) / (K - 1)
    rest_sd = np.sqrt(np.maximum((np.square(S).sum(1) - top**2) / (K - 1) - rest_mu**2, 1e-12))
    scores = {'raw': top, 'gallery_tnorm': (top - rest_mu) / rest_sd, 'cohort_tnorm': (top - cmu) / csd,
              'cohort_znorm_mu': top - ctop, 'top1_minus_top2': top - second}
    chosen_set = set(chosen)
    for r in allrels:
        n = r.split('/')[0]
        i = idx[r]
        if n in chosen_set:
            if r in gkeys:
                continue
            for k in res:
                res[k][0].append(scores[k][i])
                res[k][1].append(chosen[order[i, 0]] == n)
        else:
            for k in res:
                res[k][2].append(scores[k][i])
out = {}
for k, (ks, kc, us) in res.items():
    ks, kc, us = np.array(ks), np.array(kc), np.array(us)
    out[k] = {f: round(dir_at_fpir(ks, kc, us, float(f))[0], 4) for f in ('0.01', '0.001')}
print(json.dumps({'K': K, 'known': len(ks), 'unknown': len(us), 'cohort': len(crels_kept[:ncoh]), **out}, indent=1))
