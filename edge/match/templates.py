"""How an identity's enrolment photos make its score (`decision.templates`): its best photo ("max") or the mean
over its photos ("mean"). One implementation for every scorer that scores a whole gallery at once."""

from __future__ import annotations

import numpy as np

from edge.errors import ModelError
from edge.store.matcher import Match

AGGREGATES = ("max", "mean")


class IdentityRows:
    """Which identity each gallery row belongs to, and the per-identity reduction of per-row scores."""

    def __init__(self, names: list[str], aggregate: str = "max") -> None:
        if aggregate not in AGGREGATES:
            raise ModelError(f"templates {aggregate!r} is not one of {', '.join(AGGREGATES)}")
        self.aggregate = aggregate
        self.order = sorted(set(names))
        index = {n: i for i, n in enumerate(self.order)}
        self.slot = np.array([index[n] for n in names], np.int64)
        self.counts = np.bincount(self.slot, minlength=len(self.order))

    def __len__(self) -> int:
        return len(self.order)

    def scores(self, per_row: np.ndarray) -> np.ndarray:
        """(identities,) scores in `self.order` from (rows,) scores."""
        per_row = np.asarray(per_row, np.float64)
        if self.aggregate == "mean":
            return np.bincount(self.slot, weights=per_row, minlength=len(self.order)) / self.counts
        out = np.full(len(self.order), -np.inf)
        np.maximum.at(out, self.slot, per_row)
        return out

    def top(self, per_row: np.ndarray, k: int) -> list[Match]:
        if not self.order:
            return []
        s = self.scores(per_row)
        return [Match(self.order[i], float(s[i])) for i in np.argsort(-s, kind="stable")[:k]]
