"""Gallery sync through a real mosquitto: a hub and doors in this process (each door with its own store and
connection), real signatures and encryption. Forged, replayed and unknown-model records are refused; a door that
was away catches up over HTTP (batches, or a snapshot once erasure removed them); a deletion really erases."""

from __future__ import annotations

import shutil
import threading
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.fleet.door import DoorSync
from edge.fleet.hub import Hub
from edge.fleet.records import Body, entry_digest, hash_add, seal_entry, sign
from edge.store import fleet as fstore
from tests.fleet_harness import door_config, embedder, enrol, gallery, hub_config, make_keys, vectors, wait
from tests.mqtt_broker import Broker, Subscriber, publish


@pytest.fixture
def fleet(tmp_path):
    """A broker, keys for sites a and b, a started hub with two people; doors made by `door(name)`."""
    with Broker(tmp_path / "mq") as broker:
        keys = make_keys(tmp_path, ["a", "b"])
        hub = Hub(hub_config(tmp_path, keys, broker.port, ["a", "b"]))
        enrol(hub.store, "alice")
        enrol(hub.store, "bob")
        hub.start()
        url = hub.url
        doors: list[DoorSync] = []

        def door(device: str, site: str = "a", start: bool = True, **fleet_opts) -> DoorSync:
            d = DoorSync(door_config(tmp_path, keys, broker.port, site, device, url, **fleet_opts))
            if start:
                d.start()
                assert d.link.wait_ready(10)
            doors.append(d)
            return d

        class F:
            pass

        f = F()
        f.broker, f.keys, f.hub, f.url, f.door, f.root = broker, keys, hub, url, door, tmp_path
        try:
            yield f
        finally:
            for d in doors:
                d.stop()
            hub.close()


def in_step(d: DoorSync, hub: Hub, site: str = "a") -> bool:
    s = hub.journal.site(site)
    return d.state.rev == s.rev and d.state.hash == s.hash and s.rev > 0


def test_doors_follow_the_hub_and_a_deletion_erases(fleet):
    d1, d2 = fleet.door("door1"), fleet.door("door2")
    db = fleet.door("door3", site="b")
    assert wait(lambda: in_step(d1, fleet.hub) and in_step(d2, fleet.hub) and in_step(db, fleet.hub, "b"), 10)
    assert sorted(gallery(d1.store.path)) == ["alice", "bob"]
    assert d1.state.hash != db.state.hash  # sealed per site: the same people, other bytes
    carol = enrol(fleet.hub.store, "carol", n=3)
    assert wait(lambda: d1.state.count == 3 and d2.state.count == 3, 5)
    assert (gallery(d2.store.path)["carol"] == carol).all()
    assert d1.applied_batches >= 1  # delivered as a delta over the broker, not only by polling
    fleet.hub.store.delete("alice", command="test")
    assert wait(lambda: d1.state.count == 2 and d2.state.count == 2 and db.state.count == 2, 5)
    assert sorted(gallery(d1.store.path)) == ["bob", "carol"]
    raw = b"".join(p.read_bytes() for p in d1.store.path.parent.iterdir() if p.name.startswith("door.db"))
    assert vectors("alice", 2)[0].tobytes() not in raw  # erased from the door's files, WAL included
    # The acknowledgements say so, retained (the door's loop sends its ack just after the apply: the retained copy
    # may still be the previous one for a moment), and the hub sees every door in step.
    hub_hash = fleet.hub.journal.site("a").hash
    with Subscriber(fleet.broker, ["facegate-fleet/+/ack/+"], client_id="acks") as sub:
        assert sub.wait_for(lambda msgs: len({m.topic for m in msgs}) >= 3 and any(
            m.topic == "facegate-fleet/a/ack/door1" and m.json()["hash"] == hub_hash for m in msgs), 5)
    assert wait(lambda: all(x["in_step"] for x in fleet.hub.status()["doors"]) and
                len(fleet.hub.status()["doors"]) == 3, 5)


def test_forged_replayed_and_unknown_model_records_are_refused(fleet):
    d = fleet.door("door1")
    assert wait(lambda: in_step(d, fleet.hub), 10)
    with Subscriber(fleet.broker, ["facegate-fleet/a/records"], client_id="rec") as sub:
        enrol(fleet.hub.store, "carol")
        assert sub.wait_for(lambda msgs: len(msgs) >= 1, 5)
        recorded = sub.messages[0].payload
    assert wait(lambda: d.state.count == 3, 5)
    before = d.state
    # A forged batch: the next revision, a new person, signed with a key that is not the hub's.
    mallory = seal_entry(d.cipher, "a", "mallory-id", before.rev + 1,
                         Body("mallory", None, {}, {embedder(): (d.models[embedder()], vectors("mallory", 1))}))
    forged = sign(Ed25519PrivateKey.generate(), {
        "v": 1, "kind": "batch", "site": "a", "epoch": before.epoch, "rev": before.rev + 1, "ts": time.time(),
        "hash": hash_add(before.hash, "a", "mallory-id", entry_digest(mallory)), "count": before.count + 1,
        "entries": [mallory]})
    publish(fleet.broker, "facegate-fleet/a/records", forged)
    publish(fleet.broker, "facegate-fleet/a/records", b'{"kind": "batch", "signed": "{}"}')  # unsigned
    publish(fleet.broker, "facegate-fleet/a/records", recorded)  # a replay of an older, genuine batch
    assert wait(lambda: d.refusals["bad_signature"] == 1 and d.refusals["unsigned"] == 1
                and d.refusals["old"] >= 1, 5)
    assert d.state == before and "mallory" not in gallery(d.store.path)
    # Templates of a model this door does not run: refused with a status, never mixed in; the hash still agrees.
    enrol(fleet.hub.store, "dave", sha="0" * 64)  # the door's embedder by name, another model file
    enrol(fleet.hub.store, "erin", embedder_name="dlib-resnet", sha="1" * 64)
    assert wait(lambda: in_step(d, fleet.hub) and d.state.count == 5, 5)
    refused = fstore.refused(d.store)
    assert sorted(refused.values()) == ["model_mismatch", "unknown_model"]
    assert sorted(gallery(d.store.path)) == ["alice", "bob", "carol"]
    assert d.ack()["refused_total"] == 2 and d.ack()["status"] == "refused_entries"
    # Re-enrolled with the right model, dave becomes usable.
    fleet.hub.store.delete("dave", command="test")
    enrol(fleet.hub.store, "dave")
    assert wait(lambda: in_step(d, fleet.hub) and "dave" in gallery(d.store.path), 5)


def test_a_door_that_was_away_catches_up_over_http(fleet):
    d = fleet.door("door1")
    assert wait(lambda: in_step(d, fleet.hub), 10)
    d.stop()
    for i in range(30):
        enrol(fleet.hub.store, f"p{i}")
        fleet.hub.sync_now()  # one batch each
    d = fleet.door("door1")
    assert wait(lambda: in_step(d, fleet.hub), 10)
    assert d.snapshots == 0 and d.applied_batches >= 30 and d.state.count == 32  # batches, in order
    d.stop()
    enrol(fleet.hub.store, "zed")
    fleet.hub.sync_now()
    fleet.hub.store.delete("zed", command="test")  # erasure removes the batch that carried zed's templates
    fleet.hub.sync_now()
    fleet.hub.store.delete("p3", command="test")
    d = fleet.door("door1")
    assert wait(lambda: in_step(d, fleet.hub), 10)
    assert d.snapshots == 1 and "zed" not in gallery(d.store.path) and "p3" not in gallery(d.store.path)


def test_without_the_broker_the_door_still_syncs_and_revokes_over_http(tmp_path):
    """Correctness never rests on what the broker delivers: a hub with no MQTT at all, doors that poll."""
    with Broker(tmp_path / "mq") as broker:
        keys = make_keys(tmp_path, ["a"])
        hub = Hub(hub_config(tmp_path, keys, broker.port, ["a"]), connect=False)
        enrol(hub.store, "alice")
        hub.start()
        d = DoorSync(door_config(tmp_path, keys, broker.port, "a", "door1", hub.url,
                                 poll_s=0.3))
        d.start()
        try:
            assert wait(lambda: in_step(d, hub), 10) and d.age() < 5
            hub.store.delete("alice", command="test")
            t0 = time.monotonic()
            assert wait(lambda: d.state.count == 0, 5)
            assert time.monotonic() - t0 < 2.0  # bounded by fleet.poll_s
        finally:
            d.stop()
            hub.close()


def test_a_gallery_nobody_confirms_fails_secure(tmp_path):
    """fleet.max_gallery_age_s: never synced, or not confirmed for longer than that → a "gallery" problem."""
    keys = make_keys(tmp_path, ["a"])
    cfg = door_config(tmp_path, keys, 1, "a", "door1", "http://127.0.0.1:9", max_gallery_age_s=5, poll_s=1)
    d = DoorSync(cfg, connect=False)
    try:
        assert "never synced" in d.problem()
        d._confirm(time.time() - 4)
        assert d.problem() is None
        d._confirm(time.time() - 1)
        d._confirmed = time.time() - 6
        assert "fleet.max_gallery_age_s" in d.problem()
        d._confirm(time.time() + 3600)  # a signed time far in the future is not believed
        assert d.age() is not None and d.age() < 1
    finally:
        d.stop()


def test_a_clock_set_back_does_not_make_an_unconfirmed_gallery_current(tmp_path, monkeypatch):
    """The age runs on the monotonic clock too: turning the door's wall clock back (by hand or a spoofed time
    server) after the last confirmation does not restart it."""
    import types

    import edge.fleet.door as door_module

    keys = make_keys(tmp_path, ["a"])
    cfg = door_config(tmp_path, keys, 1, "a", "door1", "http://127.0.0.1:9", max_gallery_age_s=5, poll_s=1)
    d = DoorSync(cfg, connect=False)
    shift = {"wall": 0.0, "mono": 0.0}
    clock = types.SimpleNamespace(time=lambda: time.time() + shift["wall"],
                                  monotonic=lambda: time.monotonic() + shift["mono"], sleep=time.sleep)
    monkeypatch.setattr(door_module, "time", clock)
    try:
        d._confirm(clock.time() - 4)  # confirmed 4 s ago: current
        assert d.problem() is None
        shift["wall"] = -3600.0  # the wall clock goes back an hour …
        shift["mono"] = 2.0  # … while 2 s pass
        assert d.age() >= 6 and "fleet.max_gallery_age_s" in d.problem()
    finally:
        d.stop()


def test_a_fleet_door_decides_from_the_synced_gallery_and_fails_secure_without_the_hub(tmp_path, lfw):
    """The daemon in fleet mode: a person enrolled at the hub is granted at the door; with the hub gone for
    longer than fleet.max_gallery_age_s, the same person is denied, saying why."""
    from edge.cli import main
    from edge.config import parse
    from edge.daemon import Daemon
    from edge.demo_daemon import running
    from edge.sinks.log import LogSink
    from tests.fleet_harness import door_dict

    root = lfw / "images"
    folder = tmp_path / "clip"
    folder.mkdir()
    shutil.copy(root / "Colin_Powell/Colin_Powell_0040.jpg", folder / "01_colin.jpg")
    import cv2
    import numpy as np

    cv2.imwrite(str(folder / "02_empty.png"), np.full((250, 250, 3), 120, np.uint8))
    with Broker(tmp_path / "mq") as broker:
        keys = make_keys(tmp_path, ["a"])
        hcfg = hub_config(tmp_path, keys, broker.port, ["a"], manifest_interval_s=0.5)
        assert main(["enroll", "--store", hcfg.store.path, "colin",
                     str(root / "Colin_Powell/Colin_Powell_0038.jpg")]) == 0
        hub = Hub(hcfg)
        hub.start()
        conf = door_dict(tmp_path, keys, broker.port, "a", "door1", hub.url,
                         max_gallery_age_s=5, poll_s=1)
        conf.update(camera={"source": str(folder), "loop": True, "fps": 30, "frames_per_image": 10},
                    decision={"cooldown_s": 0, "track_ttl_s": 0.1}, health={"listen": "127.0.0.1:0"})
        seen: list[tuple[float, str, str | None, str | None]] = []
        lock = threading.Lock()

        def record(dec, event) -> None:
            with lock:
                seen.append((time.monotonic(), dec.decision, dec.identity, dec.reason))

        daemon = Daemon(parse(conf), sink=LogSink("door1", "front", tmp_path / "e.jsonl"), on_decision=record)
        try:
            with running(daemon):
                assert wait(lambda: any(x[1] == "granted" and x[2] == "colin" for x in seen), 60), seen
                assert daemon.health()["fleet"]["rev"] >= 1
                hub.close()
                hub = None
                assert wait(lambda: any(p.startswith("gallery") for p in daemon.problems()), 15)
                gone_at = time.monotonic()
                assert wait(lambda: any(t > gone_at and x == "denied" for t, x, _, _ in seen), 60), seen
            late = [x for x in seen if x[0] > gone_at]
            assert all(x[1] != "granted" for x in late)
            assert any("gallery" in (x[3] or "") for x in late if x[1] == "denied")
        finally:
            if hub is not None:
                hub.close()


def test_the_single_door_setup_needs_no_hub_and_no_postgresql(tmp_path):
    """Fleet mode is opt-in: a door without [fleet] passes `run --check` (which builds the whole daemon) in a
    process where neither psycopg nor the fleet and collector packages can even be imported."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "frames").mkdir()
    conf = tmp_path / "door.toml"
    conf.write_text(f'profile = "kiosk"\n[camera]\nsource = "{tmp_path / "frames"}"\n[store]\n'
                    f'path = "{tmp_path / "s.db"}"\ncreate = true\n[health]\nlisten = "127.0.0.1:0"\n')
    script = (
        "import sys\n"
        "for name in ('psycopg', 'edge.fleet', 'edge.collect'):\n"
        "    sys.modules[name] = None  # any import of them fails\n"
        "from edge.cli import main\n"
        f"sys.exit(main(['run', '--config', {str(conf)!r}, '--check']))\n")
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", script], cwd=repo, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(repo)})
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _repoint(d: DoorSync, url: str) -> None:
    import dataclasses

    d.cfg = dataclasses.replace(d.cfg, fleet=dataclasses.replace(d.cfg.fleet, hub_url=url))


def _hub_with_alice_and_mallory(tmp_path, keys) -> tuple[Hub, DoorSync]:
    """A started hub (no broker) with two people, and a door that polls it over HTTP."""
    hub = Hub(hub_config(tmp_path, keys, 1, ["a"]), connect=False)
    enrol(hub.store, "alice")
    enrol(hub.store, "mallory")
    hub.start()
    return hub, DoorSync(door_config(tmp_path, keys, 1, "a", "door1", hub.url), connect=False)


def _rebuilt_hub(tmp_path, keys) -> Hub:
    """The same store under a new journal: a new epoch (a hub rebuilt or restored)."""
    return Hub(hub_config(tmp_path, keys, 1, ["a"], journal_path=str(tmp_path / "hub" / "journal2.db")),
               connect=False)


def test_a_new_hub_journal_at_the_same_revision_replaces_the_door_gallery(tmp_path):
    """A hub rebuilt from its store (a new journal, a new epoch) can stand at the door's revision number: its
    revisions say nothing about the old journal's, so the door loads the snapshot and drops whom it deleted."""
    keys = make_keys(tmp_path, ["a"])
    hub, d = _hub_with_alice_and_mallory(tmp_path, keys)
    try:
        assert d.poll() and sorted(gallery(d.store.path)) == ["alice", "mallory"] and d.state.rev == 1
        hub.close()
        hub = _rebuilt_hub(tmp_path, keys)
        hub.store.delete("mallory", command="revoked")
        hub.start()
        assert hub.journal.site("a").rev == d.state.rev and hub.journal.epoch != d.state.epoch
        _repoint(d, hub.url)
        assert d.poll()
        assert sorted(gallery(d.store.path)) == ["alice"] and in_step(d, hub) and d.problem() is None
    finally:
        d.stop()
        hub.close()


def test_a_replayed_snapshot_of_an_old_journal_is_refused(tmp_path):
    """Whoever answers for hub_url (a plain-HTTP path, a restored backup) serves the signed documents of an old
    journal, recorded before a revocation: the door refuses them (signed before its last confirmation) and keeps
    the revocation."""
    import http.server
    import urllib.request

    keys = make_keys(tmp_path, ["a"])
    hub, d = _hub_with_alice_and_mallory(tmp_path, keys)
    recorded: dict[str, bytes] = {}
    server = None
    try:
        assert d.poll()
        for what in ("manifest", "snapshot"):
            with urllib.request.urlopen(f"{hub.url}/v1/sites/a/{what}") as r:
                recorded[what] = r.read()
        hub.close()
        time.sleep(0.05)  # the new journal's documents are signed later than the recording
        hub = _rebuilt_hub(tmp_path, keys)
        hub.start()
        hub.store.delete("mallory", command="revoked")
        assert wait(lambda: hub.journal.site("a").rev == 2, 5)
        _repoint(d, hub.url)
        assert d.poll() and sorted(gallery(d.store.path)) == ["alice"] and in_step(d, hub)

        class Replay(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = next((v for k, v in recorded.items() if self.path.endswith("/" + k)), None)
                self.send_response(200 if body else 410)
                self.end_headers()
                self.wfile.write(body or b"{}")

            def log_message(self, *_args) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Replay)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        _repoint(d, f"http://127.0.0.1:{server.server_address[1]}")
        before = d.state
        assert d.poll()
        assert sorted(gallery(d.store.path)) == ["alice"]
        assert (d.state.epoch, d.state.rev, d.state.hash) == (before.epoch, before.rev, before.hash)
        assert d.refusals["replayed"] >= 1
    finally:
        if server is not None:
            server.shutdown()
        d.stop()
        hub.close()
