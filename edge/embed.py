"""Embedder: aligned face crops → L2-normalised vectors, on any runtime, as the manifest describes."""

from __future__ import annotations

import numpy as np

from edge.models.manifest import Manifest
from edge.runtime.base import Runtime


def to_input(crops: np.ndarray, manifest: Manifest) -> np.ndarray:
    """BGR uint8 crops (N, H, W, 3) → the float tensor the graph expects (colour, normalisation, layout)."""
    x = crops.astype(np.float32)
    if manifest.input.colour == "RGB":
        x = x[..., ::-1]
    norm = manifest.normalisation
    if norm.mean != (0.0, 0.0, 0.0) or norm.std != (1.0, 1.0, 1.0):
        x = (x - np.asarray(norm.mean, np.float32)) / np.asarray(norm.std, np.float32)
    if manifest.input.layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x)


def l2_normalise(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


class Embedder:
    def __init__(self, runtime: Runtime, manifest: Manifest) -> None:
        self.runtime = runtime
        self.manifest = manifest
        self.dim = manifest.output_dim

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) BGR uint8 aligned crops → (N, D) float32 unit vectors."""
        if len(crops) == 0:
            return np.zeros((0, self.dim or 0), np.float32)
        n = len(crops)
        if self.manifest.flip_average:  # one batch: the crops, then their mirror images
            crops = np.concatenate([crops, crops[:, :, ::-1]])
        out = self.runtime.run({self.runtime.input_names[0]: to_input(crops, self.manifest)})[0]
        vectors = l2_normalise(out.reshape(len(crops), -1).astype(np.float32))
        if self.manifest.flip_average:
            vectors = l2_normalise(vectors[:n] + vectors[n:])
        return vectors
