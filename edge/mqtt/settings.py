"""The [mqtt] section: the one description of the MQTT connection, read by the config loader and used by the
publisher. Checked when built, so a typo fails at start-up (naming the key), not at the first event.

Values are as the file writes them: strings ("" = not set), numbers, booleans. Secrets should come from their
*_file keys or systemd credentials; `resolved()` reads them (and the device name) just before connecting.
"""

from __future__ import annotations

import math
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from edge.mqtt import MqttError
from edge.paths import state_dir

# The device name is a topic level, an ACL user name (pattern facegate/%u/#) and part of Home Assistant unique
# ids: keep it to characters that are safe in all three.
DEVICE_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
SECRETS = ("password", "command_secret", "claim_secret")
CLAIM_MODES = ("signed", "unsigned", "off")
PROTOCOLS = ("5", "3.1.1")


def _check_prefix(value: str, key: str) -> None:
    # A prefix may span several levels ("site/facegate") but never holds wildcards or empty levels.
    if not value or any(c in value for c in "+#\0") or any(not level for level in value.split("/")):
        raise MqttError(f"mqtt.{key}: {value!r} must be non-empty topic levels without '+', '#' or NUL")


@dataclass(frozen=True)
class MqttSettings:
    enabled: bool = True  # false: no broker; events go to the log (events.sink = "auto")
    host: str = "127.0.0.1"
    port: int = 1883
    device: str = ""  # the topic level facegate/<device>/…; default: the host name
    door: str = "front"  # the door's name in events and door commands
    username: str = ""
    password: str = ""  # better: password_file, or the credential facegate.mqtt-password
    password_file: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_insecure: bool = False  # skip the broker host name check (the chain is still verified)
    client_id: str = ""  # default: facegate-<device>
    keepalive: int = 30
    topic_prefix: str = "facegate"
    discovery_prefix: str = "homeassistant"
    discovery: bool = True
    outbox_path: str = ""  # default: <state dir>/outbox.db
    outbox_limit: int = 10000
    command_secret: str = ""  # better: command_secret_file, or the credential facegate.command-secret
    command_secret_file: str = ""
    command_state_path: str = ""  # replay counters of signed commands; default: <state dir>/mqtt-command-counters.json
    # Badge claims on <prefix>/<device>/claim narrow a decision to one identity (never lowering its threshold):
    # "signed" (the command envelope, MAC'd with the claim secret), "unsigned" (a bare name; kiosk profile
    # only) or "off".
    claims: str = "signed"
    claim_secret: str = ""  # better: claim_secret_file, or the credential facegate.claim-secret
    claim_secret_file: str = ""
    claim_state_path: str = ""  # replay counters of signed claims; default: <state dir>/mqtt-claim-counters.json
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    protocol: str = "5"  # "5": door commands also carry an MQTT 5 message expiry; "3.1.1" for older brokers

    def __post_init__(self) -> None:
        # Paths and bytes are accepted where strings are expected (code that builds settings directly).
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                object.__setattr__(self, f.name, str(value))
            elif isinstance(value, bytes):
                object.__setattr__(self, f.name, value.decode())
            elif value is None and f.type == "str":
                object.__setattr__(self, f.name, "")
        self._validate()

    def _validate(self) -> None:
        if self.device and not DEVICE_RE.fullmatch(self.device):
            raise MqttError(f"mqtt.device: {self.device!r} must be 1 to 64 letters, digits, '_' or '-'")
        if not self.door or len(self.door) > 200 or any(ord(c) < 32 for c in self.door):
            raise MqttError(f"mqtt.door: {self.door[:40]!r} must be 1 to 200 characters, no control characters")
        if not self.host:
            raise MqttError("mqtt.host: empty")
        if not 0 < self.port < 65536:
            raise MqttError(f"mqtt.port: {self.port} is not in 1..65535")
        _check_prefix(self.topic_prefix, "topic_prefix")
        _check_prefix(self.discovery_prefix, "discovery_prefix")
        for key in SECRETS:
            if getattr(self, key) and getattr(self, key + "_file"):
                raise MqttError(f"mqtt.{key}: give either {key} or {key}_file, not both")
        if (self.password or self.password_file) and not self.username:
            raise MqttError("mqtt.password: given without a username")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise MqttError("mqtt.tls_key: tls_cert and tls_key go together: give both or neither")
        if self.tls_cert and not self.tls_ca:
            raise MqttError("mqtt.tls_ca: needed with tls_cert (the CA that signed the broker's certificate)")
        if self.keepalive < 5:
            raise MqttError(f"mqtt.keepalive: {self.keepalive} s is below 5 s")
        if self.outbox_limit < 1:
            raise MqttError(f"mqtt.outbox_limit: {self.outbox_limit} must be at least 1")
        if not (math.isfinite(self.reconnect_min_s) and math.isfinite(self.reconnect_max_s)
                and 0 < self.reconnect_min_s <= self.reconnect_max_s):
            raise MqttError(f"mqtt.reconnect_max_s: need 0 < reconnect_min_s ({self.reconnect_min_s}) <= "
                            f"reconnect_max_s ({self.reconnect_max_s})")
        for key in ("command_secret", "claim_secret"):
            if getattr(self, key) and len(getattr(self, key).encode()) < 16:
                raise MqttError(f"mqtt.{key}: shorter than 16 bytes: too easy to guess")
        if self.claims not in CLAIM_MODES:
            raise MqttError(f"mqtt.claims: {self.claims!r} is not one of {', '.join(CLAIM_MODES)}")
        if self.protocol not in PROTOCOLS:
            raise MqttError(f"mqtt.protocol: {self.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        self._check_distinct_files()

    def _check_distinct_files(self) -> None:
        # Each counter store rewrites its whole file with only its own senders: sharing one file, a badge swipe
        # would erase the administrator's counters on disk and a recorded command would run again after a
        # restart. The outbox is an SQLite file neither store could read.
        files = {"outbox_path": self.effective_outbox_path, "command_state_path": self.effective_command_state_path,
                 "claim_state_path": self.effective_claim_state_path}
        seen: dict[Path, str] = {}
        for key, path in files.items():
            try:
                real = path.expanduser().resolve()  # symbolic links and ".." too
            except (OSError, RuntimeError):  # a symlink loop: compare as written
                real = path
            if real in seen:
                raise MqttError(f"mqtt.{key}: {str(path)[:200]!r} is the same file as mqtt.{seen[real]}; each needs "
                                f"its own file")
            seen[real] = key

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> MqttSettings:
        """Build from a mapping of the section's keys; an unknown key is an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise MqttError(f"unknown mqtt setting(s): {', '.join(unknown)}")
        return cls(**{k: v for k, v in values.items() if v is not None})

    def resolved(self) -> MqttSettings:
        """These settings as the publisher connects with them: secrets read from their files or systemd
        credentials (a missing or unreadable file names its key), the device name defaulted to the host's."""
        from edge.config import (
            CREDENTIAL_CLAIM_SECRET,
            CREDENTIAL_COMMAND_SECRET,
            CREDENTIAL_MQTT_PASSWORD,
            secret,
        )

        creds = {"password": CREDENTIAL_MQTT_PASSWORD, "command_secret": CREDENTIAL_COMMAND_SECRET,
                 "claim_secret": CREDENTIAL_CLAIM_SECRET}
        values = {key: secret(getattr(self, key), getattr(self, key + "_file"), creds[key], f"mqtt.{key}") or ""
                  for key in SECRETS}
        device = self.device or socket.gethostname().split(".")[0] or "facegate"
        return replace(self, device=device, **values, password_file="", command_secret_file="",
                       claim_secret_file="")

    # -- derived values ------------------------------------------------------------------------------------
    @property
    def tls(self) -> bool:
        return bool(self.tls_ca)

    @property
    def effective_client_id(self) -> str:
        return self.client_id or f"facegate-{self.device}"

    @property
    def effective_outbox_path(self) -> Path:
        return Path(self.outbox_path) if self.outbox_path else state_dir() / "outbox.db"

    @property
    def effective_command_state_path(self) -> Path:
        return Path(self.command_state_path) if self.command_state_path else state_dir() / "mqtt-command-counters.json"

    @property
    def effective_claim_state_path(self) -> Path:
        return Path(self.claim_state_path) if self.claim_state_path else state_dir() / "mqtt-claim-counters.json"

    def secret_bytes(self, key: str) -> bytes | None:
        value = getattr(self, key)
        return value.encode() if value else None

    def topic(self, *parts: str) -> str:
        """facegate/<device>/<parts...>"""
        return "/".join((self.topic_prefix, self.device, *parts))
