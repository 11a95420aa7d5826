"""Operating thresholds, all read from the scorer's manifest (calibrated on data disjoint from any test).

1:1 ("verify"): the manifest's threshold at its calibrated FAR.

1:N ("identify") for a gallery of K identities at a target false-positive identification rate: an unknown probe
is falsely identified when any of the K identities scores above the threshold, so with independent impostor
scores FPIR(t) = 1 − (1 − FAR(t))^K ≈ K·FAR(t); a 1:1 threshold would let FPIR grow about K times. We solve for
the FAR that gives the target FPIR at this K and read the threshold off the impostor score tail in the manifest.
K counts identities, not templates: several photos of one person are one candidate, and a photo enrolled twice
must not make the threshold stricter.

A badge claim only ever adds a condition: it is held to the stricter of the two.
"""

from __future__ import annotations

import math

import numpy as np

from edge.errors import ModelError
from edge.models.manifest import Manifest

DEFAULT_FPIR = 0.01


def far_for(fpir: float, gallery_size: int) -> float:
    k = max(1, int(gallery_size))
    return 1.0 - (1.0 - fpir) ** (1.0 / k)


def verify_threshold(manifest: Manifest) -> float:
    return manifest.threshold("verify").value


def identify_threshold(manifest: Manifest, gallery_size: int, fpir: float = DEFAULT_FPIR
                       ) -> tuple[float, dict[str, float | bool]]:
    """(threshold, details) for a gallery of `gallery_size` identities at target `fpir`."""
    t = manifest.threshold("identify")
    if not t.tail:
        raise ModelError(f"model {manifest.name!r}: the 'identify' threshold has no impostor tail; "
                         "run 'facegate calibrate embedder' for it")
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


def claim_threshold(manifest: Manifest, gallery_size: int, fpir: float = DEFAULT_FPIR) -> float:
    """A claim is decided at no less than the 1:N threshold of the current gallery (at K = 25 that is already
    above the 1:1 one), so a badge never makes a face grantable that would be "unknown" without it."""
    return max(verify_threshold(manifest), identify_threshold(manifest, gallery_size, fpir)[0])
