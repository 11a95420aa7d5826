"""Cosine similarity of one embedder's unit vectors: an identity's score is its best template's."""

from __future__ import annotations

import numpy as np

from edge.match.base import Probe, Scorer
from edge.match.gallery import Gallery
from edge.match.thresholds import DEFAULT_FPIR
from edge.models.manifest import Manifest
from edge.store.matcher import Match


class CosineScorer(Scorer):
    def __init__(self, manifest: Manifest, gallery: Gallery | None = None, fpir: float = DEFAULT_FPIR) -> None:
        super().__init__(manifest, (manifest.name,), gallery, fpir)
        self.embedder = manifest.name

    def pair(self, a: Probe, b: Probe) -> float:
        return float(np.dot(a[self.embedder], b[self.embedder]))

    def pair_matrix(self, a: list[Probe], b: list[Probe]) -> np.ndarray:
        e = self.embedder
        if not a or not b:
            return np.zeros((len(a), len(b)))
        return np.stack([p[e] for p in a]).astype(np.float32) @ np.stack([p[e] for p in b]).astype(np.float32).T

    def identity_score(self, probe: Probe, name: str) -> float | None:
        rows = self._gallery().templates(name, self.embedder)
        return None if rows is None else float(np.max(rows @ probe[self.embedder]))

    def search(self, probe: Probe, k: int) -> list[Match]:
        return self._gallery().matchers[self.embedder].search(probe[self.embedder], k=k)[0]
