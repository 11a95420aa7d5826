"""The access daemon: frames → faces → tracks → quality → liveness → embed → match → decide → MQTT.

Threads: the capture thread (newest frame only), the decision loop (the caller's thread, normally the main
one), the MQTT client's own thread (commands arrive there), and the /healthz + /metrics server.

Fail-secure: no grant while the camera, the models or the store are unhealthy — such a grant is turned
into `denied` with the reason, and the door is never sent UNLOCK. The lock controller keeps the door
locked unless it receives UNLOCK, and relocks on its own after the UNLOCK's duration (deploy/INTEGRATION.md),
so a daemon that stops, hangs (the systemd watchdog restarts it) or loses its broker leaves the door locked.

SIGTERM: the current frame is finished, STOPPING is sent to systemd, the publisher flushes its outbox and
publishes offline, the store is closed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as dt
import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.config import (
    CREDENTIAL_COMMAND_SECRET,
    CREDENTIAL_MQTT_PASSWORD,
    CREDENTIAL_STORE_KEY,
    Config,
    ConfigError,
    device_name,
    secret,
)
from edge.decide import DECISIONS, AccessPolicy, Decision, Observation, Policy
from edge.errors import FacegateError
from edge.health import HealthServer, Metrics
from edge.identify_threshold import threshold_for
from edge.liveness import INSTALL_HINT, LivenessCheck, installed, resolve
from edge.liveness.temporal import LivenessGate, gate_for
from edge.models.registry import Registry
from edge.paths import state_dir
from edge.pipeline import FacePipeline
from edge.sdnotify import Notifier, watchdog_interval
from edge.sources import Capture, Frame, Source, open_source
from edge.store.db import Store
from edge.store.matcher import Matcher
from edge.vision.align import align
from edge.vision.detect import Face
from edge.vision.quality import assess
from edge.vision.track import Tracker

log = logging.getLogger("facegate.daemon")

PROMPTS = {"present": "look at the camera", "granted": "granted", "unknown": "not recognised",
           "spoof": "not recognised", "denied": "access denied"}
STORE_CHECK_S = 10.0
STATE_EVERY_S = 60.0
MAX_ENROL_JPEG = 12 * 1024 * 1024
ENROL_WAIT_S = 10.0  # live-capture enrolment: time to step up, beyond the challenge's own timeout


# -- where events go when MQTT is off ---------------------------------------------------------------------------
class LogSink:
    """The Publisher's interface, writing events as JSON lines to a file or the log (mqtt.enabled = false)."""

    connected = True
    outbox_depth = 0
    dropped = 0
    reconnects = 0

    def __init__(self, device: str, door: str, path: Path | None = None) -> None:
        self.device, self.door, self.path = device, door, path
        self._seq = 0
        self._lock = threading.Lock()
        self._claim: Callable[[str], None] | None = None

    def start(self) -> None:
        pass

    def stop(self, flush_timeout: float = 5.0) -> None:
        self._write({"kind": "state", "state": {"status": "offline"}})

    def _write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record)
        with self._lock:
            if self.path is None:
                log.info("%s", line)
            else:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(line + "\n")

    def publish_event(self, event: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._seq += 1
            seq = self._seq
        full = {**event, "event_id": str(uuid.uuid4()), "seq": seq,
                "ts": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"), "device": self.device,
                "door": self.door}
        self._write({"kind": "event", "event": full})
        return full

    def publish_state(self, state: dict[str, Any]) -> None:
        self._write({"kind": "state", "state": state})

    def publish_prompt(self, text: str) -> None:
        self._write({"kind": "prompt", "text": text})

    def publish_door(self, command: str, duration_s: float | None) -> None:
        self._write({"kind": "door", "command": command, "duration_s": duration_s})

    def publish_face_present(self, present: bool) -> None:
        self._write({"kind": "face_present", "present": present})

    def on_claim(self, callback: Callable[[str], None]) -> None:
        self._claim = callback

    def forget_identity(self, name: str) -> None:
        pass


def clock_synced() -> bool:
    """Whether the kernel says the system clock is synchronised (adjtimex state ≠ TIME_ERROR)."""
    if Path("/run/systemd/timesync/synchronized").exists():
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        buf = ctypes.create_string_buffer(512)  # struct timex is ~208 bytes; modes = 0: read only
        return libc.adjtimex(buf) not in (-1, 5)  # 5 = TIME_ERROR: not synchronised
    except (OSError, AttributeError):
        return False


def _both(first: Callable[[], None], second: Callable[[], None]) -> Callable[[], None]:
    def undo() -> None:
        first()
        second()
    return undo


# -- one frame → decisions --------------------------------------------------------------------------------------
class Engine:
    """Runs the recognition stages on a frame and feeds the decision policy; times every stage."""

    STAGES = ("detect", "quality", "liveness", "embed", "match", "decide", "frame")

    def __init__(self, pipeline: FacePipeline, policy: Policy, cfg: Config, liveness: LivenessCheck | None,
                 metrics: Metrics, store: Store, live_gate: LivenessGate | None = None, head: Any = None) -> None:
        self.pipeline, self.policy, self.cfg, self.liveness, self.metrics = pipeline, policy, cfg, liveness, metrics
        # Liveness per track (edge/liveness/temporal.py): the check, the temporal rule and, when configured, the
        # challenge; without one given, a gate around the bare check.
        self.live_gate = live_gate if live_gate is not None else (
            LivenessGate(liveness, cfg.decision.k, cfg.decision.n) if liveness is not None else None)
        self.store = store
        self.manifest = pipeline.embedder.manifest
        self.template = self.manifest.alignment
        self.gate = cfg.quality.gate()
        self.tracker = Tracker(cfg.decision.iou, cfg.decision.track_ttl_s)
        # The embedder's own 1:1 threshold also tells one person from the next within a track (cosine).
        self.split_threshold = self.manifest.threshold("verify").value
        # With a verification head (models.verifier) decisions are scored by the head: logits, its thresholds,
        # probes and templates under every embedder it reads. The cosine matcher stays for enrolment's
        # duplicate check and the gallery counts.
        self.head = head
        self.scored_by = head.manifest if head is not None else self.manifest
        self.verify_threshold = self.scored_by.threshold("verify").value
        self.matcher: Matcher = Matcher(self.manifest.name)
        self._head_matcher: Any = None
        self._head_stale = True
        self._unsubscribe: Callable[[], None] | None = None
        self._threshold: tuple[int, float] | None = None  # (gallery rows, 1:N threshold)
        self._claim_vecs: tuple[str, Any] | None = None  # (claimed name, its templates)
        self.face_present = False
        self.lock = threading.Lock()  # inference and tracking: the loop and enrolment commands share the models
        self.hist = {s: metrics.histogram("stage_latency_ms", stage=s) for s in self.STAGES}
        self.reload()

    # -- gallery ----------------------------------------------------------------------------------------------
    def reload(self) -> int:
        """(Re)load the gallery from the store and follow its changes; picks up enrolments made by other
        processes (the CLI) since the last load."""
        matcher = Matcher(self.manifest.name)
        with self.store.locked():
            matcher.load((name, vec) for name, _, vec in self.store.templates(self.manifest.name))
            unsubscribe = self.store.subscribe(matcher.on_change)
            if self.head is not None:  # rebuilt on the next match after any committed change
                head_unsub = self.store.subscribe(self._head_changed)
                unsubscribe = _both(unsubscribe, head_unsub)
        old, self.matcher, self._unsubscribe = self._unsubscribe, matcher, unsubscribe
        self._head_stale = True
        if old is not None:
            old()
        return len(matcher)

    def _head_changed(self, *_: Any) -> None:
        self._head_stale = True

    def _gallery_rows(self) -> int:
        return self._head_gallery().rows if self.head is not None else self.matcher.rows

    def _head_gallery(self) -> Any:
        if self._head_stale or self._head_matcher is None:
            from edge.query import head_matcher

            self._head_stale = False
            self._head_matcher = head_matcher(self.store, self.head)
        return self._head_matcher

    def identify_threshold(self) -> float:
        rows = max(1, self._gallery_rows())
        if self._threshold is None or self._threshold[0] != rows:  # recomputed when the gallery size changes
            self._threshold = (rows, threshold_for(self.scored_by, rows, self.cfg.decision.fpir)[0])
        return self._threshold[1]

    def claim(self, name: str) -> bool:
        """Narrow the next decision to 1:1 against `name`; False (ignored) when it has no templates."""
        templates: Any
        if self.head is not None:  # {embedder: (T, D)}, scored by the head
            from edge.query import head_templates

            templates = head_templates(self.store, self.head, name).get(name)
        else:
            rows = [v for _, _, v in self.store.templates(self.manifest.name, name)]
            templates = np.stack(rows) if rows else None
        if templates is None:
            log.warning("claim for %r ignored: no such enrolled identity", name)
            return False
        with self.lock:
            self._claim_vecs = (name, templates)
            self.policy.claim(name, list(self.tracker.tracks.values()))
        log.info("claim: the next decision is 1:1 against %r", name)
        return True

    # -- the frame ----------------------------------------------------------------------------------------------
    def _timed(self, stage: str, t0: float) -> float:
        t = time.perf_counter()
        self.hist[stage].observe((t - t0) * 1e3)
        return t

    def process(self, frame: Frame, problems: list[str]) -> list[Decision]:
        with self.lock:
            return self._process(frame, problems)

    def _process(self, frame: Frame, problems: list[str]) -> list[Decision]:
        start = t = time.perf_counter()
        faces = self.pipeline.detector.detect(frame.image)
        t = self._timed("detect", t)
        assigned, _ = self.tracker.update(faces, frame.t_capture)
        if self.live_gate is not None:
            self.live_gate.frame(assigned, frame.image, frame.t_capture)  # a challenge follows turned faces too
        # Quality on the aligned crop, then one batched embedding for every face that passed.
        crops, passed = [], []
        for track, face in assigned:
            crop = align(frame.image, face.landmarks, self.template)
            if not self.gate.reasons(assess(face, crop)):
                crops.append(crop)
                passed.append((track, face))
        t = self._timed("quality", t)
        embs = self.pipeline.embedder.embed(np.stack(crops)) if crops else np.zeros((0, 0), np.float32)
        t = self._timed("embed", t)
        claim = self.policy.claimed
        if claim is None:
            self._claim_vecs = None
        threshold = self.verify_threshold if claim else self.identify_threshold()
        decisions = []
        for (track, face), emb in zip(passed, embs, strict=True):
            last = track.state.get("embedding")
            if last is not None and float(last @ emb) < self.split_threshold:
                track = self.tracker.split(track, face, frame.t_capture)  # someone else stepped in
            track.state["embedding"] = emb
            if track.state.get("decided"):
                continue
            t = time.perf_counter()
            live = None
            if self.live_gate is not None:
                live = self.live_gate.observe(track, frame.image, face, frame.t_capture)
                t = self._timed("liveness", t)
                if live is None:
                    continue  # its liveness challenge is under way: nothing to decide on yet
            # A head's other embedders run only here, for faces still to be decided (not every face every frame).
            probe = self._head_probe(frame.image, face, emb) if self.head is not None else emb
            obs = self._match(probe, claim, threshold, live, frame.t_capture)
            t = self._timed("match", t)
            self.policy.observe(track, obs)
            others = [o for o in self.tracker.visible(frame.t_capture) if o.id != track.id]
            d = self.policy.evaluate(track, others, problems)
            if d is not None:
                decisions.append(d)
            self._timed("decide", t)
        self._timed("frame", start)
        self.face_present = bool(faces)
        return decisions

    def _head_probe(self, image: np.ndarray, face: Face, primary: np.ndarray) -> dict[str, np.ndarray]:
        """The face under every embedder the head reads (each aligned with its own template)."""
        probe = {self.manifest.name: primary}
        for emb in self.pipeline.embedders[1:]:
            probe[emb.manifest.name] = emb.embed(align(image, face.landmarks, emb.manifest.alignment)[None])[0]
        return probe

    def _match(self, probe: Any, claim: str | None, threshold: float, live: Any, t_capture: float) -> Observation:
        """Score a probe (the embedding, or with a head {embedder: embedding}) 1:1 against a claim or 1:N."""
        if claim is not None and self._claim_vecs is not None and self._claim_vecs[0] == claim:
            if self.head is not None:
                from edge.verifier import HeadScorer

                score = HeadScorer(self.head).verify(probe, self._claim_vecs[1])
            else:
                score = float(np.max(self._claim_vecs[1] @ probe))  # 1:1: the claimed identity's best template
            return Observation(claim if score >= threshold else None, claim, score, threshold, live, t_capture)
        best = (self._head_gallery() if self.head is not None else self.matcher).search(probe, k=1)[0]
        if not best:
            return Observation(None, None, None, threshold, live, t_capture)
        m = best[0]
        return Observation(m.name if m.score >= threshold else None, m.name, m.score, threshold, live, t_capture)

    def faces(self, image: np.ndarray) -> list[Face]:
        with self.lock:
            return self.pipeline.detector.detect(image)


# -- the daemon -------------------------------------------------------------------------------------------------
def mqtt_values(cfg: Config) -> dict[str, Any]:
    """The [mqtt] section as MqttSettings.from_mapping takes it: secrets resolved, empty strings as None."""
    m = cfg.mqtt
    values: dict[str, Any] = {k: v for k, v in asdict(m).items()
                              if k not in ("enabled", "password_file", "command_secret_file")}
    for k, v in list(values.items()):
        if v == "":
            values[k] = None
    values["device"] = device_name(cfg)
    values["password"] = secret(m.password, m.password_file, CREDENTIAL_MQTT_PASSWORD, "mqtt.password")
    values["command_secret"] = secret(m.command_secret, m.command_secret_file, CREDENTIAL_COMMAND_SECRET,
                                      "mqtt.command_secret")
    return values


def open_store(cfg: Config) -> Store:
    from edge.store.crypto import load_key

    path = Path(cfg.store.path) if cfg.store.path else state_dir() / "facegate.db"
    key_file = cfg.store.key_file or None
    if key_file is None:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        cred = Path(directory) / CREDENTIAL_STORE_KEY if directory else None
        key_file = str(cred) if cred is not None and cred.is_file() else None
    return Store(path, key=load_key(key_file, store=path))


def resolve_liveness(cfg: Config, registry: Registry) -> LivenessCheck | None:
    """The liveness check the profile asks for; the door profile refuses to start without one."""
    if cfg.liveness_mode == "none":
        return None
    spec = cfg.liveness.model
    if spec == "auto" and not installed(registry):
        raise ConfigError("profile \"door\" requires liveness, but no liveness model is installed: "
                          + INSTALL_HINT.format(model_dir=registry.model_dir))
    return resolve(registry, spec, cfg.liveness.threads)  # the same check `facegate liveness` runs


class Daemon:
    """Everything wired together. `run()` blocks until stopped (SIGTERM/SIGINT, `stop()`) or the source ends."""

    def __init__(self, cfg: Config, *, sink: Any = None, liveness: LivenessCheck | None = None,
                 source: Source | None = None, notifier: Notifier | None = None,
                 on_decision: Callable[[Decision, dict[str, Any]], None] | None = None) -> None:
        self.cfg = cfg
        self.notifier = notifier or Notifier()
        self.on_decision = on_decision
        self.metrics = Metrics()
        self._stop = threading.Event()
        self._model_error: str | None = None
        self._store_error: str | None = None
        self._started_t = time.monotonic()
        self._frames: deque[float] = deque(maxlen=64)  # capture times of recently processed frames (fps)
        registry = Registry(Path(cfg.models.model_dir) if cfg.models.model_dir else None)
        self.liveness = liveness if liveness is not None else resolve_liveness(cfg, registry)
        if cfg.profile == "kiosk":
            self.liveness = None  # every kiosk event says not_checked
        self.head = None
        if cfg.models.verifier:
            from edge.verifier import load_head

            self.head = load_head(cfg.models.verifier, registry)
        self.pipeline = FacePipeline(registry, detector=cfg.models.detector, embedder=cfg.models.embedder,
                                     threads=cfg.models.threads, min_face_px=cfg.models.min_face_px,
                                     extra_embedders=self.head.embedders if self.head is not None else ())
        self.store = open_store(cfg)
        self.access = AccessPolicy(cfg.access, metadata=self._metadata)
        self.policy = Policy(cfg.decision, self.access, liveness_required=self.liveness is not None)
        live_gate = gate_for(cfg, self.liveness) if self.liveness is not None else None
        self.engine = Engine(self.pipeline, self.policy, cfg, self.liveness, self.metrics, self.store, live_gate,
                             head=self.head)
        self.sink = sink if sink is not None else self._make_sink()
        self.capture = Capture(source or open_source(cfg.camera), cfg.camera.reconnect_min_s,
                               cfg.camera.reconnect_max_s)
        self.health_server: HealthServer | None = None
        self._describe_metrics()

    # -- construction helpers -------------------------------------------------------------------------------------
    def _make_sink(self) -> Any:
        if not self.cfg.mqtt.enabled:
            return LogSink(device_name(self.cfg), self.cfg.mqtt.door)
        from edge.mqtt.publisher import Publisher
        from edge.mqtt.settings import MqttSettings

        settings = MqttSettings.from_mapping(mqtt_values(self.cfg))
        return Publisher(settings, self, clock_synced)

    def _metadata(self, name: str) -> dict[str, Any] | None:
        ident = self.store.identity(name)
        return ident.metadata if ident else None

    @property
    def liveness_mode(self) -> str:
        return self.liveness.name if self.liveness is not None else "not_checked"

    def _describe_metrics(self) -> None:
        m, c = self.metrics, self.capture.stats
        m.describe("fps", "gauge", "frames processed per second (recent)")
        m.describe("stage_latency_ms", "histogram", "milliseconds per pipeline stage and per frame")
        m.describe("decision_latency_ms", "histogram", "capture of the deciding frame to the publish call")
        m.describe("decisions_total", "counter", "decisions by kind")
        m.describe("outbox_depth", "gauge", "events waiting in the MQTT outbox")
        m.describe("mqtt_reconnects_total", "counter", "MQTT reconnections")
        m.describe("mqtt_dropped_total", "counter", "events dropped because the outbox was full")
        m.describe("source_reconnects_total", "counter", "frame source reopenings after a loss")
        m.describe("frames_total", "counter", "frames read from the source")
        m.describe("frames_dropped_total", "counter", "frames replaced by a newer one before processing")
        m.describe("frames_corrupt_total", "counter", "frames that did not decode")
        m.describe("healthy", "gauge", "1 when camera, models and store are healthy (grants possible)")
        m.describe("gallery_identities", "gauge", "enrolled identities in the matcher")
        m.set("fps", self.fps)
        m.set("outbox_depth", lambda: float(self.sink.outbox_depth))
        m.set("mqtt_reconnects_total", lambda: float(self.sink.reconnects))
        m.set("mqtt_dropped_total", lambda: float(self.sink.dropped))
        m.set("source_reconnects_total", lambda: float(c.reconnects))
        m.set("frames_total", lambda: float(c.produced))
        m.set("frames_dropped_total", lambda: float(c.dropped))
        m.set("frames_corrupt_total", lambda: float(c.corrupt))
        m.set("healthy", lambda: float(not self.problems()))
        m.set("gallery_identities", lambda: float(len(self.engine.matcher)))
        for kind in DECISIONS:
            m.inc("decisions_total", 0, decision=kind)

    # -- health -----------------------------------------------------------------------------------------------------
    def fps(self) -> float:
        frames = list(self._frames)
        if len(frames) < 2 or time.monotonic() - frames[-1] > 2.0:
            return 0.0
        return (len(frames) - 1) / max(frames[-1] - frames[0], 1e-6)

    def problems(self) -> list[str]:
        out = []
        cap = self.capture
        now, stale_s = time.monotonic(), self.cfg.camera.stale_s
        if not cap.finished:
            if cap.last_frame_t is None:  # a grace period at start-up for the first frame
                bad = now - self._started_t > stale_s
            else:
                bad = not cap.connected or now - cap.last_frame_t > stale_s
            if bad:
                out.append(f"camera: {cap.last_error or 'no frames'}")
        if self._model_error:
            out.append(f"models: {self._model_error}")
        if self._store_error:
            out.append(f"store: {self._store_error}")
        return out

    def health(self) -> dict[str, Any]:
        problems = self.problems()
        return {"healthy": not problems, "problems": problems, "profile": self.cfg.profile,
                "liveness": self.liveness_mode, "fps": round(self.fps(), 2),
                "mqtt_connected": bool(self.sink.connected), "outbox_depth": self.sink.outbox_depth,
                "identities": len(self.engine.matcher), "frames": asdict(self.capture.stats)}

    def _check_store(self) -> None:
        try:
            self.store.embedders()
            self._store_error = None
        except Exception as exc:  # any failure to read the store is a reason to refuse grants
            self._store_error = str(exc) or type(exc).__name__

    # -- command handlers (called on the MQTT thread) ------------------------------------------------------------
    def reload(self) -> dict[str, Any]:
        n = self.engine.reload()
        log.info("gallery reloaded: %d identities", n)
        return {"ok": True, "identities": n, "templates": self.engine.matcher.rows}

    def enroll(self, name: str, image_jpeg: bytes, live_capture: bool) -> dict[str, Any]:
        from edge.enroll import Enroller

        gate = self.engine.live_gate
        if live_capture and gate is not None:
            # The checks a door decision makes (passive, k of n, the challenge), on a face seen after this command.
            seen = gate.wait_verified(self.cfg.liveness.challenge_timeout_s + ENROL_WAIT_S)
            if seen is None:
                return {"ok": False, "name": name, "reasons": ["liveness: no face in view passed the liveness checks"]}
            image, command = seen[0], "mqtt enroll (live capture, liveness checked)"
        elif live_capture:
            frame = self.capture.newest()
            if frame is None:
                return {"ok": False, "name": name, "reasons": ["no camera frame to enrol from"]}
            image, command = frame.image, "mqtt enroll (live capture, kiosk: no liveness check)"
        else:
            if len(image_jpeg) > MAX_ENROL_JPEG:
                return {"ok": False, "name": name, "reasons": ["image too large"]}
            decoded = cv2.imdecode(np.frombuffer(image_jpeg, np.uint8), cv2.IMREAD_COLOR)
            if decoded is None:
                return {"ok": False, "name": name, "reasons": ["unreadable image"]}
            image = decoded
            command = "mqtt enroll (administrator, from a file: no liveness check)"
            log.info("enrolling %r from a file sent by an administrator: no liveness check", name)
        enroller = Enroller(self.store, self.pipeline, matcher=self.engine.matcher)
        with self.engine.lock:
            judged = enroller.judge(f"mqtt:{name}", image=image)
            enroller.duplicates(name, [judged])
        try:
            ids = enroller.commit(name, [judged], command=command)
        except FacegateError as exc:
            return {"ok": False, "name": name, "reasons": [str(exc)]}
        return {"ok": bool(ids), "name": name, "templates": len(ids), "reasons": judged.reasons,
                "quality": judged.quality}

    def delete(self, name: str) -> dict[str, Any]:
        ok = self.store.delete(name, command="mqtt delete")
        return {"ok": ok, "name": name, **({} if ok else {"reasons": [f"unknown identity {name!r}"]})}

    def claim(self, name: str) -> None:
        if self.engine.claim(name):
            self.sink.publish_prompt("look at the camera")

    # -- running ------------------------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # run from a thread (tests, the demo): the caller stops it with stop()
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=self.reload, daemon=True).start())

    def _state(self, problems: list[str]) -> dict[str, Any]:
        return {"status": "online" if not problems else "degraded", "healthy": not problems, "problems": problems,
                "profile": self.cfg.profile, "liveness": self.liveness_mode, "identities": len(self.engine.matcher),
                "door": "locked"}

    def run(self) -> int:
        self._install_signals()
        self.sink.on_claim(self.claim)
        self.sink.start()
        self._started_t = time.monotonic()
        self.capture.start()
        if self.cfg.health.enabled:
            host, _, port = self.cfg.health.listen.rpartition(":")
            self.health_server = HealthServer(host.strip("[]"), int(port), self.metrics, self.health).start()
        if self.cfg.profile == "door":
            self.sink.publish_door("LOCK", None)  # a known state after a restart
        ping_every = watchdog_interval()
        self.notifier.ready(f"profile {self.cfg.profile}, liveness {self.liveness_mode}, "
                            f"{len(self.engine.matcher)} identities")
        log.info("facegate running: profile %s, liveness %s, source %s, %d identities", self.cfg.profile,
                 self.liveness_mode, self.capture.source.name, len(self.engine.matcher))
        last_ping = last_state_t = last_store = 0.0
        last_problems: list[str] | None = None
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if ping_every is not None and now - last_ping >= ping_every:
                    self.notifier.watchdog()  # from this loop: a hung pipeline stops the pings
                    last_ping = now
                if now - last_store >= STORE_CHECK_S:
                    self._check_store()
                    last_store = now
                problems = self.problems()
                if problems != last_problems or now - last_state_t >= STATE_EVERY_S:
                    if problems != last_problems and problems:
                        log.warning("unhealthy (no grants): %s", "; ".join(problems))
                    self.sink.publish_state(self._state(problems))
                    last_problems, last_state_t = problems, now
                frame = self.capture.get(timeout=0.5)
                if frame is None:
                    if self.capture.done:
                        log.info("frame source ended")
                        break
                    continue
                self._step(frame, self.problems())  # as of this frame, not of before the wait
        finally:
            self._shutdown()
        return 0

    def _step(self, frame: Frame, problems: list[str]) -> None:
        was_present = self.engine.face_present
        try:
            decisions = self.engine.process(frame, problems)
            self._model_error = None
        except Exception as exc:  # a model failing on a frame: unhealthy, no decision, keep running
            self._model_error = f"{type(exc).__name__}: {exc}"
            log.exception("frame %d failed", frame.index)
            return
        self._frames.append(frame.t_capture)
        if self.engine.face_present != was_present:
            self.sink.publish_face_present(self.engine.face_present)
            if self.engine.face_present:
                self.sink.publish_prompt(PROMPTS["present"])
        if self.engine.live_gate is not None:
            for text in self.engine.live_gate.take_prompts():  # the challenge's instruction, after the above
                self.sink.publish_prompt(text)
        for d in decisions:
            self._announce(d)

    def _announce(self, d: Decision) -> None:
        granted = d.decision == "granted"
        if granted and self.cfg.profile == "door":
            self.sink.publish_door("UNLOCK", self.cfg.door.unlock_s)  # first: the door is what the person waits for
        latency = (time.monotonic() - d.t_capture) * 1e3
        event = self.sink.publish_event(d.event(self.engine.scored_by.name, latency))
        self.sink.publish_prompt(PROMPTS[d.decision])
        self.metrics.inc("decisions_total", decision=d.decision)
        self.metrics.histogram("decision_latency_ms").observe(latency)
        log.info("decision %s: identity=%s score=%s liveness=%s frames=%d latency=%.1f ms%s", d.decision,
                 d.identity, None if d.score is None else round(d.score, 3), d.liveness, d.frames, latency,
                 f" ({d.reason})" if d.reason else "")
        if self.on_decision is not None:
            self.on_decision(d, event)

    def _shutdown(self) -> None:
        self.notifier.stopping("finishing")
        self.capture.stop()
        try:
            self.sink.stop(flush_timeout=5.0)
        finally:
            if self.health_server is not None:
                self.health_server.stop()
            self.store.close()
            self.notifier.close()
        log.info("facegate stopped")


# -- logging ----------------------------------------------------------------------------------------------------
class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
               "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
