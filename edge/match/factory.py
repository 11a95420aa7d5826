"""The scorer a configuration names: a score fusion (`models.fusion`) or a verification head (`models.verifier`)
over their embedders, else the cosine of the embedder (`models.embedder`); with a store, over its gallery."""

from __future__ import annotations

from edge.errors import ModelError
from edge.match.base import Scorer
from edge.match.cosine import CosineScorer
from edge.match.gallery import StoreGallery
from edge.match.thresholds import DEFAULT_FPIR
from edge.models.registry import Registry
from edge.store.db import Store


def make_scorer(registry: Registry, embedder: str | None = None, verifier: str = "", store: Store | None = None,
                fpir: float = DEFAULT_FPIR, fusion: str = "", templates: str = "max") -> Scorer:
    scorer = _make(registry, embedder, verifier, store, fpir, fusion)
    scorer.templates = templates
    return scorer


def _make(registry: Registry, embedder: str | None, verifier: str, store: Store | None, fpir: float,
          fusion: str) -> Scorer:
    if verifier and fusion:
        raise ModelError("models.verifier and models.fusion are two ways of scoring several embedders: "
                         "configure one of them")
    if fusion:
        from edge.match.fusion import FusionScorer

        m = registry.manifest(fusion)
        registry.verify(m)  # its members are the files its statistics were measured on
        members = tuple(m.extra.get("members", ()))
        return FusionScorer(m, StoreGallery(store, members) if store is not None else None, fpir)
    if verifier:
        from edge.match.head import HeadScorer
        from edge.verifier import resolve_head

        head = resolve_head(verifier, registry)
        return HeadScorer(head, StoreGallery(store, tuple(head.embedders)) if store is not None else None, fpir)
    embedder = embedder or registry.default_embedder()  # "" or None: what the manifests choose
    m = registry.embedder_manifest(embedder)
    return CosineScorer(m, StoreGallery(store, (m.name,)) if store is not None else None, fpir)
