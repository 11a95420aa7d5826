"""Door commands are never late: a frozen broker gets no UNLOCK to deliver later, every command carries an
expiry, and the start-up LOCK is sent after the broker accepted the connection. Real mosquitto, frozen with
SIGSTOP as a hung or overloaded broker would be."""

from __future__ import annotations

import datetime as dt
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.mqtt.publisher import Publisher
from tests.mqtt_broker import HOST, Broker, Subscriber, settings_for, wait_until

DOOR = "facegate/door1/door/command"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path / "broker") as b:
        yield b


def _publisher(broker: Broker, tmp_path: Path, door_max_delay_ms: float = 1000.0, **kw: Any) -> Publisher:
    pub = Publisher(settings_for(broker, tmp_path, discovery=False, **kw), door_max_delay_ms=door_max_delay_ms)
    pub.start()
    assert pub.wait_connected(5)
    return pub


class V5Subscriber:
    """An MQTT 5 client that records the door topic with arrival times and message properties."""

    def __init__(self, broker: Broker) -> None:
        self.messages: list[tuple[float, dict[str, Any], Any]] = []
        self._ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="lock-controller", protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe(DOOR, qos=1)
        self.client.on_subscribe = lambda *_: self._ready.set()
        self.client.on_message = lambda _c, _u, m: self.messages.append(
            (time.monotonic(), json.loads(m.payload), m.properties))
        self.client.connect(HOST, broker.port)
        self.client.loop_start()
        assert self._ready.wait(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_no_unlock_reaches_the_door_late_from_a_frozen_broker(broker: Broker, tmp_path: Path) -> None:
    pub = _publisher(broker, tmp_path, door_max_delay_ms=300)
    lock = V5Subscriber(broker)
    sent: list[tuple[float, bool]] = []
    try:
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGSTOP)
        try:
            for _ in range(3):  # three grants while the broker does not read its sockets
                t = time.monotonic()
                sent.append((t, pub.publish_door("UNLOCK", 5, decided_at=t)))
                assert time.monotonic() - t < 1.0  # dropped within the budget (plus scheduling), not blocked
            time.sleep(2.0)
        finally:
            broker.proc.send_signal(signal.SIGCONT)
        time.sleep(1.5)  # whatever had been written to the frozen broker's socket arrives now
        assert [ok for _, ok in sent] == [False, False, False]
        assert pub.door_dropped == 3
        assert lock.messages == []
        # The broker is back: the next decision's UNLOCK goes through, on time and with its expiries.
        t = time.monotonic()
        assert pub.publish_door("UNLOCK", 5, decided_at=t)
        assert wait_until(lambda: len(lock.messages) == 1, 5)
        arrived, doc, props = lock.messages[0]
        assert arrived - t < 0.3
        assert doc["command"] == "UNLOCK" and doc["duration_s"] == 5
        ts = dt.datetime.fromisoformat(doc["ts"])
        valid_until = dt.datetime.fromisoformat(doc["valid_until"])
        assert dt.timedelta(0) < valid_until - ts <= dt.timedelta(milliseconds=300)
        assert props.MessageExpiryInterval == 1  # whole seconds, at least 1
    finally:
        lock.close()
        pub.stop()


def test_mqtt_3_1_1_still_works_with_valid_until_only(broker: Broker, tmp_path: Path) -> None:
    pub = _publisher(broker, tmp_path, protocol="3.1.1")
    try:
        with Subscriber(broker, [DOOR]) as sub:
            assert pub.publish_door("LOCK")
            doc = sub.wait_count(DOOR, 1)[0].json()
        assert doc["command"] == "LOCK" and "valid_until" in doc
    finally:
        pub.stop()


def test_not_connected_drops_the_command(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "never-started")
    pub = Publisher(settings_for(broker, tmp_path, discovery=False))
    pub.start()
    try:
        assert not pub.publish_door("UNLOCK", 5)
        assert pub.door_dropped == 1
    finally:
        pub.stop(flush_timeout=0.1)


def test_the_start_up_lock_is_sent_once_connected(broker: Broker, tmp_path: Path, lfw: Path) -> None:
    """The door profile owes the door a LOCK at start; it used to be published before CONNACK and lost."""
    import shutil

    from edge.config import parse
    from edge.daemon import Daemon
    from edge.demo_daemon import running

    folder = tmp_path / "clip"
    folder.mkdir()
    shutil.copy(lfw / "images/Aaron_Peirsol/Aaron_Peirsol_0001.jpg", folder / "01.jpg")
    cfg = parse({"profile": "door", "liveness": {"model": "tests.edge.test_daemon:AlwaysLive", "challenge": False},
                 "camera": {"source": str(folder), "fps": 10, "frames_per_image": 5, "every_frame": True},
                 "store": {"path": str(tmp_path / "s.db"), "create": True},
                 "mqtt": {"port": broker.port, "device": "door1", "discovery": False, "claims": "off",
                          "outbox_path": str(tmp_path / "o.db"), "command_state_path": str(tmp_path / "c.json")},
                 "health": {"enabled": False}})
    with Subscriber(broker, [DOOR]) as sub, running(Daemon(cfg)):
        got = sub.wait_for(lambda msgs: any(m.json()["command"] == "LOCK" for m in msgs), 10)
    assert got


class SlowHandlers:
    """The daemon core with an enrolment that waits until the test lets it go (a live capture waits for a face)."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def reload(self) -> dict:
        return {}

    def enroll(self, name: str, image_jpeg: bytes, live_capture: bool) -> dict:
        self.started.set()
        self.release.wait(120)
        return {"name": name}

    def delete(self, name: str) -> dict:
        return {}


def test_door_set_and_reconnects_are_not_held_up_by_a_slow_command_or_a_flood(broker: Broker,
                                                                              tmp_path: Path) -> None:
    """One worker used to serve every topic: door/set waited behind an enrolment, and junk filled its queue
    until the operator's commands and the connection's re-announcement were dropped."""
    from edge.mqtt.commands import sign_command
    from edge.mqtt.publisher import MAX_JOBS
    from tests.mqtt_broker import publish

    secret = b"test-secret-0123456789"
    handlers = SlowHandlers()
    pub = Publisher(settings_for(broker, tmp_path, discovery=False, command_secret=secret), handlers=handlers,
                    door_profile=True)
    asked: list[str] = []
    pub.on_door_request(asked.append)
    pub.start()
    flood = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="flood", protocol=mqtt.MQTTv5)
    try:
        assert pub.wait_connected(10)
        publish(broker, "facegate/door1/cmd/enroll",
                sign_command(secret, "admin", 1, "enroll", {"name": "x", "live_capture": True}))
        assert handlers.started.wait(10)  # the worker is busy from here on
        flood.max_queued_messages_set(0)
        flood.connect(HOST, broker.port)
        flood.loop_start()
        for i in range(MAX_JOBS + 500):  # more junk than the worker's queue holds
            flood.publish(f"facegate/door1/cmd/junk{i}", b"{}", qos=0)
        flood.publish("facegate/door1/door/set", b"UNLOCK", qos=1).wait_for_publish(10)  # after the junk
        assert wait_until(lambda: asked == ["UNLOCK"], 15), asked
        assert wait_until(lambda: pub._jobs.full(), 15)  # the junk did arrive, and filled the queue
        broker.restart()  # a reconnect while the worker is still busy and its queue full
        assert wait_until(lambda: pub.reconnects >= 1, 30)
        assert pub.wait_connected(20)  # announced again: the connection did not wait for a place in the queue
        publish(broker, "facegate/door1/door/set", "LOCK")
        assert wait_until(lambda: asked == ["UNLOCK", "LOCK"], 15), asked
        assert not handlers.release.is_set()  # all of it while the enrolment was still running
    finally:
        handlers.release.set()
        flood.disconnect()
        flood.loop_stop()
        pub.stop(flush_timeout=1)


def test_a_relayed_door_request_counts_its_budget_from_arrival(broker: Broker, tmp_path: Path) -> None:
    """door/set's max-delay budget starts when the message arrived, not when a thread got round to it."""
    from tests.mqtt_broker import publish

    pub = Publisher(settings_for(broker, tmp_path, discovery=False), door_max_delay_ms=300, door_profile=True)
    sent: list[bool] = []

    def held_up(command: str) -> None:
        time.sleep(0.6)  # twice the budget: the thread was busy with something else meanwhile
        sent.append(pub.publish_door(command))

    pub.on_door_request(held_up)
    pub.start()
    lock = V5Subscriber(broker)
    try:
        assert pub.wait_connected(10)
        publish(broker, "facegate/door1/door/set", "UNLOCK")
        assert wait_until(lambda: sent, 10)
        assert sent == [False] and pub.door_dropped == 1  # too late by the time it could be sent
        assert not lock.messages  # no door/command went out
    finally:
        lock.close()
        pub.stop(flush_timeout=1)


def test_the_mqtt_clients_queue_is_bounded_and_events_still_get_through(broker: Broker, tmp_path: Path) -> None:
    """paho queues QoS 1 messages without limit while the broker does not read (and past 65535 reuses message
    ids). It is capped; an event it refuses waits in the outbox and is sent once the broker reads again."""
    from edge.mqtt.publisher import MAX_PAHO_QUEUE
    from tests.mqtt_broker import sample_event

    pub = _publisher(broker, tmp_path)
    try:
        with Subscriber(broker, ["facegate/door1/event"]) as sub:
            assert broker.proc is not None
            broker.proc.send_signal(signal.SIGSTOP)
            try:
                for i in range(MAX_PAHO_QUEUE + 500):  # retained state documents pile up in paho
                    pub.publish_state({"status": "online", "n": i})
                events = [pub.publish_event(sample_event("granted", "alice")) for _ in range(30)]
                time.sleep(0.5)  # the outbox thread tries to hand them over meanwhile
                assert len(pub._client._out_messages) <= MAX_PAHO_QUEUE
            finally:
                broker.proc.send_signal(signal.SIGCONT)
            assert sub.wait_for(lambda msgs: {m.json()["event_id"] for m in msgs} >=
                                {e["event_id"] for e in events}, 60)
    finally:
        pub.stop()
