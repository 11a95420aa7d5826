"""YuNet face detection, decoded in numpy from the graph's raw outputs (the "yunet" manifest).

The graph returns, per stride s ∈ {8, 16, 32} and per anchor cell (row r, column c), a class and an
objectness probability, a box (dx, dy, log w, log h) and five landmarks (dx, dy) in units of s.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from edge.models.manifest import Manifest
from edge.runtime.base import Runtime
from edge.vision.detect import Face, detection_scale


@lru_cache(maxsize=16)
def _anchors(input_hw: tuple[int, int], strides: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Every anchor's cell (column, row) and stride, strides in order: fixed for an input size, so made once.
    (float64 cells and float32 strides give the arithmetic the precision of the per-stride decoding it replaced:
    the same boxes to the last bit.)"""
    h, w = input_hw
    cells, steps = [], []
    for s in strides:
        r, c = np.divmod(np.arange((h // s) * (w // s)), w // s)
        cells.append(np.stack([c, r], axis=1).astype(np.float64))
        steps.append(np.full(len(r), s, np.float32))
    cells_all, steps_all = np.concatenate(cells), np.concatenate(steps)
    cells_all.flags.writeable = steps_all.flags.writeable = False  # shared by every call: read-only
    return cells_all, steps_all


def decode(outputs: dict[str, np.ndarray], input_hw: tuple[int, int], strides: tuple[int, ...],
           score_threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw YuNet outputs → (boxes (N,4) xyxy, landmarks (N,5,2), scores (N,)) above the threshold, in anchor
    order (stride by stride, row by row).

    All strides are scored in one pass and only the anchors that pass are decoded: a photo has a handful of
    them among ~1,300 (256²), and per-stride numpy calls cost more than the arithmetic.
    """
    cls = np.concatenate([outputs[f"cls_{s}"].reshape(-1) for s in strides])
    obj = np.concatenate([outputs[f"obj_{s}"].reshape(-1) for s in strides])
    score = np.sqrt(np.clip(cls, 0.0, 1.0) * np.clip(obj, 0.0, 1.0))
    keep = np.flatnonzero(score >= score_threshold)
    if keep.size == 0:
        return np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32), np.zeros(0, np.float32)
    cells, steps = _anchors(tuple(input_hw), tuple(strides))
    box = np.concatenate([outputs[f"bbox_{s}"].reshape(-1, 4) for s in strides])[keep]
    kps = np.concatenate([outputs[f"kps_{s}"].reshape(-1, 10) for s in strides])[keep].reshape(-1, 5, 2)
    cell, step = cells[keep], steps[keep][:, None]
    centre = (cell + box[:, :2]) * step
    half = np.exp(box[:, 2:]) * step / 2
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    return boxes, (kps + cell[:, None, :]) * step[:, :, None], score[keep]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, top_k: int) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, best first."""
    order = np.argsort(-scores, kind="stable")[:top_k]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        wh = np.clip(np.minimum(boxes[i, 2:], boxes[rest, 2:]) - np.maximum(boxes[i, :2], boxes[rest, :2]), 0, None)
        inter = wh[:, 0] * wh[:, 1]
        order = rest[inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


class YuNet:
    """YuNet on any runtime. Settings not in the manifest come from the caller's configuration."""

    def __init__(self, runtime: Runtime, manifest: Manifest, min_face_px: float = 40.0,
                 score_threshold: float | None = None) -> None:
        self.runtime = runtime
        self.manifest = manifest
        ex = manifest.extra
        self.strides = tuple(int(s) for s in ex.get("strides", (8, 16, 32)))
        self.score_threshold = float(score_threshold if score_threshold is not None
                                     else ex.get("score_threshold", 0.6))
        self.nms_threshold = float(ex.get("nms_threshold", 0.3))
        self.top_k = int(ex.get("top_k", 5000))
        self.detector_min_px = float(ex.get("min_face_px", 20))
        self.min_side = int(ex.get("min_side", 320))
        self.min_face_px = float(min_face_px)
        # The rescue pass (edge/vision/rescue.py): faces scoring under sure_score are checked against the image
        # turned (YuNet misreads turned faces as upright ones at up to ~0.88), and its last look goes below the
        # usual threshold, never below the size the detector finds reliably.
        self.sure_score = float(ex.get("sure_score", self.score_threshold))
        self.rescue_score_threshold = float(ex.get("rescue_score_threshold", self.score_threshold))
        self.stride = manifest.input.stride

    def detect(self, image: np.ndarray) -> list[Face]:
        """All faces in a BGR uint8 image, best score first, at least `min_face_px` wide."""
        h, w = image.shape[:2]
        scale = detection_scale(w, h, self.min_face_px, self.detector_min_px, self.min_side)
        faces = self._run(image, scale, self.score_threshold)
        return [f for f in faces if max(f.width, f.height) >= self.min_face_px]

    def detect_full(self, image: np.ndarray, score_threshold: float) -> list[Face]:
        """Every face at the image's own resolution scoring at least `score_threshold`, whatever its size (the
        rescue pass, edge/vision/rescue.py, applies its own floor)."""
        return self._run(image, 1.0, score_threshold)

    def _run(self, image: np.ndarray, scale: float, score_threshold: float) -> list[Face]:
        h, w = image.shape[:2]
        small = image if scale == 1.0 else cv2.resize(
            image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        sh, sw = small.shape[:2]
        ph, pw = -(-sh // self.stride) * self.stride, -(-sw // self.stride) * self.stride
        blob = np.zeros((1, 3, ph, pw), np.float32)  # BGR 0–255, zero padding at right and bottom
        for c, plane in enumerate(cv2.split(small)):  # plane by plane: half the time of one strided transpose
            blob[0, c, :sh, :sw] = plane
        raw = dict(zip(self.runtime.output_names, self.runtime.run({self.runtime.input_names[0]: blob}),
                       strict=True))
        boxes, kps, scores = decode(raw, (ph, pw), self.strides, score_threshold)
        keep = nms(boxes, scores, self.nms_threshold, self.top_k)
        inv = 1.0 / scale
        return [Face(box=boxes[i] * inv, landmarks=kps[i] * inv, score=float(scores[i])) for i in keep]


def create(runtime: Runtime, manifest: Manifest, min_face_px: float) -> YuNet:
    return YuNet(runtime, manifest, min_face_px=min_face_px)
