"""deploy/mosquitto.conf and deploy/mosquitto.acl, run for real (ports, paths and persistence swapped for temporary
ones): doors stay in their own subtree, Home Assistant drives the lock, the console sends commands, anonymous
clients get nothing."""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.mqtt.commands import sign_command
from edge.mqtt.publisher import Publisher
from tests.mqtt_broker import (
    HOST,
    MOSQUITTO_PASSWD,
    Broker,
    Pki,
    Subscriber,
    free_port,
    make_pki,
    publish,
    require_mosquitto,
    sample_event,
    settings_for,
    wait_until,
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
USERS = {"door1": "pw-door1", "door2": "pw-door2", "homeassistant": "pw-ha", "admin": "pw-admin",
         "doorrelay": "pw-relay", "badgereader": "pw-badge", "hub": "pw-hub", "lobby": "pw-lobby",
         "collector": "pw-collector"}
SECRET = b"deploy-test-secret-0123"


def site_config(root: Path, pki: Pki, port: int, tls_port: int) -> str:
    text = (DEPLOY / "mosquitto.conf").read_text()
    (root / "facegate.acl").write_text((DEPLOY / "mosquitto.acl").read_text())
    passwd = root / "passwd"
    for i, (user, password) in enumerate(USERS.items()):
        args = [MOSQUITTO_PASSWD, *(["-c"] if i == 0 else []), "-b", str(passwd), user, password]
        subprocess.run(args, check=True, capture_output=True)
    swaps = {
        "/etc/mosquitto/passwd": str(passwd), "/etc/mosquitto/facegate.acl": str(root / "facegate.acl"),
        "/etc/mosquitto/certs/ca.crt": str(pki.ca.cert), "/etc/mosquitto/certs/broker.crt": str(pki.server.cert),
        "/etc/mosquitto/certs/broker.key": str(pki.server.key),
    }
    for old, new in swaps.items():
        assert old in text, f"deploy/mosquitto.conf no longer mentions {old}; update this test"
        text = text.replace(old, new)
    text, n = re.subn(r"^listener 8883$", f"listener {tls_port} {HOST}", text, flags=re.M)
    text, m = re.subn(r"^listener 1883 127\.0\.0\.1$", f"listener {port} {HOST}", text, flags=re.M)
    assert (n, m) == (1, 1), "deploy/mosquitto.conf listeners changed; update this test"
    # What Debian's main mosquitto.conf adds around the drop-in, pointed at the test folder.
    return text + (f"\nuser {pwd.getpwuid(os.getuid()).pw_name}\npersistence true\n"
                   f"persistence_location {root / 'data'}/\nlog_dest file {root / 'mosquitto.log'}\n")


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Broker, Pki]]:
    require_mosquitto()
    pki = make_pki(tmp_path / "pki")
    root = tmp_path / "broker"
    root.mkdir()
    port, tls_port = free_port(), free_port()
    with Broker(root, config=site_config(root, pki, port, tls_port), port=port, tls_port=tls_port) as broker:
        yield broker, pki


def door(broker: Broker, pki: Pki, tmp: Path, name: str, handlers: object = None, door_profile: bool = False,
         **kw: object) -> Publisher:
    """A door as deployed: mutual TLS on the TLS listener, its own user name = device name."""
    assert broker.tls_port is not None
    pub = Publisher(settings_for(broker, tmp / name, port=broker.tls_port, device=name, username=name,
                                 password=USERS[name], tls_ca=pki.ca.cert, tls_cert=pki.client.cert,
                                 tls_key=pki.client.key, **kw), handlers=handlers,  # type: ignore[arg-type]
                    door_profile=door_profile)
    pub.start()
    assert pub.wait_connected(10), broker.log
    return pub


def test_anonymous_clients_are_refused(site: tuple[Broker, Pki]) -> None:
    broker, _ = site
    refused = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="anon")
    client.on_connect = lambda _c, _u, _f, reason, _p: reason.is_failure and refused.set()
    client.connect(HOST, broker.port)
    client.loop_start()
    try:
        assert refused.wait(5)
    finally:
        client.loop_stop()


def test_doors_stay_in_their_own_subtree(site: tuple[Broker, Pki], tmp_path: Path) -> None:
    broker, pki = site
    pub = door(broker, pki, tmp_path, "door1")
    try:
        with Subscriber(broker, ["facegate/+/event"], client_id="console", username="admin",
                        password=USERS["admin"]) as console:
            sent = pub.publish_event(sample_event())
            assert console.wait_count("facegate/+/event", 1)[0].json()["event_id"] == sent["event_id"]
            publish(broker, "facegate/door2/event", b'{"forged": true}', username="door1", password=USERS["door1"])
            publish(broker, "facegate/door1/event", b'{"marker": true}', username="door1", password=USERS["door1"])
            msgs = console.wait_count("facegate/+/event", 2)
        # The forged door2 event never arrived; the marker sent after it did.
        assert [(m.topic, m.payload) for m in msgs[1:]] == [("facegate/door1/event", b'{"marker": true}')]
        # mosquitto grants the subscription but never delivers what the ACL does not let door1 read.
        with Subscriber(broker, ["facegate/door2/cmd/#", "facegate/door1/cmd/#"], client_id="snoop",
                        username="door1", password=USERS["door1"]) as snoop:
            for target in ("door2", "door1"):
                publish(broker, f"facegate/{target}/cmd/reload", b"x", username="admin", password=USERS["admin"])
            assert [m.topic for m in snoop.wait_count("facegate/+/cmd/#", 1)] == ["facegate/door1/cmd/reload"]
    finally:
        pub.stop()


def test_home_assistant_and_console_roles(site: tuple[Broker, Pki], tmp_path: Path) -> None:
    broker, pki = site

    class Handlers:
        def reload(self) -> dict:
            return {"reloaded": True}

        def enroll(self, name: str, image_jpeg: bytes, live_capture: bool) -> dict:
            return {}

        def delete(self, name: str) -> dict:
            return {}

    pub = door(broker, pki, tmp_path, "door1", handlers=Handlers(), command_secret=SECRET, door_profile=True)
    asked: list[str] = []
    switched: list[bool] = []
    pub.on_door_request(asked.append)
    pub.on_face_unlock(switched.append)
    try:
        with Subscriber(broker, ["homeassistant/+/facegate_door1/+/config"], client_id="ha",
                        username="homeassistant", password=USERS["homeassistant"]) as ha:
            assert len(ha.wait_count("homeassistant/#", 5)) == 5  # the door may write its discovery configs
        with Subscriber(broker, ["facegate/+/door/command"], client_id="relay", username="doorrelay",
                        password=USERS["doorrelay"]) as relay:
            # Home Assistant may not write door commands: only the door does (the relay hears one publisher).
            publish(broker, "facegate/door1/door/command", b'{"command": "UNLOCK"}', username="homeassistant",
                    password=USERS["homeassistant"])
            assert pub.publish_door("LOCK")
            assert [m.json()["command"] for m in relay.wait_count("facegate/+/door/command", 1)] == ["LOCK"]
        # It asks the door instead (door/set) and switches face unlock; other accounts cannot.
        for user in ("admin", "badgereader", "homeassistant"):
            publish(broker, "facegate/door1/door/set", "UNLOCK", username=user, password=USERS[user])
            publish(broker, "facegate/door1/face_unlock/set", "OFF", username=user, password=USERS[user])
        assert wait_until(lambda: asked and switched, 5)
        time.sleep(0.3)
        assert (asked, switched) == (["UNLOCK"], [False])
        pub.publish_door_state({"state": "locked", "until": None, "command": "LOCK", "source": "test", "ts": "x"})
        pub.publish_face_unlock(False)
        with Subscriber(broker, ["facegate/door1/door/state", "facegate/door1/face_unlock"], client_id="ha-state",
                        username="homeassistant", password=USERS["homeassistant"]) as ha:
            assert ha.wait_for(lambda msgs: len(msgs) == 2, 5)  # the door may write them, Home Assistant read them
        with Subscriber(broker, ["facegate/door1/cmd_result"], client_id="console", username="admin",
                        password=USERS["admin"]) as console:
            publish(broker, "facegate/door1/cmd/reload", sign_command(SECRET, "admin", 1, "reload", {}, "door1"),
                    username="admin", password=USERS["admin"])
            result = console.wait_count("facegate/door1/cmd_result", 1)[0].json()
            assert result["accepted"] and result["result"] == {"reloaded": True}
            # Home Assistant may not send commands: the door never sees this one, so no result comes back.
            publish(broker, "facegate/door1/cmd/reload", sign_command(SECRET, "admin", 2, "reload", {}, "door1"),
                    username="homeassistant", password=USERS["homeassistant"])
            assert not console.wait_for(lambda msgs: len(msgs) > 1, 1.0)
    finally:
        pub.stop()


CLAIM_SECRET = b"deploy-claim-secret-0123"


def test_only_the_badge_reader_publishes_claims(site: tuple[Broker, Pki], tmp_path: Path) -> None:
    broker, pki = site
    pub = door(broker, pki, tmp_path, "door1", claim_secret=CLAIM_SECRET)
    claims: list[str] = []
    pub.on_claim(claims.append)
    try:
        for n, user in enumerate(("admin", "door1", "homeassistant", "badgereader"), start=1):
            payload = sign_command(CLAIM_SECRET, "reader", n, "claim", {"identity": user}, "door1")
            publish(broker, "facegate/door1/claim", payload, username=user, password=USERS[user])
        assert wait_until(lambda: claims, 5)
        time.sleep(0.3)
    finally:
        pub.stop()
    assert claims == ["badgereader"]


def test_fleet_roles(site: tuple[Broker, Pki]) -> None:
    """The hub publishes gallery topics; a door reads its own site's only and writes only its own
    acknowledgement; the collector reads events (deploy/FLEET.md)."""
    broker, _ = site

    def send(user: str, topic: str, payload: bytes) -> None:
        publish(broker, topic, payload, username=user, password=USERS[user])

    with Subscriber(broker, ["facegate-fleet/#"], client_id="door1-fleet", username="door1",
                    password=USERS["door1"]) as door1, \
            Subscriber(broker, ["facegate-fleet/+/ack/+"], client_id="hub-acks", username="hub",
                       password=USERS["hub"]) as hub, \
            Subscriber(broker, ["facegate/+/event"], client_id="collector", username="collector",
                       password=USERS["collector"]) as collector:
        send("hub", "facegate-fleet/other/records", b"other site")
        send("door1", "facegate-fleet/hq/records", b"forged by a door")
        send("hub", "facegate-fleet/hq/records", b"genuine")
        assert [m.payload for m in door1.wait_count("facegate-fleet/#", 1)] == [b"genuine"]
        send("door1", "facegate-fleet/hq/ack/lobby", b"posing as lobby")
        send("lobby", "facegate-fleet/hq/ack/lobby", b"lobby")
        send("door1", "facegate-fleet/hq/ack/door1", b"door1")
        acks = hub.wait_count("facegate-fleet/+/ack/+", 2)
        assert sorted((m.topic, m.payload) for m in acks) == [("facegate-fleet/hq/ack/door1", b"door1"),
                                                              ("facegate-fleet/hq/ack/lobby", b"lobby")]
        send("door1", "facegate/door1/event", b"{}")
        assert collector.wait_count("facegate/+/event", 1)[0].topic == "facegate/door1/event"
        time.sleep(0.3)  # anything refused would have arrived by now
        assert len(door1.on("facegate-fleet/#")) == 1 and len(hub.on("facegate-fleet/+/ack/+")) == 2
