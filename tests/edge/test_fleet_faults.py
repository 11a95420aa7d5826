"""Faults, with real processes and brokers: kill -9 of the hub and of a door in the middle of a sync, and a
bridge between a site broker and the hub's broker down for 30 s. After recovery no door diverges from the hub
(same revision, same hash, same people), and every store is intact."""

from __future__ import annotations

import signal
import sqlite3
import time

from edge.fleet.door import DoorSync
from edge.store import fleet as fstore
from edge.store.db import Store, TemplateIn
from tests.fleet_harness import (
    HOST,
    Proxy,
    bridge_lines,
    door_config,
    door_dict,
    embedder,
    enrol,
    facegate,
    gallery,
    make_keys,
    model_sha,
    vectors,
    wait,
    write_toml,
)
from tests.mqtt_broker import Broker

SITE = "a"


def _hub_dict(root, keys, port: int, http_port: int) -> dict:
    return {"profile": "kiosk", "log": {"level": "warning"},
            "store": {"path": str(root / "hub" / "people.db"), "create": True},
            "mqtt": {"host": HOST, "port": port, "device": "hub", "reconnect_min_s": 0.1, "reconnect_max_s": 0.5,
                     "outbox_path": str(root / "hub" / "outbox.db")},
            "hub": {"sites": [SITE], "signing_key_file": keys["signing_key_file"],
                    "site_keys_dir": str(root / "keys"), "journal_path": str(root / "hub" / "journal.db"),
                    "listen": f"{HOST}:{http_port}", "poll_s": 0.02, "manifest_interval_s": 1.0}}


def _seed(path, n: int, prefix: str = "p") -> None:
    with Store(path) as store:
        store.enroll_many({f"{prefix}{i:05d}": [TemplateIn(vector=v, embedder=embedder(), manifest_sha256=model_sha())
                                                for v in vectors(f"{prefix}{i}", 2)] for i in range(n)}, "test")


def _hub_state(root) -> tuple[int, str, int]:
    from edge.fleet.journal import Journal

    j = Journal(root / "hub" / "journal.db")
    try:
        s = j.site(SITE)
        return s.rev, s.hash, s.count
    finally:
        j.close()


def _door_state(path) -> fstore.FleetState:
    with Store(path, create=False) as s:
        return fstore.state(s)


def _intact(path) -> bool:
    with sqlite3.connect(path) as c:
        return c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_kill_9_of_the_hub_and_of_a_door_mid_sync(tmp_path):
    from edge.mqtt.broker import free_port

    with Broker(tmp_path / "mq") as broker:
        keys = make_keys(tmp_path, [SITE])
        http_port = free_port()
        hub_toml = write_toml(tmp_path / "hub.toml", _hub_dict(tmp_path, keys, broker.port, http_port))
        url = f"http://{HOST}:{http_port}"
        _seed(tmp_path / "hub" / "people.db", 3000)
        # The hub dies while it publishes its first 3,000 people (encrypting, signing, committing).
        hub = facegate("hub", "run", "--config", str(hub_toml))
        time.sleep(1.5)
        hub.send_signal(signal.SIGKILL)
        hub.wait()
        with Store(tmp_path / "hub" / "people.db") as store:  # changes while it is down
            enrol(store, "late-arrival")
            store.delete("p00007", command="test")
        hub = facegate("hub", "run", "--config", str(hub_toml))
        door_toml = write_toml(tmp_path / "door1.toml", door_dict(tmp_path, keys, broker.port, SITE, "door1", url,
                                                                   poll_s=1.0))
        door_db = tmp_path / "door1" / "door.db"
        try:
            assert wait(lambda: _hub_state(tmp_path)[2] == 3000, 120)  # 3,000 - 1 + 1
            # A door dies while it applies the 3,000-person snapshot, and starts again.
            door = facegate("fleet", "sync", "--config", str(door_toml))
            assert wait(lambda: door_db.exists(), 30)
            time.sleep(2.0)
            door.send_signal(signal.SIGKILL)
            door.wait()
            assert _intact(door_db)
            half = _door_state(door_db)
            assert half.count in (0, 3000)  # all of the snapshot or none of it, never a part
            rev_before = _hub_state(tmp_path)[0]
            with Store(tmp_path / "hub" / "people.db") as store:
                enrol(store, "after-the-crash")
                store.delete("p00008", command="test")
            # The hub dies again, right after committing these (no manifest may have gone out).
            assert wait(lambda: _hub_state(tmp_path)[0] > rev_before and _hub_state(tmp_path)[2] == 3000, 30)
            hub.send_signal(signal.SIGKILL)
            hub.wait()
            hub = facegate("hub", "run", "--config", str(hub_toml))
            door = facegate("fleet", "sync", "--config", str(door_toml))
            rev, h, count = 0, "", 0

            def converged() -> bool:
                nonlocal rev, h, count
                rev, h, count = _hub_state(tmp_path)
                s = _door_state(door_db) if door_db.exists() else None
                return s is not None and (s.rev, s.hash) == (rev, h)

            assert wait(converged, 120)
            names = set(gallery(door_db))
            assert len(names) == count == 3000
            assert {"late-arrival", "after-the-crash"} <= names and not {"p00007", "p00008"} & names
            assert _intact(door_db) and _intact(tmp_path / "hub" / "journal.db")
        finally:
            for p in (hub, door) if "door" in locals() else (hub,):
                if p.poll() is None:
                    p.terminate()
                    p.wait(30)


def test_a_bridge_down_for_30_s(tmp_path):
    """Doors on a site broker bridged to the hub's broker; the link between the two brokers is cut for 30 s
    while the hub enrols and revokes. Nothing arrives meanwhile (the door keeps deciding on what it has); after
    the link is back, the broker's queued batches (or the manifest and HTTP) bring every door in step."""
    from edge.fleet.hub import Hub
    from tests.fleet_harness import hub_config

    with Broker(tmp_path / "hub-mq") as hub_broker:
        proxy = Proxy(hub_broker.port).restore()
        site = Broker(tmp_path / "site-mq")
        site.config = site._config() + bridge_lines(proxy.port, SITE, "hub")
        site.start()
        keys = make_keys(tmp_path, [SITE])
        hub = Hub(hub_config(tmp_path, keys, hub_broker.port, [SITE]))
        enrol(hub.store, "alice")
        enrol(hub.store, "bob")
        hub.start()
        doors = [DoorSync(door_config(tmp_path, keys, site.port, SITE, d, hub.url, poll_s=600)) for d in
                 ("door1", "door2")]
        try:
            for d in doors:
                d.start()

            def in_step() -> bool:
                s = hub.journal.site(SITE)
                return all((d.state.rev, d.state.hash) == (s.rev, s.hash) for d in doors)

            assert wait(in_step, 15)
            enrol(hub.store, "carol")
            assert wait(lambda: in_step() and all(d.state.count == 3 for d in doors), 10)  # through the bridge
            before = [d.applied_batches for d in doors]
            proxy.cut()
            t0 = time.monotonic()
            enrol(hub.store, "dave")
            hub.store.delete("alice", command="test")
            time.sleep(1.0)
            assert all(d.state.count == 3 for d in doors)  # nothing crossed: the doors decide on what they have
            while time.monotonic() - t0 < 30:
                time.sleep(0.5)
            proxy.restore()
            assert wait(lambda: in_step() and all(d.state.count == 3 for d in doors), 30)
            assert all(sorted(gallery(d.store.path)) == ["bob", "carol", "dave"] for d in doors)
            assert [d.applied_batches for d in doors] > before
            assert all(not d.refusals.get("bad_signature") for d in doors)
        finally:
            for d in doors:
                d.stop()
            hub.close()
            proxy.cut()
            site.stop()
