"""YuNet through the device's int8 quantiser (edge/models/int8.py): measured and rejected (int8.md § 11).

Ranges: 99.999th percentiles over 160 LFW photos that pairs.txt does not name, as the detector sees them
(250² padded to 256²), and 80 of them pasted into 640×480 frames at 0.6–1.6× and shrunk to 320 wide (the
door's detection size). Then both graphs are timed on one thread, interleaved, at three input sizes.
Run from the repository root: FACEGATE_DATA=../shared python docs/results/yunet-int8/experiment.py
"""

import collections
import copy
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort

from edge.eval.lfw import images_named_by
from edge.models.int8 import quantize, tensors_to_range
from edge.models.prepare import prepare_file
from edge.models.registry import Registry
from export.int8_ranges import measure_ranges

STRIDE = 32


def blob(img: np.ndarray, scale: float) -> np.ndarray:
    h, w = img.shape[:2]
    small = img if scale == 1.0 else cv2.resize(img, (round(w * scale), round(h * scale)),
                                                interpolation=cv2.INTER_AREA)
    sh, sw = small.shape[:2]
    b = np.zeros((3, -(-sh // STRIDE) * STRIDE, -(-sw // STRIDE) * STRIDE), np.float32)
    b[:, :sh, :sw] = small.transpose(2, 0, 1)
    return b


def session(model: onnx.ModelProto, optimised: str | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if optimised:
        so.optimized_model_filepath = optimised
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def main() -> None:
    lfw = Path(os.environ.get("FACEGATE_DATA", "../shared")) / "lfw"
    registry = Registry()
    m = registry.manifest("yunet")
    graph = prepare_file(registry.verify(m), list(m.prepare))
    names = tensors_to_range(graph)
    held = images_named_by([lfw / "pairs.txt"])
    photos = sorted(p for p in (lfw / "images").rglob("*.jpg") if f"{p.parent.name}/{p.name}" not in held)
    rng = np.random.default_rng(1)
    pick = [photos[i] for i in rng.choice(len(photos), 240, replace=False)]
    calib = [blob(cv2.imread(str(p)), 1.0) for p in pick[:160]]
    for p in pick[160:]:
        face = cv2.imread(str(p))
        frame = np.full((480, 640, 3), int(rng.integers(30, 200)), np.uint8)
        face = cv2.resize(face, None, fx=rng.uniform(0.6, 1.6), fy=rng.uniform(0.6, 1.6))[:480, :640]
        y, x = int(rng.integers(0, 481 - face.shape[0])), int(rng.integers(0, 641 - face.shape[1]))
        frame[y:y + face.shape[0], x:x + face.shape[1]] = face
        calib.append(blob(frame, 0.5))
    int8 = quantize(copy.deepcopy(graph), measure_ranges(graph, calib, names))
    with tempfile.TemporaryDirectory() as tmp:
        fp, q = session(graph), session(int8, str(Path(tmp) / "opt.onnx"))
        ops = collections.Counter(n.op_type for n in onnx.load(str(Path(tmp) / "opt.onnx")).graph.node)
    print(f"{len(names)} ranged tensors; the int8 graph as onnxruntime runs it: {dict(ops)}")
    feed = fp.get_inputs()[0].name
    for shape in ((256, 256), (256, 320), (480, 640)):
        x = np.random.default_rng(0).uniform(0, 255, (1, 3, *shape)).astype(np.float32)
        times: dict[str, list[float]] = {"fp32": [], "int8": []}
        for _ in range(60):
            for label, s in (("fp32", fp), ("int8", q)):
                t = time.perf_counter()
                s.run(None, {feed: x})
                times[label].append(time.perf_counter() - t)
        print(shape, {k: round(float(np.median(v)) * 1e3, 2) for k, v in times.items()}, "ms (median of 60)")


if __name__ == "__main__":
    main()
