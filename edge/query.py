"""1:1 verification against a claimed identity and 1:N open-set identification against the gallery."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.errors import FacegateError
from edge.identify_threshold import threshold_for
from edge.pipeline import FacePipeline
from edge.store.db import Store
from edge.store.matcher import Matcher

DEFAULT_FPIR = 0.01


@dataclass(frozen=True)
class Verification:
    identity: str
    score: float
    threshold: float
    match: bool

    def to_dict(self) -> dict[str, Any]:
        return {"identity": self.identity, "score": round(self.score, 4), "threshold": self.threshold,
                "match": self.match}


def verify(store: Store, pipeline: FacePipeline, name: str, embedding: np.ndarray) -> Verification:
    """Best score of the probe against the claimed identity's templates, at the manifest's 1:1 threshold."""
    m = pipeline.embedder.manifest
    if store.identity(name) is None:
        raise FacegateError(f"unknown identity {name!r}")
    vecs = [v for _, _, v in store.templates(m.name, name)]
    if not vecs:
        raise FacegateError(f"identity {name!r} has no {m.name} template; re-enrol or run 'store reembed'")
    score = float(np.max(np.stack(vecs) @ embedding))
    t = m.threshold("verify").value
    return Verification(name, score, t, score >= t)


def identify(matcher: Matcher, pipeline: FacePipeline, embedding: np.ndarray, top: int = 1,
             fpir: float = DEFAULT_FPIR) -> dict[str, Any]:
    """Top candidates and the open-set answer: the best identity, or None ("not recognized")."""
    threshold, details = threshold_for(pipeline.embedder.manifest, max(1, matcher.rows), fpir)
    matches = matcher.search(embedding, k=max(1, top))[0]
    best = matches[0] if matches and matches[0].score >= threshold else None
    return {"identity": best.name if best else None, "recognized": best is not None,
            "score": round(matches[0].score, 4) if matches else None, "threshold": round(threshold, 4),
            "gallery_templates": matcher.rows, "fpir_target": fpir, "threshold_extrapolated": details["extrapolated"],
            "candidates": [{"identity": c.name, "score": round(c.score, 4)} for c in matches]}
