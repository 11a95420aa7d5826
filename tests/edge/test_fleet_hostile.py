"""The fleet's parts against what outsiders may send them: a door's acknowledgements (any door may publish its
own), requests to the hub's HTTP side, and whatever answers at a door's hub_url. Each must give one log line
and go on working — never a dead thread, a traceback, or a gallery vouched for that the hub no longer follows."""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from edge.fleet import hubhttp
from edge.fleet.door import DoorSync
from edge.fleet.hub import Hub
from edge.fleet.link import Message
from edge.fleet.records import verify
from tests.fleet_harness import door_config, enrol, gallery, hub_config, make_keys, wait
from tests.http_get import get as _get
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
    code, body = _get(f"{hub.url}/v1/sites/a/snapshot")  # nor may a snapshot, served now, vouch for it
    assert code == 200 and verify(hub.key.public_key(), body, "snapshot")["ts"] <= broke_at
    assert door.poll()
    assert door.age() >= 1.0  # the door's gallery ages: past max_gallery_age_s it denies


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
    keys = make_keys(tmp_path, ["a"])

    def make(**options) -> Hub:
        hub = Hub(hub_config(tmp_path, keys, 1, ["a"], **options), connect=False)
        enrol(hub.store, "alice")
        hub.start()
        hubs.append(hub)
        return hub

    make.keys = keys  # type: ignore[attr-defined]
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


class _Front:
    """An HTTP server at the door's hub_url passing requests on to the hub, or answering as `mode` says: what a
    man in the middle of a plain-http hub_url, or another service on its port, may send."""

    def __init__(self, hub: Hub) -> None:
        self.mode, self.hits, self.old = "proxy", 0, hub.journal.batches("a", 0, 1 << 20)
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args) -> None:
                pass

            def do_GET(self) -> None:
                body = front.answer(self.path, hub.url)
                if body is None:
                    self.wfile.write(b"SSH-2.0-OpenSSH_9.2\r\n")
                    self.close_connection = True
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, path: str, hub_url: str) -> bytes | None:
        if self.mode == "garbage":
            return None
        if self.mode == "bigint" and path.endswith("/manifest"):
            return b"1" * 5000
        if "/batches" in path and self.mode.startswith("catchup"):
            self.hits += 1
            if self.mode == "catchup-rev":
                return b'{"rev": "x", "batches": []}'
            if self.mode == "catchup-list":
                return b'{"rev": 9, "batches": [1]}'
            return json.dumps({"rev": 99, "floor": 0, "batches": [b.decode() for b in self.old]}).encode()
        with urllib.request.urlopen(hub_url + path) as r:
            return r.read()


def test_whoever_answers_at_hub_url_gets_one_log_line_not_a_traceback(lone_hub, tmp_path, caplog) -> None:
    hub = lone_hub(max_delta_bytes=1 << 20)
    front = _Front(hub)
    door = DoorSync(door_config(tmp_path, lone_hub.keys, 1, "a", "door1", front.url, poll_s=0.5), connect=False)
    caplog.set_level(logging.WARNING)
    door.start()
    try:
        assert wait(lambda: door.state.count == 1, 10)
        for mode in ("garbage", "bigint", "catchup-rev", "catchup-list"):
            front.mode = mode
            if mode == "catchup-rev":
                enrol(hub.store, "bob")  # the hub moves on: the manifest is ahead of the door, which catches up
            time.sleep(1.5)
        front.mode = "proxy"
        assert wait(lambda: door.state.count == 2, 10)  # the path behaves again: the door follows
    finally:
        door.stop()
    tracebacks = [r.getMessage() for r in caplog.records if r.exc_info]
    assert not tracebacks, tracebacks


def test_a_catch_up_reply_with_nothing_new_ends_the_catch_up(lone_hub, tmp_path) -> None:
    hub = lone_hub(max_delta_bytes=1 << 20)
    front = _Front(hub)
    door = DoorSync(door_config(tmp_path, lone_hub.keys, 1, "a", "door1", front.url, poll_s=0.5), connect=False)
    door.start()
    try:
        assert wait(lambda: door.state.rev == 1, 10)
        front.mode = "catchup-old"  # only the batch the door already holds, for ever
        enrol(hub.store, "bob")
        time.sleep(2.0)
        assert front.hits <= 8, f"{front.hits} requests in 2 s with fleet.poll_s 0.5"
        front.mode = "proxy"
        assert wait(lambda: door.state.count == 2, 10)
    finally:
        door.stop()
