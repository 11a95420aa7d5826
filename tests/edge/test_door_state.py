"""The door profile's door through a real daemon and a real mosquitto: the retained door state says what the
lock controller was told and until when, Home Assistant's lock commands are relayed with a duration, and the
face-unlock switch is honoured, persisted across a restart and published retained."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from edge.config import parse
from edge.daemon import Daemon
from edge.demo_daemon import running
from tests.mqtt_broker import Broker, Subscriber, publish, wait_until

TOPICS = ["facegate/door1/#"]
STATE, DOOR, EVENT = "facegate/door1/door/state", "facegate/door1/door/command", "facegate/door1/event"


@pytest.fixture
def broker(tmp_path: Path):
    with Broker(tmp_path / "broker") as b:
        yield b


@pytest.fixture
def walkups(lfw: Path, tmp_path: Path) -> dict[str, Path]:
    """A looping clip: an enrolled person (another photo than the enrolment one), then nobody; each loop is a
    new walk-up."""
    folder = tmp_path / "clip"
    folder.mkdir()
    shutil.copy(lfw / "images/Colin_Powell/Colin_Powell_0040.jpg", folder / "01_colin.jpg")
    shutil.copy(lfw / "images/Colin_Powell/Colin_Powell_0038.jpg", tmp_path / "enrol.jpg")
    import cv2
    import numpy as np

    cv2.imwrite(str(folder / "02_empty.png"), np.full((250, 250, 3), 120, np.uint8))
    return {"folder": folder, "enrol": tmp_path / "enrol.jpg"}


def _config(broker: Broker, tmp_path: Path, walkups: dict[str, Path], **door: Any) -> Any:
    return parse({
        "profile": "door", "liveness": {"model": "tests.edge.test_daemon:AlwaysLive", "challenge": False},
        "camera": {"source": str(walkups["folder"]), "fps": 20, "frames_per_image": 12, "loop": True},
        "decision": {"cooldown_s": 0, "track_ttl_s": 0.1},
        "door": {"unlock_s": 1.0, **door},
        "store": {"path": str(tmp_path / "s.db"), "create": True},
        "mqtt": {"port": broker.port, "device": "door1", "discovery": False, "claims": "off",
                 "outbox_path": str(tmp_path / "o.db"), "command_state_path": str(tmp_path / "c.json")},
        "health": {"enabled": False}})


def _when(doc: dict[str, Any], key: str) -> float:
    return dt.datetime.fromisoformat(doc[key].replace("Z", "+00:00")).timestamp()


def test_after_a_grant_the_door_state_says_unlocked_until_then_locked(broker, tmp_path, walkups) -> None:
    cfg = _config(broker, tmp_path, walkups)
    daemon = Daemon(cfg)
    assert daemon.enroll("colin", walkups["enrol"].read_bytes(), live_capture=False)["ok"]
    with Subscriber(broker, TOPICS) as sub, running(daemon):
        assert sub.wait_for(lambda msgs: any(m.topic == EVENT and m.json()["decision"] == "granted" for m in msgs), 60)
        # ... then, after the UNLOCK's duration, locked again: the controller relocks itself, the state follows.
        assert sub.wait_for(lambda msgs: [m.json()["state"] for m in msgs if m.topic == STATE][-3:]
                            == ["locked", "unlocked", "locked"], 10)
        states = [(time.time(), m.json()) for m in sub.on(STATE)]
        # Home Assistant's lock entity asks the daemon (door/set); the controller gets a timed UNLOCK from it.
        before = len(sub.on(DOOR))
        publish(broker, "facegate/door1/door/set", "UNLOCK")
        assert sub.wait_for(lambda msgs: any(m.topic == DOOR and m.json()["source"] == "homeassistant"
                                             for m in msgs[before:]), 10)
        assert sub.wait_for(lambda msgs: any(m.topic == STATE and m.json()["source"] == "homeassistant"
                                             for m in msgs), 10)
    docs = [doc for _, doc in states]
    assert (docs[0]["state"], docs[0]["source"], docs[0]["until"]) == ("locked", "start-up", None)
    unlocked = next(d for d in docs if d["state"] == "unlocked")
    assert unlocked["command"] == "UNLOCK" and unlocked["source"] == "facegate"
    assert _when(unlocked, "until") - _when(unlocked, "ts") == pytest.approx(1.0, abs=0.05)
    relocked = docs[docs.index(unlocked) + 1]
    assert relocked["state"] == "locked" and _when(relocked, "ts") >= _when(unlocked, "until") - 0.05
    relayed = next(m.json() for m in sub.on(DOOR) if m.json()["source"] == "homeassistant")
    assert relayed["command"] == "UNLOCK" and relayed["duration_s"] == 1.0 and "valid_until" in relayed
    # Whoever subscribes later reads the retained state, never a door/command.
    with Subscriber(broker, [STATE], client_id="late") as late:
        assert late.wait_for(lambda msgs: msgs and msgs[0].retain, 5)
        assert late.messages[0].json()["state"] in ("locked", "unlocked")


def test_the_face_unlock_switch_is_honoured_and_survives_a_restart(broker, tmp_path, walkups) -> None:
    cfg = _config(broker, tmp_path, walkups, face_unlock_path=str(tmp_path / "face-unlock.json"))
    daemon = Daemon(cfg)
    assert daemon.enroll("colin", walkups["enrol"].read_bytes(), live_capture=False)["ok"]
    with Subscriber(broker, TOPICS) as sub, running(daemon):
        assert sub.wait_for(lambda msgs: any(m.topic == "facegate/door1/face_unlock" and m.payload == b"ON"
                                             for m in msgs), 20)
        assert sub.wait_for(lambda msgs: any(m.topic == EVENT and m.json()["decision"] == "granted" for m in msgs), 60)
        publish(broker, "facegate/door1/face_unlock/set", "OFF")
        assert sub.wait_for(lambda msgs: any(m.topic == "facegate/door1/face_unlock" and m.payload == b"OFF"
                                             for m in msgs), 10)
        switched = len(sub.messages)
        # The next walk-ups: denied with the reason, and no UNLOCK.
        assert sub.wait_for(lambda msgs: sum(m.topic == EVENT for m in msgs[switched:]) >= 2, 60)
        state = [m.json() for m in sub.on("facegate/door1/state")][-1]
    after = sub.messages[switched:]
    events = [m.json() for m in after if m.topic == EVENT]
    assert all((e["decision"], e["reason"]) == ("denied", "face unlock disabled") for e in events), events
    assert not [m for m in after if m.topic == DOOR and m.json()["command"] == "UNLOCK"]
    assert state["face_unlock"] is False
    assert json.loads((tmp_path / "face-unlock.json").read_text())["enabled"] is False

    # A restart keeps it off, says so (retained), and still denies.
    daemon = Daemon(cfg)
    with Subscriber(broker, TOPICS, client_id="after-restart") as sub, running(daemon):
        assert sub.wait_for(lambda msgs: sum(m.topic == EVENT for m in msgs) >= 1, 60)
        assert sub.on("facegate/door1/face_unlock")[-1].payload == b"OFF"
        publish(broker, "facegate/door1/face_unlock/set", "ON")  # and on again: grants open the door again
        assert wait_until(lambda: daemon.door is not None and daemon.door.face_unlock, 10)
        switched = len(sub.messages)
        assert sub.wait_for(lambda msgs: any(m.topic == DOOR and m.json()["command"] == "UNLOCK"
                                             for m in msgs[switched:]), 60)
    first = next(m.json() for m in sub.on(EVENT))
    assert (first["decision"], first["reason"]) == ("denied", "face unlock disabled")


def test_retained_commands_are_not_acted_on_at_a_connect_live_ones_are(broker, tmp_path, caplog) -> None:
    """An UNLOCK or face-unlock ON published once with retain=true would come back at every (re)connect: a
    standing order, or an operator's OFF undone by each restart. Only live commands count."""
    from edge.config import DoorConfig
    from edge.door import DoorControl
    from edge.mqtt.publisher import Publisher
    from edge.mqtt.settings import MqttSettings

    publish(broker, "facegate/door1/door/set", "UNLOCK", retain=True)
    publish(broker, "facegate/door1/face_unlock/set", "ON", retain=True)
    switch = tmp_path / "face-unlock.json"
    settings = MqttSettings(host="127.0.0.1", port=broker.port, device="door1", discovery=False,
                            outbox_path=str(tmp_path / "o.db"))
    for start in range(2):  # a start, then a restart: the broker hands the retained messages over each time
        pub = Publisher(settings, door_profile=True)
        door = DoorControl(pub, DoorConfig(face_unlock_path=str(switch)))
        door.attach()
        with Subscriber(broker, [DOOR], client_id=f"door-watch-{start}") as sub:
            pub.start()
            try:
                assert pub.wait_connected(10)
                if start == 0:
                    door.set_face_unlock(False, source="admin page")
                # A live command now: the broker delivers in order, so the retained ones came first.
                publish(broker, "facegate/door1/door/set", "UNLOCK", retain=start == 1)
                assert sub.wait_for(lambda msgs: any(m.json()["source"] == "homeassistant" for m in msgs), 10)
                time.sleep(0.5)
                assert [m.json()["command"] for m in sub.messages].count("UNLOCK") == 1  # the live one only
                assert door.face_unlock is False  # the admin's OFF holds
                if start == 0:  # and said why (rate-limited: once, at the first start)
                    for topic in ("door/set", "face_unlock/set"):
                        assert any(f"ignored a retained message on facegate/door1/{topic}" in r.getMessage()
                                   for r in caplog.records)
            finally:
                pub.stop(flush_timeout=1)
                door.close()
        if start == 1:
            publish(broker, "facegate/door1/face_unlock/set", "", retain=True)  # (the clean-up the log asks for)
    pub = Publisher(settings, door_profile=True)
    door = DoorControl(pub, DoorConfig(face_unlock_path=str(switch)))
    door.attach()
    pub.start()
    try:
        assert pub.wait_connected(10)
        publish(broker, "facegate/door1/face_unlock/set", "ON")  # a live ON is honoured
        assert wait_until(lambda: door.face_unlock, 10)
    finally:
        pub.stop(flush_timeout=1)
        door.close()


def test_a_damaged_switch_file_stops_the_start_and_the_check_names_it(tmp_path, walkups, capsys) -> None:
    """Guessing "on" could open a door someone closed to faces; guessing "off" locks everyone out silently."""
    from edge.cli import main
    from edge.config import ConfigError

    bad = tmp_path / "face-unlock.json"
    bad.write_text("{not json")
    toml = tmp_path / "door.toml"
    toml.write_text(f"""profile = "door"
[liveness]
model = "tests.edge.test_daemon:AlwaysLive"
[camera]
source = "{walkups['folder']}"
[store]
path = "{tmp_path / 's.db'}"
create = true
[door]
face_unlock_path = "{bad}"
[mqtt]
enabled = false
[health]
listen = "127.0.0.1:0"
""")
    capsys.readouterr()
    assert main(["run", "--config", str(toml), "--check"]) == 2
    assert "problem: door.face_unlock_path:" in capsys.readouterr().out
    from edge.config import load

    with pytest.raises(ConfigError, match=r"door\.face_unlock_path"):
        Daemon(load(toml))
    bad.write_text('{"enabled": false}')
    assert main(["run", "--config", str(toml), "--check"]) == 0
