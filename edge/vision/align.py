"""Five-point similarity alignment: the one implementation every embedder and exporter uses."""

from __future__ import annotations

import cv2
import numpy as np

from edge.models.manifest import AlignmentTemplate


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src → dst, as a 2×3 matrix.

    Umeyama's optimum (1991) with the reflection excluded. In the plane it has a closed form: a rotation with
    a uniform scale is the matrix [[p, −q], [q, p]] for any (p, q), so the least-squares fit over centred
    points is linear — p = Σ s·d / Σ|s|², q = Σ s×d / Σ|s|² — with no SVD (51 instead of 122 µs a face;
    docs/results/int8.md § 12).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError("similarity_transform needs two matching (N, 2) point sets, N ≥ 2")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    norm = float((s * s).sum())
    if norm > 0:
        p = float((s * d).sum()) / norm
        q = float((s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum()) / norm
    else:  # every source point the same: no rotation or scale to find, only the shift
        p, q = 1.0, 0.0
    m = np.empty((2, 3))
    m[0, 0], m[0, 1], m[1, 0], m[1, 1] = p, -q, q, p
    m[:, 2] = mu_d - m[:, :2] @ mu_s
    return m


def align(image: np.ndarray, landmarks: np.ndarray, template: AlignmentTemplate) -> np.ndarray:
    """Warp `image` so the five `landmarks` land on the template's points; returns the template-sized crop."""
    m = similarity_transform(landmarks, np.asarray(template.points))
    w, h = template.size
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
