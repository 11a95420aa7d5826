"""`facegate doctor`: is this device ready to run a door? Every check says what to fix.

It starts from the pre-deploy check (edge/preflight.py: the configuration, models, liveness, store, secrets,
TLS files, camera path, health port) and adds what only a live device can answer:
- models: each file present and hash-valid (a corrupted file names itself);
- liveness: installed, and calibrated on this site's faces or still at its a-priori threshold;
- store: readable, its key present and right when encrypted, how many identities;
- broker: reachable, TLS handshake and login accepted (a real connection, closed again);
- camera: opens and delivers a frame;
- clock: synchronised (events and door commands carry wall-clock times);
- disk: free space for the outbox in the state directory.
Exit 0 when nothing failed (warnings allowed), 1 when something must be fixed.
"""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.config import Config
from edge.errors import FacegateError

MIN_FREE_MB = 200  # the outbox holds up to outbox_limit events (a few hundred bytes each) plus SQLite's slack
BROKER_TIMEOUT_S = 5.0
CAMERA_TIMEOUT_S = 5.0


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, status: str, detail: str, fix: str = "") -> None:
        self.checks.append(Check(name, status, detail, fix))

    @property
    def ok(self) -> bool:
        return not any(c.status == "fail" for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [c.__dict__ for c in self.checks]}


def _models(cfg: Config, report: Report) -> Any:
    from edge.models.registry import Registry

    registry = Registry(Path(cfg.models.model_dir) if cfg.models.model_dir else None)
    try:  # "" (the default): the embedder the manifests mark default, as the daemon resolves it
        embedder = cfg.models.embedder or registry.default_embedder()
    except FacegateError as exc:
        report.add("model (default embedder)", "fail", str(exc), "set models.embedder")
        embedder = ""
    names = [cfg.models.detector, *([embedder] if embedder else []),
             *([cfg.models.verifier] if cfg.models.verifier else []),
             *([cfg.models.fusion] if cfg.models.fusion else [])]
    for name in dict.fromkeys(names):
        try:
            registry.runtime_file(registry.manifest(name))
            report.add(f"model {name}", "ok", "present, sha256 matches its manifest")
        except FacegateError as exc:
            report.add(f"model {name}", "fail", str(exc), "reinstall it (facegate models install …) or fix models.*")
            continue
        for t in registry.loosened_thresholds(name):
            report.add(f"threshold {name}.{t['threshold']}", "warn", t["text"],
                       f"if nobody here calibrated it on purpose, remove {t['file']}")
    return registry


def _liveness(cfg: Config, registry: Any, report: Report) -> None:
    if cfg.profile != "door":
        report.add("liveness", "ok", "kiosk profile: no liveness check (and no door commands)")
        return
    from edge.daemon import resolve_liveness

    try:
        check = resolve_liveness(cfg, registry)
    except FacegateError as exc:
        report.add("liveness", "fail", str(exc), "facegate models install minifasnet [--file …]")
        return
    m = registry.manifest(check.name) if check.name in registry.names() else None
    live = m.thresholds.get("live") if m is not None else None
    if live is not None and live.provenance.get("target_bpcer") is not None:
        report.add("liveness", "ok", f"{check.name}: calibrated (live iff score > {live.value:g}, "
                                     f"{live.provenance.get('date', 'undated')})")
    else:
        report.add("liveness", "warn", f"{check.name}: at its a-priori threshold, not calibrated on this site",
                   "facegate calibrate liveness --live DIR (this camera's captures of people at the door)")


def _store(cfg: Config, report: Report) -> None:
    from edge.daemon import open_store

    try:
        with open_store(cfg) as store:
            n = len(store.identities())
            report.add("store", "ok" if n else "warn", f"{store.path}: readable"
                       + (", encrypted (key accepted)" if store.encrypted else ", not encrypted") + f", {n} identities",
                       "" if n else "enrol people: facegate enroll --store … NAME PHOTO")
    except FacegateError as exc:
        report.add("store", "fail", str(exc), "check store.path and store.key_file (or the facegate.store-key "
                                              "credential)")


def _broker(cfg: Config, report: Report) -> None:
    if not cfg.mqtt.enabled:
        report.add("broker", "ok", "mqtt.enabled = false: events go to the log")
        return
    from edge.mqtt.publisher import Publisher

    try:
        settings = cfg.mqtt.resolved()
        probe = Publisher(settings)  # TLS files are loaded here: a bad one fails now, naming them
        client = probe._client
        probe.close()
    except FacegateError as exc:
        report.add("broker", "fail", str(exc), "fix the [mqtt] TLS files or secrets")
        return
    answer: dict[str, Any] = {}
    done = threading.Event()

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        answer["reason"] = reason
        done.set()

    client.on_connect = on_connect
    client.on_connect_fail = lambda *_: (answer.setdefault("reason", "connection failed"), done.set())
    client.on_disconnect = lambda *_: done.set()
    client.will_set(settings.topic("doctor"), None)  # not the daemon's availability Last Will
    where = f"{settings.host}:{settings.port}{' (TLS)' if settings.tls else ''}"
    try:
        client.connect_async(settings.host, settings.port, 10)
        client.loop_start()
        done.wait(BROKER_TIMEOUT_S)
    finally:
        client.disconnect()
        client.loop_stop()
    reason = answer.get("reason")
    if reason is not None and not isinstance(reason, str) and not reason.is_failure:
        report.add("broker", "ok", f"{where}: connected and accepted")
    else:
        report.add("broker", "fail", f"{where}: {reason or f'no answer within {BROKER_TIMEOUT_S:g} s'}",
                   "is the broker running and reachable (and, under systemd, allowed by IPAddressAllow=)? are "
                   "the user name, password and certificates right?")


def _camera(cfg: Config, report: Report) -> None:
    from edge.sources import open_source

    try:
        source = open_source(cfg.camera)
        source.open()
    except (FacegateError, OSError) as exc:
        report.add("camera", "fail", str(exc), "check camera.source (a /dev/video device, RTSP URL, file or "
                                               "folder) and, under systemd, DeviceAllow= / SupplementaryGroups=")
        return
    got: list[Any] = []
    reader = threading.Thread(target=lambda: got.append(source.read()), daemon=True)
    start = time.monotonic()
    reader.start()
    reader.join(CAMERA_TIMEOUT_S)
    source.close()
    frame = got[0] if got else None
    if frame is None:
        report.add("camera", "fail", f"{cfg.camera.source}: opened but no frame within {CAMERA_TIMEOUT_S:g} s",
                   "is the camera delivering (light, cable, stream URL)?")
    else:
        h, w = frame[0].shape[:2]
        report.add("camera", "ok", f"{cfg.camera.source}: {w}×{h} frame in {time.monotonic() - start:.2f} s")


def _clock(report: Report) -> None:
    from edge.daemon import clock_synced

    if clock_synced():
        report.add("clock", "ok", "synchronised")
    else:
        report.add("clock", "warn", "not synchronised: events and door commands carry clock_synced = false",
                   "enable NTP (systemd-timesyncd, chrony)")


def _disk(cfg: Config, report: Report) -> None:
    from edge.paths import state_dir

    where = Path(cfg.mqtt.outbox_path).parent if cfg.mqtt.outbox_path else state_dir()
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free_mb = shutil.disk_usage(probe).free / 2**20
    status = "ok" if free_mb >= MIN_FREE_MB else "fail"
    report.add("disk", status, f"{where}: {free_mb:.0f} MB free for the outbox",
               "" if status == "ok" else f"free at least {MIN_FREE_MB} MB")


def diagnose(cfg: Config, camera: bool = True, broker: bool = True) -> Report:
    from edge.preflight import check

    report = Report()
    pre = check(cfg)
    for p in pre.problems:
        report.add("configuration", "fail", p, "fix it in the configuration file")
    for w in pre.warnings:
        report.add("configuration", "warn", w)
    registry = _models(cfg, report)
    _liveness(cfg, registry, report)
    _store(cfg, report)
    if broker:
        _broker(cfg, report)
    if camera:
        _camera(cfg, report)
    _clock(report)
    _disk(cfg, report)
    return report
