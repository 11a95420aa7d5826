"""Where the daemon's decisions go: the EventSink protocol and the table of sinks.

A sink takes events (with their id and sequence number), the retained state, prompts for a display, door
commands and face presence, and brings claims back. `[events] sink` picks one: "auto" (MQTT when
`mqtt.enabled`, else the log), a name from SINKS, or "package.module:factory". Adding a sink is one module with
`create(cfg, handlers, clock_synced) -> EventSink` plus that configuration entry.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from edge.config import ConfigError

if TYPE_CHECKING:
    from edge.config import Config

SINKS: dict[str, str] = {
    "mqtt": "edge.mqtt.publisher:create",
    "log": "edge.sinks.log:create",
}


@runtime_checkable
class EventSink(Protocol):
    connected: bool
    outbox_depth: int
    dropped: int
    reconnects: int

    def start(self) -> None: ...

    def stop(self, flush_timeout: float = 5.0) -> None: ...

    def close(self) -> None:
        """Release what construction opened, for a sink that never started."""
        ...

    def publish_event(self, event: dict[str, Any]) -> dict[str, Any]:
        """Commit the event (adding event_id, seq, ts, device, door) and return it as sent."""
        ...

    def publish_state(self, state: dict[str, Any]) -> None: ...

    def publish_prompt(self, text: str) -> None: ...

    def publish_door(self, command: str, duration_s: float | None = None, decided_at: float | None = None,
                     source: str = "facegate") -> bool:
        """Send a door command now or drop it (never late); True when sent."""
        ...

    def publish_door_state(self, state: dict[str, Any]) -> None:
        """The door's state (edge/door.py), retained: what the lock controller was last told, until when."""
        ...

    def publish_face_unlock(self, enabled: bool) -> None:
        """The face-unlock switch's state, retained."""
        ...

    def publish_face_present(self, present: bool) -> None: ...

    def on_claim(self, callback: Callable[[str], None]) -> None: ...

    def on_connected(self, callback: Callable[[int], None]) -> None: ...

    def on_door_request(self, callback: Callable[[str], None]) -> None:
        """Door profile: call `callback(command)` for each LOCK / UNLOCK / OPEN a home automation asks for."""
        ...

    def on_face_unlock(self, callback: Callable[[bool], None]) -> None:
        """Door profile: call `callback(enabled)` when the face-unlock switch is turned on or off."""
        ...

    def forget_identity(self, name: str) -> None:
        """Erase a deleted identity from everything still waiting to be sent."""
        ...


def make_sink(cfg: Config, handlers: Any = None, clock_synced: Callable[[], bool] | None = None) -> EventSink:
    spec = cfg.events.sink
    if spec == "auto":
        spec = "mqtt" if cfg.mqtt.enabled else "log"
    target = SINKS.get(spec, spec)
    module_name, _, attr = target.partition(":")
    if not attr:
        known = ", ".join(["auto", *SINKS])
        raise ConfigError(f"events.sink: {spec!r} is not one of {known} or 'package.module:factory'")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"events.sink: cannot import {target!r} ({exc})") from None
    if not callable(factory):
        raise ConfigError(f"events.sink: {target!r} is not callable")
    try:
        sink = factory(cfg, handlers, clock_synced)
    except TypeError as exc:  # not a factory of this signature (a json.dumps, say)
        raise ConfigError(f"events.sink: {target!r} is not a sink factory f(cfg, handlers, clock_synced) ({exc})") \
            from None
    if not isinstance(sink, EventSink):
        raise ConfigError(f"events.sink: {target!r} did not return an EventSink (edge/sinks/__init__.py)")
    return sink
