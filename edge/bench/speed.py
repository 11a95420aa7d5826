"""`facegate bench speed`: decoded image → embedding, one thread, ours against the peers on the same images.

Peers, each timed per image over the same decoded images:
- naive: the shipped files used as a newcomer would — cv2.FaceDetectorYN at the image's native size, and
  one onnxruntime session on the SFace file with only its dangling inputs dropped (the least that lets
  onnxruntime load it), fed through the same alignment.
- face_recognition: the calls that library makes (dlib HOG detector, 5-point shape predictor, ResNet
  descriptor with one jitter), when dlib-bin and face-recognition-models are installed.
Every detector sees the image at its native size (dlib's HOG without up-sampling, the faster setting).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from edge.errors import ImageError
from edge.imageio import load_bgr, sample_images
from edge.models.registry import Registry
from edge.pipeline import FacePipeline
from edge.vision.align import align
from edge.vision.detect import select_face

Embed = Callable[[np.ndarray], np.ndarray | None]  # BGR image → embedding, or None when no face


def ours(pipeline: FacePipeline, policy: str) -> Embed:
    def run(img: np.ndarray) -> np.ndarray | None:
        faces = pipeline.detect(img)  # the rescue runs as configured (on LFW's portraits it never has to)
        if not faces:
            return None
        face = select_face(faces, img.shape, policy)
        template = pipeline.embedder.manifest.alignment
        return pipeline.embedder.embed(align(img, face.landmarks, template)[None])[0]

    return run


def naive(registry: Registry, policy: str, workdir: Path) -> Embed:
    import onnx
    import onnxruntime as ort

    from edge.models.prepare import drop_dangling_inputs

    det_m, emb_m = registry.manifest("yunet"), registry.manifest("sface")
    det_path, emb_path = registry.verify(det_m), registry.verify(emb_m)
    minimal = workdir / "sface_dangling_dropped.onnx"
    onnx.save(drop_dangling_inputs(onnx.load(str(emb_path))), str(minimal))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    session = ort.InferenceSession(str(minimal), so, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    detector = cv2.FaceDetectorYN.create(str(det_path), "", (320, 320), 0.6, 0.3, 5000)
    template = emb_m.alignment

    def run(img: np.ndarray) -> np.ndarray | None:
        detector.setInputSize((img.shape[1], img.shape[0]))
        _, rows = detector.detect(img)
        if rows is None or len(rows) == 0:
            return None
        from edge.vision.detect import Face

        faces = [Face(box=np.array([r[0], r[1], r[0] + r[2], r[1] + r[3]]), landmarks=r[4:14].reshape(5, 2),
                      score=float(r[14])) for r in rows]
        face = select_face(faces, img.shape, policy)
        crop = align(img, face.landmarks, template)
        x = crop[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32)
        v = session.run(None, {name: x})[0][0]
        return v / np.linalg.norm(v)

    return run


def face_recognition_peer() -> Embed | None:
    try:
        import dlib
        import face_recognition_models as frm
    except ImportError:
        return None
    detector = dlib.get_frontal_face_detector()
    shape = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    encoder = dlib.face_recognition_model_v1(frm.face_recognition_model_location())

    def run(img: np.ndarray) -> np.ndarray | None:
        rgb = np.ascontiguousarray(img[:, :, ::-1])
        rects = detector(rgb, 0)
        if len(rects) == 0:
            return None
        h, w = img.shape[:2]
        rect = min(rects, key=lambda r: (r.center().x - w / 2) ** 2 + (r.center().y - h / 2) ** 2)
        return np.asarray(encoder.compute_face_descriptor(rgb, shape(rgb, rect), 1))

    return run


def _time(fn: Embed, images: list[np.ndarray], label: str) -> tuple[float, int]:
    fn(images[0])  # warm-up: first-call allocations are not the steady state
    times, no_face = [], 0
    for img in tqdm(images, desc=label, unit="img", file=sys.stderr, disable=None):
        t = time.perf_counter()
        out = fn(img)
        times.append((time.perf_counter() - t) * 1e3)
        no_face += out is None
    return float(np.median(times)), no_face


def faceless_frames(images: list[np.ndarray], count: int = 30, size: tuple[int, int] = (640, 480),
                    block: int = 16, seed: int = 0) -> list[np.ndarray]:
    """Camera-sized frames with no face: real images enlarged to `size` and cut into `block`-px squares put back
    in random order (a face's structure gone, its colours and edges kept). What a door sees most of the time."""
    rng = np.random.default_rng(seed)
    w, h = size
    out = []
    for img in images[:count]:
        big = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
        tiles = big[:h - h % block, :w - w % block].reshape(h // block, block, w // block, block, 3).swapaxes(1, 2)
        tiles = tiles.reshape(-1, block, block, 3)[rng.permutation((h // block) * (w // block))]
        out.append(np.ascontiguousarray(tiles.reshape(h // block, w // block, block, block, 3).swapaxes(1, 2)
                                        .reshape(h - h % block, w - w % block, 3)))
    return out


def rescue_cost(pipeline: FacePipeline, frames: list[np.ndarray]) -> dict[str, Any]:
    """Detection cost on faceless frames without and with the rescue pass (edge/vision/rescue.py): what
    `models.rescue = "always"` would add to each empty frame at a door, and how many faces it would invent."""
    saved = pipeline.rescue_mode
    result: dict[str, Any] = {"frames": len(frames), "frame_size": list(frames[0].shape[1::-1]) if frames else None}
    try:
        for mode, key in (("off", "first_pass"), ("always", "with_rescue")):
            pipeline.rescue_mode = mode
            pipeline.detect(frames[0], frame=True)  # warm-up
            times, found = [], 0
            for f in tqdm(frames, desc=f"empty frames, rescue {mode}", unit="frame", file=sys.stderr, disable=None):
                t = time.perf_counter()
                found += bool(pipeline.detect(f, frame=True))
                times.append((time.perf_counter() - t) * 1e3)
            result[f"{key}_ms"] = round(float(np.median(times)), 3)
            result[f"{key}_frames_with_a_face"] = found
    finally:
        pipeline.rescue_mode = saved
    if result.get("first_pass_ms"):
        result["ratio"] = round(result["with_rescue_ms"] / result["first_pass_ms"], 2)
    return result


def _liveness_timing(registry: Registry, images: list[np.ndarray]) -> dict[str, Any] | None:
    """The passive liveness check's cost per face (both crops, both nets, fusion) and the challenge's tracking
    cost, when a liveness model is installed; None otherwise."""
    from edge.bench.liveness import time_passive, time_tracking
    from edge.liveness import installed

    if not installed(registry):
        return None
    return {**time_passive(images, threads=1, registry=registry), "challenge_tracking": time_tracking(images)}


def run(images_dir: Path, limit: int = 200, model: str = "sface", policy: str = "best",
        peers: bool = True, registry: Registry | None = None, rescue: str = "photos") -> dict[str, Any]:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cv2.setNumThreads(1)
    registry = registry or Registry()
    paths = sample_images(Path(images_dir), limit)
    images = []
    for p in paths:
        try:
            images.append(load_bgr(p))
        except ImageError:
            continue
    pipeline = FacePipeline(registry, embedder=model, threads=1, rescue=rescue)
    result: dict[str, Any] = {"images": len(images), "threads": 1, "model": model,
                              "detector_input": "native size, padded to the stride"}
    result["ours_ms"], ours_nf = _time(ours(pipeline, policy), images, "ours")
    no_face = {"ours": ours_nf}
    ratios: dict[str, float | None] = {}
    if peers:
        with tempfile.TemporaryDirectory() as tmp:
            result["naive_ms"], no_face["naive"] = _time(naive(registry, policy, Path(tmp)), images, "naive")
        ratios["naive"] = result["naive_ms"] / result["ours_ms"]
        fr = face_recognition_peer()
        if fr is None:
            result["face_recognition_ms"] = None
            result["face_recognition_note"] = "dlib-bin / face-recognition-models not installed (dev extra)"
            ratios["face_recognition"] = None
        else:
            result["face_recognition_ms"], no_face["face_recognition"] = _time(fr, images, "face_recognition")
            ratios["face_recognition"] = result["face_recognition_ms"] / result["ours_ms"]
    result["ratios"] = {k: (round(v, 2) if v is not None else None) for k, v in ratios.items()}
    result["rescue"] = pipeline.rescue_mode
    result["rescue_cost"] = rescue_cost(pipeline, faceless_frames(images))
    result["liveness"] = _liveness_timing(registry, images[:60])
    result["no_face"] = no_face
    for k in ("ours_ms", "naive_ms", "face_recognition_ms"):
        if result.get(k) is not None:
            result[k] = round(result[k], 3)
    return result
