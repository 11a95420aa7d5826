"""`facegate demo`: the recognition path end to end on public-domain faces that installed packages ship.

Grace Hopper (matplotlib's sample data) against a rotated, rescaled copy of herself, and against Eileen
Collins (scikit-image's `astronaut`). Needs the [demo] extra; no camera, no data folder, no network.
"""

from __future__ import annotations

import json

import cv2
import numpy as np

from edge.errors import FacegateError
from edge.imageio import load_bgr
from edge.match.factory import make_scorer
from edge.pipeline import FacePipeline


def sample_faces() -> dict[str, np.ndarray]:
    try:
        from matplotlib import cbook
        from skimage import data
    except ImportError:
        raise FacegateError("the demo needs its sample images: pip install 'facegate[demo]'") from None
    hopper = load_bgr(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    h, w = hopper.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), 12, 0.8)
    return {"hopper": hopper,
            "hopper_rotated": cv2.warpAffine(hopper, m, (w, h), borderMode=cv2.BORDER_REPLICATE),
            "astronaut": np.ascontiguousarray(data.astronaut()[:, :, ::-1])}


def run(as_json: bool = False) -> int:
    faces = sample_faces()
    pipe = FacePipeline()
    scorer = make_scorer(pipe.registry, pipe.manifest.name)
    probes = {k: pipe.probe(img)[1] for k, img in faces.items()}
    cases = [("hopper", "hopper_rotated", True), ("hopper", "astronaut", False)]
    rows = []
    for a, b, expected in cases:
        r = scorer.compare(probes[a], probes[b])
        t = r.threshold
        rows.append({"a": a, "b": b, "score": round(r.score, 4), "threshold": t, "same_person": r.match,
                     "expected": expected})
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            verdict = "same person" if r["same_person"] else "different people"
            print(f"{r['a']} vs {r['b']}: {verdict} (score {r['score']:.4f}, threshold {t:.4f})")
    return 0 if all(r["same_person"] == r["expected"] for r in rows) else 1
