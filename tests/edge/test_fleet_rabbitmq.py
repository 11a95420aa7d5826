"""The same sync and event collection through a real two-node RabbitMQ cluster (MQTT plugin, MQTT 3.1.1): the
hub and the collector on node 1, door1 on node 2 and door2 on node 1 (the doors on different nodes, one across the
cluster from the hub). RabbitMQ keeps retained messages per node, so a door may never see the hub's retained
manifest: it converges anyway (the manifest is a hint; HTTP is the truth)."""

from __future__ import annotations

import pytest

from edge.collect import db
from edge.collect.collector import Collector
from edge.config import parse
from edge.fleet.door import DoorSync
from edge.fleet.hub import Hub
from edge.mqtt.publisher import Publisher
from edge.mqtt.settings import MqttSettings
from tests.fleet_harness import HOST, door_dict, enrol, gallery, make_keys, wait
from tests.mqtt_broker import sample_event
from tests.pg_server import PgServer
from tests.rabbitmq_cluster import RabbitCluster

pytestmark = pytest.mark.slow


def _mqtt(port: int, device: str, root) -> dict:
    return {"host": HOST, "port": port, "device": device, "protocol": "3.1.1", "reconnect_min_s": 0.2,
            "reconnect_max_s": 1.0, "outbox_path": str(root / device / "outbox.db"),
            "command_state_path": str(root / device / "c.json"), "claim_state_path": str(root / device / "k.json"),
            "discovery": False}


def test_sync_and_collection_through_a_two_node_rabbitmq_cluster(tmp_path):
    with RabbitCluster(tmp_path / "rabbit") as cluster, PgServer() as pg:
        assert cluster.nodes[1] in cluster.members()
        node1, node2 = cluster.mqtt_ports
        keys = make_keys(tmp_path, ["a"])
        hub = Hub(parse({"profile": "kiosk", "store": {"path": str(tmp_path / "hub.db"), "create": True},
                         "mqtt": _mqtt(node1, "hub", tmp_path),
                         "hub": {"sites": ["a"], "signing_key_file": keys["signing_key_file"],
                                 "site_keys_dir": str(tmp_path / "keys"), "journal_path": str(tmp_path / "j.db"),
                                 "listen": f"{HOST}:0", "poll_s": 0.02, "manifest_interval_s": 1.0}}))
        enrol(hub.store, "alice")
        enrol(hub.store, "bob")
        hub.start()
        collector = Collector(parse({"profile": "kiosk", "mqtt": _mqtt(node1, "collector", tmp_path),
                                     "collect": {"dsn": pg.dsn, "client_id": "collect-rabbit"}}))
        collector.start()
        doors = []
        publishers = []
        try:
            node_of = {"door1": node2, "door2": node1}
            for device in ("door1", "door2"):
                conf = door_dict(tmp_path, keys, node_of[device], "a", device, hub.url)
                conf["mqtt"] = _mqtt(node_of[device], device, tmp_path)
                d = DoorSync(parse(conf))
                d.start()
                doors.append(d)
            assert all(d.link.wait_ready(30) for d in doors) and collector.link.wait_ready(30)

            def in_step() -> bool:
                s = hub.journal.site("a")
                return all(d.state.rev == s.rev and d.state.hash == s.hash for d in doors)

            assert wait(in_step, 30)
            enrol(hub.store, "carol")
            assert wait(lambda: in_step() and all(d.state.count == 3 for d in doors), 15)
            assert all(d.applied_batches >= 1 for d in doors)  # door1's delta crossed the cluster (node 1 → node 2)
            hub.store.delete("alice", command="test")
            assert wait(lambda: in_step() and all(d.state.count == 2 for d in doors), 15)
            assert all(sorted(gallery(d.store.path)) == ["bob", "carol"] for d in doors)
            # The doors' acknowledgements cross the other way, to the hub on node 1.
            assert wait(lambda: len(hub.status()["doors"]) == 2 and all(x["in_step"] for x in hub.status()["doors"]),
                        15)
            # Events from doors on both nodes into PostgreSQL through the collector on node 1, once each.
            for i, device in enumerate(("door1", "door2")):
                conf = _mqtt(node_of[device], f"{device}-events", tmp_path)
                p = Publisher(MqttSettings(**{**conf, "device": device, "outbox_path":
                                              str(tmp_path / f"ev{i}" / "outbox.db")}))
                p.start()
                publishers.append(p)
            assert all(p.wait_connected(30) for p in publishers)
            for _ in range(10):
                for p in publishers:
                    p.publish_event(sample_event())
            conn = db.connect(pg.dsn)
            try:
                assert wait(lambda: db.counts(conn)["events"] >= 20, 30)
                counts = db.counts(conn)
            finally:
                conn.close()
            assert counts["events"] == 20
            assert counts["devices"] == {d: {"events": 10, "min_seq": 1, "max_seq": 10} for d in ("door1", "door2")}
        finally:
            for p in publishers:
                p.stop(flush_timeout=2)
            for d in doors:
                d.stop()
            collector.stop()
            hub.close()
