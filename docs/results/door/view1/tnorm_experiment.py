"""View-1-only experiment (2026-12-05): cohort normalisation of the fused score for open-set 1:N — rejected.

Gallery K (argv[1], default 100) drawn from pairsDevTest identities (not in pairsDevTrain), first photo
enrolled, every other photo a known probe, every photo of the others an unknown probe, 10 seeds; the cohort
is one photo of each pairsDevTrain identity. Run from the repository root:
    FACEGATE_DATA=../shared python docs/results/door/view1/tnorm_experiment.py 100 > tnorm_k100.json
"""
import json
import os
import sys
from pathlib import Path

import numpy as np

from edge.enroll import person_folders
from edge.eval.identify import dir_at_fpir
from edge.eval.lfw import embed_paths, pair_identities, read_pairs
from edge.match.fusion import Fusion
from edge.models.registry import Registry
from edge.pipeline import FacePipeline

root = Path(os.environ.get('FACEGATE_DATA', '../shared')) / 'lfw'
images = root / 'images'
reg = Registry()
fus = Fusion(reg.manifest('fused'))
pipe = FacePipeline(reg, embedder=fus.members[0], extra_embedders=fus.members[1:], threads=1)
dev = pair_identities(read_pairs(root / 'pairsDevTest.txt'))
trn = pair_identities(read_pairs(root / 'pairsDevTrain.txt'))
people = [(n, f) for n, f in person_folders(images) if n in dev and n not in trn]
cohort_people = [(n, f) for n, f in person_folders(images) if n in trn and n not in dev]
rels = [f"{n}/{p.name}" for n, fs in people for p in fs]
crels = [f"{n}/{fs[0].name}" for n, fs in cohort_people]
emb, nf = embed_paths(pipe, images, rels + crels, policy='best', every=True, cache=True)
print(len(people), len(rels), len(cohort_people), 'noface', len(nf), file=sys.stderr)
M = fus.members
def mat(keys):
    return {m: np.stack([emb[k][m] for k in keys]).astype(np.float32) for m in M}
C = mat([c for c in crels if c in emb])
def fused(P, G):  # (p, g)
    cos = np.stack([P[m] @ G[m].T for m in M], axis=-1)
    return fus.combine(cos)
eligible = [n for n, f in people if len(f) >= 2]
files = dict(people)
K = int(sys.argv[1]) if len(sys.argv) > 1 else 100
ncoh = int(sys.argv[2]) if len(sys.argv) > 2 else 10**6
Csub = {m: C[m][:ncoh] for m in M}
res = {k: ([], [], []) for k in ('raw', 'gallery_tnorm', 'cohort_tnorm', 'cohort_znorm_mu', 'top1_minus_top2')}
allrels = [r for r in rels if r in emb]
P = mat(allrels)
coh = fused(P, Csub)  # (probes, cohort)
cmu, csd = coh.mean(1), coh.std(1)
ctop = np.sort(coh, 1)[:, -20:].mean(1)
idx = {r: i for i, r in enumerate(allrels)}
for seed in range(10):
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(eligible, size=K, replace=False).tolist())
    gkeys = [f"{n}/{files[n][0].name}" for n in chosen]
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
print(json.dumps({'K': K, 'known': len(ks), 'unknown': len(us), 'cohort': len(Csub[M[0]]), **out}, indent=1))
