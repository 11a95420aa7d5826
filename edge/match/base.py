"""The Scorer: every "is this the person?" of facegate is answered here.

A probe is a face's embeddings, {embedder name: unit vector}, for every embedder the scorer reads. A Scorer
implements three primitives — the score of two probes, an identity's score (its best template), and a top-k
search of the gallery — and gets the decisions from this base class, so the rules are written once:

- compare(a, b): 1:1 between two faces, at the 1:1 threshold;
- verify(probe, name): 1:1 against an enrolled identity, at the 1:1 threshold;
- identify(probe): 1:N, open set, at the 1:N threshold for the gallery's current number of identities;
- claim(probe, name): a badge claim, which only adds conditions: the claimed identity must be the best match
  and score at least the stricter of the 1:1 and 1:N thresholds.

`accept` is the one `score >= threshold` of the project.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edge.errors import FacegateError
from edge.match import thresholds
from edge.models.manifest import Manifest
from edge.store.matcher import Match

if TYPE_CHECKING:
    from edge.match.gallery import Gallery

Probe = Mapping[str, np.ndarray]


def accept(score: float | None, threshold: float) -> bool:
    """The decision: a score at or above its threshold is a match. Everything that decides calls this."""
    return score is not None and bool(score >= threshold)


def _or_floor(score: float | None) -> float:
    return -np.inf if score is None else score


def accept_all(scores: np.ndarray, threshold: float) -> np.ndarray:
    """`accept` over an array of scores (benchmarks sweep many at once)."""
    return np.asarray(scores) >= threshold


@dataclass(frozen=True)
class Result:
    match: bool  # the answer: same person / the identity / recognised
    identity: str | None  # the matched identity (None: no match, "not recognized", or a compare of two faces)
    candidate: str | None  # the best candidate whatever its score
    score: float | None  # the candidate's score (compare: the pair's)
    threshold: float  # what the score was held to
    margin: float | None = None  # 1:N: the candidate's lead over the runner-up (None without one)
    candidates: tuple[Match, ...] = field(default=())
    model: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"identity": self.identity, "match": self.match, "candidate": self.candidate,
                "score": None if self.score is None else round(self.score, 4), "threshold": round(self.threshold, 4),
                "margin": None if self.margin is None else round(self.margin, 4), "model": self.model,
                "candidates": [{"identity": c.name, "score": round(c.score, 4)} for c in self.candidates]}


class Scorer(ABC):
    """Scores probes against each other and against a gallery; decides with `accept` at its thresholds."""

    def __init__(self, manifest: Manifest, embedders: tuple[str, ...], gallery: Gallery | None = None,
                 fpir: float = thresholds.DEFAULT_FPIR) -> None:
        self.manifest = manifest  # thresholds and the model name events report
        self.embedders = embedders  # what a probe must hold
        self.gallery = gallery
        self.fpir = fpir
        # An identity's score over its enrolment photos: its best ("max") or their mean ("mean"). With several
        # photos per person the max gives every impostor several chances (measured: FPIR 2–3 % at a 1 % target
        # with three photos each), the mean does not.
        self.templates = "max"
        self._identify: tuple[int, float] | None = None  # (identities, threshold) cache

    @property
    def name(self) -> str:
        return self.manifest.name

    def over(self, gallery: Gallery, templates: str | None = None) -> Scorer:
        """The same scorer (model, thresholds, FPIR) over another gallery: a benchmark's draw."""
        other = copy.copy(self)
        other.gallery, other._identify = gallery, None
        if templates is not None:
            other.templates = templates
        other._reset()
        return other

    def _reset(self) -> None:  # noqa: B027 - a hook: most scorers derive nothing from their gallery
        """Forget what was derived from the old gallery (a subclass's index)."""

    # -- primitives ------------------------------------------------------------------------------------------
    @abstractmethod
    def pair(self, a: Probe, b: Probe) -> float:
        """The score of two faces."""

    @abstractmethod
    def identity_score(self, probe: Probe, name: str) -> float | None:
        """The probe's score against an enrolled identity (its best template); None if it has no templates."""

    @abstractmethod
    def search(self, probe: Probe, k: int) -> list[Match]:
        """The k best identities of the gallery, best first."""

    def pair_matrix(self, a: list[Probe], b: list[Probe]) -> np.ndarray:
        """(len(a), len(b)) scores of every pair: evaluations and calibrations score millions of pairs, so a
        scorer that can do this as a matrix product overrides it."""
        return np.array([[self.pair(x, y) for y in b] for x in a], np.float64).reshape(len(a), len(b))

    # -- thresholds ------------------------------------------------------------------------------------------
    def verify_threshold(self) -> float:
        return thresholds.verify_threshold(self.manifest)

    def identities(self) -> int:
        return self._gallery().identities

    def identify_threshold(self, fpir: float | None = None) -> float:
        k = max(1, self.identities())
        if fpir is not None and fpir != self.fpir:
            return thresholds.identify_threshold(self.manifest, k, fpir)[0]
        if self._identify is None or self._identify[0] != k:  # recomputed when the gallery size changes
            self._identify = (k, thresholds.identify_threshold(self.manifest, k, self.fpir)[0])
        return self._identify[1]

    def claim_threshold(self) -> float:
        return max(self.verify_threshold(), self.identify_threshold())

    # -- decisions -------------------------------------------------------------------------------------------
    def compare(self, a: Probe, b: Probe) -> Result:
        score, t = self.pair(a, b), self.verify_threshold()
        return Result(accept(score, t), None, None, score, t, model=self.name)

    def verify(self, probe: Probe, name: str) -> Result:
        score, t = self.identity_score(probe, name), self.verify_threshold()
        if score is None:
            raise FacegateError(f"identity {name!r} has no {'/'.join(self.embedders)} templates; re-enrol it or "
                                "run 'facegate store reembed'")
        ok = accept(score, t)
        return Result(ok, name if ok else None, name, score, t, model=self.name)

    def identify(self, probe: Probe, top: int = 1, fpir: float | None = None, threshold: float | None = None
                 ) -> Result:
        t = self.identify_threshold(fpir) if threshold is None else threshold
        found = self.search(probe, max(2, top))
        if not found:
            return Result(False, None, None, None, t, model=self.name)
        best = found[0]
        margin = best.score - found[1].score if len(found) > 1 else None
        ok = accept(best.score, t) and self.clear_lead(margin)
        return Result(ok, best.name if ok else None, best.name, best.score, t, margin, tuple(found[:max(1, top)]),
                      self.name)

    def clear_lead(self, margin: float | None) -> bool:
        """Whether the best candidate leads the runner-up by the calibrated margin (a manifest's "margin"
        threshold; none calibrated, or no runner-up: no condition)."""
        t = self.manifest.thresholds.get("margin")
        return margin is None or t is None or accept(margin, t.value)

    def identify_track(self, probes: list[Probe], top: int = 1, threshold: float | None = None) -> Result:
        """1:N for a track of several frames: each candidate's score is the mean of its scores over the frames
        (score-level fusion). An impostor's mean score has the same expectation as one frame's and a thinner
        tail, so the 1:N threshold calibrated on single photos stays valid (conservative) for tracks."""
        if len(probes) == 1:
            return self.identify(probes[0], top, threshold=threshold)
        t = self.identify_threshold() if threshold is None else threshold
        candidates = dict.fromkeys(m.name for p in probes for m in self.search(p, max(2, top) + 3))
        if not candidates:
            return Result(False, None, None, None, t, model=self.name)
        means = {c: float(np.mean([self.identity_score(p, c) for p in probes])) for c in candidates}
        found = [Match(n, s) for n, s in sorted(means.items(), key=lambda kv: -kv[1])]
        best = found[0]
        margin = best.score - found[1].score if len(found) > 1 else None
        ok = accept(best.score, t) and self.clear_lead(margin)
        return Result(ok, best.name if ok else None, best.name, best.score, t, margin, tuple(found[:max(1, top)]),
                      self.name)

    def claim_track(self, probes: list[Probe], name: str) -> Result:
        """A claim decided on a track's frames (mean scores, as identify_track): the claimed identity must lead."""
        if len(probes) == 1:
            return self.claim(probes[0], name)
        t = self.claim_threshold()
        candidates = dict.fromkeys([name, *(m.name for p in probes for m in self.search(p, 2))])
        means = {c: float(np.mean([_or_floor(self.identity_score(p, c)) for p in probes])) for c in candidates}
        found = [Match(n, s) for n, s in sorted(means.items(), key=lambda kv: -kv[1])]
        margin = found[0].score - found[1].score if len(found) > 1 else None
        ok = found[0].name == name and accept(means[name], t) and self.clear_lead(margin)
        return Result(ok, name if ok else None, name, means[name], t, margin, tuple(found[:2]), self.name)

    def claim(self, probe: Probe, name: str) -> Result:
        """1:1 against a claimed identity that must also be the gallery's best match: a face closer to someone
        else is not the badge holder, however high its score against the badge."""
        t = self.claim_threshold()
        score = self.identity_score(probe, name)
        found = self.search(probe, 2)
        top = found[0].name if found else None
        margin = found[0].score - found[1].score if len(found) > 1 else None
        ok = top == name and accept(score, t) and self.clear_lead(margin)
        return Result(ok, name if ok else None, name, score, t, margin, tuple(found), self.name)

    def _gallery(self) -> Gallery:
        if self.gallery is None:
            raise FacegateError("this scorer has no gallery (no store was given)")
        return self.gallery
