"""`facegate bench daemon`: the running daemon's decision latency, frame rate, drops and memory.

An image folder is played as the camera: each image is shown for `frames_per_image` frames at `fps`. With a
folder per person (LFW's layout), each person's first image is enrolled and their other images are the
known visitors; people with one image are unknown visitors. Latency is measured per decision from the
capture of the deciding frame to its receipt by an MQTT subscriber on loopback (a private mosquitto, else
amqtt, unless --broker names one). The daemon runs in this process (its decision loop in a thread, as under
systemd it runs in the main one), so `rss_peak_mb` is the peak resident memory of the daemon's process.
`frames_dropped` counts frames the capture replaced before the decision loop took them.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge.bench.host import HostWatch, machine
from edge.errors import FacegateError
from edge.imageio import image_files


def plan(source: Path, limit: int) -> tuple[list[tuple[str, Path]], list[Path]]:
    """(identities to enrol as (name, image), images to show in order) for a folder of ≤ `limit` images."""
    subdirs = sorted(p for p in source.iterdir() if p.is_dir())
    if not subdirs:
        shown = image_files(source, recursive=False)[:limit]
        return [], shown
    enrol, shown = [], []
    for d in subdirs:
        files = image_files(d, recursive=False)
        if len(files) >= 2:
            enrol.append((d.name, files[0]))
            shown += files[1:]
        elif files:
            shown.append(files[0])
        if len(shown) >= limit:
            break
    return enrol, shown[:limit]


def rss_peak_mb() -> float:
    """This process's peak resident set (VmHWM) in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run(source: Path, fps: float = 15.0, frames_per_image: int = 8, limit: int = 300, broker: str | None = None,
        config_path: Path | None = None) -> dict[str, Any]:
    from edge import config
    from edge.daemon import Daemon, setup_logging
    from edge.demo_daemon import Subscriber, broker_for_demo, running
    from edge.enroll import Enroller

    source = Path(source)
    if not source.is_dir():
        raise FacegateError(f"{source}: not a folder")
    enrol, shown = plan(source, limit)
    if not shown:
        raise FacegateError(f"{source}: no images to show")
    base = config.load(config_path) if config_path else config.Config(profile="kiosk")
    setup_logging("text", "warning")
    if broker:
        host, _, port = broker.rpartition(":")
        started = None
    else:
        started = broker_for_demo(prefer_existing=False, order=("mosquitto", "amqtt"))
        host, port = started.host, str(started.port)
    try:
        with tempfile.TemporaryDirectory(prefix="facegate-bench-") as tmp:
            work = Path(tmp)
            clip = work / "clip"
            clip.mkdir()
            for i, p in enumerate(shown):  # numbered links: the folder source shows them in this order
                os.symlink(p.resolve(), clip / f"{i:06d}{p.suffix.lower()}")
            cfg = config.parse({
                "profile": base.profile,
                "camera": {"source": str(clip), "fps": fps, "frames_per_image": frames_per_image},
                # The base configuration's scoring too (models.fusion / verifier), so "with fusion on" is measurable.
                "models": {f: getattr(base.models, f) for f in ("detector", "embedder", "threads", "min_face_px",
                                                                "model_dir", "fusion", "verifier")},
                "liveness": {"model": base.liveness.model, "threads": base.liveness.threads},
                # Every walk-up decides, so every image can give a latency sample.
                "decision": {"cooldown_s": 0.0},
                "store": {"path": str(work / "bench.db"), "create": True},
                "mqtt": {"host": host, "port": int(port), "device": "facegate-bench", "discovery": False,
                         "outbox_path": str(work / "outbox.db"), "command_state_path": str(work / "counters.json")},
                "health": {"enabled": False},
            }, origin="bench")
            daemon = Daemon(cfg)
            enroller = Enroller(daemon.store, daemon.pipeline, scorer=daemon.engine.scorer)
            enrolled = 0
            for name, path in enrol:
                judged = enroller.judge(path)
                enrolled += bool(enroller.commit(name, [judged], command="bench daemon"))
            frames = _frame_timer(daemon)
            captured: dict[str, float] = {}
            daemon.on_decision = lambda d, e: captured.__setitem__(e["event_id"], d.t_capture)
            sub = Subscriber(host, int(port), "facegate/facegate-bench/event")
            watch = HostWatch().start()
            t0 = time.monotonic()
            try:
                with running(daemon) as thread:
                    thread.join()  # the folder's end ends the run
                elapsed = time.monotonic() - t0
                sub.wait_for(len(captured), 10)
            finally:
                watch.stop()
                sub.close()
            stats = daemon.capture.stats
            latencies = [(t - captured[e["event_id"]]) * 1e3 for t, e in sub.events if e.get("event_id") in captured]
            kinds: dict[str, int] = {}
            for _, e in sub.events:
                kinds[e["decision"]] = kinds.get(e["decision"], 0) + 1
            liveness = daemon.liveness_mode
            threads = {"models": daemon.pipeline.threads, "members_side_by_side": daemon.pipeline.parallel}
            host = machine(watch)
    finally:
        if started is not None:
            started.stop()
    if not latencies:
        raise FacegateError("no decision reached the subscriber; nothing to time")
    lat = np.asarray(latencies)
    # The daemon's own share (capture → publish call, the event's latency_ms); the rest is outbox + MQTT.
    own = np.asarray([e["latency_ms"] for _, e in sub.events if e.get("event_id") in captured])
    return {"p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "decide_p50_ms": round(float(np.percentile(own, 50)), 1),
            "decide_p99_ms": round(float(np.percentile(own, 99)), 1),
            "fps": round(stats.delivered / elapsed, 2), "frames_dropped": stats.dropped,
            "rss_peak_mb": rss_peak_mb(), "liveness": liveness, "frames": stats.produced,
            "frames_corrupt": stats.corrupt, "decisions": len(latencies), "decisions_by_kind": kinds,
            "images": len(shown), "enrolled": enrolled, "frames_per_image": frames_per_image, "target_fps": fps,
            "broker": started.kind if started else broker, "frame_ms": _frame_summary(frames),
            "threads": threads, "machine": host}


def _frame_timer(daemon: Any) -> list[tuple[int, float]]:
    """(faces detected, ms) of every frame the engine processes: where a latency tail comes from (a frame with
    two faces costs both faces' embeddings, and the next frame waits for it)."""
    engine, pipeline = daemon.engine, daemon.engine.pipeline
    out: list[tuple[int, float]] = []
    seen = [0]
    detect, process = pipeline.detect, engine.process

    def counted(image: Any, frame: bool = False) -> Any:
        faces = detect(image, frame=frame)
        seen[0] = len(faces)
        return faces

    def timed(frame: Any, problems: list[str]) -> Any:
        t = time.perf_counter()
        try:
            return process(frame, problems)
        finally:
            out.append((seen[0], (time.perf_counter() - t) * 1e3))

    pipeline.detect, engine.process = counted, timed
    return out


def _frame_summary(frames: list[tuple[int, float]]) -> dict[str, Any]:
    """Per-frame processing ms (p50 / p99 / max), overall and by the number of faces in the frame."""
    def stats(ms: list[float]) -> dict[str, Any]:
        a = np.asarray(ms)
        return {"frames": len(ms), "p50": round(float(np.percentile(a, 50)), 1),
                "p99": round(float(np.percentile(a, 99)), 1), "max": round(float(a.max()), 1)} if ms else {"frames": 0}
    by_faces: dict[str, list[float]] = {}
    for n, ms in frames:
        by_faces.setdefault(str(n) if n < 2 else "2+", []).append(ms)
    return {"all": stats([ms for _, ms in frames]), "by_faces": {k: stats(v) for k, v in sorted(by_faces.items())}}
