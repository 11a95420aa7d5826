"""Home Assistant discovery, the door's state, the face-unlock switch and erasure through a real mosquitto."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.mqtt.publisher import Publisher
from tests.mqtt_broker import Broker, Msg, Subscriber, publish, sample_event, settings_for, wait_until

CONFIGS = "homeassistant/+/facegate_door1/+/config"
STATE = "facegate/door1/state"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path / "broker") as b:
        yield b


ENTITIES = {"event", "sensor", "binary_sensor", "lock", "switch"}  # the door profile's


@pytest.fixture
def publisher(broker: Broker, tmp_path: Path) -> Iterator[Publisher]:
    pub = Publisher(settings_for(broker, tmp_path), door_profile=True)
    pub.start()
    assert pub.wait_connected(5)
    yield pub
    pub.stop()


def by_component(messages: list[Msg]) -> dict[str, dict]:
    return {m.topic.split("/")[1]: m.json() for m in messages}


def test_discovery_configs_are_retained_and_complete(broker: Broker, publisher: Publisher) -> None:
    with Subscriber(broker, [CONFIGS], client_id="first") as first:  # the announcement runs in the background
        assert len(first.wait_count(CONFIGS, 5)) == 5
    with Subscriber(broker, [CONFIGS]) as ha:  # subscribes after the fact: sees the retained copies
        configs = ha.wait_count(CONFIGS, 5)
    assert all(m.retain for m in configs) and len(configs) == 5
    entities = by_component(configs)
    assert set(entities) == ENTITIES
    assert len({json.dumps(c["device"], sort_keys=True) for c in entities.values()}) == 1  # one device
    assert len({c["unique_id"] for c in entities.values()}) == 5
    for config in entities.values():
        assert config["availability"] == [{"topic": "facegate/door1/availability", "payload_available": "online",
                                           "payload_not_available": "offline"}]
    assert entities["event"]["event_types"] == ["granted", "denied", "unknown", "spoof"]
    assert entities["event"]["state_topic"] == "facegate/door1/event"
    assert entities["sensor"]["state_topic"] == STATE
    assert entities["binary_sensor"]["state_topic"] == "facegate/door1/face_present"
    # The lock reads the door state the daemon publishes and asks the daemon (door/set), which relays to the
    # lock controller: its state is never taken from the commands themselves.
    lock = entities["lock"]
    assert (lock["command_topic"], lock["state_topic"]) == ("facegate/door1/door/set", "facegate/door1/door/state")
    assert (lock["state_locked"], lock["state_unlocked"], lock["payload_open"]) == ("locked", "unlocked", "OPEN")
    switch = entities["switch"]
    assert (switch["command_topic"], switch["state_topic"]) == ("facegate/door1/face_unlock/set",
                                                                "facegate/door1/face_unlock")


def test_discovery_is_announced_again_when_home_assistant_starts(broker: Broker, publisher: Publisher) -> None:
    with Subscriber(broker, [CONFIGS]) as ha:
        ha.wait_count(CONFIGS, 5)
        publish(broker, "homeassistant/status", "offline")
        publish(broker, "homeassistant/status", "online")
        again = ha.wait_count(CONFIGS, 10)[5:]
    assert len(again) == 5 and not any(m.retain for m in again)  # live copies, sent because of the birth message
    assert set(by_component(again)) == ENTITIES


def test_the_kiosk_profile_announces_no_lock_and_removes_an_old_one(broker: Broker, tmp_path: Path) -> None:
    """A kiosk sends no door commands: no lock or face-unlock switch, and the door profile's old configs are
    replaced by empty retained payloads, which make Home Assistant delete those entities."""
    door = Publisher(settings_for(broker, tmp_path / "door"), door_profile=True)
    door.start()
    assert door.wait_connected(5)
    door.stop()
    kiosk = Publisher(settings_for(broker, tmp_path / "kiosk"))
    kiosk.start()
    assert kiosk.wait_connected(5)
    try:
        with Subscriber(broker, [CONFIGS], client_id="ha-later") as ha:
            assert ha.wait_for(lambda msgs: len({m.topic for m in msgs}) >= 3)
            time.sleep(0.3)
            configs = {m.topic.split("/")[1]: m.payload for m in ha.on(CONFIGS)}
    finally:
        kiosk.stop()
    assert {component for component, payload in configs.items() if payload} == {"event", "sensor", "binary_sensor"}
    assert "lock" not in configs and "switch" not in configs  # the empty retained payload clears them


def test_the_door_state_and_the_face_unlock_switch_are_retained(broker: Broker, publisher: Publisher) -> None:
    asked: list[str] = []
    switched: list[bool] = []
    publisher.on_door_request(asked.append)
    publisher.on_face_unlock(switched.append)
    publisher.publish_door_state({"state": "unlocked", "until": "2030-01-01T00:00:05.000Z", "command": "UNLOCK",
                                  "source": "facegate", "ts": "2030-01-01T00:00:00.000Z"})
    publisher.publish_face_unlock(False)
    topics = ["facegate/door1/door/state", "facegate/door1/face_unlock"]
    # The two publishes leave on the client's network thread: a subscriber that arrives before they reach the
    # broker sees live copies. Once a first subscriber has seen both, the broker holds them, so a later one
    # (Home Assistant starting up) must get them as retained copies.
    with Subscriber(broker, topics, client_id="first") as first:
        assert first.wait_for(lambda msgs: len(msgs) >= 2)
    with Subscriber(broker, topics, client_id="ha") as ha:
        assert ha.wait_for(lambda msgs: len(msgs) >= 2)
        assert all(m.retain for m in ha.messages)
        assert ha.on("facegate/door1/door/state")[0].json()["state"] == "unlocked"
        assert ha.on("facegate/door1/face_unlock")[0].payload == b"OFF"
    for topic, payload in (("door/set", "UNLOCK"), ("door/set", "explode"), ("face_unlock/set", "ON"),
                           ("face_unlock/set", "maybe"), ("door/set", "lock")):
        publish(broker, f"facegate/door1/{topic}", payload)
    assert wait_until(lambda: len(asked) == 2 and switched, 5)
    assert asked == ["UNLOCK", "LOCK"] and switched == [True]  # the malformed ones ignored


def test_a_partial_state_is_never_published(broker: Broker, tmp_path: Path) -> None:
    """Until the daemon gives its first state document, nothing is retained on state: no forget_identity, no
    drained outbox and no reconnect may publish {"last_identity": ..., "outbox_depth": ...} alone."""
    pub = Publisher(settings_for(broker, tmp_path))
    pub.start()
    assert pub.wait_connected(5)
    try:
        with Subscriber(broker, [STATE, "facegate/door1/event"], client_id="watcher") as sub:
            pub.forget_identity("alice")
            pub.publish_event(sample_event("granted", "bob"))
            assert sub.wait_for(lambda msgs: any(m.topic.endswith("event") for m in msgs))
            time.sleep(0.3)
            assert not sub.on(STATE)
            pub.publish_state({"status": "starting", "healthy": None})
            assert sub.wait_for(lambda msgs: any(m.topic == STATE for m in msgs))
        state = sub.on(STATE)[0].json()
        assert state["status"] == "starting" and state["healthy"] is None and state["last_identity"] == "bob"
    finally:
        pub.stop()


def test_no_discovery_when_disabled(broker: Broker, tmp_path: Path) -> None:
    pub = Publisher(settings_for(broker, tmp_path, discovery=False))
    pub.start()
    assert pub.wait_connected(5)
    pub.publish_state({"status": "online"})
    with Subscriber(broker, ["homeassistant/#", STATE]) as ha:
        assert ha.wait_for(lambda msgs: any(m.topic == STATE for m in msgs), 5)
        assert not ha.on("homeassistant/#")
    pub.stop()


def test_templates_render_what_home_assistant_shows(broker: Broker, publisher: Publisher) -> None:
    jinja2 = pytest.importorskip("jinja2")
    with Subscriber(broker, [CONFIGS, "facegate/door1/event", STATE]) as ha:
        entities = by_component(ha.wait_count(CONFIGS, 5))
        publisher.publish_state({"status": "online"})
        publisher.publish_event(sample_event("granted", "alice"))
        event = ha.wait_count("facegate/door1/event", 1)[0].json()
        assert ha.wait_for(lambda msgs: any(m.topic == STATE and m.json()["last_identity"] == "alice" for m in msgs))
    env = jinja2.Environment()
    fired = json.loads(env.from_string(entities["event"]["value_template"]).render(value_json=event))
    assert fired["event_type"] == "granted" and fired["identity"] == "alice"
    sensor = env.from_string(entities["sensor"]["value_template"])
    assert sensor.render(value_json={"last_identity": "alice"}) == "alice"
    assert sensor.render(value_json={"last_identity": None}) == "none"
    lock = env.from_string(entities["lock"]["value_template"])
    assert lock.render(value_json={"state": "unlocked", "until": "2030-01-01T00:00:05.000Z"}) == "unlocked"


def test_face_present_and_door_commands(broker: Broker, publisher: Publisher) -> None:
    with Subscriber(broker, ["facegate/door1/face_present", "facegate/door1/door/command",
                             "facegate/door1/prompt"]) as sub:
        for present in (True, True, False):  # the repeated True is not re-sent
            publisher.publish_face_present(present)
        assert publisher.publish_door("UNLOCK", 5)
        publisher.publish_prompt("Look at the camera")
        assert sub.wait_for(lambda msgs: len(msgs) >= 4)
    assert [m.payload for m in sub.on("facegate/door1/face_present")] == [b"ON", b"OFF"]
    door = sub.on("facegate/door1/door/command")[0].json()
    assert (door["command"], door["duration_s"], door["source"]) == ("UNLOCK", 5, "facegate")
    assert sub.on("facegate/door1/prompt")[0].json()["text"] == "Look at the camera"
    with pytest.raises(ValueError):
        publisher.publish_door("EXPLODE")


def test_forget_identity_clears_the_sensor_and_the_daemon_state(broker: Broker, publisher: Publisher) -> None:
    publisher.publish_state({"mode": "running", "last_seen": ["alice", "bob"], "visits": {"alice": 2, "bob": 1}})
    publisher.publish_event(sample_event("granted", "alice"))
    with Subscriber(broker, [STATE]) as ha:
        assert ha.wait_for(lambda msgs: msgs and msgs[-1].json()["last_identity"] == "alice")
        publisher.forget_identity("alice")
        assert ha.wait_for(lambda msgs: msgs[-1].json()["last_identity"] is None)
        state = ha.on(STATE)[-1].json()
    assert state["mode"] == "running" and state["last_seen"] == [None, "bob"] and state["visits"] == {"bob": 1}
    with Subscriber(broker, [STATE], client_id="later") as later:  # the retained copy is the clean one
        assert later.wait_for(lambda msgs: msgs and msgs[0].retain and msgs[0].json()["last_identity"] is None)


def test_forget_identity_erases_pending_events(broker: Broker, tmp_path: Path) -> None:
    broker.stop()  # events pile up in the outbox
    pub = Publisher(settings_for(broker, tmp_path))
    pub.start()
    pub.publish_state({"status": "online"})
    try:
        for who in ("zelda-erasable", "bob", "zelda-erasable"):
            pub.publish_event(sample_event("granted", who))
        assert pub.outbox_depth == 3
        pub.forget_identity("zelda-erasable")
        assert pub.outbox_depth == 1
        for f in tmp_path.glob("outbox.db*"):
            assert b"zelda-erasable" not in f.read_bytes(), f.name
        broker.start()
        with Subscriber(broker, ["facegate/door1/event", STATE]) as sub:
            assert wait_until(lambda: pub.connected and pub.outbox_depth == 0, 10)
            assert sub.wait_for(lambda msgs: any(m.topic.endswith("event") for m in msgs))
            assert sub.wait_for(lambda msgs: any(m.topic == STATE and m.json()["outbox_depth"] == 0 for m in msgs))
        events = [m.json() for m in sub.on("facegate/door1/event")]
        assert [e["identity"] for e in events] == ["bob"]
        assert all(b"zelda-erasable" not in m.payload for m in sub.messages)
    finally:
        pub.stop()


def test_a_flood_of_births_is_answered_by_a_few_announcements(broker: Broker, publisher: Publisher) -> None:
    """Each "online" used to re-send every config and the state at QoS 1: a flood of births grew the MQTT
    client's queue without bound. They are coalesced: at most one pending, one per ANNOUNCE_MIN_S."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from edge.mqtt.publisher import ANNOUNCE_MIN_S
    from tests.mqtt_broker import HOST

    births = 300
    with Subscriber(broker, [CONFIGS, "facegate/door1/cmd_result"]) as ha:
        ha.wait_count(CONFIGS, 5)
        flood = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="births")
        flood.connect(HOST, broker.port)
        flood.loop_start()
        try:
            for _ in range(births):
                flood.publish("homeassistant/status", "online", qos=1)
            # After the births on the same connection: its refusal says every birth before it was received.
            flood.publish("facegate/door1/cmd/reload", b"{}", qos=1)
            ha.wait_count("facegate/door1/cmd_result", 1, timeout=30)
        finally:
            flood.disconnect()
            flood.loop_stop()
        assert len(ha.wait_count(CONFIGS, 10, timeout=30)) >= 10  # births are still answered
        time.sleep(ANNOUNCE_MIN_S + 1.0)  # room for the one that may still be pending
        configs = ha.on(CONFIGS)
    assert 10 <= len(configs) <= 15, len(configs)  # the first announcement and one or two more, not `births`
