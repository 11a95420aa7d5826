"""The scorer a configuration names: a verification head (`models.verifier`) over its embedders, else the
cosine of the embedder (`models.embedder`); with a store, over its gallery."""

from __future__ import annotations

from edge.errors import ModelError
from edge.match.base import Scorer
from edge.match.cosine import CosineScorer
from edge.match.gallery import StoreGallery
from edge.match.thresholds import DEFAULT_FPIR
from edge.models.registry import Registry
from edge.store.db import Store


def make_scorer(registry: Registry, embedder: str = "sface", verifier: str = "", store: Store | None = None,
                fpir: float = DEFAULT_FPIR) -> Scorer:
    if verifier:
        from edge.match.head import HeadScorer
        from edge.verifier import resolve_head

        head = resolve_head(verifier, registry)
        return HeadScorer(head, StoreGallery(store, tuple(head.embedders)) if store is not None else None, fpir)
    m = registry.manifest(embedder)
    if m.task != "embed":
        raise ModelError(f"model {embedder!r} is a {m.task!r} model, not an embedder")
    return CosineScorer(m, StoreGallery(store, (m.name,)) if store is not None else None, fpir)
