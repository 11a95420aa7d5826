"""The access daemon: frames → faces → tracks → quality → liveness → embed → match → decide → MQTT.

Threads: the capture thread (newest frame only), the decision loop (the caller's thread, normally the main
one), the MQTT client's own thread (commands arrive there), and the /healthz + /metrics server.

Fail-secure: no grant while the camera, the models or the store are unhealthy — such a grant is turned
into `denied` with the reason, and the door is never sent UNLOCK. A store that cannot be followed (deleted,
replaced or damaged under the daemon: edge/match/gallery.py) stops decisions altogether until it can be read
again, since a deletion the daemon cannot see must not be granted. The lock controller keeps the door
locked unless it receives UNLOCK, and relocks on its own after the UNLOCK's duration (deploy/INTEGRATION.md),
so a daemon that stops, hangs (the systemd watchdog restarts it) or loses its broker leaves the door locked.
The door profile's door (commands, retained door state, the face-unlock switch) is edge/door.py.

The retained state says "starting" (healthy: null) until the first frame has been processed: before that
nothing is known about the camera or the models.

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
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edge.config import CREDENTIAL_STORE_KEY, Config, ConfigError
from edge.decide import DECISIONS, AccessPolicy, Decision, Policy
from edge.decision_log import DecisionLog, open_decision_log
from edge.door import DISABLED_REASON, DoorControl
from edge.engine import Engine
from edge.errors import FacegateError
from edge.health import HealthServer, Metrics
from edge.liveness import INSTALL_HINT, LivenessCheck, installed, resolve
from edge.liveness.temporal import gate_for
from edge.match.factory import make_scorer
from edge.models.registry import Registry
from edge.paths import state_dir
from edge.pipeline import FacePipeline
from edge.sdnotify import Notifier, watchdog_interval
from edge.sinks import EventSink, make_sink
from edge.sources import Capture, Frame, Source, open_source
from edge.store import StoreError
from edge.store.db import Store
from edge.vision.quality import PROMPTS as QUALITY_PROMPTS

log = logging.getLogger("facegate.daemon")

PROMPTS = {"present": "look at the camera", "granted": "granted", "unknown": "not recognised",
           "spoof": "not recognised", "denied": "access denied"}
STORE_CHECK_S = 10.0
PROMPT_HOLD_S = 1.0
STATE_EVERY_S = 60.0
MAX_ENROL_JPEG = 12 * 1024 * 1024
ENROL_WAIT_S = 10.0  # live-capture enrolment: time to step up, beyond the challenge's own timeout


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


# -- the daemon -------------------------------------------------------------------------------------------------
def store_location(cfg: Config) -> tuple[Path, bytes | None]:
    """The store's path and its key (key file, systemd credential, $FACEGATE_STORE_KEY; None: unencrypted)."""
    from edge.store.crypto import load_key

    path = Path(cfg.store.path) if cfg.store.path else state_dir() / "facegate.db"
    key_file = cfg.store.key_file or None
    if key_file is None:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        cred = Path(directory) / CREDENTIAL_STORE_KEY if directory else None
        key_file = str(cred) if cred is not None and cred.is_file() else None
    return path, load_key(key_file, store=path)


def open_store(cfg: Config, create: bool | None = None, keep_crops: bool = False) -> Store:
    """The store [store] names. A fleet door's store is created when missing: the hub fills it, and until then
    the door fails secure (a "gallery" problem)."""
    path, key = store_location(cfg)
    if create is None:
        create = cfg.store.create or cfg.fleet.enabled
    return Store(path, key=key, create=create, keep_crops=keep_crops)


def resolve_liveness(cfg: Config, registry: Registry) -> LivenessCheck | None:
    """The liveness check the profile asks for; the door profile refuses to start without one."""
    if cfg.liveness_mode == "none":
        return None
    spec = cfg.liveness.model
    if spec == "auto" and not installed(registry):
        raise ConfigError("profile \"door\" requires liveness, but no liveness model is installed: "
                          + INSTALL_HINT.format(model_dir=registry.model_dir))
    return resolve(registry, spec, cfg.liveness.threads)  # the same check `facegate liveness` runs


def bind_health(cfg: Config, metrics: Metrics, health: Callable[[], dict[str, Any]]) -> HealthServer | None:
    """The /healthz + /metrics server, bound (not yet serving); a port that cannot be bound names the key."""
    if not cfg.health.enabled:
        return None
    host, _, port = cfg.health.listen.rpartition(":")
    try:
        return HealthServer(host.strip("[]"), int(port), metrics, health)
    except (OSError, OverflowError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"health.listen: cannot listen on {cfg.health.listen!r} ({why})") from None


def access_rule_findings(cfg: Config, store: Store) -> tuple[list[str], list[str]]:
    """(errors, warnings) of the time-window rules against the enrolled identities. A rule whose name misses an
    identity only by case or surrounding spaces (`Tony = []` meant for `tony`) would silently not apply: an
    error. A rule naming nobody enrolled is a warning, repeated on every reload: the person may come later."""
    names = {i.name for i in store.identities()}
    folded: dict[str, list[str]] = {}
    for n in names:
        folded.setdefault(n.strip().casefold(), []).append(n)
    errors, warnings = [], []
    for rule in cfg.access.windows:
        if rule in names:
            continue
        near = folded.get(rule.strip().casefold())
        if near:
            errors.append(f"access.windows.{rule}: no enrolled identity is named {rule!r}, but "
                          f"{', '.join(repr(n) for n in sorted(near))} is: identity names are exact; rename the "
                          f"rule, or it does not apply")
        else:
            warnings.append(f"access.windows.{rule}: no enrolled identity has this name; the rule applies to "
                            f"nobody until one is enrolled under exactly this name")
    return errors, warnings


def check_access_rules(cfg: Config, store: Store) -> list[str]:
    """The warnings of access_rule_findings; its errors raise ConfigError."""
    errors, warnings = access_rule_findings(cfg, store)
    if errors:
        raise ConfigError("; ".join(errors))
    return warnings


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
        self._first_frame = False  # "starting" until a frame has been processed
        self._last_step_t = 0.0
        self._quality_prompt: str | None = None  # the last prompt shown for the face in view, and when
        self._quality_prompt_t = 0.0
        self._frames: deque[float] = deque(maxlen=64)  # capture times of recently processed frames (fps)
        self.health_server: HealthServer | None = None
        self.web_server: Any = None  # the admin page, when [web] enabled (edge/web/server.py)
        self.store: Store | None = None  # type: ignore[assignment]
        self.sink: Any = None
        self.scorer: Any = None
        self.fleet: Any = None  # edge.fleet.door.DoorSync in fleet mode
        self.decision_log: DecisionLog | None = None
        self.door: DoorControl | None = None
        try:
            self._build(cfg, sink, liveness, source)
        except BaseException:
            self.close()  # nothing half-built stays open: a bound port, the store, the outbox
            raise

    def _build(self, cfg: Config, sink: Any, liveness: LivenessCheck | None, source: Source | None) -> None:
        # The health port first: a taken port is a configuration error, found before anything is published.
        self.health_server = bind_health(cfg, self.metrics, self.health)
        if cfg.web.enabled:
            from edge.web.server import bind_web

            self.web_server = bind_web(cfg)  # likewise a taken web port, or a missing [web] extra
        registry = Registry(Path(cfg.models.model_dir) if cfg.models.model_dir else None)
        self.liveness = liveness if liveness is not None else resolve_liveness(cfg, registry)
        if cfg.profile == "kiosk":
            self.liveness = None  # every kiosk event says not_checked
        store_path, key = store_location(cfg)
        # A fleet door's store is created when missing: the hub fills it (no grants until it has).
        self.store = Store(store_path, key=key, create=cfg.store.create or cfg.fleet.enabled)
        self.decision_log = open_decision_log(cfg.web, key)
        if self.decision_log is not None:
            # Identities deleted while no daemon ran leave the log now; crops past their time go too.
            self.decision_log.forget_absent(i.name for i in self.store.identities())
            self.decision_log.purge_crops(cfg.web.keep_unknown_crops_h)
        for warning in check_access_rules(cfg, self.store):  # errors (a rule that misses by case) raise here
            log.warning("%s", warning)
        # The one scorer (edge/match): the embedder's cosine, or a verification head over its embedders.
        self.scorer = make_scorer(registry, cfg.models.embedder, cfg.models.verifier, self.store, cfg.decision.fpir,
                                  cfg.models.fusion, cfg.decision.templates)
        for name in dict.fromkeys((self.scorer.manifest.name, *self.scorer.embedders)):
            for t in registry.loosened_thresholds(name):  # an override that lets more people in: said each start
                log.warning("%s", t["text"])
        self.pipeline = FacePipeline(registry, detector=cfg.models.detector, embedder=cfg.models.embedder,
                                     threads=cfg.models.threads, min_face_px=cfg.models.min_face_px,
                                     rescue=cfg.models.rescue,
                                     extra_embedders=self.scorer.embedders)
        self.access = AccessPolicy(cfg.access, metadata=self._metadata)
        self.policy = Policy(cfg.decision, self.access, liveness_required=self.liveness is not None)
        live_gate = gate_for(cfg, self.liveness) if self.liveness is not None else None
        self.engine = Engine(self.pipeline, self.scorer, self.policy, cfg, self.metrics, self.liveness, live_gate)
        self.sink: EventSink = sink if sink is not None else make_sink(cfg, self, clock_synced)
        self.engine.on_forget = self._forget  # a deletion seen in the store also empties the outbox and the log
        if self.decision_log is not None and cfg.web.keep_unknown_crops_h > 0:
            self.engine.keep_crop = lambda d: d.decision == "unknown"
        if cfg.fleet.enabled:
            from edge.fleet.door import DoorSync

            # The models this door scores with: entries of other models are refused, never mixed in.
            models = {e: registry.manifest(e).sha256 for e in self.scorer.embedders}
            self.fleet = DoorSync(cfg, models=models)
        if cfg.profile == "door":
            # The switch's persisted state is read here (a damaged file stops the start, naming its key) and
            # applied to the policy before any frame is decided.
            self.door = DoorControl(self.sink, cfg.door, on_switch=self._face_unlock_switched)
        self.capture = Capture(source or open_source(cfg.camera), cfg.camera.reconnect_min_s,
                               cfg.camera.reconnect_max_s, every_frame=cfg.camera.every_frame)
        self._describe_metrics()
        if self.web_server is not None:
            from edge.web.services import Services

            self.web_server.mount(Services.of_daemon(self))

    def close(self) -> None:
        """Release what construction opened, for a daemon that will not run (`run --check`, a failed start)."""
        if self.web_server is not None:
            self.web_server.close()
        if self.decision_log is not None:
            self.decision_log.close()
        if self.door is not None:
            self.door.close()
        if self.health_server is not None:
            self.health_server.close()
        if self.fleet is not None:
            self.fleet.stop()
        if self.sink is not None:
            self.sink.close()
        if self.scorer is not None and self.scorer.gallery is not None:
            self.scorer.gallery.close()
        if self.store is not None:
            self.store.close()

    # -- construction helpers -------------------------------------------------------------------------------------
    def _forget(self, name: str) -> None:
        self.sink.forget_identity(name)
        if self.decision_log is not None:
            try:
                self.decision_log.forget(name)
            except FacegateError as exc:
                log.error("decision log: %s", exc)

    def _metadata(self, name: str) -> dict[str, Any] | None:
        ident = self.store.identity(name)
        return ident.metadata if ident else None

    def _face_unlock_switched(self, enabled: bool) -> None:
        self.policy.blocked = None if enabled else DISABLED_REASON

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
        m.describe("source_reconnects_total", "counter",
                   "attempts to reopen the frame source after a failed open or a loss (failed attempts too)")
        m.describe("frames_total", "counter", "frames read from the source")
        m.describe("frames_dropped_total", "counter", "frames replaced by a newer one before processing")
        m.describe("frames_corrupt_total", "counter", "frames that did not decode")
        m.describe("source_connected", "gauge", "1 while the frame source is open and delivering")
        m.describe("quality_rejections_total", "counter",
                   "faces the quality gate kept from decisions, by reason (one count per face, frame and reason)")
        m.describe("healthy", "gauge", "1 when camera, models and store are healthy (grants possible); 0 before "
                                       "the first frame")
        m.describe("gallery_identities", "gauge", "enrolled identities in the matcher")
        m.set("fps", self.fps)
        m.set("outbox_depth", lambda: float(self.sink.outbox_depth))
        m.set("mqtt_reconnects_total", lambda: float(self.sink.reconnects))
        m.set("mqtt_dropped_total", lambda: float(self.sink.dropped))
        m.set("source_reconnects_total", lambda: float(c.reconnects))
        m.set("frames_total", lambda: float(c.produced))
        m.set("frames_dropped_total", lambda: float(c.dropped))
        m.set("frames_corrupt_total", lambda: float(c.corrupt))
        m.set("source_connected", lambda: float(self.capture.connected))
        m.set("healthy", lambda: float(self.status(self.problems()) == "online"))
        m.set("gallery_identities", lambda: float(self.engine.identities))
        for kind in DECISIONS:
            m.inc("decisions_total", 0, decision=kind)
        for reason in QUALITY_PROMPTS:
            m.inc("quality_rejections_total", 0, reason=reason)

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
        if self.fleet is not None:
            gallery = self.fleet.problem()  # fleet.max_gallery_age_s: fail secure on an old gallery
            if gallery:
                out.append(gallery)
        return out

    def status(self, problems: list[str]) -> str:
        """"degraded" with problems, else "starting" until the first frame was processed, then "online"."""
        return "degraded" if problems else "online" if self._first_frame else "starting"

    def health(self) -> dict[str, Any]:
        problems = self.problems()
        status = self.status(problems)
        return {"healthy": None if status == "starting" else not problems, "status": status, "problems": problems,
                "profile": self.cfg.profile,
                "liveness": self.liveness_mode, "fps": round(self.fps(), 2),
                "mqtt_connected": bool(self.sink.connected), "outbox_depth": self.sink.outbox_depth,
                "identities": self.engine.identities, "frames": asdict(self.capture.stats),
                **({"fleet": {k: v for k, v in self.fleet.status().items() if k != "refused"}}
                   if self.fleet is not None else {})}

    def _check_store(self) -> None:
        """The store's file checked while no frame follows it (a camera that is down): the same fault either way."""
        try:
            self.store.check_file()
        except StoreError as exc:
            self._store_fault(str(exc))
            return
        self._store_fault(None)

    def _store_fault(self, error: str | None) -> None:
        """Record the store's health: one log line when a fault appears or changes, one when it clears."""
        if error == self._store_error:
            return
        if error is not None:
            log.error("store fault (no decisions until it is fixed): %s", error)
        else:
            log.warning("store readable again: %s", self._store_error)
        self._store_error = error

    # -- command handlers (called on the MQTT thread) ------------------------------------------------------------
    def reload(self) -> dict[str, Any]:
        n = self.engine.reload()
        log.info("gallery reloaded: %d identities", n)
        try:
            for warning in check_access_rules(self.cfg, self.store):
                log.warning("%s", warning)
        except ConfigError as exc:
            log.error("%s", exc)
        return {"ok": True, "identities": n, "templates": self.engine.gallery.rows}

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
            from edge.imageio import decode_bgr

            try:
                image = decode_bgr(image_jpeg, "the enrolment image")  # the pixel limit before decoding
            except FacegateError as exc:
                return {"ok": False, "name": name, "reasons": [str(exc)]}
            command = "mqtt enroll (administrator, from a file: no liveness check)"
            log.info("enrolling from a file sent by an administrator: no liveness check")
        enroller = Enroller(self.store, self.pipeline, scorer=self.scorer)
        with self.engine.lock:
            judged = enroller.judge(f"mqtt:{name}", image=image)
            enroller.guard(name, [judged])
        try:
            ids = enroller.commit(name, [judged], command=command)
        except FacegateError as exc:
            return {"ok": False, "name": name, "reasons": [str(exc)]}
        return {"ok": bool(ids) or judged.already, "name": name, "templates": len(ids),
                "already_enrolled": judged.already, "reasons": judged.reasons, "quality": judged.quality}

    def delete(self, name: str) -> dict[str, Any]:
        ok = self.store.delete(name, command="mqtt delete")
        return {"ok": ok, "name": name, **({} if ok else {"reasons": [f"unknown identity {name!r}"]})}

    @property
    def face_unlock(self) -> bool | None:
        """The door's face-unlock switch; None outside the door profile (no door, no switch)."""
        return self.door.face_unlock if self.door is not None else None

    def set_face_unlock(self, enabled: bool, source: str = "admin page") -> bool:
        """Suspend (False) or resume (True) face unlock from the admin page: the same switch as Home Assistant's
        (edge/door.py: persisted, grants denied while off, published retained on face_unlock). Returns the new
        setting."""
        if self.door is None:
            raise FacegateError(f"face unlock is a door-profile switch; this daemon runs profile {self.cfg.profile}")
        self.door.set_face_unlock(enabled, source=source)
        return self.door.face_unlock

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
        """The retained state document, always whole. `healthy` is null while "starting" (no frame yet)."""
        status = self.status(problems)
        doc = {"status": status, "healthy": None if status == "starting" else not problems, "problems": problems,
               "profile": self.cfg.profile, "liveness": self.liveness_mode, "identities": self.engine.identities}
        if self.door is not None:
            doc["face_unlock"] = self.door.face_unlock
        return doc

    def run(self) -> int:
        self._install_signals()
        self.sink.on_claim(self.claim)
        if self.door is not None:
            self.door.attach()  # the start-up LOCK once connected, Home Assistant's lock and switch
        self.sink.start()
        if self.fleet is not None:
            self.fleet.start()
        self._started_t = time.monotonic()
        self.capture.start()
        if self.health_server is not None:
            self.health_server.start()
        if self.web_server is not None:
            self.web_server.start()
        ping_every = watchdog_interval()
        self.notifier.ready(f"profile {self.cfg.profile}, liveness {self.liveness_mode}, "
                            f"{self.engine.identities} identities")
        log.info("facegate running: profile %s, liveness %s, source %s, %d identities", self.cfg.profile,
                 self.liveness_mode, self.capture.source.name, self.engine.identities)
        last_ping = last_state_t = last_store = last_purge = 0.0
        last_problems: list[str] | None = None
        last_doc: dict[str, Any] | None = None
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if ping_every is not None and now - last_ping >= ping_every:
                    self.notifier.watchdog()  # from this loop: a hung pipeline stops the pings
                    last_ping = now
                if now - last_store >= STORE_CHECK_S and now - self._last_step_t >= STORE_CHECK_S:
                    self._check_store()  # frames follow the store themselves; this covers a camera that is down
                    last_store = now
                if now - last_purge >= STORE_CHECK_S:
                    self._purge_crops()  # unknown faces' crops older than [web] keep_unknown_crops_h
                    last_purge = now
                problems = self.problems()
                doc = self._state(problems)
                if doc != last_doc or now - last_state_t >= STATE_EVERY_S:  # a change of any field, at once
                    if problems != last_problems and problems:
                        log.warning("unhealthy (no grants): %s", "; ".join(problems))
                    self.sink.publish_state(doc)
                    last_problems, last_doc, last_state_t = problems, doc, now
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
        self._last_step_t = time.monotonic()
        try:
            decisions = self.engine.process(frame, problems)
        except (StoreError, sqlite3.Error) as exc:
            # The store cannot be followed (deleted, replaced or damaged under the daemon): a store problem, not a
            # model one, logged once; nothing is decided until it can be read again (fail secure).
            self._store_fault(str(exc) if isinstance(exc, StoreError) else f"{type(exc).__name__}: {exc}")
            return
        except Exception as exc:  # a model failing on a frame: unhealthy, no decision, keep running
            error = f"{type(exc).__name__}: {exc}"
            if error != self._model_error:  # one traceback per fault, not one per frame
                log.exception("frame %d failed", frame.index)
            self._model_error = error
            return
        self._model_error = None
        self._store_fault(None)
        self._first_frame = True
        self._frames.append(frame.t_capture)
        if self.engine.face_present != was_present:
            self.sink.publish_face_present(self.engine.face_present)
        self._prompt_quality(was_present)
        if self.engine.live_gate is not None:
            for text in self.engine.live_gate.take_prompts():  # the challenge's instruction, after the above
                self.sink.publish_prompt(text)
        for d in decisions:
            self._announce(d)

    def _purge_crops(self) -> None:
        if self.decision_log is None:
            return
        try:
            self.decision_log.purge_crops(self.cfg.web.keep_unknown_crops_h)
        except FacegateError as exc:
            log.error("decision log: %s", exc)

    def _log_decision(self, d: Decision, event: dict[str, Any], crop: bytes | None) -> None:
        if self.decision_log is None:
            return
        try:
            self.decision_log.add(event, margin=d.margin, candidate=d.candidate, crop=crop)
        except FacegateError as exc:  # the door does not wait on the admin page's log
            log.error("decision log: %s", exc)

    def _prompt_quality(self, was_present: bool) -> None:
        """What the person in front of the camera should do: "look at the camera" when a face appears, or, while
        the quality gate keeps every face in view from a decision, what would fix it ("face the camera", "come
        closer"). Sent when it changes, at most once per PROMPT_HOLD_S (a head at the edge of the yaw limit must
        not make the display flicker), and never every frame."""
        if not self.engine.face_present:
            self._quality_prompt = None
            return
        reason = self.engine.blocking_reason
        text = QUALITY_PROMPTS.get(reason, PROMPTS["present"]) if reason else PROMPTS["present"]
        now = time.monotonic()
        if was_present and (text == self._quality_prompt or now - self._quality_prompt_t < PROMPT_HOLD_S):
            return
        self.sink.publish_prompt(text)
        self._quality_prompt, self._quality_prompt_t = text, now

    def _announce(self, d: Decision) -> None:
        crop = self.engine.take_crop(d.track)
        granted = d.decision == "granted"
        if granted and self.door is not None:
            # First: the door is what the person waits for. Dropped, not sent late, if the broker is not
            # responsive within door.max_delay_ms (the event still says granted; the door stays locked).
            self.door.grant(decided_at=time.monotonic())
        latency = (time.monotonic() - d.t_capture) * 1e3
        event = self.sink.publish_event(d.event(self.scorer.name, latency))
        self._log_decision(d, event, crop)
        self.sink.publish_prompt(PROMPTS[d.decision])
        self.metrics.inc("decisions_total", decision=d.decision)
        self.metrics.histogram("decision_latency_ms").observe(latency)
        log.info("decision %s: identity=%s score=%s liveness=%s frames=%d latency=%.1f ms%s", d.decision,
                 self.engine.log_name(d.identity), None if d.score is None else round(d.score, 3), d.liveness,
                 d.frames, latency, f" ({d.reason})" if d.reason else "")
        log.debug("decision %s: identity name %r", d.decision, d.identity)
        if self.on_decision is not None:
            self.on_decision(d, event)

    def _shutdown(self) -> None:
        self.notifier.stopping("finishing")
        self.capture.stop()
        if self.web_server is not None:
            self.web_server.stop()
        if self.door is not None:
            self.door.close()
        try:
            if self.fleet is not None:
                self.fleet.stop()
                self.fleet = None
            self.sink.stop(flush_timeout=5.0)
        finally:
            if self.health_server is not None:
                self.health_server.stop()
            if self.decision_log is not None:
                self.decision_log.close()
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
