"""The fleet's parts against what outsiders may send them: a door's acknowledgements (any door may publish its
own), requests to the hub's HTTP side, and whatever answers at a door's hub_url. Each must give one log line
and go on working — never a dead thread, a traceback, or a gallery vouched for that the hub no longer follows."""

from __future__ import annotations

import json
import logging
import socket
import ssl
import time
import urllib.error
import urllib.request

import pytest

from edge.fleet import hubhttp
from edge.fleet.door import DoorSync
from edge.fleet.hub import Hub
from edge.fleet.link import Message
from edge.fleet.records import verify
from tests.fleet_harness import door_config, enrol, gallery, hub_config, make_keys, wait
from tests.mqtt_broker import Broker, make_pki, publish

BAD_ACKS = {
    "utf16": '{"rev": 1, "hash": "x"}'.encode("utf-16"),  # JSON to json.loads(bytes), but not UTF-8
    "deep": b"[" * 50000,  # RecursionError
    "bigint": b"1" * 5000,  # ValueError: over the int conversion limit
    "list": b"[1, 2]",
    "wrong_types": b'{"rev": 1, "hash": "h", "refused": 5}',
}


@pytest.fixture
def fleet(tmp_path):
    """A broker, a started hub of site a with alice and bob, and one started door in step with it."""
    with Broker(tmp_path / "mq") as broker:
        keys = make_keys(tmp_path, ["a"])
        hub = Hub(hub_config(tmp_path, keys, broker.port, ["a"]))
        enrol(hub.store, "alice")
        enrol(hub.store, "bob")
        hub.start()
        door = DoorSync(door_config(tmp_path, keys, broker.port, "a", "door1", hub.url, poll_s=1.0,
                                    max_gallery_age_s=5))
        door.start()
        try:
            assert door.link.wait_ready(10)
            assert wait(lambda: door.state.count == 2, 10)
            yield broker, hub, door
        finally:
            door.stop()
            hub.close()


def test_parse_ack_keeps_only_well_typed_objects() -> None:
    from edge.fleet.hub import parse_ack

    for name, payload in BAD_ACKS.items():
        if name != "wrong_types":
            assert parse_ack(payload) is None, name
    assert parse_ack(b'{"rev": 1, "hash": "h", "refused": 5}') == '{"hash": "h", "rev": 1}'
    assert parse_ack(b'{"rev": true, "hash": "h"}') is None
    assert parse_ack(b'{"rev": NaN, "hash": "h"}') is None
    assert json.loads(parse_ack(b'{"rev": 3, "hash": "h", "refused": {"p1": "unknown_model"}, "x": [1]}')) == {
        "rev": 3, "hash": "h", "refused": {"p1": "unknown_model"}}


def test_malformed_acks_neither_kill_the_hub_nor_break_its_status(fleet, caplog) -> None:
    broker, hub, door = fleet
    caplog.set_level(logging.WARNING)
    for payload in BAD_ACKS.values():
        publish(broker, "facegate-fleet/a/ack/door9", payload)
    time.sleep(0.5)
    assert hub._thread.is_alive()
    hub.store.delete("alice", command="revoke")
    assert wait(lambda: "alice" not in gallery(door.store.path), 10), "the hub stopped publishing"
    status = hub.status()  # a stored ack is always an object of the known fields
    for d in status["doors"]:
        assert isinstance(d["refused"], dict)
    assert not [r for r in caplog.records if r.exc_info], "a traceback for a door's bad input"


def test_a_flood_of_acks_does_not_delay_a_revocation(fleet) -> None:
    _, hub, _door = fleet
    ack = json.dumps({"rev": 1, "hash": "h"}).encode()
    for i in range(20000):  # what a flooding door leaves in the hub's inbox
        hub.link.inbox.put_nowait(Message("facegate-fleet/a/ack/door1", ack, False, i, 0))
    rev = hub.journal.site("a").rev
    t0 = time.monotonic()
    hub.store.delete("alice", command="revoke")
    assert wait(lambda: hub.journal.site("a").rev > rev, 30)
    assert time.monotonic() - t0 < 3.0, "the hub drained the acks before syncing"
    assert wait(lambda: hub.link.inbox.qsize() == 0, 30)


def test_a_hub_whose_sync_fails_stops_vouching_for_the_doors(fleet, monkeypatch) -> None:
    _, hub, door = fleet

    def broken() -> int:
        raise OSError("the store's disk is gone")

    broke_at = time.time()
    monkeypatch.setattr(hub.store, "data_version", broken)
    time.sleep(1.5)
    assert hub._thread.is_alive()
    doc = verify(hub.key.public_key(), hub.manifest("a"), "manifest")
    assert doc["ts"] <= broke_at, "the manifest claims a sync that did not happen"
    assert door.poll()
    assert door.age() >= 1.0  # the door's gallery ages: past max_gallery_age_s it denies


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_the_hub_answers_bad_requests_and_its_own_failures(fleet, monkeypatch) -> None:
    _, hub, _door = fleet
    for after in ("9" * 19, "-1", "9" * 5000, "x"):
        code, _ = _get(f"{hub.url}/v1/sites/a/batches?after={after}")
        assert code == 400, after
    assert _get(f"{hub.url}/v1/sites/a/batches?after=0")[0] == 200

    def broken() -> dict:
        raise RuntimeError("a bug")

    monkeypatch.setattr(hub, "status", broken)
    assert _get(f"{hub.url}/v1/status")[0] == 500  # an answer, not a dropped connection
    monkeypatch.undo()
    assert _get(f"{hub.url}/v1/status")[0] == 200


def test_status_reads_acks_an_older_hub_stored_unchecked(fleet) -> None:
    _, hub, _door = fleet
    hub.journal.record_ack("a", "door8", "[1, 2]")
    hub.journal.record_ack("a", "door9", '{"rev": 1, "hash": "h", "refused": 5}')
    doors = {d["device"]: d for d in hub.status()["doors"]}
    assert doors["door8"]["rev"] is None and doors["door8"]["refused"] == {}
    assert doors["door9"]["rev"] == 1 and doors["door9"]["refused"] == {}
    code, body = _get(f"{hub.url}/v1/status")
    assert code == 200 and len(json.loads(body)["doors"]) >= 2


@pytest.fixture
def lone_hub(tmp_path):
    """make(**hub options) → a started hub without a broker (its HTTP side only), with alice."""
    hubs: list[Hub] = []

    def make(**options) -> Hub:
        hub = Hub(hub_config(tmp_path, make_keys(tmp_path, ["a"]), 1, ["a"], **options), connect=False)
        enrol(hub.store, "alice")
        hub.start()
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        hub.close()


def test_a_silent_client_does_not_stop_the_tls_hub(lone_hub, tmp_path) -> None:
    pki = make_pki(tmp_path / "pki")
    hub = lone_hub(tls_cert=str(pki.server.cert), tls_key=str(pki.server.key), tls_client_ca=str(pki.ca.cert))
    context = ssl.create_default_context(cafile=str(pki.ca.cert))
    context.load_cert_chain(str(pki.client.cert), str(pki.client.key))
    with socket.create_connection(hub.http.address):  # connects, never sends a ClientHello
        time.sleep(0.3)
        with urllib.request.urlopen(f"{hub.url}/v1/sites/a/manifest", timeout=5, context=context) as r:
            assert r.status == 200


def test_idle_connections_are_closed_and_bounded(lone_hub, monkeypatch) -> None:
    monkeypatch.setattr(hubhttp, "CONNECTION_TIMEOUT_S", 1.0, raising=False)
    monkeypatch.setattr(hubhttp, "MAX_CONNECTIONS", 4, raising=False)
    hub = lone_hub()
    idle = [socket.create_connection(hub.http.address, timeout=5) for _ in range(4)]
    for s in idle:
        s.sendall(b"GET /v1/status HTTP/1.1\r\n")  # never finished
    time.sleep(0.3)
    with socket.create_connection(hub.http.address, timeout=5) as extra:  # over the cap: closed at once
        assert extra.recv(100) == b""
    t0 = time.monotonic()
    for s in idle:  # the half-sent requests are given up after the timeout
        with s:
            assert s.recv(100) == b""
    assert time.monotonic() - t0 < 4.0
    assert _get(f"{hub.url}/v1/status")[0] == 200  # the slots are free again
