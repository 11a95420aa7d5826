"""1:1 verification against a claimed identity and 1:N open-set identification against the gallery."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.errors import FacegateError
from edge.identify_threshold import threshold_for
from edge.models.manifest import Manifest
from edge.pipeline import FacePipeline
from edge.store.db import Store

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


def identify(matcher: Any, manifest: Manifest, probe: Any, top: int = 1, fpir: float = DEFAULT_FPIR
             ) -> dict[str, Any]:
    """Top candidates and the open-set answer: the best identity, or None ("not recognized").

    `matcher` is the embedder's Matcher (probe: a vector) or a verifier HeadMatcher (probe: {embedder: vector});
    `manifest` is the scorer's (the embedder's or the head's): its 1:N threshold for this gallery size applies.
    """
    threshold, details = threshold_for(manifest, max(1, matcher.identities), fpir)
    matches = matcher.search(probe, k=max(1, top))[0]
    best = matches[0] if matches and matches[0].score >= threshold else None
    return {"identity": best.name if best else None, "recognized": best is not None, "model": manifest.name,
            "score": round(matches[0].score, 4) if matches else None, "threshold": round(threshold, 4),
            "gallery_identities": matcher.identities,
            "gallery_templates": matcher.rows, "fpir_target": fpir, "threshold_extrapolated": details["extrapolated"],
            "candidates": [{"identity": c.name, "score": round(c.score, 4)} for c in matches]}


# -- with a trained verification head (edge/verifier.py) ----------------------------------------------------------
def head_templates(store: Store, head: Any, name: str | None = None) -> dict[str, dict[str, np.ndarray]]:
    """{identity: {embedder: (T, D)}} for every embedder the head needs, rows paired by enrolment order.

    Enrolment stores one template per image for every configured embedder, in the same order, so the k-th rows
    of an identity's embedders come from the same photo. An identity missing an embedder's templates (enrolled
    before the head was configured) cannot be scored by the head: that is an error naming the fix.
    """
    per: dict[str, dict[str, list[np.ndarray]]] = {e: {} for e in head.embedders}
    for e in head.embedders:
        for who, _, vec in store.templates(e, name):
            per[e].setdefault(who, []).append(vec)
    names = sorted(set().union(*(set(d) for d in per.values())))
    out = {}
    for who in names:
        counts = {e: len(per[e].get(who, [])) for e in head.embedders}
        if len(set(counts.values())) != 1:
            raise FacegateError(f"identity {who!r} has {counts} templates; the verifier {head.name!r} needs one per "
                                "embedder for every enrolment photo: re-enrol it with --verifier, or run "
                                "'facegate store reembed --embedder NAME'")
        out[who] = {e: np.stack(per[e][who]) for e in head.embedders}
    return out


def verify_with_head(store: Store, head: Any, name: str, probe: dict[str, np.ndarray]) -> Verification:
    """1:1 with the head: its best logit over the claimed identity's templates, at the head's verify threshold."""
    from edge.verifier import HeadScorer

    if store.identity(name) is None:
        raise FacegateError(f"unknown identity {name!r}")
    templates = head_templates(store, head, name).get(name)
    if templates is None:
        raise FacegateError(f"identity {name!r} has no templates of {', '.join(head.embedders)}; re-enrol it")
    score = HeadScorer(head).verify(probe, templates)
    t = head.manifest.threshold("verify").value
    return Verification(name, score, t, score >= t)


def head_matcher(store: Store, head: Any) -> Any:
    """The whole gallery in a HeadMatcher (exhaustive scoring: a head is not an inner product to index)."""
    from edge.verifier import HeadMatcher

    matcher = HeadMatcher(head)
    for who, vectors in head_templates(store, head).items():
        matcher.add(who, vectors)
    return matcher
