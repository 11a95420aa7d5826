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
                 threads: int = 1, min_face_px: float = 40.0, extra_embedders: tuple[str, ...] = ()) -> None:
        self.registry = registry or Registry()
        det_rt, det_m = self.registry.open(detector, threads=threads)
        self.detector = Detector(det_rt, det_m, min_face_px=min_face_px)
        # The first embedder is the primary one (queries, thresholds); the others get templates at enrolment
        # so a second embedder or a fusion head can be used later without re-enrolling.
        self.embedders = [Embedder(*self.registry.open(name, threads=threads))
                          for name in dict.fromkeys((embedder, *extra_embedders))]
        self.embedder = self.embedders[0]
        self.timings = Timings()

    @property
    def manifest(self):  # the embedder's manifest: thresholds and template live there
        return self.embedder.manifest

    def detect(self, image: np.ndarray) -> list[Face]:
        t = time.perf_counter()
        faces = self.detector.detect(image)
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

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        out = self.embedder.embed(crops)
        self.timings.embed.append((time.perf_counter() - t) * 1e3)
        return out

    def embed_faces(self, image: np.ndarray, faces: list[Face]) -> np.ndarray:
        return self.embed_crops(self.crops(image, faces))

    def embed_all(self, image: np.ndarray, face: Face) -> dict[str, np.ndarray]:
        """The face's embedding under every configured embedder, each aligned with its own template."""
        out = {}
        for emb in self.embedders:
            crop = self.crops(image, [face], emb)
            t = time.perf_counter()
            out[emb.manifest.name] = emb.embed(crop)[0]
            self.timings.embed.append((time.perf_counter() - t) * 1e3)
        return out

    def embed_one(self, image: np.ndarray, policy: str = "largest") -> tuple[Face, np.ndarray]:
        """The chosen face of an image and its embedding; NoFaceError / ManyFacesError otherwise."""
        face = select_face(self.detect(image), image.shape, policy)
        return face, self.embed_faces(image, [face])[0]
