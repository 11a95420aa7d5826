"""One-shot enrolment: judge each image (one face, quality gate), guard against duplicates, store templates.

An identity's accepted images are stored in one transaction: all their templates, for every configured
embedder, or nothing. Refusals say why. Face crops are kept only when the store keeps crops.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from tqdm import tqdm

from edge.errors import FacegateError, ManyFacesError, NoFaceError
from edge.imageio import image_files, load_bgr
from edge.match import Scorer, accept
from edge.match.cosine import CosineScorer
from edge.match.gallery import StoreGallery
from edge.match.thresholds import DEFAULT_FPIR
from edge.pipeline import FacePipeline
from edge.store.db import Store, TemplateIn
from edge.vision.detect import Face, select_face
from edge.vision.quality import QualityGate, assess

DUPLICATE = "matches another enrolled identity"
MISMATCH = "does not match the identity"
ALREADY = "already enrolled"


@dataclass
class Judged:
    """One image's verdict for enrolment."""

    image: str
    accepted: bool = False
    reasons: list[str] = field(default_factory=list)
    quality: dict[str, float] | None = None
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    crop: bytes | None = None
    image_sha256: str | None = None  # of the decoded pixels: the same photo re-sent or re-run is recognised
    already: bool = False  # this photo is already enrolled for the identity (not stored again, not a refusal)
    aligned: np.ndarray | None = field(default=None, repr=False)  # the aligned crop the gate judged (a preview)

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "accepted": self.accepted, "already_enrolled": self.already,
                "reasons": self.reasons, "quality": self.quality}


def pixels_sha256(image: np.ndarray) -> str:
    """A photo's identity for idempotent enrolment: its decoded pixels (and shape), not its file bytes, so the
    same photo from a file, an MQTT message or a re-encoded copy with other metadata hashes the same."""
    h = hashlib.sha256(f"{image.shape}|{image.dtype}|".encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


LANDMARKS_KEY = "facegate-landmarks"


def face_crop_png(image: np.ndarray, face: Face, margin: float = 0.6) -> bytes:
    """The face with a margin of context, PNG-encoded, its five landmarks (crop coordinates) in a text chunk.

    Any embedder's alignment can be cut from it later with the landmarks the enrolment used, so a
    re-embedding reproduces what enrolling with that embedder would have given.
    """
    h, w = image.shape[:2]
    x1, y1, x2, y2 = face.box
    mx, my = (x2 - x1) * margin, (y2 - y1) * margin
    a, b = max(0, int(x1 - mx)), max(0, int(y1 - my))
    c, d = min(w, int(np.ceil(x2 + mx))), min(h, int(np.ceil(y2 + my)))
    info = PngInfo()
    info.add_text(LANDMARKS_KEY, json.dumps((face.landmarks - [a, b]).round(3).tolist()))
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image[b:d, a:c, ::-1])).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def read_face_crop(data: bytes) -> tuple[np.ndarray, np.ndarray | None]:
    """(BGR crop, landmarks or None) from `face_crop_png` bytes."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            rgb = np.asarray(im.convert("RGB"))
            text = im.info.get(LANDMARKS_KEY)
    except OSError:
        raise FacegateError("a kept face crop cannot be decoded") from None
    landmarks = np.asarray(json.loads(text), np.float64).reshape(5, 2) if text else None
    return np.ascontiguousarray(rgb[:, :, ::-1]), landmarks


class Enroller:
    def __init__(self, store: Store, pipeline: FacePipeline, gate: QualityGate | None = None,
                 policy: str = "single", scorer: Scorer | None = None, duplicate_fpir: float = DEFAULT_FPIR,
                 lock: AbstractContextManager[Any] | None = None) -> None:
        self.store = store
        # Held while the models and the gallery are used: a running daemon shares both with its frame loop.
        self.lock = lock if lock is not None else contextlib.nullcontext()
        self.pipeline = pipeline
        self.gate = gate or QualityGate()
        self.policy = policy
        # The guards decide through the one scorer (edge/match): by default the primary embedder's cosine over
        # this store's gallery.
        self.scorer = scorer or CosineScorer(pipeline.manifest, StoreGallery(store, (pipeline.manifest.name,)))
        self.duplicate_fpir = duplicate_fpir

    def judge(self, path: Path | str, image: np.ndarray | None = None) -> Judged:
        """Decode, detect, gate and embed one image; never raises for a bad image, it is refused instead."""
        j = Judged(image=str(path))
        try:
            img = load_bgr(path) if image is None else image
            with self.lock:
                faces = self.pipeline.detect(img)
            face = select_face(faces, img.shape, self.policy)
        except FacegateError as exc:
            msg = str(exc)
            msg = msg.split(": ", 1)[1] if msg.startswith(str(path)) else msg
            kind = {NoFaceError: "no face", ManyFacesError: "several faces"}.get(type(exc), "unreadable image")
            j.reasons.append(f"{kind}: {msg}" if not msg.startswith(kind) else msg)
            return j
        with self.lock:
            crop = self.pipeline.crops(img, [face])[0]
        j.aligned = crop
        q = assess(face, crop)
        j.quality = q.to_dict()
        j.reasons = self.gate.reasons(q)
        if j.reasons:
            return j
        with self.lock:
            j.embeddings = self.pipeline.embed_all(img, face)
        j.image_sha256 = pixels_sha256(img)
        if self.store.keep_crops:
            j.crop = face_crop_png(img, face)
        j.accepted = True
        return j

    def already_enrolled(self, name: str, judged: list[Judged]) -> None:
        """Photos already enrolled for `name` (same pixels) are set aside, not stored twice: re-running an
        enrolment is a no-op, and the gallery (and with it the 1:N threshold) does not grow with re-runs."""
        seen: set[str] = set()
        for j in judged:
            if not j.accepted or j.image_sha256 is None:
                continue
            if j.image_sha256 in seen or self.store.has_image(name, j.image_sha256):
                j.accepted, j.already = False, True
                j.reasons.append(f"{ALREADY}: this photo is already one of {name!r}'s templates")
            seen.add(j.image_sha256)

    def same_person(self, name: str, judged: list[Judged]) -> None:
        """Every photo stored under one name must be that person: a photo added to an existing identity must
        match it at the 1:1 threshold (Scorer.verify), and the photos of a new identity must match its first
        one (Scorer.compare). Otherwise `facegate enroll colin someone-else.jpg` would quietly let someone else
        in as colin."""
        accepted = [j for j in judged if j.accepted]
        enrolled = self.store.identity(name) is not None
        first = None if enrolled or len(accepted) < 2 else accepted.pop(0)
        if not enrolled and first is None:
            return
        for j in accepted:
            r = self.scorer.verify(j.embeddings, name) if enrolled else self.scorer.compare(first.embeddings,
                                                                                           j.embeddings)
            if not r.match:
                what = f"{name!r}'s enrolled photos" if enrolled else f"the first photo ({first.image})"
                j.accepted = False
                j.reasons.append(f"{MISMATCH}: it does not look like {what} (score {r.score:.3f} < 1:1 threshold "
                                 f"{r.threshold:.3f}); use --force if it is the same person")

    def guard(self, name: str, judged: list[Judged], force: bool = False) -> None:
        """The checks between judging photos and storing them: the same photo twice is a no-op (always), and
        unless `force`, every photo must be the named person and nobody else enrolled."""
        with self.lock:
            self.already_enrolled(name, judged)
            if not force:
                self.same_person(name, judged)
                self.duplicates(name, judged)

    def duplicates(self, name: str, judged: list[Judged]) -> None:
        """Refuse accepted images that a 1:N search (at the 1:N threshold for the current gallery: the 1:1 one
        would flag about K times more innocent newcomers) recognises as a *different* enrolled identity."""
        for j in judged:
            if not j.accepted:
                continue
            r = self.scorer.identify(j.embeddings, top=2, fpir=self.duplicate_fpir)
            other = next((c for c in r.candidates if c.name != name and accept(c.score, r.threshold)), None)
            if other is not None:
                j.accepted = False
                j.reasons.append(f"{DUPLICATE}: {other.name!r} (score {other.score:.3f} ≥ {r.threshold:.3f}); "
                                 "use --force if this is intended")

    def enroll(self, name: str, paths: list[Path], force: bool = False, command: str = "enroll",
               display_name: str | None = None) -> list[Judged]:
        judged = [self.judge(p) for p in paths]
        self.guard(name, judged, force)
        self.commit(name, judged, command, display_name)
        return judged

    def commit(self, name: str, judged: list[Judged], command: str, display_name: str | None = None) -> list[int]:
        templates = []
        for j in judged:
            if not j.accepted:
                continue
            for emb in self.pipeline.embedders:
                m = emb.manifest
                templates.append(TemplateIn(vector=j.embeddings[m.name], embedder=m.name, manifest_sha256=m.sha256,
                                            quality=j.quality or {},
                                            crop=j.crop if emb is self.pipeline.embedder else None,
                                            image_sha256=j.image_sha256))
        if not templates:
            return []
        return self.store.enroll(name, templates, command=command, display_name=display_name)


def person_folders(root: Path) -> list[tuple[str, list[Path]]]:
    """(identity name, image files) for each sub-folder of `root`, sorted."""
    if not root.is_dir():
        raise FacegateError(f"{root}: not a directory")
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        files = image_files(d, recursive=False)
        if files:
            out.append((d.name, files))
    if not out:
        raise FacegateError(f"{root}: no sub-folders with images (expected one folder per person)")
    return out


def enroll_dir(enroller: Enroller, root: Path, force: bool = False, limit: int | None = None,
               progress: Callable[[int, int], None] | None = None, command: str | None = None) -> dict[str, Any]:
    """Enrol every person folder; a summary of refusals by reason, and the rate excluding start-up.

    `progress(done, total)` is called after each image (the admin page's progress bar; the terminal gets tqdm).
    """
    people = person_folders(root)
    total = sum(len(f) for _, f in people)
    if limit is not None:  # the first `limit` images in folder order, for benchmarks on a subset
        kept, n = [], 0
        for name, files in people:
            if n >= limit:
                break
            kept.append((name, files[: limit - n]))
            n += len(kept[-1][1])
        people, total = kept, n
    refused: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    accepted = identities = already = 0
    start = time.perf_counter()  # models are already loaded and prepared: start-up is excluded
    done = 0
    if progress is not None:
        progress(0, total)
    with tqdm(total=total, desc="enrolling", unit="img", file=sys.stderr, disable=None) as bar:
        for name, files in people:
            judged = []
            for f in files:
                judged.append(enroller.judge(f))
                bar.update(1)
                done += 1
                if progress is not None:
                    progress(done, total)
            enroller.guard(name, judged, force)
            if enroller.commit(name, judged, command=command or f"enroll-dir {root}"):
                identities += 1
            for j in judged:
                accepted += j.accepted
                already += j.already
                if j.already:
                    continue  # not a refusal: a re-run finds its photos in the store
                for r in j.reasons:  # every reason starts with its kind, then ": " and the particulars
                    key = r.split(":")[0]
                    refused[key] = refused.get(key, 0) + 1
                if not j.accepted:
                    rows.append({"identity": name, **j.to_dict()})
    elapsed = time.perf_counter() - start
    return {"images": total, "accepted": accepted, "already_enrolled": already,
            "refused": total - accepted - already, "identities": identities,
            "refusal_reasons": dict(sorted(refused.items(), key=lambda kv: -kv[1])), "refusals": rows,
            "seconds": round(elapsed, 3), "images_per_s": round(total / elapsed, 2) if elapsed > 0 else None}
