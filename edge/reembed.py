"""`facegate store reembed`: compute templates for an embedder from the face crops the store kept."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from tqdm import tqdm

from edge.enroll import read_face_crop
from edge.errors import FacegateError
from edge.pipeline import FacePipeline
from edge.store.db import Store, TemplateIn
from edge.vision.detect import Face, select_face
from edge.vision.quality import assess


def kept_crops(store: Store, name: str, embedders: list[str]) -> list[bytes]:
    """The identity's kept crops: they sit beside the templates of the embedder that was primary at enrolment."""
    error: FacegateError | None = None
    for embedder in embedders:
        try:
            return [data for _, data in store.crops(name, embedder)]
        except FacegateError as exc:
            error = exc
    raise error or FacegateError(f"re-enrol needed: {name!r} has no templates")


def _kept(store: Store, name: str, embedders: list[str]) -> tuple[str, list[tuple[int, bytes]]]:
    """(the embedder whose templates hold the kept crops, [(template id, crop)])."""
    error: FacegateError | None = None
    for embedder in embedders:
        try:
            return embedder, store.crops(name, embedder)
        except FacegateError as exc:
            error = exc
    raise error or FacegateError(f"re-enrol needed: {name!r} has no templates")


def reembed(store: Store, pipeline: FacePipeline, embedder: str) -> dict[str, Any]:
    """Every identity's `embedder` templates become those computed from its kept crops (one transaction).

    Refused with "re-enrol needed" when any identity's crops were not kept: a partial re-embedding would
    leave some identities unmatchable by the new embedder without saying so.
    """
    emb = next((e for e in pipeline.embedders if e.manifest.name == embedder), None)
    if emb is None:
        raise FacegateError(f"embedder {embedder!r} is not loaded")
    m = emb.manifest
    items: dict[str, list[TemplateIn]] = {}
    identities = store.identities()
    for ident in tqdm(identities, desc="re-embedding", unit="identity", file=sys.stderr, disable=None):
        holder, kept = _kept(store, ident.name, list(ident.templates))
        photos = store.image_hashes(ident.name)
        templates = []
        for tid, data in kept:
            img, landmarks = read_face_crop(data)
            if landmarks is not None:  # align exactly as at enrolment, not on a re-detection of the crop
                face = Face(box=np.r_[landmarks.min(0), landmarks.max(0)], landmarks=landmarks, score=1.0)
            else:
                face = select_face(pipeline.detect(img), img.shape, "largest")
            crop = pipeline.crops(img, [face], emb)
            # The crop stays with the templates that held it (re-embedding that embedder replaces them: the crop
            # moves to its new template in the same transaction, never dropped), and the photo hash comes along,
            # so enrolling the same photo again stays a no-op.
            templates.append(TemplateIn(vector=emb.embed(crop)[0], embedder=m.name, manifest_sha256=m.sha256,
                                        quality=assess(face, crop[0]).to_dict(),
                                        crop=data if holder == m.name else None, image_sha256=photos.get(tid)))
        items[ident.name] = templates
    store.replace_templates(m.name, items, command=f"store reembed --embedder {embedder}")
    return {"embedder": m.name, "identities": len(items), "templates": sum(len(v) for v in items.values())}
