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
from edge.match.templates import IdentityRows
from edge.match.thresholds import DEFAULT_FPIR
from edge.store.matcher import Match
from edge.verifier import VerifierHead


class HeadIndex:
    """The whole gallery under a head: search is exhaustive; an identity scores by `decision.templates` over its
    rows' logits (edge/match/templates.py)."""

    def __init__(self, head: VerifierHead, templates: str = "max") -> None:
        self.head = head
        self.templates = templates
        self._names: list[str] = []
        self._rows: list[np.ndarray] = []
        self._stacked: tuple[np.ndarray, IdentityRows] | None = None  # built once per gallery, not per probe

    @property
    def rows(self) -> int:
        return len(self._rows)

    @property
    def identities(self) -> int:
        return len(set(self._names))

    def add(self, name: str, vectors: Mapping[str, np.ndarray]) -> None:
        self._rows.extend(self.head.concat(vectors))
        self._names.extend([name] * (len(self._rows) - len(self._names)))
        self._stacked = None

    def search(self, probe: Mapping[str, np.ndarray], k: int = 1) -> list[Match]:
        if not self._rows:
            return []
        if self._stacked is None:
            self._stacked = (np.stack(self._rows), IdentityRows(self._names, self.templates))
        rows, who = self._stacked
        return who.top(self.head.logit_matrix(self.head.concat(probe), rows)[0], k)


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
        logits = self.head.logit_matrix(self.head.concat(probe), self.head.concat(templates))[0]
        return float(IdentityRows([name] * len(logits), self.templates).scores(logits)[0])

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
