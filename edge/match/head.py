"""A trained verification head (edge/verifier.py) as a scorer: logits over several embedders' vectors.

A head is not an inner product an index could prune, so 1:N scores the whole gallery; the head's index (rows of
every embedder, paired by enrolment photo) is rebuilt from the store whenever the gallery's revision moves.
An identity's score is its best photo's logit ("max") or the mean of its photos' logits ("mean", the
decision.templates default): the same rule the cosine and fused scorers apply to their per-photo scores.
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

    def __init__(self, head: VerifierHead, templates: str = "max") -> None:
        self.head = head
        self.templates = templates
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
        per: dict[str, list[float]] = {}
        for name, logit in zip(self._names, logits.tolist(), strict=True):
            per.setdefault(name, []).append(logit)
        scores = {n: aggregate(v, self.templates) for n, v in per.items()}
        best = sorted(scores.items(), key=lambda item: -item[1])[:k]
        return [Match(n, s) for n, s in best]


def aggregate(logits: list[float] | np.ndarray, templates: str) -> float:
    """An identity's score from its photos' logits: the best ("max") or their mean ("mean")."""
    values = np.asarray(logits, dtype=np.float64)
    return float(values.mean() if templates == "mean" else values.max())


class HeadScorer(Scorer):
    def __init__(self, head: VerifierHead, gallery: Gallery | None = None, fpir: float = DEFAULT_FPIR) -> None:
        if head.manifest is None:
            raise FacegateError(f"verifier {head.name!r} has no manifest (thresholds)")
        super().__init__(head.manifest, tuple(head.embedders), gallery, fpir)
        self.head = head
        self._index: tuple[tuple[int, str], HeadIndex] | None = None

    def _reset(self) -> None:
        self._index = None

    def pair(self, a: Probe, b: Probe) -> float:
        return float(self.head.logit(a, b)[0])

    def identity_score(self, probe: Probe, name: str) -> float | None:
        templates = self._gallery().paired(self.embedders, name).get(name)
        if templates is None:
            return None
        return aggregate(self.head.logit_matrix(self.head.concat(probe), self.head.concat(templates))[0],
                         self.templates)

    def index(self) -> HeadIndex:
        gallery = self._gallery()
        if self._index is None or self._index[0] != (gallery.revision, self.templates):
            index = HeadIndex(self.head, self.templates)
            for who, vectors in gallery.paired(self.embedders).items():
                index.add(who, vectors)
            self._index = ((gallery.revision, self.templates), index)
        return self._index[1]

    def identities(self) -> int:
        return self.index().identities

    def search(self, probe: Probe, k: int) -> list[Match]:
        return self.index().search(probe, k)
