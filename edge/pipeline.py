"""The recognition path every command shares: image → faces → aligned crops → embeddings."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from edge.embed import Embedder
from edge.models.registry import Registry
from edge.vision.align import align
from edge.vision.detect import Detector, Face, select_face


@dataclass
class Timings:
    """Milliseconds per stage, accumulated over calls (a benchmark reads the lists)."""

    detect: list[float] = field(default_factory=list)
    align: list[float] = field(default_factory=list)
    embed: list[float] = field(default_factory=list)


class FacePipeline:
    def __init__(self, registry: Registry | None = None, detector: str = "yunet", embedder: str = "sface",
                 threads: int = 1, min_face_px: float = 40.0) -> None:
        self.registry = registry or Registry()
        det_rt, det_m = self.registry.open(detector, threads=threads)
        emb_rt, emb_m = self.registry.open(embedder, threads=threads)
        self.detector = Detector(det_rt, det_m, min_face_px=min_face_px)
        self.embedder = Embedder(emb_rt, emb_m)
        self.timings = Timings()

    @property
    def manifest(self):  # the embedder's manifest: thresholds and template live there
        return self.embedder.manifest

    def detect(self, image: np.ndarray) -> list[Face]:
        t = time.perf_counter()
        faces = self.detector.detect(image)
        self.timings.detect.append((time.perf_counter() - t) * 1e3)
        return faces

    def crops(self, image: np.ndarray, faces: list[Face]) -> np.ndarray:
        t = time.perf_counter()
        template = self.embedder.manifest.alignment
        assert template is not None, "an embedder manifest must carry an alignment template"
        out = np.stack([align(image, f.landmarks, template) for f in faces]) if faces else np.zeros(
            (0, template.size[1], template.size[0], 3), np.uint8)
        self.timings.align.append((time.perf_counter() - t) * 1e3)
        return out

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        out = self.embedder.embed(crops)
        self.timings.embed.append((time.perf_counter() - t) * 1e3)
        return out

    def embed_faces(self, image: np.ndarray, faces: list[Face]) -> np.ndarray:
        return self.embed_crops(self.crops(image, faces))

    def embed_one(self, image: np.ndarray, policy: str = "largest") -> tuple[Face, np.ndarray]:
        """The chosen face of an image and its embedding; NoFaceError / ManyFacesError otherwise."""
        face = select_face(self.detect(image), image.shape, policy)
        return face, self.embed_faces(image, [face])[0]
