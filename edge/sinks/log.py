"""The log sink: events, state, prompts and door commands as JSON lines in a file or the log (no broker).

`[events] sink = "log"` (or `"auto"` with `mqtt.enabled = false`). Door commands are written, not sent: a
kiosk or a test bench, never a door.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("facegate.daemon")


class LogSink:
    """An EventSink writing JSON lines to a file or the log."""

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

    def close(self) -> None:
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

    def publish_door(self, command: str, duration_s: float | None = None, decided_at: float | None = None,
                     source: str = "facegate") -> bool:
        self._write({"kind": "door", "command": command, "duration_s": duration_s, "source": source})
        return True

    def publish_door_state(self, state: dict[str, Any]) -> None:
        self._write({"kind": "door_state", "state": state})

    def publish_face_unlock(self, enabled: bool) -> None:
        self._write({"kind": "face_unlock", "enabled": enabled})

    def on_door_request(self, callback: Callable[[str], None]) -> None:
        pass  # nothing to hear from: a file or the log takes no commands

    def on_face_unlock(self, callback: Callable[[bool], None]) -> None:
        pass

    def on_connected(self, callback: Callable[[int], None]) -> None:
        callback(1)  # a file or the log is "connected" from the start

    def publish_face_present(self, present: bool) -> None:
        self._write({"kind": "face_present", "present": present})

    def on_claim(self, callback: Callable[[str], None]) -> None:
        self._claim = callback

    def forget_identity(self, name: str) -> None:
        pass


def create(cfg: Any, handlers: Any = None, clock_synced: Any = None) -> LogSink:
    from edge.config import device_name

    return LogSink(device_name(cfg), cfg.mqtt.door)
