"""`facegate bench liveness`: the passive check on labelled images, and the temporal/challenge path on clips.

Images (default): every image under --live is a bona fide presentation, every image under --spoof an attack.
The largest face of each is checked at the fixed threshold (the manifest's, never tuned here), giving
- APCER: attacks accepted as live / attacks with a face;
- BPCER: bona fide refused / bona fide with a face;
- ACER: their mean;
with images without a face counted apart (no_face) rather than in either rate, how many crops had to be
shrunk or shifted to stay inside the image (the crop policy), and every image's scores. The upstream
arg-max rule's figures are given beside ours for comparison.

Clips (--clips): every sub-folder of frames (in name order) or video file under --live / --spoof is one
presentation, run through tracking, the quality gate, the passive check, the temporal rule and, unless
--no-challenge, the head-turn challenge. A recorded clip cannot hear the prompt, so by default either turn
counts (--direction any); the daemon itself always asks for one at random.

`time_passive` and `time_tracking` are the timings `facegate bench speed` reports.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.errors import FacegateError
from edge.eval.liveness import _detector, score_images
from edge.imageio import image_files, is_image_file, load_bgr, sample_images
from edge.liveness.challenge import ChallengeConfig
from edge.liveness.minifasnet import PassiveCheck, open_passive
from edge.liveness.motion import PointTracker
from edge.liveness.temporal import NOTE_KEY, SPOOF_KEY, STATE_KEY, LivenessGate
from edge.models.registry import Registry
from edge.vision.align import align
from edge.vision.detect import Detector, Face, select_face
from edge.vision.quality import QualityGate, assess
from edge.vision.track import Tracker

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
DEFAULT_CHALLENGE = ChallengeConfig()


def _rates(live: list[dict[str, Any]], spoof: list[dict[str, Any]], key: str) -> dict[str, Any]:
    lf = [r for r in live if r["face"]]
    sf = [r for r in spoof if r["face"]]
    bpcer = sum(not r[key] for r in lf) / len(lf) if lf else None
    apcer = sum(bool(r[key]) for r in sf) / len(sf) if sf else None
    acer = (apcer + bpcer) / 2 if apcer is not None and bpcer is not None else None
    return {"apcer": apcer, "bpcer": bpcer, "acer": acer,
            "bona_fide_refused": sum(not r[key] for r in lf), "attacks_accepted": sum(bool(r[key]) for r in sf)}


def run(live_dir: Path, spoof_dir: Path, model: str = "auto", threads: int = 1, limit: int | None = None,
        pairs: Path | None = None, registry: Registry | None = None) -> dict[str, Any]:
    registry = registry or Registry()
    check = open_passive(registry, model, threads)
    detector = _detector(registry)
    from edge.eval.lfw import images_named_by

    names = images_named_by([pairs]) if pairs else None
    live_paths = sample_images(live_dir, limit, names)
    spoof_paths = sample_images(spoof_dir, limit)
    t0 = time.perf_counter()
    live = score_images(check, detector, live_paths, Path(live_dir))
    spoof = score_images(check, detector, spoof_paths, Path(spoof_dir))
    faces = [r for r in live + spoof if r["face"]]
    lf = [r for r in live if r["face"]]
    return {
        "model": check.name, "members": [n.manifest.name for n in check.nets],
        "threshold": check.threshold, "rule": "live iff mean softmax live probability > threshold",
        "threshold_provenance": _provenance(registry, check),
        **_rates(live, spoof, "live"),
        "upstream_argmax": _rates(live, spoof, "argmax_live"),
        "live_images": len(live), "spoof_images": len(spoof),
        "no_face": {"live": sum(not r["face"] for r in live), "spoof": sum(not r["face"] for r in spoof)},
        "crop_policy": "enlarged box shrunk to fit the image, then shifted inside it (no padding), as in the "
                       "weights' training code",
        "crops_adjusted": {"shrunk": _share(faces, "shrunk"), "shifted": _share(faces, "shifted"),
                           "either": _share(faces, "shrunk", "shifted")},
        "certain_spoof_on_live": _share(lf, "certain_spoof"),
        "pairs_file": str(pairs) if pairs else None,
        "seconds": round(time.perf_counter() - t0, 1),
        "images": {"live": live, "spoof": spoof},
    }


def _share(rows: list[dict[str, Any]], *keys: str) -> float | None:
    return round(sum(any(r[k] for k in keys) for r in rows) / len(rows), 4) if rows else None


def _provenance(registry: Registry, check: PassiveCheck) -> dict[str, Any]:
    try:
        t = registry.manifest(check.name).thresholds.get("live")
    except FacegateError:
        t = None
    if t is None:
        from edge.liveness.minifasnet import PROVENANCE_LIVE

        return {**PROVENANCE_LIVE, "note": "no fused bundle installed: the built-in default"}
    return dict(t.provenance)


# -- clips ------------------------------------------------------------------------------------------------------
def clip_sources(root: Path) -> list[Path]:
    """Each sub-folder holding images, or video file, directly under `root` (or `root` itself if it is one)."""
    root = Path(root)
    if root.is_file() or (root.is_dir() and any(is_image_file(p) for p in root.iterdir())):
        return [root]
    if not root.is_dir():
        raise FacegateError(f"{root}: not a folder or video")
    out = sorted(p for p in root.iterdir()
                 if (p.is_dir() and any(is_image_file(q) for q in p.iterdir()))
                 or (p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES))
    if not out:
        raise FacegateError(f"{root}: no clips (sub-folders of frames or video files)")
    return out


def read_clip(source: Path) -> Iterator[np.ndarray]:
    if Path(source).is_dir():
        for p in image_files(Path(source), recursive=False):
            yield load_bgr(p)
        return
    cap = cv2.VideoCapture(str(source))
    if not cap.isOpened():
        raise FacegateError(f"{source}: cannot open the video")
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            yield frame
    finally:
        cap.release()


class ClipRunner:
    """The daemon's liveness path on one clip at a time: detect → track → quality → gate → temporal rule."""

    def __init__(self, check: PassiveCheck, detector: Detector, template: Any, k: int = 3, n: int = 5,
                 challenge: ChallengeConfig | None = DEFAULT_CHALLENGE, direction: str = "any", fps: float = 15.0,
                 quality: QualityGate | None = None) -> None:
        self.check, self.detector, self.template = check, detector, template
        self.k, self.n, self.challenge, self.fps = k, n, challenge, fps
        self.direction = direction
        self.quality = quality or QualityGate()

    def run(self, frames: Iterable[np.ndarray]) -> dict[str, Any]:
        gate = LivenessGate(self.check, self.k, self.n, self.challenge, direction=lambda: self.direction)
        tracker = Tracker()
        decided: dict[int, tuple[str, str]] = {}
        results: dict[int, list[Any]] = {}
        tracks: dict[int, Any] = {}
        count = 0
        for i, image in enumerate(frames):
            count += 1
            t = i / self.fps
            assigned, _ = tracker.update(self.detector.detect(image), t)
            gate.frame(assigned, image, t)
            for track, face in assigned:
                tracks[track.id] = track
                if track.id not in decided:
                    r = None
                    if not self.quality.reasons(assess(face, align(image, face.landmarks, self.template))):
                        r = gate.observe(track, image, face, t)
                    outcome = self._outcome(gate, track, r, results)
                    if outcome is not None:
                        decided[track.id] = outcome
        return self._summary(count, tracks, decided, results)

    @staticmethod
    def _outcome(gate: LivenessGate, track: Any, r: Any, results: dict[int, list[Any]]) -> tuple[str, str] | None:
        """The track's liveness decision after this frame, as the policy would take it; None: undecided."""
        if track.state.get(SPOOF_KEY):
            return "spoof", track.state[SPOOF_KEY]
        if track.state.get(NOTE_KEY):  # the challenge ended without passing: liveness incomplete
            return "incomplete", track.state[NOTE_KEY]
        if r is None:
            return None
        results.setdefault(track.id, []).append(r)
        verdict, why = gate.rule.judge(results[track.id])
        return None if verdict == "pending" else (verdict, why)

    def _summary(self, frames: int, tracks: dict[int, Any], decided: dict[int, tuple[str, str]],
                 results: dict[int, list[Any]]) -> dict[str, Any]:
        if not tracks:
            return {"frames": frames, "verdict": "no_face", "reason": "no face in any frame"}
        # The presentation is the track seen longest (a clip shows one person).
        main = max(tracks.values(), key=lambda tr: tr.frames)
        st = main.state.get(STATE_KEY)
        for tid in (main.id, *decided):
            if tid in decided:
                verdict, reason = decided[tid]
                break
        else:
            ch = st.challenge if st is not None else None
            reason = ch.reason if ch is not None and ch.reason else "no decision within the clip"
            verdict = "incomplete"
        ch = st.challenge if st is not None else None
        scores = [r.score for r in results.get(main.id, []) if r.score is not None]
        timings = st.timings_ms if st is not None else {"passive": [], "tracking": []}
        return {"frames": frames, "verdict": verdict, "reason": reason,
                "challenge": None if ch is None else {"state": ch.state, "direction": ch.direction,
                                                      "turned_deg": round(ch.turned, 1),
                                                      "fit": ch.fit.to_dict() if ch.fit else None},
                "mean_score": round(float(np.mean(scores)), 4) if scores else None,
                "passive_ms": _median(timings["passive"]), "tracking_ms": _median(timings["tracking"])}


def _median(values: list[float]) -> float | None:
    return round(float(np.median(values)), 3) if values else None


def run_clips(live_dir: Path | None, spoof_dir: Path | None, model: str = "auto", threads: int = 1, fps: float = 15.0,
              challenge: bool = True, direction: str = "any", k: int = 3, n: int = 5,
              registry: Registry | None = None) -> dict[str, Any]:
    registry = registry or Registry()
    check = open_passive(registry, model, threads)
    runner = ClipRunner(check, _detector(registry), registry.manifest("sface").alignment, k, n,
                        DEFAULT_CHALLENGE if challenge else None, direction, fps)
    out: dict[str, list[dict[str, Any]]] = {"live": [], "spoof": []}
    for label, root in (("live", live_dir), ("spoof", spoof_dir)):
        if root is None:
            continue
        for src in clip_sources(Path(root)):
            out[label].append({"clip": src.name, **runner.run(read_clip(src))})
    live = [c for c in out["live"] if c["verdict"] != "no_face"]
    spoof = [c for c in out["spoof"] if c["verdict"] != "no_face"]
    apcer = sum(c["verdict"] == "live" for c in spoof) / len(spoof) if spoof else None
    bpcer = sum(c["verdict"] != "live" for c in live) / len(live) if live else None
    tracking = [c["tracking_ms"] for c in out["live"] + out["spoof"] if c.get("tracking_ms") is not None]
    return {"model": check.name, "challenge": challenge, "direction": direction, "k": k, "n": n, "fps": fps,
            "apcer": apcer, "bpcer": bpcer,
            "acer": (apcer + bpcer) / 2 if apcer is not None and bpcer is not None else None,
            "no_face": {"live": len(out["live"]) - len(live), "spoof": len(out["spoof"]) - len(spoof)},
            "tracking_ms_median": _median(tracking), "clips": out}


# -- timings ----------------------------------------------------------------------------------------------------
def _largest_faces(images: Iterable[np.ndarray | Path], detector: Detector) -> Iterator[tuple[np.ndarray, Face]]:
    """Each image (decoded if a path) with its largest face; images without one are skipped."""
    for item in images:
        image = load_bgr(item) if isinstance(item, str | Path) else item
        found = detector.detect(image)
        if found:
            yield image, select_face(found, image.shape, "largest")


def time_passive(images: Iterable[np.ndarray | Path], threads: int = 1, registry: Registry | None = None,
                 model: str = "auto", repeat: int = 3) -> dict[str, Any]:
    """Milliseconds per face of the passive check (both crops, both nets, the fusion), detection excluded.

    Each image's largest face is checked `repeat` times after one warm-up; the median and p90 are over all
    timed checks.
    """
    registry = registry or Registry()
    check = open_passive(registry, model, threads)
    detector = _detector(registry)
    times: list[float] = []
    cpu: list[float] = []
    faces = 0
    for image, face in _largest_faces(images, detector):
        faces += 1
        check.assess(image, face)  # warm-up: first runs allocate
        for _ in range(repeat):
            t0, c0 = time.perf_counter(), time.thread_time()
            check.assess(image, face)
            cpu.append((time.thread_time() - c0) * 1e3)
            times.append((time.perf_counter() - t0) * 1e3)
    if not times:
        raise FacegateError("no face in any of the images to time the liveness check on")
    # CPU time of the calling thread too: on a shared machine the wall clock also counts other processes.
    return {"passive_median_ms": round(float(np.median(times)), 3),
            "passive_p90_ms": round(float(np.percentile(times, 90)), 3),
            "passive_cpu_median_ms": round(float(np.median(cpu)), 3), "faces": faces, "threads": threads,
            "model": check.name, "members": [n.manifest.name for n in check.nets],
            "runtimes": sorted({n.manifest.runtime for n in check.nets})}


def time_tracking(images: Iterable[np.ndarray | Path], frames: int = 30, registry: Registry | None = None
                  ) -> dict[str, Any]:
    """Milliseconds per frame of the challenge's point tracking (LK + homography fit), on each image's face
    turned as a textured relief (edge/liveness/simulate.py); reported apart from the passive check."""
    from edge.liveness.simulate import relief_clip

    detector = _detector(registry or Registry())
    times: list[float] = []
    for image, face in _largest_faces(images, detector):
        clip = relief_clip(image, face.box, face.landmarks[2], frames=frames)
        tracker = PointTracker(clip[0], face.box)
        for frame in clip[1:]:
            t0 = time.perf_counter()
            tracker.update(frame, face.box)
            tracker.fit()
            times.append((time.perf_counter() - t0) * 1e3)
    if not times:
        raise FacegateError("no face in any of the images to time the tracking on")
    return {"tracking_median_ms": round(float(np.median(times)), 3),
            "tracking_p90_ms": round(float(np.percentile(times, 90)), 3), "frames": len(times)}
