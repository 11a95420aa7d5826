"""The 1:N operating threshold for a gallery of K templates at a target false-positive identification rate.

An unknown probe is falsely identified when any of the K templates scores above the threshold, so with
independent impostor scores FPIR(t) = 1 − (1 − FAR(t))^K ≈ K·FAR(t): a 1:1 threshold lets FPIR grow about K
times. We solve for the FAR that gives the target FPIR at this K and read the threshold off the impostor
score tail stored in the manifest (calibrated on identities disjoint from any evaluation). Recomputed
whenever the gallery size changes.
"""

from __future__ import annotations

import math

import numpy as np

from edge.errors import ModelError
from edge.models.manifest import Manifest


def far_for(fpir: float, gallery_size: int) -> float:
    k = max(1, int(gallery_size))
    return 1.0 - (1.0 - fpir) ** (1.0 / k)


def threshold_for(manifest: Manifest, gallery_size: int, fpir: float) -> tuple[float, dict[str, float | bool]]:
    """(threshold, details) for `gallery_size` templates at target `fpir`."""
    t = manifest.threshold("identify")
    if not t.tail:
        raise ModelError(f"model {manifest.name!r}: the 'identify' threshold has no impostor tail; "
                         "run 'facegate export calibrate' for it")
    far = far_for(fpir, gallery_size)
    fars = np.log10([p[0] for p in t.tail])[::-1]  # ascending
    scores = np.array([p[1] for p in t.tail])[::-1]
    x = math.log10(far)
    extrapolated = x < fars[0] or x > fars[-1]
    if x < fars[0]:  # beyond what calibration resolved: extend the last segment's slope (log-linear)
        slope = (scores[1] - scores[0]) / (fars[1] - fars[0])
        value = float(scores[0] + slope * (x - fars[0]))
    else:
        value = float(np.interp(x, fars, scores))
    return value, {"far": far, "gallery_size": gallery_size, "fpir_target": fpir, "extrapolated": bool(extrapolated)}
