"""`facegate bench speed`: milliseconds per image by stage, ours against two peers on the same images, one thread.

Workload: LFW photos (their files' bytes), or with `frames` synthetic door frames of that size
(edge/bench/frames.py). Each image is decoded once (the `decode` stage), then the three pipelines run on the
decoded image, interleaved image by image with the order rotating, so a change of load on a shared machine
hits all three alike; ratios come from one run.

Ours, per image: `detect` (YuNet at the input size its policy picks: the smallest that keeps `min_face_px`),
`align` and `embed` per embedder (each with its own template), `liveness` per face when a liveness model is
installed. `ours_ms` is detect + align + embed of the primary embedder: decoded image → one embedding, what
the peers do. With `fusion` embedders (SFace and dlib-resnet scored together), `ours_fused_ms` adds theirs:
the cost of running both embedders per face, the fused setting's price whatever the head does with them.
Peers, each timed the same way:
- naive: the shipped files used as a newcomer would — cv2.FaceDetectorYN at the image's native size, and
  one onnxruntime session on the SFace file with only its dangling inputs dropped (the least that lets
  onnxruntime load it), fed through the same alignment.
- face_recognition: the calls that library makes (dlib HOG detector, 5-point shape predictor, ResNet
  descriptor with one jitter), when dlib-bin and face-recognition-models are installed. Its HOG runs at the
  image's native size without up-sampling (the faster setting).
Medians over images of wall-clock times; the calling thread's CPU time is reported beside them (on a shared
machine the wall clock also counts other processes).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from edge.bench.host import HostWatch, machine
from edge.errors import FacegateError, ImageError
from edge.imageio import sample_images
from edge.models.registry import Registry
from edge.pipeline import FacePipeline
from edge.vision.align import align
from edge.vision.detect import Face, select_face

Embed = Callable[[np.ndarray], np.ndarray | None]  # BGR image → embedding, or None when no face


class Clock:
    """Wall and thread-CPU milliseconds per named stage, one record per image."""

    def __init__(self) -> None:
        self.records: list[dict[str, tuple[float, float]]] = []

    def image(self) -> None:
        self.records.append({})

    def timed(self, stage: str, fn: Callable[[], Any]) -> Any:
        t, c = time.perf_counter(), time.thread_time()
        out = fn()
        self.records[-1][stage] = ((time.perf_counter() - t) * 1e3, (time.thread_time() - c) * 1e3)
        return out

    def stage(self, name: str, cpu: bool = False) -> list[float]:
        return [r[name][cpu] for r in self.records if name in r]

    def totals(self, stages: Sequence[str], cpu: bool = False) -> list[float]:
        """Per image that has every one of `stages`, their sum."""
        return [sum(r[k][cpu] for k in stages) for r in self.records if all(k in r for k in stages)]


class Ours:
    """Our pipeline by stage: detect, then align + embed for each embedder, then liveness."""

    def __init__(self, pipeline: FacePipeline, policy: str, liveness: Any = None, native: Any = None) -> None:
        self.pipeline = pipeline
        self.policy = policy
        self.liveness = liveness
        self.native = native  # the same detector at the frame's native size, for the input-size policy's record
        self.found = {"policy": 0, "native": 0}
        self.frames = False  # the workload is camera frames (the rescue's "photos" mode spares them)

    def run(self, img: np.ndarray, clock: Clock) -> bool:
        if self.native is not None:
            self.found["native"] += bool(clock.timed("detect_native", lambda: self.native.detect(img)))
        # Through the pipeline, so the rescue pass runs as configured (a door frame is a frame: spared by default;
        # an LFW portrait never needs it).
        faces = clock.timed("detect", lambda: self.pipeline.detect(img, frame=self.frames))
        self.found["policy"] += bool(faces)
        if not faces:
            return False
        face = select_face(faces, img.shape, self.policy)
        for emb in self.pipeline.embedders:
            name = emb.manifest.name
            template = emb.manifest.alignment
            crop = clock.timed(f"align:{name}", lambda t=template: align(img, face.landmarks, t))
            clock.timed(f"embed:{name}", lambda e=emb, c=crop: e.embed(c[None]))
        if self.liveness is not None:
            clock.timed("liveness", lambda: self.liveness.assess(img, face))
        return True


def _imdecode(data: bytes) -> np.ndarray | None:
    """OpenCV's decoder as the peers use it, timed as such; None for a file it cannot read (an empty file returns
    None, a header promising more pixels than OpenCV allows raises)."""
    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        return None


def naive(registry: Registry, policy: str, workdir: Path, threads: int = 1) -> Embed:
    import onnx
    import onnxruntime as ort

    from edge.models.prepare import drop_dangling_inputs

    det_m, emb_m = registry.manifest("yunet"), registry.manifest("sface")
    det_path, emb_path = registry.verify(det_m), registry.verify(emb_m)
    minimal = workdir / "sface_dangling_dropped.onnx"
    onnx.save(drop_dangling_inputs(onnx.load(str(emb_path))), str(minimal))
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, threads)  # the same thread budget as ours
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    session = ort.InferenceSession(str(minimal), so, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    detector = cv2.FaceDetectorYN.create(str(det_path), "", (320, 320), 0.6, 0.3, 5000)
    template = emb_m.alignment
    assert template is not None

    def run(img: np.ndarray) -> np.ndarray | None:
        detector.setInputSize((img.shape[1], img.shape[0]))
        _, rows = detector.detect(img)
        if rows is None or len(rows) == 0:
            return None
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


def faceless_frames(images: list[np.ndarray], count: int = 30, size: tuple[int, int] = (640, 480),
                    block: int = 16, seed: int = 0) -> list[np.ndarray]:
    """Camera-sized frames with no face: real images enlarged to `size` and cut into `block`-px squares put back
    in random order (a face's structure gone, its colours and edges kept). What a door sees most of the time."""
    rng = np.random.default_rng(seed)
    w, h = size
    rows, cols = h // block, w // block
    out = []
    for img in images[:count]:
        big = cv2.resize(img, (cols * block, rows * block), interpolation=cv2.INTER_LINEAR)
        tiles = big.reshape(rows, block, cols, block, 3).swapaxes(1, 2).reshape(-1, block, block, 3)
        tiles = tiles[rng.permutation(rows * cols)].reshape(rows, cols, block, block, 3)
        out.append(np.ascontiguousarray(tiles.swapaxes(1, 2).reshape(rows * block, cols * block, 3)))
    return out


def rescue_cost(pipeline: FacePipeline, frames: list[np.ndarray]) -> dict[str, Any]:
    """Detection cost on faceless frames without and with the rescue pass (edge/vision/rescue.py): what
    `models.rescue = "always"` would add to each empty frame at a door, and how many faces it would invent."""
    saved = pipeline.rescue_mode
    result: dict[str, Any] = {"frames": len(frames), "frame_size": list(frames[0].shape[1::-1]) if frames else None}
    try:
        for mode, key in (("off", "first_pass"), ("always", "with_rescue")):
            pipeline.rescue_mode = mode
            if frames:
                pipeline.detect(frames[0], frame=True)  # warm-up
            times, found = [], 0
            for f in tqdm(frames, desc=f"empty frames, rescue {mode}", unit="frame", file=sys.stderr, disable=None):
                t = time.perf_counter()
                found += bool(pipeline.detect(f, frame=True))
                times.append((time.perf_counter() - t) * 1e3)
            result[f"{key}_ms"] = _median(times)
            result[f"{key}_frames_with_a_face"] = found
    finally:
        pipeline.rescue_mode = saved
    if result.get("first_pass_ms"):
        result["ratio"] = round(result["with_rescue_ms"] / result["first_pass_ms"], 2)
    return result


def _liveness(registry: Registry) -> Any:
    from edge.liveness import installed
    from edge.liveness.minifasnet import open_passive

    return open_passive(registry, "auto", 1) if installed(registry) else None


def _workload(images_dir: Path, limit: int, frames: tuple[int, int] | None, seed: int) -> list[bytes]:
    paths = sample_images(Path(images_dir), limit)
    if frames is None:
        return [p.read_bytes() for p in paths]
    from edge.bench.frames import door_frames

    return door_frames(paths, frames, seed=seed)


def _median(values: Sequence[float]) -> float | None:
    return round(float(np.median(values)), 3) if len(values) else None


def run(images_dir: Path, limit: int = 200, model: str | None = None, policy: str = "best",
        peers: bool = True, registry: Registry | None = None, fusion: Sequence[str] = (),
        frames: tuple[int, int] | None = None, min_face_px: float = 40.0, seed: int = 0,
        rescue: str = "photos", threads: int = 1) -> dict[str, Any]:
    """`threads`: onnxruntime intra-op threads of every model session (ours and the naive peer's); the
    stages run one after another, so N threads never oversubscribe N cores. dlib (face_recognition) and
    OpenCV's own work stay single-threaded."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cv2.setNumThreads(1)
    registry = registry or Registry()
    model = model or registry.default_embedder()
    encoded = _workload(Path(images_dir), limit, frames, seed)
    pipeline = FacePipeline(registry, embedder=model, threads=threads, min_face_px=min_face_px,
                            extra_embedders=tuple(f for f in fusion if f != model), rescue=rescue)
    native = None
    if frames is not None and hasattr(pipeline.detector, "min_side"):
        from edge.vision.detect import make_detector

        native = make_detector(registry, "yunet", threads=threads, min_face_px=min_face_px)
        native.min_side = 10 ** 6  # type: ignore[attr-defined]  # never shrink: the policy's baseline
    ours = Ours(pipeline, policy, _liveness(registry), native)
    ours.frames = frames is not None
    pipes: dict[str, Any] = {"ours": ours}
    clocks = {"ours": Clock()}
    no_face = {"ours": 0}
    notes: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if peers:
            pipes["naive"] = naive(registry, policy, Path(tmp), threads)
            fr = face_recognition_peer()
            if fr is None:
                notes["face_recognition"] = "dlib-bin / face-recognition-models not installed (dev extra)"
            else:
                pipes["face_recognition"] = fr
        for name in pipes:
            clocks[name], no_face[name] = Clock(), 0
        decode = Clock()
        decoded = []
        undecodable = 0
        for data in encoded:
            decode.image()
            img = decode.timed("decode", lambda d=data: _imdecode(d))
            if img is not None:
                decoded.append(img)
            else:
                undecodable += 1
        if not decoded:
            raise ImageError(f"{images_dir}: no image could be decoded")
        with HostWatch() as watch:
            warm = Clock()
            warm.image()
            for name, pipe in pipes.items():  # warm-up: first-call allocations are not the steady state
                pipe.run(decoded[0], warm) if name == "ours" else pipe(decoded[0])
            ours.found = dict.fromkeys(ours.found, 0)
            order = list(pipes)
            for i, img in enumerate(tqdm(decoded, desc="speed", unit="img", file=sys.stderr, disable=None)):
                for name in order[i % len(order):] + order[:i % len(order)]:
                    clocks[name].image()
                    if name == "ours":
                        found = ours.run(img, clocks["ours"])
                    else:
                        found = clocks[name].timed("total", lambda p=pipes[name], x=img: p(x)) is not None
                    no_face[name] += not found
    result = _report(pipeline, clocks, decode, no_face, notes, len(decoded), frames)
    result["machine"] = machine(watch)
    result["undecodable"] = undecodable  # files OpenCV could not read (empty, damaged, too many pixels): skipped
    result["threads"] = threads
    result["rescue"] = {"mode": rescue, "steps": {k: v for k, v in pipeline.rescued.items()},
                        "empty_frames": rescue_cost(pipeline, faceless_frames(decoded))}
    if native is not None:
        result["detector_policy"] = {
            "input": result["detector_input"], "detect_ms": result["stages_ms"]["detect"],
            "native_input": f"{frames[0]}x{frames[1]}",
            "native_detect_ms": _median(clocks["ours"].stage("detect_native")),
            "native_detect_cpu_ms": _median(clocks["ours"].stage("detect_native", cpu=True)),
            "frames_with_a_face": {"policy": ours.found["policy"], "native": ours.found["native"]}}
    return result


def _report(pipeline: FacePipeline, clocks: dict[str, Clock], decode: Clock, no_face: dict[str, int],
            notes: dict[str, str], n: int, frames: tuple[int, int] | None) -> dict[str, Any]:
    primary = pipeline.embedder.manifest.name
    names = list(pipeline.names)
    ours = clocks["ours"]
    if not ours.stage(f"embed:{primary}"):
        raise FacegateError("no face found in any image: nothing to time")
    one = ["detect", f"align:{primary}", f"embed:{primary}"]
    every = ["detect", *[f"{k}:{m}" for m in names for k in ("align", "embed")]]
    result: dict[str, Any] = {
        "workload": ({"kind": "lfw", "images": n} if frames is None else
                     {"kind": "door frames", "size": f"{frames[0]}x{frames[1]}", "images": n}),
        "images": n, "model": primary, "fusion": names if len(names) > 1 else [],
        "detector_input": _detector_input(pipeline, frames),
    }
    for key, cpu in (("stages_ms", False), ("stages_cpu_ms", True)):
        result[key] = {"decode": _median(decode.stage("decode", cpu)), "detect": _median(ours.stage("detect", cpu)),
                       "align": {m: _median(ours.stage(f"align:{m}", cpu)) for m in names},
                       "embed": {m: _median(ours.stage(f"embed:{m}", cpu)) for m in names},
                       "liveness": _median(ours.stage("liveness", cpu))}
    result["ours_ms"] = _median(ours.totals(one))
    result["ours_cpu_ms"] = _median(ours.totals(one, cpu=True))
    if len(names) > 1:
        result["ours_fused_ms"] = _median(ours.totals(every))
        result["ours_fused_cpu_ms"] = _median(ours.totals(every, cpu=True))
    ratios: dict[str, float | None] = {}
    cpu_ratios: dict[str, float | None] = {}
    for peer in ("naive", "face_recognition"):
        if peer not in clocks or not clocks[peer].stage("total"):
            result[f"{peer}_ms"] = None
            ratios[peer] = None
            continue
        result[f"{peer}_ms"] = _median(clocks[peer].stage("total"))
        result[f"{peer}_cpu_ms"] = _median(clocks[peer].stage("total", cpu=True))
        ratios[peer] = round(result[f"{peer}_ms"] / result["ours_ms"], 2)
        cpu_ratios[peer] = round(result[f"{peer}_cpu_ms"] / result["ours_cpu_ms"], 2)
        if "ours_fused_ms" in result:
            ratios[f"{peer}_fused"] = round(result[f"{peer}_ms"] / result["ours_fused_ms"], 2)
            cpu_ratios[f"{peer}_fused"] = round(result[f"{peer}_cpu_ms"] / result["ours_fused_cpu_ms"], 2)
    result["ratios"] = ratios
    result["cpu_ratios"] = cpu_ratios
    live = result["stages_ms"]["liveness"]
    result["liveness"] = None if live is None else {"per_face_ms": live,
                                                    "per_face_cpu_ms": result["stages_cpu_ms"]["liveness"]}
    result["no_face"] = no_face
    result["notes"] = notes
    return result


def _detector_input(pipeline: FacePipeline, frames: tuple[int, int] | None) -> str:
    from edge.vision.detect import detection_scale

    det = pipeline.detector
    w, h = frames or (250, 250)
    if not all(hasattr(det, a) for a in ("detector_min_px", "min_side", "stride")):
        return "unknown (not YuNet)"
    s = detection_scale(w, h, det.min_face_px, det.detector_min_px, det.min_side)
    sw, sh = max(1, round(w * s)), max(1, round(h * s))
    pw, ph = -(-sw // det.stride) * det.stride, -(-sh // det.stride) * det.stride
    return f"{sw}x{sh} padded to {pw}x{ph} (scale {s:.3g} of {w}x{h})"


