"""The daemon's configuration: one TOML file, typed and validated, with defaults that need no setup.

Every key has a default (see deploy/facegate.example.toml, which documents them all), so an empty file, or
none, is a valid configuration: the SQLite store in the state directory, the models of the installed
packages, a broker on localhost. A wrong key or value is refused with its dotted name
(`decision.k: expected an integer, got 'three'`), never ignored: a typo in an access-control setting must
not silently fall back to a default.

Secrets (store key, MQTT password, command secret) should not sit in the file: each has a `*_file` key and,
under systemd, is read from `$CREDENTIALS_DIRECTORY/<credential>` (LoadCredential=) when no file is named.
"""

from __future__ import annotations

import math
import os
import re
import socket
import tomllib
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from edge.errors import FacegateError
from edge.mqtt.settings import MqttSettings
from edge.vision.quality import QualityGate
from edge.vision.rescue import RESCUE_MODES

PROFILES = ("door", "kiosk")
DEFAULT_CONFIG_NAME = "facegate.toml"
# systemd credential names (LoadCredential=ID), also the file names under $CREDENTIALS_DIRECTORY.
CREDENTIAL_STORE_KEY = "facegate.store-key"
CREDENTIAL_MQTT_PASSWORD = "facegate.mqtt-password"
CREDENTIAL_COMMAND_SECRET = "facegate.command-secret"
CREDENTIAL_CLAIM_SECRET = "facegate.claim-secret"
CREDENTIAL_SITE_KEY = "facegate.site-key"  # a fleet door's site key (templates on the wire are sealed with it)
CREDENTIAL_HUB_SIGNING_KEY = "facegate.hub-signing-key"  # the hub's Ed25519 private key
CREDENTIAL_COLLECT_DSN = "facegate.collect-dsn"  # the collector's PostgreSQL connection string


class ConfigError(FacegateError):
    """The configuration file is unreadable, or a key or value in it is wrong (the message names the key)."""


@dataclass(frozen=True)
class CameraConfig:
    # A V4L2 index ("0") or device path, an rtsp:// or http(s):// URL, a video file, or an image folder.
    source: str = "0"
    fps: float = 15.0  # pacing of image folders and video files (0: a file's own rate); devices pace themselves
    frames_per_image: int = 15  # image folders: how many frames each image is shown for
    loop: bool = False  # image folders and video files: start again at the end instead of stopping
    width: int = 0  # devices: requested capture size (0: the driver's default)
    height: int = 0
    reconnect_min_s: float = 0.5  # a lost device or stream is reopened after this, doubling up to the max
    reconnect_max_s: float = 30.0
    stale_s: float = 2.0  # no frame for this long: the camera is unhealthy (no grants)
    # Files and folders only: hand every frame to the decision loop, the capture waiting for it, instead of
    # keeping only the newest (replaying a recording for an evaluation gives the same decisions on any host).
    every_frame: bool = False


@dataclass(frozen=True)
class ModelsConfig:
    detector: str = "yunet"
    embedder: str = ""  # "" = the registry's default embedder (sface-int8 as shipped; "sface" is fp32)
    verifier: str = ""  # an installed verification head (task verify_head); "" scores by the embedder's cosine
    # A score fusion (task "fusion", edge/match/fusion.py): its members' normalised cosines, combined; "" = none.
    fusion: str = ""
    # 0 = auto: one per embedder where the box has a core for each (a fusion's members side by side), else 1
    threads: int = 0
    min_face_px: float = 40.0
    # When the first detection pass finds no face: look again at full resolution, turned, below the score
    # threshold (edge/vision/rescue.py). photos | always | off; "photos" spares camera frames, mostly empty.
    rescue: str = "photos"
    model_dir: str = ""  # default: <state dir>/models


@dataclass(frozen=True)
class StoreConfig:
    path: str = ""  # default: <state dir>/facegate.db
    key_file: str = ""  # default: the credential facegate.store-key, else $FACEGATE_STORE_KEY, else unencrypted
    create: bool = False  # true: start with a new empty store when none exists (else a missing store is an error)


@dataclass(frozen=True)
class LivenessConfig:
    # "auto": the installed liveness model (door profile); "none"; a model name; or "package.module:Class".
    model: str = "auto"
    threads: int = 1
    # Door profile: before each decision a random head turn, left or right, and a planar-motion check during
    # it (docs/liveness.md). The kiosk profile checks no liveness at all.
    challenge: bool = True
    challenge_yaw_deg: float = 20.0  # how far the head must turn
    challenge_timeout_s: float = 8.0  # no turn within this: liveness incomplete (denied)


@dataclass(frozen=True)
class DecisionConfig:
    k: int = 3  # granted when k of the last n observations agree on one identity …
    n: int = 5
    fpir: float = 0.01  # … above the 1:N threshold for this false-positive identification rate
    max_frames: int = 30  # a track undecided after this many observations is decided "unknown"
    # Each observation scores the fusion of the track's best frames so far (by detector confidence, sharpness and
    # pose; edge/match/track.py): this many. 1 scores every frame on its own.
    track_frames: int = 3
    # An identity's score over its enrolment photos: "mean" of the photos' scores, or the best one ("max").
    # With several photos per person "max" gives each impostor several chances at the 1:N threshold.
    templates: str = "mean"
    cooldown_s: float = 10.0  # one event per identity within this time (one walk-up, one event)
    claim_window_s: float = 10.0  # a badge claim narrows decisions to 1:1 for this long
    tailgating: str = "deny"  # deny | allow: a grant while another unrecognised live face is in view
    tailgating_wait: int = 5  # observations a grant waits for the other faces to be recognised
    iou: float = 0.3  # a face continues a track when its box overlaps the track's by at least this
    track_ttl_s: float = 1.0  # a track not seen for this long has left


@dataclass(frozen=True)
class DoorConfig:
    unlock_s: float = 5.0  # door profile: how long an UNLOCK lasts (the lock controller relocks itself)
    # A door command the broker has not been shown responsive for within this long after its decision is
    # dropped, never sent late; each command also carries valid_until = sent + the rest of this budget.
    max_delay_ms: float = 1000.0
    # The face-unlock switch (Home Assistant, facegate/<device>/face_unlock/set) is kept here across restarts;
    # "" = <state dir>/face-unlock.json. No file: face unlock is on.
    face_unlock_path: str = ""


@dataclass(frozen=True)
class AccessConfig:
    default: str = "allow"  # allow | deny: identities with no time windows (here or in their metadata)
    timezone: str = ""  # IANA name for the windows; default: the system's local time
    # identity → windows like "mon-fri 08:00-18:00", "sat 09:00-13:00", "daily 22:00-06:00"; [] = never
    windows: dict[str, list[str]] = field(default_factory=dict)


_GATE = QualityGate()


@dataclass(frozen=True)
class QualityConfig:
    """Camera frames below these limits are not used for decisions (they still keep their track alive)."""

    min_inter_eye_px: float = _GATE.min_inter_eye_px
    max_yaw_deg: float = _GATE.max_yaw_deg
    max_pitch_deg: float = _GATE.max_pitch_deg
    min_sharpness: float = _GATE.min_sharpness
    min_brightness: float = _GATE.min_brightness
    max_brightness: float = _GATE.max_brightness
    max_clipped: float = _GATE.max_clipped
    min_score: float = _GATE.min_score

    def gate(self) -> QualityGate:
        return QualityGate(**{f.name: getattr(self, f.name) for f in fields(self)})


@dataclass(frozen=True)
class EventsConfig:
    # Where decisions go (edge/sinks): "auto" (MQTT when mqtt.enabled, else the log), "mqtt", "log", or a
    # "package.module:factory" returning an EventSink.
    sink: str = "auto"


@dataclass(frozen=True)
class HealthConfig:
    enabled: bool = True
    listen: str = "127.0.0.1:9108"  # /healthz and /metrics; loopback unless you mean otherwise


@dataclass(frozen=True)
class WebConfig:
    """The admin page (edge/web, the [web] extra): `facegate web` serves it on its own; `enabled` also mounts it
    in `facegate run`, where its door switch reaches the running daemon."""

    enabled: bool = False
    listen: str = "127.0.0.1:8080"  # loopback: reach it through a TLS reverse proxy (deploy/web-proxy.md)
    accounts_path: str = ""  # administrator accounts and sessions; default: <state dir>/web-accounts.db
    # The decision log the decisions page shows, written by the daemon (names people: erased with them).
    decisions_path: str = ""  # default: <state dir>/decisions.db
    decisions_kept: int = 1000  # the most recent decisions kept; 0: none logged
    keep_unknown_crops_h: float = 0.0  # face crops of "unknown" decisions kept this many hours; 0: none kept
    keep_crops: bool = False  # enrolments from the page keep their face crops (photos shown, store reembed)
    session_idle_min: float = 30.0  # a session unused this long is over
    session_max_h: float = 12.0  # and any session after this long
    cookie_secure: bool = False  # true behind a TLS reverse proxy: the browser sends the cookie over HTTPS only
    max_upload_mb: float = 20.0  # one enrolment or identification upload (all its photos)
    max_bulk_mb: float = 500.0  # one bulk upload (a zip or a folder)
    login_attempts: int = 5  # failed log-ins per account and per client address …
    login_window_s: float = 900.0  # … within this many seconds, then refused until the window has passed
    # Host names the page answers to besides IP addresses, localhost and this machine's names (DNS rebinding,
    # edge/web/hosts.py): the name a reverse proxy passes on; ".example.org" = it and its subdomains; "*" = any.
    allowed_hosts: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LogConfig:
    format: str = "text"  # text | json (one object per line, for journald or a log shipper)
    level: str = "info"


@dataclass(frozen=True)
class FleetConfig:
    """A door that takes its gallery from a hub (deploy/FLEET.md); off: the door's own store, enrolled locally."""

    enabled: bool = False
    site: str = ""  # the site this door belongs to: it reads <topic_prefix>/<site>/records and …/manifest
    hub_url: str = ""  # the hub's HTTP(S) address for catch-up and snapshots, e.g. "https://hub.example:8710"
    hub_ca: str = ""  # https: the CA that signed the hub's certificate ("" = the system's)
    hub_cert: str = ""  # https with client certificates: this door's certificate and key
    hub_key: str = ""
    public_key: str = ""  # the hub's Ed25519 public key (base64, 32 bytes); or public_key_file
    public_key_file: str = ""
    site_key_file: str = ""  # the site key (AES-256); "" = the credential facegate.site-key
    # Fail secure: a door that has not confirmed within this many seconds that it holds the hub's current
    # gallery refuses every grant (and says so in /healthz and its state) until it has.
    max_gallery_age_s: float = 3600.0
    poll_s: float = 30.0  # ask the hub over HTTP this often too, whatever the broker delivers
    topic_prefix: str = "facegate-fleet"
    client_id: str = ""  # the sync's own MQTT client; default: <mqtt client id>-fleet


@dataclass(frozen=True)
class HubConfig:
    """`facegate hub run`: the authoritative store ([store]) published to the doors of each site."""

    sites: list[str] = field(default_factory=list)  # every site receives every identity
    signing_key_file: str = ""  # Ed25519 private key (PEM); "" = the credential facegate.hub-signing-key
    site_keys_dir: str = ""  # <site>.key for each site (AES-256, 0600)
    journal_path: str = ""  # the published batches and what each site holds; "" = <state dir>/hub-journal.db
    listen: str = "127.0.0.1:8710"  # HTTP(S) for doors catching up: manifest, batches, snapshot
    tls_cert: str = ""  # https: the hub's certificate and key
    tls_key: str = ""
    tls_client_ca: str = ""  # https: require client certificates signed by this CA
    poll_s: float = 0.05  # how often the hub looks for committed changes in its store
    manifest_interval_s: float = 10.0  # the retained, signed manifest is re-published this often (freshness)
    # A batch larger than this is announced by the manifest only, and not kept: doors behind it load a snapshot.
    max_delta_bytes: int = 262144
    keep_batches: int = 100000  # batches kept for catch-up; a door further behind loads a snapshot
    topic_prefix: str = "facegate-fleet"


@dataclass(frozen=True)
class CollectConfig:
    """`facegate collect run`: every door's events into PostgreSQL, once each."""

    dsn: str = ""  # libpq connection string; better dsn_file or the credential facegate.collect-dsn
    dsn_file: str = ""
    topics: list[str] = field(default_factory=lambda: ["facegate/+/event"])
    retention_days: float = 365.0  # events older than this are purged (0: kept for ever)
    purge_every_s: float = 3600.0
    client_id: str = "facegate-collect"


@dataclass(frozen=True)
class Config:
    profile: str = "door"  # door: liveness required | kiosk: no liveness, no door commands
    camera: CameraConfig = field(default_factory=CameraConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    liveness: LivenessConfig = field(default_factory=LivenessConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    door: DoorConfig = field(default_factory=DoorConfig)
    access: AccessConfig = field(default_factory=AccessConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    mqtt: MqttSettings = field(default_factory=MqttSettings)  # the one [mqtt] section (edge/mqtt/settings.py)
    events: EventsConfig = field(default_factory=EventsConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    web: WebConfig = field(default_factory=WebConfig)
    log: LogConfig = field(default_factory=LogConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    origin: str = field(default="(defaults)", compare=False)  # the file it came from, for messages

    @property
    def liveness_mode(self) -> str:
        """What the daemon will do about liveness: "none" (kiosk) or the configured spec."""
        return "none" if self.profile == "kiosk" else self.liveness.model


CHOICES: dict[str, tuple[str, ...]] = {
    "profile": PROFILES,
    "decision.tailgating": ("deny", "allow"),
    "models.rescue": RESCUE_MODES,
    "decision.templates": ("mean", "max"),
    "access.default": ("allow", "deny"),
    "log.format": ("text", "json"),
    "log.level": ("debug", "info", "warning", "error"),
}
# (minimum, maximum) per numeric key; None = unbounded on that side.
RANGES: dict[str, tuple[float | None, float | None]] = {
    "camera.fps": (0, 240), "camera.frames_per_image": (1, None), "camera.width": (0, 16384),
    "camera.height": (0, 16384), "camera.reconnect_min_s": (0.01, None), "camera.reconnect_max_s": (0.01, None),
    "camera.stale_s": (0.1, None), "models.threads": (0, 64), "models.min_face_px": (8, None),
    "liveness.threads": (1, 64), "liveness.challenge_yaw_deg": (10, 35), "liveness.challenge_timeout_s": (1, 60),
    "decision.k": (1, 100), "decision.n": (1, 100), "decision.fpir": (1e-6, 0.5),
    "decision.max_frames": (1, 10000), "decision.track_frames": (1, 20),
    "decision.cooldown_s": (0, None), "decision.claim_window_s": (0.1, 3600),
    "decision.tailgating_wait": (0, 1000), "decision.iou": (0.01, 1.0), "decision.track_ttl_s": (0.05, 60),
    "door.unlock_s": (0.5, 3600), "door.max_delay_ms": (50, 60000), "mqtt.keepalive": (5, 3600),
    "mqtt.reconnect_min_s": (0.01, None), "mqtt.reconnect_max_s": (0.01, None),
    "fleet.max_gallery_age_s": (5, 30 * 86400), "fleet.poll_s": (0.1, 86400),
    "hub.poll_s": (0.005, 60), "hub.manifest_interval_s": (0.1, 3600), "hub.max_delta_bytes": (1024, 64 * 2**20),
    "hub.keep_batches": (1, None), "collect.retention_days": (0, None), "collect.purge_every_s": (1, None),
    "web.decisions_kept": (0, 10_000_000), "web.keep_unknown_crops_h": (0, 24 * 365),
    "web.session_idle_min": (1, 24 * 60), "web.session_max_h": (0.1, 24 * 30), "web.max_upload_mb": (1, 1024),
    "web.max_bulk_mb": (1, 16384), "web.login_attempts": (1, 1000), "web.login_window_s": (1, 86400),
    # The quality gate: a negative size or angle limit would not be refused, it would quietly pass every face.
    "quality.min_inter_eye_px": (0, 1000), "quality.max_yaw_deg": (0, 90), "quality.max_pitch_deg": (0, 90),
    "quality.min_sharpness": (0, None), "quality.min_brightness": (0, 255), "quality.max_brightness": (0, 255),
    "quality.max_clipped": (0, 1), "quality.min_score": (0, 1),
}
WINDOW_RE = re.compile(r"^(?P<days>[a-z]{3}(?:-[a-z]{3})?(?:,[a-z]{3}(?:-[a-z]{3})?)*|daily)\s+"
                       r"(?P<start>\d{1,2}:\d{2})-(?P<end>\d{1,2}:\d{2})$")


# A web.allowed_hosts entry: DNS labels of letters, digits and hyphens, optionally after a leading dot.
HOST_PATTERN_RE = re.compile(r"\.?[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*\.?")

SECRET_KEYS = frozenset({"mqtt.password", "mqtt.command_secret", "mqtt.claim_secret", "collect.dsn"})
SITE_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a topic level and a file name: letters, digits, "_" and "-"


def _shown(value: Any, key: str) -> str:
    """How an error message shows a wrong value: never a secret's (a log or a terminal would keep it)."""
    if key in SECRET_KEYS:
        return f"a value of type {type(value).__name__} (not shown: a secret)"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted where numbers are (5 for 5.0)."""
    origin = typing.get_origin(tp)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_shown(value, key)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {_shown(value, key)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {_shown(value, key)}")
        if not math.isfinite(value):  # nan passes every range check (nan < lo is false): refuse it here
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_shown(value, key)}")
        return value
    if origin is dict:
        _, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {_shown(value, key)}")
        return {str(k): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        (et,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {_shown(value, key)}")
        return [_coerce(v, et, f"{key}[{i}]") for i, v in enumerate(value)]
    raise ConfigError(f"{key}: unsupported annotation {tp}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'the file'}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if f.name != "origin"}
    values: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in known:
            raise ConfigError(f"{dotted}: unknown key (known here: {', '.join(sorted(known))})")
        tp = hints[key]
        values[key] = _build(tp, value, dotted) if is_dataclass(tp) else _coerce(value, tp, dotted)
        if dotted in CHOICES and values[key] not in CHOICES[dotted]:
            raise ConfigError(f"{dotted}: {values[key]!r} is not one of {', '.join(CHOICES[dotted])}")
        bounds = RANGES.get(dotted)
        if bounds is not None:
            lo, hi = bounds
            if (lo is not None and values[key] < lo) or (hi is not None and values[key] > hi):
                span = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
                raise ConfigError(f"{dotted}: {values[key]!r} out of range (must be {span})")
    try:
        return cls(**values)
    except FacegateError as exc:  # a section that validates itself (MqttSettings) names its keys
        raise ConfigError(str(exc)) from None


def _check(cfg: Config) -> None:
    """Rules that tie several keys together."""
    d = cfg.decision
    if d.k > d.n:
        raise ConfigError(f"decision.k: {d.k} is larger than decision.n ({d.n}); k of the last n must be possible")
    if d.max_frames < d.n:
        raise ConfigError(f"decision.max_frames: {d.max_frames} is smaller than decision.n ({d.n})")
    if cfg.camera.reconnect_max_s < cfg.camera.reconnect_min_s:
        raise ConfigError("camera.reconnect_max_s: smaller than camera.reconnect_min_s")
    if cfg.quality.max_brightness < cfg.quality.min_brightness:
        raise ConfigError("quality.max_brightness: smaller than quality.min_brightness (no face could pass)")
    if cfg.profile == "door" and cfg.mqtt.claims == "unsigned":
        raise ConfigError("mqtt.claims: the door profile accepts only signed claims (\"signed\" or \"off\"); "
                          "anyone who can publish on the claim topic could otherwise steer decisions")
    for name, windows in cfg.access.windows.items():
        for i, w in enumerate(windows):
            try:
                parse_window(w)
            except ValueError as exc:
                raise ConfigError(f"access.windows.{name}[{i}]: {exc}") from None
    if cfg.access.timezone:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(cfg.access.timezone)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # "Europe" is a folder; a long name, ENAMETOOLONG
            raise ConfigError(f"access.timezone: unknown time zone {_shown(cfg.access.timezone, '')}") from None
    if cfg.profile == "kiosk" and cfg.liveness.model not in ("auto", "none"):
        raise ConfigError("liveness.model: the kiosk profile runs without liveness; use profile = \"door\"")
    if cfg.profile == "door" and cfg.liveness.model == "none":
        raise ConfigError("liveness.model: the door profile requires liveness; use profile = \"kiosk\" to run "
                          "without it")
    for key, listen in (("health.listen", cfg.health.listen), ("web.listen", cfg.web.listen)):
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"{key}: {listen!r} is not HOST:PORT")
    for i, pattern in enumerate(cfg.web.allowed_hosts):
        if pattern != "*" and not (len(pattern) <= 254 and HOST_PATTERN_RE.fullmatch(pattern.lower())):
            raise ConfigError(f"web.allowed_hosts[{i}]: {_shown(pattern, '')} is not a host name, "
                              "'.domain' or '*'")
    _check_fleet(cfg)


def _check_fleet(cfg: Config) -> None:
    f, h = cfg.fleet, cfg.hub
    for key, prefix in (("fleet.topic_prefix", f.topic_prefix), ("hub.topic_prefix", h.topic_prefix)):
        if not prefix or any(c in prefix for c in "+#\0") or any(not level for level in prefix.split("/")):
            raise ConfigError(f"{key}: {prefix!r} must be non-empty topic levels without '+', '#' or NUL")
    if f.site and not SITE_RE.fullmatch(f.site):
        raise ConfigError(f"fleet.site: {f.site!r} must be 1 to 64 letters, digits, '_' or '-'")
    for i, site in enumerate(h.sites):
        if not SITE_RE.fullmatch(site):
            raise ConfigError(f"hub.sites[{i}]: {site!r} must be 1 to 64 letters, digits, '_' or '-'")
    if len(set(h.sites)) != len(h.sites):
        raise ConfigError("hub.sites: a site is named twice")
    if f.enabled:
        if not f.site:
            raise ConfigError("fleet.site: fleet mode needs the door's site")
        if not f.hub_url:
            raise ConfigError("fleet.hub_url: fleet mode needs the hub's address (catch-up and snapshots)")
        if not f.hub_url.startswith(("http://", "https://")):
            raise ConfigError(f"fleet.hub_url: {f.hub_url!r} is not an http:// or https:// address")
        if bool(f.public_key) == bool(f.public_key_file):
            raise ConfigError("fleet.public_key: give the hub's public key, either public_key or public_key_file")
        if f.poll_s >= f.max_gallery_age_s:
            raise ConfigError(f"fleet.poll_s: {f.poll_s} s is not below fleet.max_gallery_age_s "
                              f"({f.max_gallery_age_s} s): the door would fail secure between two polls")
    if bool(f.hub_cert) != bool(f.hub_key):
        raise ConfigError("fleet.hub_key: hub_cert and hub_key go together: give both or neither")
    if bool(h.tls_cert) != bool(h.tls_key):
        raise ConfigError("hub.tls_key: tls_cert and tls_key go together: give both or neither")
    if h.tls_client_ca and not h.tls_cert:
        raise ConfigError("hub.tls_client_ca: client certificates need the hub's own TLS (tls_cert, tls_key)")
    host, _, port = h.listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"hub.listen: {h.listen!r} is not HOST:PORT")
    if cfg.collect.dsn and cfg.collect.dsn_file:
        raise ConfigError("collect.dsn: give either dsn or dsn_file, not both")
    for i, topic in enumerate(cfg.collect.topics):
        if not topic or "\0" in topic:
            raise ConfigError(f"collect.topics[{i}]: {topic!r} is not a topic filter")


DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def parse_window(text: str) -> tuple[frozenset[int], int, int]:
    """"mon-fri 08:00-18:00" → (weekdays 0–6, start minute, end minute); end ≤ start spans midnight."""
    m = WINDOW_RE.match(text.strip().lower())
    if not m:
        raise ValueError(f"{text!r} is not a time window like \"mon-fri 08:00-18:00\" or \"daily 22:00-06:00\"")
    days: set[int] = set()
    if m["days"] == "daily":
        days = set(range(7))
    else:
        for part in m["days"].split(","):
            a, _, b = part.partition("-")
            if a not in DAYS or (b and b not in DAYS):
                raise ValueError(f"{text!r}: days are {', '.join(DAYS)} (or daily)")
            i, j = DAYS.index(a), DAYS.index(b or a)
            days.update(range(i, j + 1) if i <= j else [*range(i, 7), *range(0, j + 1)])
    minutes = []
    for hm in (m["start"], m["end"]):
        h, mi = (int(x) for x in hm.split(":"))
        if h > 24 or mi > 59 or (h == 24 and mi):
            raise ValueError(f"{text!r}: {hm} is not a time of day")
        minutes.append(h * 60 + mi)
    return frozenset(days), minutes[0], minutes[1]


def load(path: Path | str | None) -> Config:
    """The configuration in `path`; None: the defaults (after the systemd configuration directory's file)."""
    if path is None:
        conf_dir = os.environ.get("CONFIGURATION_DIRECTORY")
        candidate = Path(conf_dir.split(":")[0]) / DEFAULT_CONFIG_NAME if conf_dir else None
        if candidate is None or not candidate.is_file():
            cfg = Config()
            _check(cfg)
            return cfg
        path = candidate
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the configuration ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid TOML ({exc})") from None
    except RecursionError:  # hundreds of nested arrays: valid TOML in principle, no configuration in fact
        raise ConfigError(f"{p}: nested too deeply to be a facegate configuration") from None
    return parse(data, origin=str(p))


def parse(data: dict[str, Any], origin: str = "(inline)") -> Config:
    try:
        cfg = _build(Config, data, "")
        _check(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    return replace(cfg, origin=origin)


def defaults() -> dict[str, Any]:
    """Every key with its default value, section by section (what the example file documents)."""
    out: dict[str, Any] = {}
    for f in fields(Config):
        if f.name == "origin":
            continue
        value = f.default_factory() if f.default_factory is not MISSING else f.default
        out[f.name] = {g.name: getattr(value, g.name) for g in fields(value)} if is_dataclass(value) else value
    return out


# -- secrets and derived values -------------------------------------------------------------------------------
def credential(name: str) -> str | None:
    """A systemd credential's text ($CREDENTIALS_DIRECTORY/name), stripped; None when not passed."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    p = Path(directory) / name
    try:
        return p.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"credential {name}: cannot read {p} ({exc.strerror or exc})") from None


def secret(value: str, file: str, cred: str, key: str) -> str | None:
    """A secret from the config value, else its file, else the systemd credential; None if none is given."""
    if value:
        return value
    if file:
        try:
            return Path(file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{key}_file: cannot read {file} ({exc.strerror or exc})") from None
    return credential(cred)


def device_name(cfg: Config) -> str:
    return cfg.mqtt.device or socket.gethostname().split(".")[0] or "facegate"
