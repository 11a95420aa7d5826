"""`facegate run --check`: the pre-deploy check.

It builds everything `facegate run` builds, short of opening the camera and connecting to the broker, and
reports every problem at once (exit 2) instead of the first: models resolved and hash-checked, liveness present
for the door profile, the face-unlock switch's file readable (door profile), the store readable (key present and
right if encrypted), access rules naming enrolled identities, secrets readable and long enough, TLS files usable,
the camera source present where it is a file, folder or device, the health port free, the admin page's extra and
an account to log in with when it is enabled, and in fleet mode the hub's public key, the site key and the hub's
TLS files. Each part is checked on its own so one broken part does not hide
the next; when all pass, the whole daemon is built once more exactly as `run` builds it and closed again, so a
configuration that passes the check is one that starts.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from edge.config import Config
from edge.errors import FacegateError

T = TypeVar("T")


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def step(self, what: str, fn: Callable[[], T]) -> T | None:
        """Run one check; its failure is recorded (never raised), with the part it concerns."""
        try:
            return fn()
        except FacegateError as exc:
            self.problems.append(str(exc))
        except (OSError, ValueError) as exc:
            self.problems.append(f"{what}: {exc}")
        except Exception as exc:  # a bug, but the check must still report the rest
            self.problems.append(f"{what}: internal error while checking ({type(exc).__name__}: {exc})")
        return None


def _camera(cfg: Config) -> None:
    from edge.config import ConfigError
    from edge.sources import open_source

    spec = cfg.camera.source.strip()
    device = f"/dev/video{spec}" if spec.isdigit() else spec if spec.startswith("/dev/") else None
    if device is not None and not os.path.exists(device):
        raise ConfigError(f"camera.source: {device} does not exist (no camera attached, or another index)")
    open_source(cfg.camera)  # files and folders must exist; nothing is opened yet


def _store(cfg: Config, report: Report) -> None:
    from edge.config import ConfigError
    from edge.daemon import access_rule_findings, open_store
    from edge.paths import state_dir

    path = Path(cfg.store.path) if cfg.store.path else state_dir() / "facegate.db"
    if not path.exists() and cfg.store.create:
        parent = next((p for p in path.parents if p.exists()), None)
        if parent is None or not os.access(parent, os.W_OK):
            raise ConfigError(f"store.path: cannot create {path} (no writable folder above it)")
        report.warnings += [f"store.path: {path} does not exist yet; it is created empty at start (store.create)"]
        return
    with open_store(cfg) as store:
        errors, warnings = access_rule_findings(cfg, store)
        errors += _embedder_findings(cfg, store)
    report.problems += errors
    report.warnings += warnings


def _embedder_findings(cfg: Config, store: Any) -> list[str]:
    """A store whose templates were all made by another embedder than the one configured recognises nobody:
    e.g. enrolled with fp32 "sface" before the default became its int8 twin."""
    from edge.models.registry import Registry

    counts: dict[str, int] = {}
    for name, _, n in store.embedders():
        counts[name] = counts.get(name, 0) + n
    registry = Registry(Path(cfg.models.model_dir) if cfg.models.model_dir else None)
    embedder = cfg.models.embedder or registry.default_embedder()
    if not counts or embedder in counts:
        return []
    held = ", ".join(f"{n} under {e}" for e, n in sorted(counts.items()))
    return [f"models.embedder: the store holds templates {held} and none under {embedder!r}, so nobody would "
            f"be recognised; run `facegate store reembed --embedder {embedder}` (needs kept crops) or re-enrol, "
            f"or set models.embedder to one of {sorted(counts)}"]


def _mqtt(cfg: Config) -> None:
    from edge.mqtt.publisher import create

    if not cfg.mqtt.enabled:
        return
    # Secrets read and measured, TLS files loaded into a context, the outbox folder writable: everything but
    # the connection itself.
    create(cfg).close()


def _door(cfg: Config) -> None:
    """The face-unlock switch's file: readable if it exists, and its folder writable (the switch is saved there
    before it takes effect)."""
    from edge.config import ConfigError
    from edge.door import face_unlock_path, read_face_unlock

    path = face_unlock_path(cfg.door)
    read_face_unlock(path)
    folder = next((p for p in (path.parent, *path.parent.parents) if p.exists()), None)
    if folder is None or not os.access(folder, os.W_OK):
        raise ConfigError(f"door.face_unlock_path: cannot write {path} (no writable folder above it)")


def _web(cfg: Config) -> None:
    """The admin page ([web] enabled): its extra installed and an account to log in with. The file is only read
    here; `facegate web --create-admin NAME` creates it."""
    from edge.config import ConfigError
    from edge.paths import state_dir
    from edge.web.server import WEB_HINT

    for module in ("starlette", "uvicorn", "jinja2", "python_multipart"):
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"web.enabled: {WEB_HINT} ({module} is missing)")
    from edge.web.accounts import open_accounts

    path = Path(cfg.web.accounts_path) if cfg.web.accounts_path else state_dir() / "web-accounts.db"
    names: list[str] = []
    if path.exists():
        accounts = open_accounts(cfg.web)
        try:
            names = accounts.names()
        finally:
            accounts.close()
    if not names:
        raise ConfigError(f"web.enabled: no account in {path} to log in to the admin page with; create one with "
                          "`facegate web --create-admin NAME` (the password is read from standard input)")


def _plain_http_hub(url: str) -> list[str]:
    """Documents from the hub are signed and templates sealed, so plain HTTP cannot forge a gallery; but whoever
    is on the path sees which door asks and when, and can hold updates back until max_gallery_age_s runs out."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname in ("127.0.0.1", "::1", "localhost"):
        return []
    return [f"fleet.hub_url: {url} is plain HTTP: the hub's documents are signed, but anyone on the path sees "
            f"the door's requests and can delay revocations up to fleet.max_gallery_age_s; use https:// with "
            f"fleet.hub_ca"]


def _web_exposure(cfg: Config) -> list[str]:
    """The admin page shows faces and names: on a network address it speaks plain HTTP to anyone who can reach
    it, and "*" in web.allowed_hosts turns the DNS-rebinding check off."""
    warnings = []
    host = cfg.web.listen.rpartition(":")[0].strip("[]")
    if host not in ("127.0.0.1", "::1", "localhost"):
        warnings.append(f"web.listen: {cfg.web.listen} serves the admin page over plain HTTP beyond this machine; "
                        f"keep it on 127.0.0.1 behind a TLS reverse proxy (deploy/web-proxy.md)")
    if "*" in cfg.web.allowed_hosts:
        warnings.append("web.allowed_hosts: \"*\" answers to any host name, so a web page elsewhere can reach the "
                        "admin page through a visitor's browser (DNS rebinding); list the proxy's name instead")
    return warnings


def _models(cfg: Config, registry: Any) -> None:
    from edge.match.factory import make_scorer
    from edge.pipeline import FacePipeline

    extra = make_scorer(registry, cfg.models.embedder, cfg.models.verifier, fusion=cfg.models.fusion).embedders
    FacePipeline(registry, detector=cfg.models.detector, embedder=cfg.models.embedder, threads=cfg.models.threads,
                 min_face_px=cfg.models.min_face_px, rescue=cfg.models.rescue, extra_embedders=extra)


def check(cfg: Config) -> Report:
    from edge.daemon import Daemon, bind_health, resolve_liveness
    from edge.decide import AccessPolicy
    from edge.health import Metrics

    report = Report()
    from edge.models.registry import Registry

    registry = report.step("models.model_dir", lambda: Registry(Path(cfg.models.model_dir) if cfg.models.model_dir
                                                                 else None))
    if registry is not None:
        report.step("models", lambda: _models(cfg, registry))
    if registry is not None and cfg.profile == "door":
        report.step("liveness", lambda: resolve_liveness(cfg, registry))
    if cfg.profile == "door":
        report.step("door", lambda: _door(cfg))
    report.step("store", lambda: _store(cfg, report))
    report.step("access", lambda: AccessPolicy(cfg.access))
    report.step("mqtt", lambda: _mqtt(cfg))
    if cfg.fleet.enabled:
        from edge.fleet.door import check as fleet_check

        report.step("fleet", lambda: fleet_check(cfg))
        report.warnings += _plain_http_hub(cfg.fleet.hub_url)
    report.step("camera", lambda: _camera(cfg))
    if cfg.web.enabled:
        report.step("web", lambda: _web(cfg))
        report.warnings += _web_exposure(cfg)
    server = report.step("health", lambda: bind_health(cfg, Metrics(), dict))
    if server is not None:
        server.close()
    if not report.problems:
        # The parts pass on their own: now the daemon exactly as `run` builds it (camera and broker untouched;
        # with store.create an empty store is created, as `run` would).
        daemon = report.step("start", lambda: Daemon(cfg))
        if daemon is not None:
            daemon.close()
    return report

