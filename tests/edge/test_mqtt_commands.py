"""Signed commands through a real mosquitto: refusals change nothing and say why on cmd_result; valid commands reach
the handlers; replays fail, also after a restart."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.errors import FacegateError
from edge.mqtt.commands import sign_command
from edge.mqtt.publisher import Publisher
from tests.mqtt_broker import HOST, Broker, Subscriber, publish, sample_event, settings_for, wait_until

SECRET = b"test-secret-0123456789"
RESULTS = "facegate/door1/cmd_result"


class Handlers:
    """The daemon core's side, recording calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def reload(self) -> dict:
        self.calls.append(("reload",))
        return {"identities": 3}

    def enroll(self, name: str, image_jpeg: bytes, live_capture: bool) -> dict:
        self.calls.append(("enroll", name, image_jpeg, live_capture))
        if name == "nobody":
            raise FacegateError("no face found in the image")
        return {"name": name, "templates": 1}

    def delete(self, name: str) -> dict:
        self.calls.append(("delete", name))
        return {"deleted": True}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path / "broker") as b:
        yield b


@pytest.fixture
def results(broker: Broker) -> Iterator[Subscriber]:
    with Subscriber(broker, [RESULTS]) as sub:
        yield sub


def make(broker: Broker, tmp_path: Path, handlers: Handlers, secret: bytes | None = SECRET, **settings: Any
         ) -> Publisher:
    pub = Publisher(settings_for(broker, tmp_path, command_secret=secret, **settings), handlers=handlers)
    pub.start()
    assert pub.wait_connected(5)
    return pub


def send(broker: Broker, results: Subscriber, name: str, payload: bytes) -> dict:
    before = len(results.on(RESULTS))
    publish(broker, f"facegate/door1/cmd/{name}", payload)
    got = results.wait_count(RESULTS, before + 1)
    assert len(got) > before, "no cmd_result"
    return got[before].json()


def test_unsigned_forged_and_replayed_commands_are_refused(broker: Broker, results: Subscriber,
                                                           tmp_path: Path) -> None:
    handlers = Handlers()
    pub = make(broker, tmp_path, handlers)
    counters = tmp_path / "counters.json"
    try:
        unsigned = json.dumps({"sender": "admin", "counter": 1, "body": {"name": "bob"}}).encode()
        assert send(broker, results, "delete", unsigned)["reason"] == "unsigned"
        forged = sign_command(b"not-the-secret-at-all", "admin", 1, "delete", {"name": "bob"})
        assert send(broker, results, "delete", forged)["reason"] == "bad_signature"
        aimed_elsewhere = sign_command(SECRET, "admin", 1, "reload", {})  # signed as reload, sent to delete
        assert send(broker, results, "delete", aimed_elsewhere)["reason"] == "wrong_command"
        assert handlers.calls == [] and not counters.exists()  # nothing changed

        valid = sign_command(SECRET, "admin", 1, "delete", {"name": "bob"}, device="door1")
        ok = send(broker, results, "delete", valid)
        assert (ok["accepted"], ok["status"], ok["result"]) == (True, "ok", {"deleted": True})
        assert handlers.calls == [("delete", "bob")]

        replay = send(broker, results, "delete", valid)
        assert (replay["accepted"], replay["status"], replay["reason"]) == (False, "refused", "replay")
        older = send(broker, results, "reload", sign_command(SECRET, "admin", 1, "reload", {}))
        assert older["reason"] == "replay"
        assert handlers.calls == [("delete", "bob")]
        assert json.loads(counters.read_text()) == {"admin": 1}
    finally:
        pub.stop()


def test_counters_survive_a_restart(broker: Broker, results: Subscriber, tmp_path: Path) -> None:
    handlers = Handlers()
    reload_5 = sign_command(SECRET, "admin", 5, "reload", {})
    pub = make(broker, tmp_path, handlers)
    assert send(broker, results, "reload", reload_5)["accepted"]
    pub.stop()

    pub = make(broker, tmp_path, handlers)  # a new process would see the same file
    try:
        assert send(broker, results, "reload", reload_5)["reason"] == "replay"
        assert send(broker, results, "reload", sign_command(SECRET, "admin", 6, "reload", {}))["accepted"]
        assert send(broker, results, "reload", sign_command(SECRET, "kiosk", 1, "reload", {}))["accepted"]
    finally:
        pub.stop()
    assert handlers.calls == [("reload",)] * 3


def test_enrol_passes_the_image_and_reports_handler_errors(broker: Broker, results: Subscriber,
                                                           tmp_path: Path) -> None:
    handlers = Handlers()
    pub = make(broker, tmp_path, handlers)
    jpeg = b"\xff\xd8\xff\xe0 not really a jpeg \xff\xd9"
    image = base64.b64encode(jpeg).decode()
    try:
        bad = send(broker, results, "enroll", sign_command(SECRET, "admin", 1, "enroll", {"name": "carol",
                                                                                          "image": "***"}))
        assert bad["reason"] == "invalid_body" and handlers.calls == []
        # The refused command did not use up counter 1.
        ok = send(broker, results, "enroll", sign_command(SECRET, "admin", 1, "enroll",
                                                          {"name": "carol", "image": image, "live_capture": True}))
        assert ok["status"] == "ok" and ok["result"] == {"name": "carol", "templates": 1}
        failed = send(broker, results, "enroll", sign_command(SECRET, "admin", 2, "enroll",
                                                              {"name": "nobody", "image": image}))
        assert (failed["accepted"], failed["status"], failed["detail"]) == (True, "error", "no face found in the image")
    finally:
        pub.stop()
    assert handlers.calls == [("enroll", "carol", jpeg, True), ("enroll", "nobody", jpeg, False)]


def test_commands_are_refused_without_a_secret(broker: Broker, results: Subscriber, tmp_path: Path) -> None:
    handlers = Handlers()
    pub = make(broker, tmp_path, handlers, secret=None)
    try:
        result = send(broker, results, "reload", sign_command(SECRET, "admin", 1, "reload", {}))
    finally:
        pub.stop()
    assert result["reason"] == "commands_disabled" and handlers.calls == []


def test_delete_forgets_the_identity_everywhere(broker: Broker, results: Subscriber, tmp_path: Path) -> None:
    handlers = Handlers()
    pub = make(broker, tmp_path, handlers)
    state = "facegate/door1/state"
    try:
        with Subscriber(broker, [state], client_id="ha") as ha:
            pub.publish_state({"status": "online"})
            pub.publish_event(sample_event("granted", "bob"))
            assert ha.wait_for(lambda msgs: msgs and msgs[-1].json()["last_identity"] == "bob")
            assert send(broker, results, "delete", sign_command(SECRET, "admin", 1, "delete", {"name": "bob"}))[
                "accepted"]
            assert ha.wait_for(lambda msgs: msgs[-1].json()["last_identity"] is None)
    finally:
        pub.stop()
    assert handlers.calls == [("delete", "bob")]


def test_unsigned_claims_reach_the_callback(broker: Broker, tmp_path: Path) -> None:
    pub = make(broker, tmp_path, Handlers(), claims="unsigned")
    claims: list[str] = []
    pub.on_claim(claims.append)
    try:
        for payload in (b"alice", b'{"identity": "bob"}', b"", b"\x00bad", b'{"who": "x"}', "zoë".encode()):
            publish(broker, "facegate/door1/claim", payload)
        assert wait_until(lambda: len(claims) >= 3, 5)
        time.sleep(0.2)
    finally:
        pub.stop()
    assert claims == ["alice", "bob", "zoë"]  # the malformed ones were ignored


CLAIM_SECRET = b"badge-reader-secret-0123"


def test_signed_claims_only_with_the_claim_secret_and_never_twice(broker: Broker, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    pub = make(broker, tmp_path, Handlers(), claim_secret=CLAIM_SECRET)  # claims = "signed" is the default
    claims: list[str] = []
    pub.on_claim(claims.append)
    good = sign_command(CLAIM_SECRET, "reader1", 7, "claim", {"identity": "alice"}, device="door1")
    try:
        for payload in (b"mallory",  # unsigned: refused in signed mode
                        sign_command(SECRET, "reader1", 8, "claim", {"identity": "mallory"}),  # the admin's secret
                        sign_command(CLAIM_SECRET, "reader1", 9, "enroll", {"identity": "mallory"}),  # re-aimed
                        good, good,  # the second is a replay
                        b"[" * 100000 + b"]" * 100000,  # nested too deeply for json
                        json.dumps({"signed": "{}", "hmac": "é" * 64}).encode(),  # non-ASCII MAC
                        sign_command(CLAIM_SECRET, "reader1", 10, "claim", {"identity": "bob"}, device="door1")):
            publish(broker, "facegate/door1/claim", payload)
        assert wait_until(lambda: len(claims) >= 2, 5)
        time.sleep(0.3)
    finally:
        pub.stop()
    assert claims == ["alice", "bob"]
    assert not [r for r in caplog.records if r.exc_info], "a malformed claim must not log a traceback"


def test_malformed_commands_get_a_refusal_and_no_traceback(broker: Broker, results: Subscriber, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    handlers = Handlers()
    pub = make(broker, tmp_path, handlers)
    bad = [b"[" * 100000 + b"]" * 100000, json.dumps({"signed": "{}", "hmac": "ü" * 64}).encode(),
           json.dumps({"signed": "\ud800", "hmac": "0" * 64}).encode(), b"\xff\xfe", b"{" * 50000]
    try:
        for payload in bad:
            publish(broker, "facegate/door1/cmd/reload", payload)
        msgs = results.wait_count(RESULTS, len(bad))
    finally:
        pub.stop()
    assert [m.json()["status"] for m in msgs] == ["refused"] * len(bad)
    assert handlers.calls == []
    assert not [r for r in caplog.records if r.exc_info]


def test_junk_commands_get_a_bounded_number_of_refusals(broker: Broker, results: Subscriber, tmp_path: Path) -> None:
    """Each junk command used to get a QoS 1 cmd_result, so a flood grew the MQTT client's queue without bound.
    Refusals are rate-limited; a command that passed the signature check always gets its result."""
    from edge.mqtt.publisher import REFUSAL_BURST

    handlers = Handlers()
    pub = make(broker, tmp_path, handlers)
    pub._refusals.clock = lambda: 0.0  # no time passes for the bucket: exactly the burst gets through
    pub._refusals._at = 0.0
    junk = REFUSAL_BURST + 100
    flood = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="junk")
    flood.connect(HOST, broker.port)
    flood.loop_start()
    try:
        for _ in range(junk):
            flood.publish("facegate/door1/cmd/reload", b"{}", qos=1)
        # Signed, after the junk on the same connection: its result says every refusal before it was decided.
        flood.publish("facegate/door1/cmd/reload", sign_command(SECRET, "admin", 1, "reload", {}), qos=1)
        assert results.wait_for(lambda msgs: any(m.json()["status"] == "ok" for m in msgs), 30)
        time.sleep(0.5)  # a refusal published just before the result would be here by now
    finally:
        flood.disconnect()
        flood.loop_stop()
        pub.stop()
    statuses = [m.json()["status"] for m in results.on(RESULTS)]
    assert statuses.count("refused") == REFUSAL_BURST and statuses.count("ok") == 1
    assert handlers.calls == [("reload",)]
