"""A trained verification head (edge/verifier.py) as a scorer: logits over several embedders' vectors.

A head is not an inner product an index could prune, so 1:N scores the whole gallery; the head's index (rows of
every embedder, paired by enrolment photo) is rebuilt from the store whenever the gallery's revision moves.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edge.errors import FacegateError
from edge.match.base import Probe, Scorer
from edge.match.gallery import Gallery
from edge.match.thresholds import DEFAULT_FPIR
from edge.store.matcher import Match
from edge.verifier import VerifierHead


class HeadIndex:
    """The whole gallery under a head: search is exhaustive (an identity's best row wins)."""

    def __init__(self, head: VerifierHead) -> None:
        self.head = head
        self._names: list[str] = []
        self._rows: list[np.ndarray] = []

    @property
    def rows(self) -> int:
        return len(self._rows)

    @property
    def identities(self) -> int:
        return len(set(self._names))

    def add(self, name: str, vectors: Mapping[str, np.ndarray]) -> None:
        self._rows.extend(self.head.concat(vectors))
        self._names.extend([name] * (len(self._rows) - len(self._names)))

    def search(self, probe: Mapping[str, np.ndarray], k: int = 1) -> list[Match]:
        if not self._rows:
            return []
        logits = self.head.logit_matrix(self.head.concat(probe), np.stack(self._rows))[0]
        seen: dict[str, float] = {}
        for j in np.argsort(-logits, kind="stable"):
            name = self._names[j]
            if name not in seen:
                seen[name] = float(logits[j])
                if len(seen) == k:
                    break
        return [Match(n, s) for n, s in seen.items()]


class HeadScorer(Scorer):
    def __init__(self, head: VerifierHead, gallery: Gallery | None = None, fpir: float = DEFAULT_FPIR) -> None:
        if head.manifest is None:
            raise FacegateError(f"verifier {head.name!r} has no manifest (thresholds)")
        super().__init__(head.manifest, tuple(head.embedders), gallery, fpir)
        self.head = head
        self._index: tuple[int, HeadIndex] | None = None

    def _reset(self) -> None:
        self._index = None

    def pair(self, a: Probe, b: Probe) -> float:
        return float(self.head.logit(a, b)[0])

    def identity_score(self, probe: Probe, name: str) -> float | None:
        templates = self._gallery().paired(self.embedders, name).get(name)
        if templates is None:
            return None
        return float(self.head.logit_matrix(self.head.concat(probe), self.head.concat(templates)).max())

    def index(self) -> HeadIndex:
        gallery = self._gallery()
        if self._index is None or self._index[0] != gallery.revision:
            index = HeadIndex(self.head)
            for who, vectors in gallery.paired(self.embedders).items():
                index.add(who, vectors)
            self._index = (gallery.revision, index)
        return self._index[1]

    def identities(self) -> int:
        return self.index().identities

    def search(self, probe: Probe, k: int) -> list[Match]:
        return self.index().search(probe, k)
