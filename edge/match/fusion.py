"""Score fusion of several embedders: each one's cosine is normalised on impostor statistics, then combined.

For embedder e with impostor cosine mean μ_e and standard deviation σ_e (measured on LFW View 1, never on a
test set), a pair's score is

    s = Σ_e w_e · (cos_e − μ_e) / σ_e  /  Σ_e w_e

so each model contributes "how many impostor standard deviations above an impostor" — SFace's and dlib's cosines
live on different scales (an impostor scores ≈ 0.1 under SFace and ≈ 0.75 under dlib), and a plain sum would
let one model's spread dominate. The weights, μ and σ, the members' sha256 and the 1:1 / 1:N thresholds of
the fused score are a manifest of task "fusion" (edge/models/builtin/), calibrated by `facegate calibrate
fusion` on View 1. A member whose file is not the one the statistics were measured on is refused: a fusion
calibrated for other models would decide at meaningless thresholds.

An identity's score is the best over its templates of the fused per-photo score (the k-th templates of the
members come from the same enrolment photo). 1:N scores every template of the gallery: a matrix product per
member, far below a millisecond for thousands of identities.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge.embed import l2_normalise
from edge.errors import FacegateError, ModelError
from edge.match.base import Probe, Scorer
from edge.match.gallery import Gallery
from edge.match.templates import IdentityRows
from edge.match.thresholds import DEFAULT_FPIR
from edge.models.manifest import Manifest
from edge.store.matcher import Match


class Fusion:
    """The normalisation and weights of a fusion manifest."""

    def __init__(self, manifest: Manifest) -> None:
        if manifest.task != "fusion":
            raise ModelError(f"model {manifest.name!r} is a {manifest.task!r} model, not a score fusion")
        ex = manifest.extra
        members = tuple(ex.get("members", ()))
        stats: dict[str, Any] = ex.get("stats", {})
        if len(members) < 2 or any(m not in stats for m in members):
            raise ModelError(f"fusion {manifest.name!r}: needs two or more members, each with impostor stats "
                             "(run 'facegate calibrate fusion')")
        self.manifest = manifest
        self.members = members
        self.mu = np.array([float(stats[m]["mu"]) for m in members])
        self.sigma = np.array([float(stats[m]["sigma"]) for m in members])
        weights = ex.get("weights", {})
        self.w = np.array([float(weights.get(m, 1.0)) for m in members])
        if np.any(self.sigma <= 0) or np.any(self.w < 0) or self.w.sum() <= 0:
            raise ModelError(f"fusion {manifest.name!r}: sigma must be positive and weights non-negative")
        self.w = self.w / self.w.sum()

    def combine(self, cosines: np.ndarray) -> np.ndarray:
        """(..., members) cosines → (...) fused scores."""
        return ((np.asarray(cosines, np.float64) - self.mu) / self.sigma) @ self.w

    def check_members(self, registry: Any) -> None:
        """Refuse members whose files are not the ones the statistics were measured on."""
        measured = self.manifest.extra.get("member_sha256", {})
        for name in self.members:
            m = registry.manifest(name)
            if name in measured and measured[name] != m.sha256:
                raise ModelError(f"fusion {self.manifest.name!r} was calibrated on {name} with sha256 "
                                 f"{measured[name][:12]}…, but {name} is now {m.sha256[:12]}…: recalibrate it with "
                                 "'facegate calibrate fusion'")
            if m.flip_average != bool(self.manifest.extra.get("member_flip", {}).get(name, m.flip_average)):
                raise ModelError(f"fusion {self.manifest.name!r} was calibrated with {name}'s flip_average "
                                 f"{not m.flip_average}; recalibrate it")


COSINE_SLACK = 1e-3  # float32 rounding of unit vectors' dot products stays far inside this


def _unit_rows(v: np.ndarray) -> np.ndarray:
    """Gallery rows scaled to L2 norm 1 (in float64: a flipped exponent bit's 1e37 squared overflows float32); a
    zero or non-finite row raises (it cannot be scored)."""
    v = np.asarray(v, np.float64)
    if not np.all(np.isfinite(norm := np.linalg.norm(v, axis=-1))) or not np.all(norm > 0):
        raise FacegateError("a template or probe vector is zero, NaN or infinite: it cannot be scored; nobody is "
                            "matched")
    return l2_normalise(v).astype(np.float32)


class TemplateIndex:
    """Every template of a gallery, stacked per member, rows paired by enrolment photo, and how an identity's
    templates make its score: its best photo ("max") or the mean over its photos ("mean"; linear in the
    cosines, so the fused mean is the mean fused score)."""

    def __init__(self, members: tuple[str, ...], combine, paired: dict[str, dict[str, np.ndarray]],
                 aggregate: str = "max") -> None:
        self.members, self.combine, self.aggregate = members, combine, aggregate
        names: list[str] = []
        blocks: dict[str, list[np.ndarray]] = {m: [] for m in members}
        for who, rows in paired.items():
            n = len(rows[members[0]])
            names += [who] * n
            for m in members:
                blocks[m].append(np.asarray(rows[m], np.float32))
        self.who = IdentityRows(names, aggregate)
        self.order = self.who.order
        # Unit rows, whatever was handed in: a template scored unnormalised lets one huge value outscore every
        # genuine match (the store refuses such a template; this is the second line).
        self.rows = {m: (_unit_rows(np.concatenate(b)) if b else np.zeros((0, 1), np.float32))
                     for m, b in blocks.items()}
        self.identities = len(self.order)

    def _per_row(self, probe: Probe) -> np.ndarray:
        # Probes come unit-length from the embedder (edge/embed.py) or a track's mean (edge/match/track.py); the
        # bound below catches one that is not, without normalising every probe a second time per frame.
        cos = np.stack([self.rows[m] @ np.asarray(probe[m], np.float32) for m in self.members], axis=-1)
        if cos.size and not (np.isfinite(cos).all() and np.abs(cos).max() <= 1.0 + COSINE_SLACK):
            raise FacegateError("a cosine outside [-1, 1]: a gallery template or the probe is damaged; nobody is "
                                "matched")
        return self.combine(cos)

    def identity_scores(self, probe: Probe) -> np.ndarray:
        """(identities,) scores in `self.order`."""
        return self.who.scores(self._per_row(probe))

    def search(self, probe: Probe, k: int) -> list[Match]:
        return self.who.top(self._per_row(probe), k) if self.order else []

    def score(self, probe: Probe, name: str) -> float | None:
        if name not in self.order:
            return None
        return float(self.identity_scores(probe)[self.order.index(name)])


class FusionScorer(Scorer):
    def __init__(self, manifest: Manifest, gallery: Gallery | None = None, fpir: float = DEFAULT_FPIR,
                 templates: str = "max") -> None:
        self.fusion = Fusion(manifest)
        super().__init__(manifest, self.fusion.members, gallery, fpir)
        self.templates = templates
        self._index: tuple[int, str, TemplateIndex] | None = None

    def _reset(self) -> None:
        self._index = None

    def pair(self, a: Probe, b: Probe) -> float:
        cos = np.array([float(np.dot(a[m], b[m])) for m in self.embedders])
        return float(self.fusion.combine(cos))

    def pair_matrix(self, a: list[Probe], b: list[Probe]) -> np.ndarray:
        if not a or not b:
            return np.zeros((len(a), len(b)))
        cos = np.stack([np.stack([p[m] for p in a]).astype(np.float32) @ np.stack([p[m] for p in b]).astype(
            np.float32).T for m in self.embedders], axis=-1)
        return self.fusion.combine(cos)

    def index(self) -> TemplateIndex:
        gallery = self._gallery()
        if self._index is None or self._index[:2] != (gallery.revision, self.templates):
            self._index = (gallery.revision, self.templates, TemplateIndex(
                self.embedders, self.fusion.combine, gallery.paired(self.embedders), self.templates))
        return self._index[2]

    def identity_score(self, probe: Probe, name: str) -> float | None:
        return self.index().score(probe, name)

    def identities(self) -> int:
        return self._gallery().identities

    def search(self, probe: Probe, k: int) -> list[Match]:
        return self.index().search(probe, k)
