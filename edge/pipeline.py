"""The recognition path every command shares: image → faces → aligned crops → quality → embeddings.

Enrolment, the CLI, the daemon's engine, the benchmarks and the export stage all go through FacePipeline, so
a face is found, aligned, judged and embedded the same way everywhere. Work is batched: the faces of one image
are aligned per embedder (each with its own template) and each embedder runs once on all of them.

Threads (`models.threads`): with one embedder, its session and the detector's use them all (intra-op). With
several (a fusion) and at least one thread each, the embedders run side by side instead, each session — the
detector's too — on its share (threads // embedders): a fused face then costs the slower model's time, not the
sum, and no session holds idle threads that spin while the others work. Measured: docs/results/int8.md § 9.
0 (the configuration's default) = auto: one thread per embedder where the box has the cores, else one.
"""

from __future__ import annotations

import os
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from edge.embed import Embedder
from edge.models.registry import Registry
from edge.vision.align import align
from edge.vision.detect import Detector, Face, make_detector, select_face
from edge.vision.quality import Quality, QualityGate, assess
from edge.vision.rescue import RESCUE_MODES, Rescue


def _recent() -> deque[float]:
    return deque(maxlen=100_000)  # bounded: a daemon runs for months


@dataclass
class Timings:
    """Milliseconds per stage, accumulated over calls (a benchmark reads them)."""

    detect: deque[float] = field(default_factory=_recent)
    align: deque[float] = field(default_factory=_recent)
    quality: deque[float] = field(default_factory=_recent)
    embed: deque[float] = field(default_factory=_recent)


@dataclass
class FaceRecord:
    """One face of an image as the pipeline saw it."""

    face: Face
    crop: np.ndarray  # aligned with the primary embedder's template (what quality is judged on)
    quality: Quality | None = None
    reasons: list[str] = field(default_factory=list)  # why the quality gate refused it; empty: it passed
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)  # embedder → unit vector

    @property
    def passed(self) -> bool:
        return not self.reasons


def cores() -> int:
    """CPU cores this process may run on (its affinity, which a container or `taskset` narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def auto_threads(embedders: int) -> int:
    """`models.threads = 0`: one thread per embedder when the box has a core for each, so a fusion's members run
    side by side; otherwise one. Never more per session: intra-op threads on one small model were slower than
    one (docs/results/int8.md § 8), while members side by side cut a fused face to the slower model's time (§ 9)."""
    return embedders if embedders >= 2 and cores() >= embedders else 1


class FacePipeline:
    def __init__(self, registry: Registry | None = None, detector: str = "yunet", embedder: str | None = None,
                 threads: int = 1, min_face_px: float = 40.0, extra_embedders: Sequence[str] = (),
                 rescue: str = "photos") -> None:
        if rescue not in RESCUE_MODES:
            raise ValueError(f"rescue must be one of {RESCUE_MODES}, not {rescue!r}")
        self.registry = registry or Registry()
        embedder = embedder or self.registry.default_embedder()  # "" or None: what the manifests choose
        # The first embedder is the primary one (quality crops, track identity); the others are computed for
        # scorers that read several (a fusion, a head) and stored at enrolment so they can be used later.
        names = list(dict.fromkeys((embedder, *extra_embedders)))
        for name in names:  # a detector, a style net or a fusion named as the embedder: say so, before loading it
            self.registry.embedder_manifest(name)
        if threads < 0:
            raise ValueError(f"threads must be ≥ 0 (0 = auto), not {threads}")
        self.threads = threads or auto_threads(len(names))
        threads = self.threads
        # Several embedders and a thread for each: they run side by side, each on its share of the threads, and
        # the detector gets a share too: a session with more intra-op threads keeps them spinning after each
        # run, which would take a core from the embedders (measured: docs/results/int8.md § 9).
        self.parallel = len(names) >= 2 and threads >= len(names)
        share = threads // len(names) if self.parallel else threads
        self.detector: Detector = make_detector(self.registry, detector, threads=share, min_face_px=min_face_px)
        # When the first detection pass finds nothing: look again (edge/vision/rescue.py) on photos, on every
        # frame too, or never. `rescued` counts the faces' finds by step, for the benchmarks.
        self.rescue_mode = rescue
        self.rescue = Rescue(self.detector)
        self.rescued: Counter[str] = Counter()
        self.embedders = [Embedder(*self.registry.open(name, threads=share)) for name in names]
        self._pool: ThreadPoolExecutor | None = None
        self.embedder = self.embedders[0]
        self.by_name = {e.manifest.name: e for e in self.embedders}
        self.timings = Timings()

    @property
    def manifest(self):  # the primary embedder's manifest: its template, thresholds
        return self.embedder.manifest

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.by_name)

    # -- stages --------------------------------------------------------------------------------------------
    def detect(self, image: np.ndarray, frame: bool = False) -> list[Face]:
        """The faces of an image, best score first; when the first pass finds none it is sure of, the rescue pass
        looks again (edge/vision/rescue.py), unless `models.rescue` says otherwise for this kind of image (a
        camera `frame`, or a photo)."""
        t = time.perf_counter()
        faces = self.detector.detect(image)
        if (self.rescue_mode == "always" or (self.rescue_mode == "photos" and not frame)) \
                and self.rescue.needed(faces):
            faces, step = self.rescue.run(image, faces)
            self.rescued[step or "none"] += 1
        self.timings.detect.append((time.perf_counter() - t) * 1e3)
        return faces

    def crops(self, image: np.ndarray, faces: list[Face], embedder: Embedder | None = None) -> np.ndarray:
        t = time.perf_counter()
        template = (embedder or self.embedder).manifest.alignment
        assert template is not None, "an embedder manifest must carry an alignment template"
        out = np.stack([align(image, f.landmarks, template) for f in faces]) if faces else np.zeros(
            (0, template.size[1], template.size[0], 3), np.uint8)
        self.timings.align.append((time.perf_counter() - t) * 1e3)
        return out

    def embed(self, image: np.ndarray, faces: list[Face], embedders: Sequence[str] | None = None,
              primary_crops: np.ndarray | None = None) -> list[dict[str, np.ndarray]]:
        """Each face's embeddings under each named embedder (default: all): one batched call per embedder, each
        embedder's crops aligned with its own template (`primary_crops` reuses the primary's, already cut)."""
        everyone = list(range(len(faces)))
        return self.embed_jobs(image, faces, {n: everyone for n in (embedders if embedders is not None
                                                                    else self.names)}, primary_crops)

    def embed_jobs(self, image: np.ndarray, faces: list[Face], jobs: Mapping[str, Sequence[int]],
                   primary_crops: np.ndarray | None = None) -> list[dict[str, np.ndarray]]:
        """Embeddings of `faces[i]` under each job's embedder for the i it lists (embedder → face indices): one
        batched call per embedder, side by side when the pipeline has a thread for each (`parallel`).
        `primary_crops[i]` is faces[i] already cut with the primary's template."""
        out: list[dict[str, np.ndarray]] = [{} for _ in faces]
        work = [(name, list(idx)) for name, idx in jobs.items() if len(idx)]
        if not work:
            return out

        def run(name: str, idx: list[int]) -> np.ndarray:
            emb = self.by_name[name]
            if primary_crops is not None and emb.manifest.alignment == self.embedder.manifest.alignment:
                crops = primary_crops[idx]
            else:
                crops = self.crops(image, [faces[i] for i in idx], emb)
            t = time.perf_counter()
            vectors = emb.embed(crops)
            self.timings.embed.append((time.perf_counter() - t) * 1e3)
            return vectors

        if self.parallel and len(work) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(len(self.embedders), thread_name_prefix="embed")
            results = list(self._pool.map(lambda w: run(*w), work))
        else:
            results = [run(*w) for w in work]
        for (name, idx), vectors in zip(work, results, strict=True):
            for i, v in zip(idx, vectors, strict=True):
                out[i][name] = v
        return out

    def analyse(self, image: np.ndarray, gate: QualityGate | None = None, embedders: Sequence[str] | None = None,
                faces: list[Face] | None = None) -> list[FaceRecord]:
        """Detect (unless `faces` are given), align, judge quality (when a gate is given) and embed the faces
        that pass, batched; every face comes back, a refused one with its reasons and no embeddings."""
        faces = self.detect(image) if faces is None else faces
        crops = self.crops(image, faces)
        records = [FaceRecord(f, c) for f, c in zip(faces, crops, strict=True)]
        if gate is not None:
            t = time.perf_counter()
            for r in records:
                r.quality = assess(r.face, r.crop)
                r.reasons = gate.reasons(r.quality)
            self.timings.quality.append((time.perf_counter() - t) * 1e3)
        passed = [i for i, r in enumerate(records) if r.passed]
        if passed:
            vectors = self.embed(image, [records[i].face for i in passed], embedders,
                                 primary_crops=crops[passed])
            for i, v in zip(passed, vectors, strict=True):
                records[i].embeddings = v
        return records

    # -- one face --------------------------------------------------------------------------------------------
    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        out = self.embedder.embed(crops)
        self.timings.embed.append((time.perf_counter() - t) * 1e3)
        return out

    def embed_faces(self, image: np.ndarray, faces: list[Face]) -> np.ndarray:
        return self.embed_crops(self.crops(image, faces))

    def embed_all(self, image: np.ndarray, face: Face) -> dict[str, np.ndarray]:
        """The face's embedding under every configured embedder, each aligned with its own template."""
        return self.embed(image, [face])[0]

    def probe(self, image: np.ndarray, policy: str = "best") -> tuple[Face, dict[str, np.ndarray]]:
        """The chosen face of an image and its probe (embeddings under every configured embedder)."""
        face = select_face(self.detect(image), image.shape, policy)
        return face, self.embed_all(image, face)

    def embed_one(self, image: np.ndarray, policy: str = "best") -> tuple[Face, np.ndarray]:
        """The chosen face of an image and its primary embedding; NoFaceError / ManyFacesError otherwise."""
        face = select_face(self.detect(image), image.shape, policy)
        return face, self.embed_faces(image, [face])[0]
