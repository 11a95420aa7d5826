"""The door profile's door: what the lock controller was told, until when, and whether faces may open it.

- Commands go out through the sink's `publish_door`, which sends them now or drops them, never late
  (edge/mqtt/publisher.py): an UNLOCK for each grant, a LOCK once the broker has accepted the daemon's first
  connection, and the Home Assistant lock entity's LOCK / UNLOCK / OPEN (topic door/set), relayed with the
  same duration, expiry and probe as a grant's. The lock controller therefore hears one publisher only.
- The door state (retained on door/state) says what the controller was last told: "unlocked" with the time
  it relocks itself (`until`) after an UNLOCK or OPEN that was sent, "locked" from that time on, or at once
  after a LOCK. A command that was dropped changes nothing, so the state never claims an unlock that did not
  go out. Home Assistant's lock entity reads it.
- The face-unlock switch (Home Assistant `switch`, topic face_unlock/set): while off, grants are turned into
  `denied` ("face unlock disabled") before anything is sent, so no face opens the door; Home Assistant's own
  commands still go through (a person chose them). Kept in a small JSON file written atomically, so a restart
  keeps it, and published retained on face_unlock.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge.atomic import atomic_write_bytes
from edge.config import ConfigError, DoorConfig
from edge.paths import state_dir

log = logging.getLogger("facegate.door")

COMMANDS = ("LOCK", "UNLOCK", "OPEN")
DISABLED_REASON = "face unlock disabled"


def utc(t: float | None = None) -> str:
    """RFC 3339 UTC with milliseconds and a 'Z' (wall clock `t`, default now)."""
    moment = datetime.now(UTC) if t is None else datetime.fromtimestamp(t, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def face_unlock_path(cfg: DoorConfig) -> Path:
    return Path(cfg.face_unlock_path) if cfg.face_unlock_path else state_dir() / "face-unlock.json"


def read_face_unlock(path: Path) -> bool:
    """The persisted switch: True (faces may unlock) when the file does not exist yet. An unreadable or
    malformed file is a configuration error: guessing "on" could open a door someone had closed to faces,
    guessing "off" would lock everyone out without saying why."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return True
    except OSError as exc:
        raise ConfigError(f"door.face_unlock_path: cannot read {path} ({exc.strerror or exc})") from None
    try:
        doc = json.loads(raw)
        enabled = doc["enabled"] if isinstance(doc, dict) else None
    except (json.JSONDecodeError, KeyError):
        enabled = None
    if not isinstance(enabled, bool):
        raise ConfigError(f'door.face_unlock_path: {path} is not {{"enabled": true|false}}; fix it or remove it '
                          f"(face unlock then starts enabled)")
    return enabled


class DoorControl:
    """Door commands, the retained door state and the face-unlock switch of one door.

    `sink` is the daemon's EventSink; `on_switch(enabled)` is told each time the switch changes (the daemon
    points it at the policy)."""

    def __init__(self, sink: Any, cfg: DoorConfig, on_switch: Callable[[bool], None] | None = None) -> None:
        self.sink = sink
        self.unlock_s = cfg.unlock_s
        self.path = face_unlock_path(cfg)
        self._face_unlock = read_face_unlock(self.path)
        self._on_switch = on_switch
        self._lock = threading.RLock()
        self._timer: threading.Timer | None = None
        self._generation = 0
        self.state: dict[str, Any] | None = None  # the last door state published
        if on_switch is not None:
            on_switch(self._face_unlock)

    # -- wiring ---------------------------------------------------------------------------------------------
    def attach(self) -> None:
        """Register with the sink: the start-up LOCK after the first connection, Home Assistant's lock and
        switch commands, and the switch's state (published retained once connected)."""
        self.sink.publish_face_unlock(self._face_unlock)
        self.sink.on_door_request(self.request)
        self.sink.on_face_unlock(self.set_face_unlock)
        self.sink.on_connected(self._connected)

    def close(self) -> None:
        with self._lock:
            self._generation += 1
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _connected(self, n: int) -> None:
        if n != 1:
            return  # a reconnect: the publisher re-sends the retained state and switch itself
        # A known state after a restart, sent once the broker has accepted the connection (CONNACK): published
        # before that, it was lost in 2 of 3 starts.
        with self._lock:
            sent = self.sink.publish_door("LOCK")
            self._publish("locked", None, "LOCK", "start-up" if sent else "start-up (LOCK not delivered)")

    # -- the switch -----------------------------------------------------------------------------------------
    @property
    def face_unlock(self) -> bool:
        return self._face_unlock

    def set_face_unlock(self, enabled: bool, source: str = "homeassistant") -> None:
        """Turn face unlock on or off: persisted first, then applied, then published."""
        with self._lock:
            if enabled != self._face_unlock:
                doc = {"enabled": enabled, "source": source, "ts": utc()}
                atomic_write_bytes(self.path, (json.dumps(doc) + "\n").encode())
                self._face_unlock = enabled
                if self._on_switch is not None:
                    self._on_switch(enabled)
                log.warning("face unlock %s (by %s)%s", "enabled" if enabled else "DISABLED", source,
                            "" if enabled else ": grants are denied and no face opens the door")
            self.sink.publish_face_unlock(self._face_unlock)  # also answers a repeated command

    # -- commands -------------------------------------------------------------------------------------------
    def grant(self, decided_at: float | None = None) -> bool:
        """The UNLOCK for a grant (sent now or dropped); True when it went out."""
        return self._send("UNLOCK", "facegate", decided_at)

    def request(self, command: str, source: str = "homeassistant") -> bool:
        """A LOCK, UNLOCK or OPEN asked for by Home Assistant's lock entity, relayed to the lock controller."""
        if command not in COMMANDS:
            raise ValueError(f"door command {command!r} is not one of {', '.join(COMMANDS)}")
        log.info("door: %s asked by %s", command, source)
        return self._send(command, source, None)

    def _send(self, command: str, source: str, decided_at: float | None) -> bool:
        with self._lock:
            duration = None if command == "LOCK" else self.unlock_s
            sent = self.sink.publish_door(command, duration, decided_at=decided_at, source=source)
            if not sent:
                return False  # nothing reached the controller: the state stays what it was
            if command == "LOCK":
                self._publish("locked", None, command, source)
            else:
                self._publish("unlocked", time.time() + duration, command, source)  # type: ignore[operator]
            return True

    def _publish(self, state: str, until: float | None, command: str, source: str) -> None:
        self._generation += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        doc = {"state": state, "until": None if until is None else utc(until), "command": command,
               "source": source, "ts": utc()}
        self.state = doc
        self.sink.publish_door_state(doc)
        if until is not None:
            generation = self._generation
            self._timer = threading.Timer(max(0.0, until - time.time()), self._relocked, (generation,))
            self._timer.daemon = True
            self._timer.start()

    def _relocked(self, generation: int) -> None:
        # The controller relocks on its own timer at `until` (INTEGRATION.md); the state follows it.
        with self._lock:
            if generation != self._generation:
                return  # a later command replaced this one
            self._timer = None
            self._publish("locked", None, "relock", "timer")

