"""The daemon's MQTT client: events through the outbox, retained state, discovery, prompts, door commands, claims
and signed commands.

Topics, under <topic_prefix>/<device>/:
  event          QoS 1, not retained: one JSON document per decision (event.schema.json)
  state          QoS 1, retained: the daemon's summary + last_identity, outbox_depth, outbox_dropped, ts; sent
                 only once the daemon has given one (never a partial document)
  availability   QoS 1, retained: "online" on connect, "offline" on stop and as the Last Will
  face_present   QoS 0, retained: ON / OFF (Home Assistant binary_sensor)
  prompt         QoS 0, not retained: {"text", "ts"} for a display
  door/command   QoS 1, not retained: {"command": LOCK|UNLOCK|OPEN, "duration_s"?, "door", "source", "ts",
                 "valid_until"}; MQTT 5 message expiry; never sent late (publish_door)
  door/state     QoS 1, retained (door profile): {"state": locked|unlocked, "until", "command", "source", "ts"}
                 (edge/door.py); Home Assistant's lock entity reads it
  door/set       subscribed (door profile): LOCK, UNLOCK or OPEN from Home Assistant's lock entity, relayed
  face_unlock    QoS 1, retained (door profile): ON / OFF, the face-unlock switch
  face_unlock/set subscribed (door profile): ON / OFF from Home Assistant's switch
  door/probe     QoS 1, not retained, empty: the round trip that proves the broker is responsive right before a
                 door command
  claim          subscribed: an identity name, as text or {"identity": name}
  cmd/<name>     subscribed: signed commands (commands.py)
  cmd_result     QoS 1, not retained: the outcome of each command

Threads: paho's network thread runs the connection (connect, exponential back-off, keepalive). It only ever sets
flags and queues work, because paho calls on_publish while holding its own message lock and a callback that
waited for one of ours could deadlock against a thread publishing under it. The outbox thread moves events from
SQLite to paho (at most WINDOW in flight) and deletes them on PUBACK; the worker thread runs commands and claims,
so a slow enrolment never stalls keepalives; the control thread runs what must not wait behind a command: each
connection's announcement (and the door's start-up LOCK), door/set, face_unlock/set and Home Assistant births
(coalesced). A message larger than its topic can need is dropped on arrival, and the worker's queue is bounded in
bytes as well as in messages, so a flood costs neither memory nor the door's commands.

Delivery is at least once: after a reconnect the outbox is re-sent in seq order from its oldest row, so a
subscriber may see an event twice (same event_id) but never a gap it is not told about (outbox_dropped).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import queue
import socket
import ssl
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.mqtt import MqttError
from edge.mqtt.commands import MAX_IMAGE_B64, ClaimVerifier, CommandHandlers, CommandProcessor, Refused
from edge.mqtt.homeassistant import OFF, ON, discovery_messages, status_topic
from edge.mqtt.outbox import Outbox, dumps
from edge.mqtt.settings import MqttSettings
from edge.ratelimit import LogLimiter, TokenBucket, printable

__all__ = ["CommandHandlers", "Publisher"]

log = logging.getLogger(__name__)
limited = LogLimiter(log)
paho_log = logging.getLogger(__name__ + ".paho")

# Events handed to paho at once. paho's own in-flight limit is twice that, leaving room for state, discovery and
# door commands, so paho never has to queue an event itself: what is not on the wire stays in SQLite, where
# forget_identity can still erase it, and a door command never waits behind a backlog of events.
WINDOW = 20
# Incoming commands and claims waiting for the worker; beyond either bound they are dropped (paho's thread must
# never block). The byte bound is what keeps memory flat: 1000 messages of a few MB would be gigabytes.
MAX_JOBS = 1000
MAX_JOB_BYTES = 48 * 1024 * 1024  # room for a few enrolment photos (each at most MAX_IMAGE_B64 + envelope)
# door/set and face_unlock/set waiting for the control thread: a person at the door or an operator, never a
# backlog; beyond this the flood is dropped, not the connection's re-announcement (a flag, not a queue entry).
MAX_CONTROL_JOBS = 32
# Home Assistant births re-send every discovery config and the state: at most one pending and one per this many
# seconds, however many "online" messages arrive.
ANNOUNCE_MIN_S = 3.0
# The most a message on each topic can need (a) before it is queued: a signed claim or small command is an
# envelope of two 200-character names, escaped twice at worst; only cmd/enroll carries a photo.
MAX_SMALL_PAYLOAD = 8 * 1024
MAX_WORD_PAYLOAD = 256  # LOCK, UNLOCK, OPEN, ON, OFF, online / offline, with some white space
MAX_ENROLL_PAYLOAD = MAX_IMAGE_B64 + 64 * 1024
# paho's own queue of QoS 1 messages (in flight and waiting), which is otherwise unbounded and, past 65535, reuses
# message ids. Beyond it paho refuses a publish: an event then stays in the outbox and is tried again.
MAX_PAHO_QUEUE = 1000
# cmd_result refusals: each junk command would otherwise queue one QoS 1 reply; beyond these only the (rate-
# limited) log line says so. Results of commands that passed the signature check are always sent.
REFUSALS_PER_S = 5.0
REFUSAL_BURST = 50
EVENT_FIELDS = ("event_id", "seq", "ts", "device", "door")
DOOR_COMMANDS = ("LOCK", "UNLOCK", "OPEN")


def utc_now(offset_s: float = 0.0) -> str:
    """RFC 3339 with milliseconds, UTC, 'Z' suffix (`offset_s` seconds from now)."""
    t = datetime.now(UTC) + timedelta(seconds=offset_s)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _scrub(value: Any, name: str) -> Any:
    """`value` with every string equal to `name` replaced by None and every key equal to it removed
    (forget_identity on the daemon's state)."""
    if isinstance(value, dict):
        return {k: _scrub(v, name) for k, v in value.items() if k != name}
    if isinstance(value, list | tuple):
        return [_scrub(v, name) for v in value]
    return None if value == name else value


def _acked(info: mqtt.MQTTMessageInfo) -> bool:
    try:
        return info.is_published()
    except (RuntimeError, ValueError):  # not sent (no connection): the next connection re-sends it from SQLite
        return False


def _connect_hint(exc: BaseException | None, tls: bool) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return " (the broker's certificate is not signed by tls_ca, or does not name the host)"
    if isinstance(exc, ssl.SSLError):
        return " (TLS handshake failed: a TLS port without tls_ca, a plain port with tls_ca, or a rejected client " \
               "certificate)"
    if isinstance(exc, ConnectionRefusedError):
        return " (is the broker running and listening on that port?)"
    if isinstance(exc, ConnectionResetError) and tls:
        return " (a plain MQTT port? TLS needs the broker's TLS listener)"
    return ""


class Publisher:
    def __init__(self, settings: MqttSettings, handlers: CommandHandlers | None = None,
                 clock_synced: Callable[[], bool] | None = None, door_max_delay_ms: float = 1000.0,
                 door_profile: bool = False) -> None:
        settings = settings if settings.device else settings.resolved()
        self.settings = settings
        # The door profile has a door: its state, Home Assistant's lock and face-unlock switch (the kiosk sends no
        # door commands, so it announces no lock).
        self.door_profile = door_profile
        if not (math.isfinite(door_max_delay_ms) and door_max_delay_ms > 0):
            raise MqttError(f"door.max_delay_ms: {door_max_delay_ms!r} must be a positive number")
        self.door_max_delay_ms = door_max_delay_ms
        self._clock_synced = clock_synced
        self._where = f"{settings.host}:{settings.port}{' (TLS)' if settings.tls else ''}"
        self._client = self._make_client()  # first: unreadable TLS files fail before anything is opened
        self._outbox = Outbox(settings.effective_outbox_path, settings.device, settings.outbox_limit)
        self._commands = CommandProcessor(settings.device, settings.secret_bytes("command_secret"),
                                          settings.effective_command_state_path, handlers, self.forget_identity)
        self._claims = ClaimVerifier(settings.claims, settings.device, settings.secret_bytes("claim_secret"),
                                     settings.effective_claim_state_path)
        self._claim_callbacks: list[Callable[[str], None]] = []
        self._connected_callbacks: list[Callable[[int], None]] = []
        self._door_request_callbacks: list[Callable[[str], None]] = []
        self._face_unlock_callbacks: list[Callable[[bool], None]] = []
        self._send_lock = threading.Lock()  # connection generation vs. the outbox thread's publishes
        self._door_lock = threading.Lock()
        self._door_acked = threading.Event()  # set on every PUBACK: a door probe's waiter looks again
        self.door_dropped = 0  # door commands dropped rather than sent late
        self._state_lock = threading.Lock()  # _state, _last_identity, _face_present, _door_state, _face_unlock
        self._state_publish_lock = threading.Lock()  # retained state documents leave in the order they are built
        self._wake = threading.Event()
        # (topic, payload, (size, limit) of a command dropped for its size or None)
        self._jobs: queue.Queue[tuple[str, bytes, tuple[int, int] | None] | None] = queue.Queue(MAX_JOBS)
        self._jobs_bytes = 0  # payload bytes in _jobs
        self._jobs_lock = threading.Lock()
        # The control thread's work, under _control_cv: door/set and face_unlock/set (topic, payload, arrival),
        # a connection to announce, a Home Assistant birth to answer.
        self._control_cv = threading.Condition()
        self._control_jobs: deque[tuple[str, bytes, float]] = deque()
        self._connect_pending = False
        self._announce_pending = False
        self._next_announce = 0.0  # time.monotonic() before which a birth is not answered again
        self._local = threading.local()  # received_at: when the door/set being relayed arrived
        self._refusals = TokenBucket(REFUSALS_PER_S, REFUSAL_BURST)
        self._connected = False
        self._subscribed = False  # the SUBACK for claim, cmd/+ and the HA status arrived on this connection
        self._announced = False  # discovery, state and face presence were re-sent on this connection
        self._generation = 0
        self._connections = 0
        self._fail_streak = 0
        self._attempt_reported = False  # one log line per failed connection attempt, not two
        self._started = False
        self._stopping = False
        self._closed = False
        self._state: dict[str, Any] | None = None  # None until the daemon gives its first, complete one
        self._last_identity: str | None = None
        self._face_present: bool | None = None
        self._door_state: dict[str, Any] | None = None
        self._face_unlock: bool | None = None
        self._reported_depth: int | None = None
        self._sender = threading.Thread(target=self._sender_main, name=f"mqtt-outbox-{settings.device}",
                                        daemon=True)
        self._worker = threading.Thread(target=self._worker_main, name=f"mqtt-worker-{settings.device}",
                                        daemon=True)
        self._control = threading.Thread(target=self._control_main, name=f"mqtt-control-{settings.device}",
                                         daemon=True)

    # -- set-up ------------------------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        s = self.settings
        if s.protocol == "5":
            client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=s.effective_client_id,
                                 protocol=mqtt.MQTTv5)
        else:
            client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=s.effective_client_id,
                                 clean_session=True, protocol=mqtt.MQTTv311)
        if s.username:
            client.username_pw_set(s.username, s.password or None)
        if s.tls_ca:
            try:
                context = ssl.create_default_context(cafile=str(s.tls_ca))  # verifies chain and host name
                context.minimum_version = ssl.TLSVersion.TLSv1_2
                if s.tls_cert and s.tls_key:
                    context.load_cert_chain(str(s.tls_cert), str(s.tls_key))
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise MqttError(f"mqtt TLS files (tls_ca {s.tls_ca}, tls_cert {s.tls_cert}, tls_key {s.tls_key}) "
                                f"are unusable: {exc}") from None
            client.tls_set_context(context)
            client.tls_insecure_set(s.tls_insecure)
        client.will_set(s.topic("availability"), "offline", qos=1, retain=True)
        client.reconnect_delay_set(s.reconnect_min_s, s.reconnect_max_s)  # typed int, floats work
        client.max_inflight_messages_set(2 * WINDOW)
        client.max_queued_messages_set(MAX_PAHO_QUEUE)
        client.suppress_exceptions = True  # a bug in a callback must not end the network thread
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_log = lambda _c, _u, _level, text: paho_log.debug("%s", text)
        return client

    def start(self) -> None:
        """Connect in the background (never blocks, never raises for an unreachable or refusing broker)."""
        if self._started:
            return
        if self._closed:
            raise RuntimeError("this Publisher was stopped; make a new one")
        self._started = True
        log.info("mqtt: connecting to %s as %s", self._where, self.settings.effective_client_id)
        clean = {"clean_start": True} if self.settings.protocol == "5" else {}
        self._client.connect_async(self.settings.host, self.settings.port, self.settings.keepalive, **clean)
        self._client.loop_start()
        self._sender.start()
        self._worker.start()
        self._control.start()

    def stop(self, flush_timeout: float = 5.0) -> None:
        """Wait (up to flush_timeout) for pending events to be acknowledged, say "offline", disconnect."""
        if self._closed:
            return
        self._closed = True  # publish_event refuses from here on
        deadline = time.monotonic() + flush_timeout
        if self._started:
            while self._connected and self._outbox.depth > 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            self._stopping = True
            self._wake.set()
            self._sender.join()
            with contextlib.suppress(queue.Full):
                self._jobs.put(None, timeout=1.0)
            with self._control_cv:
                self._control_cv.notify_all()  # it sees _stopping
            self._worker.join(timeout=max(0.5, deadline - time.monotonic()))
            self._control.join(timeout=max(0.5, deadline - time.monotonic()))
            if self._connected:
                info = self._client.publish(self.settings.topic("availability"), "offline", qos=1, retain=True)
                with contextlib.suppress(RuntimeError, ValueError):
                    info.wait_for_publish(timeout=max(0.5, deadline - time.monotonic()))
            self._client.disconnect()
            self._client.loop_stop()
            self._connected = False
        if self._outbox.depth:
            log.info("mqtt: stopped with %d event(s) in the outbox; they are sent on the next start",
                     self._outbox.depth)
        self._outbox.close()

    def close(self) -> None:
        """Release the outbox of a publisher that will not run (a daemon that failed to start, `run --check`);
        a started one is stopped with stop()."""
        if self._started:
            self.stop(flush_timeout=0.0)
        elif not self._closed:
            self._closed = True
            self._outbox.close()

    def wait_connected(self, timeout: float) -> bool:
        """True once connected, subscribed (commands and claims sent from then on are received) and announced
        (discovery, state); False after `timeout` seconds. For start-up checks and tests."""
        deadline = time.monotonic() + timeout
        while not self._ready() and time.monotonic() < deadline:
            time.sleep(0.02)
        return self._ready()

    def _ready(self) -> bool:
        return self._connected and self._subscribed and self._announced

    # -- properties --------------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def outbox_depth(self) -> int:
        return self._outbox.depth

    @property
    def dropped(self) -> int:
        return self._outbox.dropped

    @property
    def reconnects(self) -> int:
        """Successful connections after the first one."""
        return max(0, self._connections - 1)

    # -- publishing --------------------------------------------------------------------------------------
    def publish_event(self, event: dict) -> dict:
        """Commit the event to the outbox (with event_id, seq, ts, device, door), then let it be sent."""
        if self._closed:
            raise RuntimeError("publish_event after stop()")
        synced = self._clock_is_synced()
        s = self.settings

        def build(seq: int) -> dict[str, Any]:
            full: dict[str, Any] = {"event_id": str(uuid.uuid4()), "seq": seq, "ts": utc_now(), "device": s.device,
                                    "door": event.get("door") or s.door}
            full.update((k, v) for k, v in event.items() if k not in EVENT_FIELDS and k != "clock_synced")
            if not synced:
                full["clock_synced"] = False
            return full

        stored, dropped = self._outbox.add(build)
        if dropped:
            log.warning("mqtt outbox full (%d events): dropped the oldest %d, seq %d..%d; %d dropped in all",
                        s.outbox_limit, len(dropped), dropped[0][0], dropped[-1][0], self._outbox.dropped)
        identity = stored.get("identity")
        granted = stored.get("decision") == "granted" and isinstance(identity, str)
        if granted:
            with self._state_lock:
                self._last_identity = identity
        self._wake.set()
        if dropped or granted:
            self._send_state()
        return stored

    def publish_state(self, state: dict) -> None:
        """Retained summary; the Publisher adds last_identity, outbox_depth, outbox_dropped and ts."""
        with self._state_lock:
            self._state = json.loads(dumps(state))  # a private copy the caller cannot change under us
        self._send_state()

    def publish_prompt(self, text: str) -> None:
        if self._connected:
            self._client.publish(self.settings.topic("prompt"), dumps({"text": text, "ts": utc_now()}), qos=0)

    def publish_door(self, command: str, duration_s: float | None = None, decided_at: float | None = None,
                     source: str = "facegate") -> bool:
        """Send a door command now, or drop it; True when it went to a broker that was responsive a moment ago.

        A door command is never late. It is sent only after a QoS 1 probe (door/probe) came back acknowledged
        within `door_max_delay_ms` of `decided_at` (time.monotonic(), default now): a broker that is gone,
        frozen or backlogged would otherwise read an UNLOCK from its socket buffer many seconds later and open
        the door for nobody. Each command also carries `valid_until` (wall clock, for lock controllers to
        check) and, under MQTT 5, a message expiry the broker enforces for subscribers it has to queue for.
        Nothing is kept for later, and a reconnect discards any that were still unacknowledged.
        """
        if command not in DOOR_COMMANDS:
            raise ValueError(f"door command {command!r} is not one of {', '.join(DOOR_COMMANDS)}")
        if duration_s is not None and not (math.isfinite(duration_s) and duration_s > 0):
            raise ValueError(f"door duration_s must be a positive number of seconds, got {duration_s!r}")
        budget = self.door_max_delay_ms / 1e3
        if decided_at is None:
            # A door/set relayed by the control thread counts from when the message arrived, not from when the
            # thread got to it: a request that waited is as late as its wait.
            decided_at = getattr(self._local, "received_at", None) or time.monotonic()
        deadline = decided_at + budget
        if not self._connected:
            return self._drop_door(command, "not connected")
        with self._door_lock:  # one probe round trip at a time; commands leave in the order they were decided
            if not self._broker_responsive(deadline):
                return self._drop_door(command, f"the broker did not acknowledge a probe within "
                                                f"{self.door_max_delay_ms:g} ms")
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._connected:
                return self._drop_door(command, "too late")
            doc: dict[str, Any] = {"command": command, "door": self.settings.door, "source": source,
                                   "ts": utc_now(), "valid_until": utc_now(remaining)}
            if duration_s is not None:
                doc["duration_s"] = duration_s
            if not self._clock_is_synced():
                doc["clock_synced"] = False  # valid_until is then only as good as this box's clock
            props = None
            if self.settings.protocol == "5":
                props = Properties(PacketTypes.PUBLISH)
                props.MessageExpiryInterval = max(1, math.ceil(remaining))  # whole seconds, at least 1
            self._client.publish(self.settings.topic("door", "command"), dumps(doc), qos=1, properties=props)
        return True

    def _broker_responsive(self, deadline: float) -> bool:
        """A QoS 1 probe acknowledged before `deadline`: the broker is reading this connection right now."""
        info = self._client.publish(self.settings.topic("door", "probe"), b"", qos=1)
        while time.monotonic() < deadline:
            if _acked(info):
                return True
            if not self._connected:
                return False
            self._door_acked.wait(min(0.005, max(0.0, deadline - time.monotonic())))
            self._door_acked.clear()
        return _acked(info)

    def _drop_door(self, command: str, why: str) -> bool:
        self.door_dropped += 1
        log.warning("mqtt: door command %s dropped: %s", command, why)
        return False

    def publish_door_state(self, state: dict[str, Any]) -> None:
        """Retained on door/state (edge/door.py builds it); re-sent on every (re)connect."""
        with self._state_lock:
            self._door_state = json.loads(dumps(state))
        if self._connected:
            self._client.publish(self.settings.topic("door", "state"), dumps(state), qos=1, retain=True)

    def publish_face_unlock(self, enabled: bool) -> None:
        """Retained ON/OFF on face_unlock for Home Assistant's switch; re-sent on every (re)connect."""
        with self._state_lock:
            self._face_unlock = enabled
        if self._connected:
            self._client.publish(self.settings.topic("face_unlock"), ON if enabled else OFF, qos=1, retain=True)

    def publish_face_present(self, present: bool) -> None:
        """Retained ON/OFF for the Home Assistant binary_sensor; sent only when it changes."""
        with self._state_lock:
            if self._face_present is present:
                return
            self._face_present = present
        if self._connected:
            self._client.publish(self.settings.topic("face_present"), ON if present else OFF, qos=0, retain=True)

    def on_connected(self, callback: Callable[[int], None]) -> None:
        """Call `callback(n)` (on the control thread) after the n-th connection is up and announced: what must
        reach the broker, such as the door's start-up LOCK, is sent from here, never before CONNACK."""
        self._connected_callbacks.append(callback)

    def on_door_request(self, callback: Callable[[str], None]) -> None:
        """Call `callback(command)` (on the control thread) for each LOCK / UNLOCK / OPEN on door/set (door
        profile). A publish_door(command) from the callback counts its max-delay budget from the message's
        arrival."""
        self._door_request_callbacks.append(callback)

    def on_face_unlock(self, callback: Callable[[bool], None]) -> None:
        """Call `callback(enabled)` (on the control thread) for each ON / OFF on face_unlock/set (door profile)."""
        self._face_unlock_callbacks.append(callback)

    def on_claim(self, callback: Callable[[str], None]) -> None:
        """Call `callback(identity)` (on the worker thread) for each message on facegate/<device>/claim."""
        self._claim_callbacks.append(callback)

    def forget_identity(self, name: str) -> None:
        """Erase `name` from pending events, the retained state and the last-identity sensor."""
        removed = self._outbox.forget(name)
        with self._state_lock:
            if self._last_identity == name:
                self._last_identity = None
            if self._state is not None:
                self._state = _scrub(self._state, name)
        self._send_state()
        # The count only: a log line naming the person would defeat the erasure.
        log.info("mqtt: forgot an identity: %d pending event(s) erased from the outbox", removed)

    # -- internals ---------------------------------------------------------------------------------------
    def _clock_is_synced(self) -> bool:
        if self._clock_synced is None:
            return True
        try:
            return bool(self._clock_synced())
        except Exception:
            log.debug("clock_synced() failed; marking the event's time as unsynchronised", exc_info=True)
            return False

    def _send_state(self) -> None:
        if not self._connected:
            return  # sent again on (re)connect
        with self._state_publish_lock:
            with self._state_lock:
                if self._state is None:
                    return  # nothing from the daemon yet: a partial document would stay retained
                doc = {**self._state, "last_identity": self._last_identity, "outbox_depth": self._outbox.depth,
                       "outbox_dropped": self._outbox.dropped, "ts": utc_now()}
            self._reported_depth = doc["outbox_depth"]
            self._client.publish(self.settings.topic("state"), dumps(doc), qos=1, retain=True)

    def _announce(self) -> None:
        """Discovery configs, state and face presence: after each connect and each Home Assistant start."""
        if not self._connected:
            return
        if self.settings.discovery:
            for topic, payload in discovery_messages(self.settings, door=self.door_profile):
                self._client.publish(topic, payload, qos=1, retain=True)
        self._send_state()
        with self._state_lock:
            present, door, face_unlock = self._face_present, self._door_state, self._face_unlock
        if present is not None:
            self._client.publish(self.settings.topic("face_present"), ON if present else OFF, qos=0, retain=True)
        if door is not None:
            self._client.publish(self.settings.topic("door", "state"), dumps(door), qos=1, retain=True)
        if face_unlock is not None:
            self._client.publish(self.settings.topic("face_unlock"), ON if face_unlock else OFF, qos=1, retain=True)

    def _retry(self) -> str:
        # Mirrors paho's back-off (min, doubling, capped) so that the log line can say when the next try is.
        s = self.settings
        delay = min(s.reconnect_max_s, s.reconnect_min_s * 2 ** max(0, self._fail_streak - 1))
        return f"retrying in {delay:.1f} s" if delay < 10 else f"retrying in {delay:.0f} s"

    def _report_failure(self, message: str, *args: Any) -> None:
        self._fail_streak += 1
        self._attempt_reported = True
        log.error(message + "; %s", *args, self._retry())

    # -- paho callbacks (network thread): set flags, queue work, never wait on our locks but _send_lock ------
    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            hint = ""
            if reason.value in (134, 135):  # bad user name or password / not authorised
                hint = " (check username and password)"
            self._report_failure("mqtt: broker %s refused the connection: %s%s", self._where, reason, hint)
            return
        self._subscribed = self._announced = False
        sock = client.socket()
        if sock is not None and hasattr(sock, "setsockopt"):
            # Decisions are tiny messages sent from several threads: without this, Nagle's algorithm holds an
            # event back ~40 ms behind the door command and prompt sent just before it.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._send_lock:
            # paho would re-send its own unacknowledged copies; the outbox does that, in seq order, instead.
            client.drop_out_messages()
            self._generation += 1
            self._connected = True
        self._connections += 1
        self._fail_streak = 0
        log.info("mqtt: %s %s", "connected to" if self._connections == 1 else "reconnected to", self._where)
        client.publish(self.settings.topic("availability"), "online", qos=1, retain=True)
        subscriptions = [(self.settings.topic("claim"), 1), (self.settings.topic("cmd", "+"), 1)]
        if self.door_profile:
            subscriptions += [(self.settings.topic("door", "set"), 1), (self.settings.topic("face_unlock", "set"), 1)]
        if self.settings.discovery:
            subscriptions.append((status_topic(self.settings), 1))
        client.subscribe(subscriptions)
        with self._control_cv:
            # A flag, not a queue entry: no flood of messages can make the connection go unannounced.
            self._connect_pending = True
            self._control_cv.notify_all()
        self._wake.set()

    def _on_pre_connect(self, _client: mqtt.Client, _userdata: Any) -> None:
        self._attempt_reported = False

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        # paho calls this from inside its `except OSError` block, so the exception is still at hand.
        exc = sys.exception()
        self._report_failure("mqtt: cannot connect to %s: %s%s", self._where, exc or "connection failed",
                             _connect_hint(exc, self.settings.tls))

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        was_connected, self._connected = self._connected, False
        if self._stopping:
            return
        if was_connected:
            log.warning("mqtt: lost the connection to %s (%s); reconnecting, events wait in the outbox",
                        self._where, reason)
        elif not self._attempt_reported:
            # Closed between the TCP/TLS handshake and CONNACK: with TLS 1.3 that is how a broker rejects a
            # client certificate (the client's handshake has already "succeeded").
            self._report_failure("mqtt: broker %s closed the connection before accepting it (%s)%s", self._where,
                                 reason, " (does it require a client certificate, tls_cert/tls_key?)"
                                 if self.settings.tls else " (a TLS-only port? then set tls_ca)")

    def _on_subscribe(self, _client: mqtt.Client, _userdata: Any, _mid: int, reasons: list[Any], _props: Any) -> None:
        refused = [r for r in reasons if r.is_failure]
        if refused:
            # An ACL that forgot this device's cmd/claim topics: say so, the rest keeps working.
            log.error("mqtt: broker %s refused %d of the subscriptions (claim, cmd/+, discovery status, door/set, "
                      "face_unlock/set): %s",
                      self._where, len(refused), refused[0])
        self._subscribed = True

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.retain and message.topic != status_topic(self.settings):
            # A retained message on a command topic (door/set, face_unlock/set, claim, cmd/+) is one somebody
            # published with retain=true at some time: the broker hands it over again at every (re)connect,
            # so acting on it would turn one UNLOCK into a standing order, or undo an operator's face-unlock OFF
            # after each restart. Commands count only when sent live (a live message reaches a subscriber with
            # the retain flag cleared, whatever its sender set); the stale one is dropped and named.
            # Rate-limited per kind of topic, not per topic: cmd/+ matches any name, and a key per name would let
            # retained junk on thousands of cmd/<x> topics log thousands of lines at each reconnect and grow the
            # limiter's table for ever.
            limited.warning(f"retained:{self._topic_kind(message.topic)}",
                            "mqtt: ignored a retained message on %s: commands are acted on only when sent live; "
                            "clear it with an empty retained publish", printable(message.topic, 80))
            return
        topic, kind, size = message.topic, self._topic_kind(message.topic), len(message.payload)
        limit = self._payload_limit(topic, kind)
        if size > limit:
            limited.warning(f"oversize:{kind}", "mqtt: dropped a %d-byte message on %s: more than the %d bytes a "
                            "message there can need", size, printable(topic, 80), limit)
            if kind == "cmd/+":
                self._queue_job(topic, b"", oversize=(size, limit))  # its sender still gets a refusal, not silence
            return
        s = self.settings
        if topic == status_topic(s):
            if bytes(message.payload).strip() == b"online":
                with self._control_cv:
                    self._announce_pending = True  # one pending re-announcement, however many births
                    self._control_cv.notify_all()
        elif topic in (s.topic("door", "set"), s.topic("face_unlock", "set")):
            self._queue_control(topic, bytes(message.payload))
        else:
            self._queue_job(topic, bytes(message.payload))

    def _payload_limit(self, topic: str, kind: str) -> int:
        if kind == "cmd/+":
            return MAX_ENROLL_PAYLOAD if topic == self.settings.topic("cmd", "enroll") else MAX_SMALL_PAYLOAD
        if kind == self.settings.topic("claim"):
            return MAX_SMALL_PAYLOAD
        return MAX_WORD_PAYLOAD

    def _topic_kind(self, topic: str) -> str:
        """The subscription `topic` came in on (claim, cmd/+, door/set, face_unlock/set, the HA status): a
        bounded set, whatever names an outsider publishes under cmd/."""
        s = self.settings
        if topic.startswith(s.topic("cmd") + "/"):
            return "cmd/+"
        known = (s.topic("claim"), s.topic("door", "set"), s.topic("face_unlock", "set"), status_topic(s))
        return topic if topic in known else "other"

    def _queue_job(self, topic: str, payload: bytes, oversize: tuple[int, int] | None = None) -> None:
        with self._jobs_lock:
            if self._jobs_bytes + len(payload) <= MAX_JOB_BYTES:
                try:
                    self._jobs.put_nowait((topic, payload, oversize))
                    self._jobs_bytes += len(payload)
                    return
                except queue.Full:
                    pass
            waiting, size = self._jobs.qsize(), self._jobs_bytes
        limited.warning("worker-full", "mqtt: %d message(s) of %d bytes in all already wait for the worker; "
                        "dropped one on %s", waiting, size, printable(topic, 80))

    def _queue_control(self, topic: str, payload: bytes) -> None:
        with self._control_cv:
            if len(self._control_jobs) < MAX_CONTROL_JOBS:
                self._control_jobs.append((topic, payload, time.monotonic()))
                self._control_cv.notify_all()
                return
        limited.warning("control-full", "mqtt: %d door/set and face_unlock/set messages already wait; dropped one "
                        "on %s", MAX_CONTROL_JOBS, printable(topic, 80))

    def _on_publish(self, *_args: Any) -> None:
        self._wake.set()  # the outbox thread looks for acknowledged events
        self._door_acked.set()

    # -- threads -----------------------------------------------------------------------------------------
    def _sender_main(self) -> None:
        inflight: dict[int, mqtt.MQTTMessageInfo] = {}  # seq → paho's handle, in seq order
        generation, high = -1, 0
        topic = self.settings.topic("event")
        while not self._stopping:
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                acked = [seq for seq, info in inflight.items() if _acked(info)]
                if acked:
                    self._outbox.remove(acked)  # only now: the broker has it
                    for seq in acked:
                        del inflight[seq]
                with self._send_lock:
                    if self._connected and not self._stopping:
                        if generation != self._generation:
                            # A new connection: whatever was in flight may be lost; start again from the oldest.
                            generation, high = self._generation, 0
                            inflight.clear()
                        for seq, payload in self._outbox.pending(high, WINDOW - len(inflight)):
                            info = self._client.publish(topic, payload, qos=1)
                            if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                                # paho's queue is full: the event stays in SQLite and is tried again at the
                                # next wake, in seq order (high is not moved past it).
                                limited.warning("paho-full", "mqtt: %d messages already wait in the MQTT "
                                                "client; events wait in the outbox", MAX_PAHO_QUEUE)
                                break
                            inflight[seq] = info
                            high = seq
                if self._outbox.depth == 0 and self._reported_depth:
                    self._send_state()  # the backlog drained: say so in the retained state
            except Exception:
                log.exception("mqtt outbox thread: unexpected error; retrying in 1 s")
                time.sleep(1.0)

    def _worker_main(self) -> None:
        """Commands and claims, one at a time: an enrolment may take many seconds (a live capture)."""
        while (job := self._jobs.get()) is not None:
            topic, payload, oversize = job
            with self._jobs_lock:
                self._jobs_bytes -= len(payload)
            try:
                self._handle_message(topic, payload, oversize)
            except Exception as exc:
                self._job_failed("message", topic, exc)
            del job, payload  # a photo is not kept alive while the worker waits for the next message

    def _job_failed(self, kind: str, topic: str, exc: Exception) -> None:
        # One line, rate-limited: a message an outsider sent must not flood the log.
        limited.warning(f"worker:{type(exc).__name__}", "mqtt: handling %s on %s failed: %s: %s", kind,
                        printable(topic, 80), type(exc).__name__, printable(str(exc), 200))
        log.debug("mqtt: handling %s failed", kind, exc_info=True)

    def _control_main(self) -> None:
        """The connection's announcement, door/set, face_unlock/set and Home Assistant births: on their own thread,
        so that a slow command never holds up the door, nor a flood of commands drops the re-announcement."""
        while True:
            with self._control_cv:
                while True:
                    if self._stopping:
                        return
                    now = time.monotonic()
                    if self._connect_pending or self._control_jobs:
                        break
                    if self._announce_pending and now >= self._next_announce:
                        break
                    self._control_cv.wait(self._next_announce - now if self._announce_pending else None)
                connect, job = self._connect_pending, None
                self._connect_pending = False
                if connect or not self._control_jobs:  # a connection, or a birth: a full announcement
                    self._announce_pending = False
                    self._next_announce = now + ANNOUNCE_MIN_S
                else:
                    job = self._control_jobs.popleft()
            try:
                if connect:
                    self._announce()
                    self._announced = True
                    for callback in list(self._connected_callbacks):
                        callback(self._connections)
                elif job is not None:
                    self._handle_control(*job)
                else:
                    self._announce()
            except Exception as exc:
                self._job_failed("connected" if connect else "message" if job else "announce",
                                 job[0] if job else "", exc)

    def _handle_control(self, topic: str, payload: bytes, received_at: float) -> None:
        s = self.settings
        if self.door_profile and topic == s.topic("door", "set"):
            command = payload.strip().decode("ascii", "replace").upper()
            if command not in DOOR_COMMANDS:
                limited.warning("door/set", "mqtt: door/set %r ignored: not one of %s", payload[:40],
                                ", ".join(DOOR_COMMANDS))
                return
            self._local.received_at = received_at  # publish_door's budget starts here
            try:
                for door_callback in list(self._door_request_callbacks):
                    door_callback(command)
            finally:
                self._local.received_at = None
        elif self.door_profile and topic == s.topic("face_unlock", "set"):
            value = payload.strip().decode("ascii", "replace").upper()
            if value not in (ON, OFF):
                limited.warning("face_unlock/set", "mqtt: face_unlock/set %r ignored: not ON or OFF", payload[:40])
                return
            for switch_callback in list(self._face_unlock_callbacks):
                switch_callback(value == ON)

    def _handle_message(self, topic: str, payload: bytes, oversize: tuple[int, int] | None = None) -> None:
        s = self.settings
        cmd_prefix = s.topic("cmd") + "/"
        if topic == s.topic("claim"):
            identity = self._claims.parse(payload)  # None: refused, and said why (rate-limited)
            if identity is None:
                return
            for callback in list(self._claim_callbacks):
                callback(identity)
        elif topic.startswith(cmd_prefix):
            name = topic[len(cmd_prefix):]
            if oversize is not None:
                result = self._commands.refusal(name, Refused("malformed", f"the payload is {oversize[0]} bytes, "
                                                          f"more than the {oversize[1]} a cmd/{printable(name, 40)} "
                                                          f"can need"))
            else:
                result = self._commands.handle(name, payload)
            if not result["accepted"] and not self._refusals.take():
                return  # a flood of junk commands: the log line (rate-limited) is all it gets
            result["ts"] = utc_now()
            if self._connected:
                self._client.publish(s.topic("cmd_result"), dumps(result), qos=1)


def create(cfg: Any, handlers: CommandHandlers | None = None, clock_synced: Callable[[], bool] | None = None
           ) -> Publisher:
    """The MQTT sink (edge/sinks) for a configuration: its [mqtt] section with secrets read, and the door's
    command budget."""
    return Publisher(cfg.mqtt.resolved(), handlers, clock_synced, door_max_delay_ms=cfg.door.max_delay_ms,
                     door_profile=cfg.profile == "door")
