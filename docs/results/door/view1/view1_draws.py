"""What the View-1 experiments in this folder share: the built-in fusion's pipeline, the pairsDevTest identities
that pairsDevTrain does not name, their embeddings (cached in the state directory), and the open-set draws
(K identities with at least two photos, the first photo enrolled, 10 seeds in the experiments).
Imported by the scripts beside it, which run from the repository root with FACEGATE_DATA set.
"""
import os
from pathlib import Path

import numpy as np

from edge.enroll import person_folders
from edge.eval.lfw import embed_paths, pair_identities, read_pairs
from edge.match.fusion import Fusion
from edge.models.registry import Registry
from edge.pipeline import FacePipeline

root = Path(os.environ.get("FACEGATE_DATA", "../shared")) / "lfw"
images = root / "images"
registry = Registry()
fusion = Fusion(registry.manifest("fused"))
members = fusion.members
pipe = FacePipeline(registry, embedder=members[0], extra_embedders=members[1:], threads=1)
dev = pair_identities(read_pairs(root / "pairsDevTest.txt"))
train = pair_identities(read_pairs(root / "pairsDevTrain.txt"))
people = [(n, f) for n, f in person_folders(images) if n in dev and n not in train]
files = dict(people)
rels = [f"{n}/{p.name}" for n, fs in people for p in fs]
eligible = [n for n, f in people if len(f) >= 2]


def embed(paths: list[str]) -> tuple[dict, list[str]]:
    """{path: {member: vector}} and the paths without a face."""
    return embed_paths(pipe, images, paths, policy="best", every=True, cache=True)


def matrix(emb: dict, keys: list[str]) -> dict[str, np.ndarray]:
    return {m: np.stack([emb[k][m] for k in keys]).astype(np.float32) for m in members}


def fused(P: dict[str, np.ndarray], G: dict[str, np.ndarray]) -> np.ndarray:
    """(probes, gallery) fused scores."""
    return fusion.combine(np.stack([P[m] @ G[m].T for m in members], axis=-1))


def draw(seed: int, k: int = 100) -> tuple[list[str], list[str]]:
    """(the K identities drawn, their enrolled photos) for one seed."""
    chosen = sorted(np.random.default_rng(seed).choice(eligible, size=k, replace=False).tolist())
    return chosen, [f"{n}/{files[n][0].name}" for n in chosen]
