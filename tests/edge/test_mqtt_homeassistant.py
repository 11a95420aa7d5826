"""Home Assistant discovery and erasure through a real mosquitto."""

from __future__ import annotations

import json
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


@pytest.fixture
def publisher(broker: Broker, tmp_path: Path) -> Iterator[Publisher]:
    pub = Publisher(settings_for(broker, tmp_path))
    pub.start()
    assert pub.wait_connected(5)
    yield pub
    pub.stop()


def by_component(messages: list[Msg]) -> dict[str, dict]:
    return {m.topic.split("/")[1]: m.json() for m in messages}


def test_discovery_configs_are_retained_and_complete(broker: Broker, publisher: Publisher) -> None:
    with Subscriber(broker, [CONFIGS], client_id="first") as first:  # the announcement runs in the background
        assert len(first.wait_count(CONFIGS, 4)) == 4
    with Subscriber(broker, [CONFIGS]) as ha:  # subscribes after the fact: sees the retained copies
        configs = ha.wait_count(CONFIGS, 4)
    assert all(m.retain for m in configs) and len(configs) == 4
    entities = by_component(configs)
    assert set(entities) == {"event", "sensor", "binary_sensor", "lock"}
    assert len({json.dumps(c["device"], sort_keys=True) for c in entities.values()}) == 1  # one device
    assert len({c["unique_id"] for c in entities.values()}) == 4
    for config in entities.values():
        assert config["availability"] == [{"topic": "facegate/door1/availability", "payload_available": "online",
                                           "payload_not_available": "offline"}]
    assert entities["event"]["event_types"] == ["granted", "denied", "unknown", "spoof"]
    assert entities["event"]["state_topic"] == "facegate/door1/event"
    assert entities["sensor"]["state_topic"] == STATE
    assert entities["binary_sensor"]["state_topic"] == "facegate/door1/face_present"
    assert entities["lock"]["command_topic"] == entities["lock"]["state_topic"] == "facegate/door1/door/command"


def test_discovery_is_announced_again_when_home_assistant_starts(broker: Broker, publisher: Publisher) -> None:
    with Subscriber(broker, [CONFIGS]) as ha:
        ha.wait_count(CONFIGS, 4)
        publish(broker, "homeassistant/status", "offline")
        publish(broker, "homeassistant/status", "online")
        again = ha.wait_count(CONFIGS, 8)[4:]
    assert len(again) == 4 and not any(m.retain for m in again)  # live copies, sent because of the birth message
    assert set(by_component(again)) == {"event", "sensor", "binary_sensor", "lock"}


def test_no_discovery_when_disabled(broker: Broker, tmp_path: Path) -> None:
    pub = Publisher(settings_for(broker, tmp_path, discovery=False))
    pub.start()
    assert pub.wait_connected(5)
    with Subscriber(broker, ["homeassistant/#", STATE]) as ha:
        assert ha.wait_for(lambda msgs: any(m.topic == STATE for m in msgs), 5)
        assert not ha.on("homeassistant/#")
    pub.stop()


def test_templates_render_what_home_assistant_shows(broker: Broker, publisher: Publisher) -> None:
    jinja2 = pytest.importorskip("jinja2")
    with Subscriber(broker, [CONFIGS, "facegate/door1/event", STATE]) as ha:
        entities = by_component(ha.wait_count(CONFIGS, 4))
        publisher.publish_event(sample_event("granted", "alice"))
        event = ha.wait_count("facegate/door1/event", 1)[0].json()
        assert ha.wait_for(lambda msgs: any(m.topic == STATE and m.json()["last_identity"] == "alice" for m in msgs))
    env = jinja2.Environment()
    fired = json.loads(env.from_string(entities["event"]["value_template"]).render(value_json=event))
    assert fired["event_type"] == "granted" and fired["identity"] == "alice"
    sensor = env.from_string(entities["sensor"]["value_template"])
    assert sensor.render(value_json={"last_identity": "alice"}) == "alice"
    assert sensor.render(value_json={"last_identity": None}) == "none"
    lock = entities["lock"]
    assert json.loads(env.from_string(lock["command_template"]).render(value="UNLOCK"))["command"] == "UNLOCK"


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
