"""Settings of the MQTT connection, checked when built so that a typo fails at start-up, not at the first event."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.mqtt import MqttError
from edge.paths import state_dir

if TYPE_CHECKING:
    from edge.config import Config

# The device name is a topic level, an ACL user name (pattern facegate/%u/#) and part of Home Assistant unique
# ids: keep it to characters that are safe in all three.
DEVICE_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _check_prefix(value: str, what: str) -> None:
    # A prefix may span several levels ("site/facegate") but never holds wildcards or empty levels.
    if not value or any(c in value for c in "+#\0") or any(not level for level in value.split("/")):
        raise MqttError(f"mqtt {what} {value!r}: non-empty topic levels without '+', '#' or NUL")


@dataclass(frozen=True)
class MqttSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    device: str = "door1"
    door: str = "front"
    username: str | None = None
    password: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_insecure: bool = False  # skip the host name check only; the chain is still verified against tls_ca
    keepalive: int = 30
    client_id: str | None = None  # default facegate-<device>
    topic_prefix: str = "facegate"
    discovery_prefix: str = "homeassistant"
    discovery: bool = True
    outbox_path: Path | None = None  # default <state dir>/outbox.db
    outbox_limit: int = 10000
    command_secret: bytes | None = None  # HMAC key; None = commands disabled (refused with a reason)
    command_state_path: Path | None = None  # default <state dir>/mqtt-command-counters.json
    claims: str = "signed"  # signed | unsigned | off: badge claims on <prefix>/<device>/claim (commands.py)
    claim_secret: bytes | None = None  # HMAC key of signed claims (a badge reader's, not the command secret)
    claim_state_path: Path | None = None  # default <state dir>/mqtt-claim-counters.json
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    protocol: str = "5"  # "5" (door commands carry a message expiry) or "3.1.1" for brokers without MQTT 5
    door_max_delay_ms: float = 1000.0  # a door command not on its way to a responsive broker by then is dropped

    def __post_init__(self) -> None:
        if not DEVICE_RE.fullmatch(self.device):
            raise MqttError(f"mqtt device {self.device!r}: 1 to 64 letters, digits, '_' or '-'")
        if not self.door or len(self.door) > 200 or any(ord(c) < 32 for c in self.door):
            raise MqttError(f"mqtt door {self.door[:40]!r}: 1 to 200 characters, no control characters")
        if not self.host:
            raise MqttError("mqtt host is empty")
        if not 0 < self.port < 65536:
            raise MqttError(f"mqtt port {self.port} is not in 1..65535")
        _check_prefix(self.topic_prefix, "topic_prefix")
        _check_prefix(self.discovery_prefix, "discovery_prefix")
        if self.password is not None and self.username is None:
            raise MqttError("mqtt password given without a username")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise MqttError("mqtt tls_cert and tls_key go together: give both or neither")
        if self.tls_cert is not None and self.tls_ca is None:
            raise MqttError("mqtt tls_cert needs tls_ca (the CA that signed the broker's certificate)")
        if self.keepalive < 5:
            raise MqttError(f"mqtt keepalive {self.keepalive} s is below 5 s")
        if self.outbox_limit < 1:
            raise MqttError(f"mqtt outbox_limit {self.outbox_limit} must be at least 1")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise MqttError(f"mqtt reconnect delays: need 0 < reconnect_min_s ({self.reconnect_min_s}) <= "
                            f"reconnect_max_s ({self.reconnect_max_s})")
        for what in ("command_secret", "claim_secret"):
            value = getattr(self, what)
            if value is not None and len(value) < 16:
                raise MqttError(f"mqtt {what} is shorter than 16 bytes: too easy to guess")
        if self.protocol not in ("5", "3.1.1"):
            raise MqttError(f"mqtt protocol {self.protocol!r} is not \"5\" or \"3.1.1\"")
        if not (math.isfinite(self.door_max_delay_ms) and self.door_max_delay_ms > 0):
            raise MqttError(f"door max_delay_ms {self.door_max_delay_ms!r} must be a positive number")
        if self.claims not in ("signed", "unsigned", "off"):
            raise MqttError(f"mqtt claims {self.claims!r} is not one of signed, unsigned, off")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> MqttSettings:
        """Build from a config section (strings for paths, a str or bytes secret); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise MqttError(f"unknown mqtt setting(s): {', '.join(unknown)}")
        converted: dict[str, Any] = {}
        for key, value in values.items():
            if key in {"tls_ca", "tls_cert", "tls_key", "outbox_path", "command_state_path",
                       "claim_state_path"} and value is not None:
                value = Path(value)
            elif key in ("command_secret", "claim_secret") and isinstance(value, str):
                value = value.encode()
            converted[key] = value
        return cls(**converted)

    # -- derived values ------------------------------------------------------------------------------------
    @property
    def tls(self) -> bool:
        return self.tls_ca is not None

    @property
    def effective_client_id(self) -> str:
        return self.client_id or f"facegate-{self.device}"

    @property
    def effective_outbox_path(self) -> Path:
        return self.outbox_path or state_dir() / "outbox.db"

    @property
    def effective_command_state_path(self) -> Path:
        return self.command_state_path or state_dir() / "mqtt-command-counters.json"

    @property
    def effective_claim_state_path(self) -> Path:
        return self.claim_state_path or state_dir() / "mqtt-claim-counters.json"

    def topic(self, *parts: str) -> str:
        """facegate/<device>/<parts...>"""
        return "/".join((self.topic_prefix, self.device, *parts))


def from_config(cfg: Config) -> MqttSettings:
    """The settings of a configuration's [mqtt] section (and door.max_delay_ms), secrets read from their files
    or systemd credentials."""
    from edge.config import (
        CREDENTIAL_CLAIM_SECRET,
        CREDENTIAL_COMMAND_SECRET,
        CREDENTIAL_MQTT_PASSWORD,
        device_name,
        secret,
    )

    m = cfg.mqtt
    values: dict[str, Any] = {k: v for k, v in asdict(m).items()
                              if k not in ("enabled", "password_file", "command_secret_file", "claim_secret_file")}
    for k, v in list(values.items()):
        if v == "":
            values[k] = None
    values["device"] = device_name(cfg)
    values["door_max_delay_ms"] = cfg.door.max_delay_ms
    values["password"] = secret(m.password, m.password_file, CREDENTIAL_MQTT_PASSWORD, "mqtt.password")
    values["command_secret"] = secret(m.command_secret, m.command_secret_file, CREDENTIAL_COMMAND_SECRET,
                                      "mqtt.command_secret")
    values["claim_secret"] = secret(m.claim_secret, m.claim_secret_file, CREDENTIAL_CLAIM_SECRET, "mqtt.claim_secret")
    return MqttSettings.from_mapping(values)
