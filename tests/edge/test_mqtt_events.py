"""Events through a real mosquitto: schema, order, outages, overflow, Last Will.

Every test starts its own broker on a free loopback port with persistence in tmp_path.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from edge.mqtt.publisher import Publisher
from tests.mqtt_broker import EVENT_SCHEMA, Broker, Msg, Subscriber, sample_event, settings_for, wait_until

REPO = Path(__file__).resolve().parents[2]
EVENTS = "facegate/door1/event"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path / "broker") as b:
        yield b


@pytest.fixture(scope="module")
def validator() -> jsonschema.Validator:
    schema = json.loads(EVENT_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def first_arrivals(messages: list[Msg]) -> list[dict]:
    """Events in arrival order, duplicates (same event_id) removed."""
    seen: set[str] = set()
    out = []
    for m in messages:
        event = m.json()
        if event["event_id"] not in seen:
            seen.add(event["event_id"])
            out.append(event)
    return out


def test_events_arrive_and_match_the_schema(broker: Broker, tmp_path: Path, validator: jsonschema.Validator) -> None:
    with Subscriber(broker, [EVENTS], persistent=True) as sub:
        pub = Publisher(settings_for(broker, tmp_path), clock_synced=lambda: False)
        pub.start()
        try:
            sent = [pub.publish_event(sample_event(d, i)) for d, i in
                    [("granted", "alice"), ("denied", "bob"), ("unknown", None), ("spoof", None)]]
            got = [m.json() for m in sub.wait_count(EVENTS, 4)]
            assert wait_until(lambda: pub.outbox_depth == 0, 5)
        finally:
            pub.stop()
    assert got == [json.loads(json.dumps(e)) for e in sent]
    for event in got:
        validator.validate(event)
    assert [e["seq"] for e in got] == [1, 2, 3, 4]
    assert {e["decision"] for e in got} == {"granted", "denied", "unknown", "spoof"}
    assert all(e["clock_synced"] is False and e["device"] == "door1" and e["door"] == "front" for e in got)
    assert len({e["event_id"] for e in got}) == 4


def test_schema_rejects_what_the_daemon_must_not_send(validator: jsonschema.Validator) -> None:
    good = {"event_id": "6f1c2a4e-0b7d-4a59-9a53-1c1f4f0c6d2e", "seq": 1, "ts": "2024-05-01T12:00:00.123Z",
            "device": "door1", "door": "front", **sample_event()}
    validator.validate(good)
    for bad in ({**good, "decision": "maybe"}, {**good, "identity": None},  # granted needs an identity
                {**good, "liveness": {"verdict": "spoof", "score": 0.1}},  # granted but spoof
                {**good, "ts": "yesterday"}, {**good, "seq": 0}, {k: v for k, v in good.items() if k != "score"}):
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(bad)


def test_seq_continues_across_publisher_restarts(broker: Broker, tmp_path: Path) -> None:
    settings = settings_for(broker, tmp_path)
    for expected in ([1, 2], [3, 4]):
        pub = Publisher(settings)  # no clock_synced callable: the clock is trusted, no clock_synced field
        pub.start()
        events = [pub.publish_event(sample_event()) for _ in range(2)]
        pub.stop()
        assert [e["seq"] for e in events] == expected and not any("clock_synced" in e for e in events)


def run_outage(broker: Broker, tmp_path: Path, outage_s: float) -> None:
    """Events keep coming while the broker is down for `outage_s`; all must arrive, in seq order, no gap."""
    with Subscriber(broker, [EVENTS], persistent=True) as sub:
        pub = Publisher(settings_for(broker, tmp_path))
        pub.start()
        assert pub.wait_connected(5)
        sent: list[dict] = []
        done = threading.Event()

        def produce() -> None:
            while not done.is_set():
                sent.append(pub.publish_event(sample_event()))
                time.sleep(0.05)

        producer = threading.Thread(target=produce)
        producer.start()
        try:
            time.sleep(0.5)
            broker.stop()
            at_stop = len(sent)
            time.sleep(outage_s)
            assert not pub.connected and pub.outbox_depth > 0
            during = len(sent) - at_stop
            broker.start()
            assert pub.wait_connected(10)
            time.sleep(0.5)
        finally:
            done.set()
            producer.join()
        ids = {e["event_id"] for e in sent}
        assert sub.wait_for(lambda msgs: ids <= {m.json()["event_id"] for m in msgs if m.topic == EVENTS}, 30)
        assert wait_until(lambda: pub.outbox_depth == 0, 10)
        assert pub.reconnects >= 1 and pub.dropped == 0
        pub.stop()
    events = first_arrivals(sub.on(EVENTS))
    seqs = [e["seq"] for e in events]
    assert during >= outage_s * 10  # the producer really kept going during the outage
    assert seqs == list(range(1, len(sent) + 1))  # every event, in order, no gap


def test_outage_loses_nothing_fast(broker: Broker, tmp_path: Path) -> None:
    run_outage(broker, tmp_path, outage_s=3.0)


@pytest.mark.slow
def test_outage_of_30_seconds_loses_nothing(broker: Broker, tmp_path: Path) -> None:
    run_outage(broker, tmp_path, outage_s=30.0)


def test_overflow_drops_oldest_counts_and_reports(broker: Broker, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="edge.mqtt")
    with Subscriber(broker, ["facegate/door1/#"], persistent=True) as sub:
        broker.stop()
        pub = Publisher(settings_for(broker, tmp_path, outbox_limit=5))
        pub.start()
        pub.publish_state({"status": "online"})  # the daemon's part: the publisher adds the outbox figures
        try:
            sent = [pub.publish_event(sample_event()) for _ in range(8)]
            assert (pub.dropped, pub.outbox_depth) == (3, 5)
            drops = [r.getMessage() for r in caplog.records if "outbox full" in r.getMessage()]
            assert len(drops) == 3 and "3 dropped in all" in drops[-1]
            broker.start()
            assert sub.wait_for(lambda msgs: {e["event_id"] for e in sent[3:]}
                                <= {m.json()["event_id"] for m in msgs if m.topic == EVENTS}, 15)
            assert sub.wait_for(lambda msgs: any(
                m.topic == "facegate/door1/state" and m.json()["outbox_dropped"] == 3
                and m.json()["outbox_depth"] == 0 for m in msgs), 10)
        finally:
            pub.stop()
    events = first_arrivals(sub.on(EVENTS))
    assert [e["seq"] for e in events] == [4, 5, 6, 7, 8]  # the 3 oldest dropped, nothing else lost


CHILD = """
import sys, time
from pathlib import Path
from edge.mqtt.publisher import Publisher
from edge.mqtt.settings import MqttSettings
pub = Publisher(MqttSettings(port=int(sys.argv[1]), device="door1", outbox_path=Path(sys.argv[2]), keepalive=5))
pub.start()
print("connected" if pub.wait_connected(10) else "not connected", flush=True)
time.sleep(120)
"""


def test_last_will_says_offline_when_the_daemon_is_killed(broker: Broker, tmp_path: Path) -> None:
    availability = "facegate/door1/availability"
    with Subscriber(broker, [availability]) as sub:
        env = {**os.environ, "PYTHONPATH": str(REPO), "FACEGATE_STATE_DIR": str(tmp_path / "state")}
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(broker.port), str(tmp_path / "outbox.db")],
                                 cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "connected"
            assert sub.wait_for(lambda msgs: any(m.payload == b"online" for m in msgs), 5)
            child.send_signal(signal.SIGKILL)
            child.wait(5)
            assert sub.wait_for(lambda msgs: msgs[-1].payload == b"offline", 5)
        finally:
            if child.poll() is None:
                child.kill()
            child.wait()
    with Subscriber(broker, [availability], client_id="late") as late:  # and it stays so (retained)
        assert late.wait_for(lambda msgs: [m.payload for m in msgs] == [b"offline"] and msgs[0].retain, 5)


def test_stop_flushes_and_says_offline(broker: Broker, tmp_path: Path) -> None:
    with Subscriber(broker, ["facegate/door1/#"]) as sub:
        pub = Publisher(settings_for(broker, tmp_path))
        pub.start()
        assert pub.wait_connected(5)
        sent = [pub.publish_event(sample_event()) for _ in range(20)]
        pub.stop(flush_timeout=5)
        assert len(first_arrivals(sub.wait_count(EVENTS, 20, 5))) == 20
        assert sub.wait_for(lambda msgs: msgs[-1].topic.endswith("availability") and msgs[-1].payload == b"offline")
    assert sent[-1]["seq"] == 20
    with pytest.raises(RuntimeError):
        pub.publish_event(sample_event())


def test_events_wait_in_the_outbox_until_a_broker_appears(broker: Broker, tmp_path: Path) -> None:
    with Subscriber(broker, [EVENTS], persistent=True) as sub:  # its session queues what comes while it is away
        broker.stop()
        pub = Publisher(settings_for(broker, tmp_path))
        pub.start()  # no broker yet: must neither block nor raise
        try:
            sent = [pub.publish_event(sample_event("unknown", None)) for _ in range(3)]
            time.sleep(0.3)
            assert not pub.connected and pub.outbox_depth == 3
            broker.start()
            events = first_arrivals(sub.wait_count(EVENTS, 3, 10))
        finally:
            pub.stop()
    assert [e["event_id"] for e in events] == [e["event_id"] for e in sent]
