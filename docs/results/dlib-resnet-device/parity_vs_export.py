"""The device graph (built-in dlib-resnet) against an exported fp32 bundle, on the same device-cut LFW crops.

    FACEGATE_STATE_DIR=… python3 docs/results/dlib-resnet-device/parity_vs_export.py IMAGES BUNDLE_DIR

200 faces from the images LFW View 2 names (compared only: nothing is chosen on them), cut by YuNet and the
manifest's template; raw descriptors of both graphs, then the flip-averaged unit vectors the device uses.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from edge.embed import Embedder, to_input
from edge.eval.lfw import images_named_by
from edge.imageio import load_bgr
from edge.models.registry import Registry
from edge.runtime import open_runtime
from edge.vision.align import align
from edge.vision.detect import make_detector, select_face


def main(images: Path, bundle: Path, n: int = 200) -> dict[str, object]:
    reg = Registry()
    device = Embedder(*reg.open("dlib-resnet"))
    exported = open_runtime("onnxruntime", bundle / "model.onnx")
    detector = make_detector(reg, "yunet")
    named = images_named_by([images.parent / "pairs.txt"])
    rels = [r for r in sorted(str(p.relative_to(images)) for p in images.glob("*/*.jpg")) if r in named]
    crops = []
    for k in np.random.default_rng(11).permutation(len(rels)):
        image = load_bgr(images / rels[int(k)])
        faces = detector.detect(image)
        if faces:
            landmarks = select_face(faces, image.shape, "central").landmarks
            crops.append(align(image, landmarks, device.manifest.alignment))
        if len(crops) == n:
            break
    batch = np.stack(crops)
    x = to_input(batch, device.manifest)
    a = device.runtime.run({device.runtime.input_names[0]: x})[0].astype(np.float64)
    b = exported.run({exported.input_names[0]: x})[0].astype(np.float64)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    flip = (device.embed(batch).astype(np.float64)
            * Embedder(exported, reg.manifest("dlib-resnet")).embed(batch)).sum(1)
    return {"crops": len(crops), "bundle": str(bundle), "min_cosine": float(cos.min()),
            "max_abs_diff": float(np.abs(a - b).max()), "flip_averaged_min_cosine": float(flip.min())}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2])), indent=2))
