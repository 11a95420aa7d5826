"""Cosine similarity of one embedder's unit vectors: an identity's score is its best template's."""

from __future__ import annotations

import numpy as np

from edge.match.base import Probe, Scorer
from edge.match.fusion import TemplateIndex
from edge.match.gallery import Gallery
from edge.match.thresholds import DEFAULT_FPIR
from edge.models.manifest import Manifest
from edge.store.matcher import Match


class CosineScorer(Scorer):
    def __init__(self, manifest: Manifest, gallery: Gallery | None = None, fpir: float = DEFAULT_FPIR,
                 templates: str = "max") -> None:
        super().__init__(manifest, (manifest.name,), gallery, fpir)
        self.embedder = manifest.name
        self.templates = templates
        self._index: tuple[int, str, TemplateIndex] | None = None

    def _reset(self) -> None:
        self._index = None

    def index(self) -> TemplateIndex:
        """The mean-over-photos index ("mean" templates); "max" searches the gallery's cosine Matcher."""
        gallery = self._gallery()
        if self._index is None or self._index[:2] != (gallery.revision, self.templates):
            self._index = (gallery.revision, self.templates, TemplateIndex(
                self.embedders, lambda cos: cos[..., 0], gallery.paired(self.embedders), self.templates))
        return self._index[2]

    def pair(self, a: Probe, b: Probe) -> float:
        return float(np.dot(a[self.embedder], b[self.embedder]))

    def pair_matrix(self, a: list[Probe], b: list[Probe]) -> np.ndarray:
        e = self.embedder
        if not a or not b:
            return np.zeros((len(a), len(b)))
        return np.stack([p[e] for p in a]).astype(np.float32) @ np.stack([p[e] for p in b]).astype(np.float32).T

    def identity_score(self, probe: Probe, name: str) -> float | None:
        if self.templates != "max":
            return self.index().score(probe, name)
        rows = self._gallery().templates(name, self.embedder)
        return None if rows is None else float(np.max(rows @ probe[self.embedder]))

    def search(self, probe: Probe, k: int) -> list[Match]:
        if self.templates != "max":
            return self.index().search(probe, k)
        return self._gallery().matchers[self.embedder].search(probe[self.embedder], k=k)[0]
