"""Central events in a real PostgreSQL (a private server started here: initdb + pg_ctl on a loopback port),
collected from doors through a real mosquitto: exactly once per (device, seq), through a broker outage."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid

import pytest

from edge.collect import db
from edge.collect.collector import Collector
from edge.config import parse
from edge.fleet.link import Message
from edge.mqtt.publisher import Publisher
from tests.mqtt_broker import Broker, publish, sample_event, settings_for, wait_until
from tests.pg_server import PgServer


@pytest.fixture(scope="module")
def pg():
    with PgServer() as server:
        yield server


@pytest.fixture
def conn(pg):
    c = db.connect(pg.dsn)
    db.migrate(c)
    with c.transaction():
        c.execute("TRUNCATE events, conflicts")
    yield c
    c.close()


def _event(device: str, seq: int, ts: str, decision: str = "granted", identity: str | None = "alice",
           door: str = "front", event_id: str | None = None) -> bytes:
    return json.dumps({"event_id": event_id or str(uuid.uuid4()), "seq": seq, "ts": ts, "device": device,
                       "door": door, "decision": decision, "identity": identity, "score": 0.7}).encode()


def test_schema_exactly_once_queries_and_purge(conn) -> None:
    assert db.migrate(conn) == len(db.MIGRATIONS)  # idempotent
    events = [db.parse_event(_event("door1", 1, "2026-05-01T08:00:00.000Z")),
              db.parse_event(_event("door1", 2, "2026-05-01T09:30:00.000Z", identity="bob")),
              db.parse_event(_event("door2", 1, "2026-05-01T09:00:00.000Z", door="back")),
              db.parse_event(_event("door2", 2, "2026-05-02T09:00:00.000Z", decision="unknown", identity=None,
                                    door="back"))]
    with conn.transaction():
        assert db.insert(conn, events) == (4, 0)
    with conn.transaction():  # a redelivery: nothing new
        assert db.insert(conn, events[:2]) == (0, 2)
    with conn.transaction():  # the same key, another event: kept aside, not stored twice
        assert db.insert(conn, [db.parse_event(_event("door1", 1, "2026-05-01T08:00:00.000Z"))]) == (0, 1)
    assert db.counts(conn)["events"] == 4 and db.counts(conn)["conflicts"] == 1
    day = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
    front = db.entries(conn, "front", day, day + dt.timedelta(days=1))
    assert [(r["identity"], r["device"]) for r in front] == [("alice", "door1"), ("bob", "door1")]
    assert [r["identity"] for r in db.entries(conn, "door2", day, day + dt.timedelta(days=1))] == ["alice"]
    where = db.whereabouts(conn, "alice", day, day + dt.timedelta(days=2))
    assert [(r["device"], r["door"]) for r in where] == [("door1", "front"), ("door2", "back")]
    with conn.transaction():  # as if they had arrived when they happened: the purge goes by arrival
        conn.execute("UPDATE events SET received = ts")
    assert db.purge(conn, 1) == 4  # all older than a day by now
    assert db.counts(conn)["events"] == 0
    for bad, why in ((b"nope", "JSON"), (_event("door1", 0, "2026-05-01T08:00:00Z"), "seq"),
                     (_event("door1", 1, "yesterday"), "ts"), (b'{"seq": 1}', "missing")):
        with pytest.raises(ValueError, match=why):
            db.parse_event(bad)
    with pytest.raises(ValueError, match="published under"):  # a door may not speak for another
        db.parse_event(_event("door1", 1, "2026-05-01T08:00:00Z"), topic_device="door2")


def test_the_query_command(pg, conn, capsys) -> None:
    from edge.cli import main

    with conn.transaction():
        db.insert(conn, [db.parse_event(_event("door1", 1, "2026-05-01T08:00:00Z", identity="carol"))])
    assert main(["collect", "query", "--dsn", pg.dsn, "--door", "front", "--since", "2026-05-01",
                 "--until", "2026-05-02", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["identity"], r["ts"]) for r in rows] == [("carol", "2026-05-01T08:00:00.000Z")]
    assert main(["collect", "query", "--dsn", pg.dsn, "--identity", "carol"]) == 0
    assert "door1/front" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:  # argparse's own refusal: exit 2, one line
        main(["collect", "query", "--dsn", pg.dsn, "--door", "front", "--since", "tuesday"])
    assert exc.value.code == 2 and "ISO 8601" in capsys.readouterr().err
    assert main(["collect", "query", "--dsn", "host=127.0.0.1 port=1 dbname=x connect_timeout=2",
                 "--door", "front"]) == 2
    assert "cannot connect" in capsys.readouterr().err


def _collector_config(broker: Broker, pg: PgServer, **collect):
    return parse({"profile": "kiosk", "mqtt": {"host": "127.0.0.1", "port": broker.port, "device": "collector",
                                              "reconnect_min_s": 0.1, "reconnect_max_s": 0.5},
                  "collect": {"dsn": pg.dsn, **collect}})


def test_events_from_five_doors_through_a_broker_outage_land_once(pg, conn, tmp_path) -> None:
    """Five doors publish while the broker is down for 30 s; every event reaches PostgreSQL exactly once."""
    with Broker(tmp_path / "mq") as broker:
        cfg = _collector_config(broker, pg, client_id="collect-test")
        collector = Collector(cfg)
        collector.start()
        doors = [Publisher(settings_for(broker, tmp_path / f"d{i}", device=f"door{i}", discovery=False))
                 for i in range(5)]
        sent: dict[str, int] = {}
        try:
            assert collector.link.wait_ready(10)
            for p in doors:
                p.start()
                assert p.wait_connected(10)

            def burst(n: int) -> None:
                for _ in range(n):
                    for i, p in enumerate(doors):
                        p.publish_event(sample_event(identity=f"person{i}"))
                        sent[f"door{i}"] = sent.get(f"door{i}", 0) + 1

            burst(10)
            broker.stop()
            t0 = time.monotonic()
            while time.monotonic() - t0 < 30:  # the outage: doors keep deciding, events wait in their outboxes
                burst(1)
                time.sleep(1.0)
            broker.start()
            burst(10)
            publish(broker, "facegate/door0/event", b"not an event")  # acknowledged and dropped, not stuck
            publish(broker, "facegate/door9/event", _event("door0", 999, "2026-05-01T08:00:00Z"))  # not door9's
            total = sum(sent.values())
            assert wait_until(lambda: db.counts(conn)["events"] >= total, 60), (db.counts(conn), sent)
            time.sleep(1.0)  # anything late would be a duplicate: give it the chance to show up
        finally:
            for p in doors:
                p.stop(flush_timeout=5)
            collector.stop()
    counts = db.counts(conn)
    assert counts["events"] == total and counts["conflicts"] == 0
    for device, n in sent.items():
        assert counts["devices"][device] == {"events": n, "min_seq": 1, "max_seq": n}  # each seq once, no gap
    assert collector.rejected == 2


def _poison(kind: str) -> bytes:
    doc = json.loads(_event("door1", 2, "2026-05-01T08:00:00Z"))
    if kind == "nul":
        doc["door"] = "front\u0000"
    elif kind == "nulpayload":
        doc["note"] = "x\u0000y"
    elif kind == "surrogate":
        doc["note"] = "\ud800"
    else:
        doc["score"] = float(kind)
    return json.dumps(doc, allow_nan=True).encode()


@pytest.mark.parametrize("kind", ["nul", "nulpayload", "surrogate", "nan", "inf", "-inf"])
def test_events_postgresql_would_refuse_are_not_events(kind) -> None:
    with pytest.raises(ValueError):
        db.parse_event(_poison(kind))
    with pytest.raises(ValueError):  # 1e400 parses as infinity
        db.parse_event(_event("door1", 3, "2026-05-01T08:00:00Z").replace(b'"score": 0.7', b'"score": 1e400'))


def test_an_event_the_database_refuses_does_not_wedge_collection(pg, conn, tmp_path, monkeypatch) -> None:
    """An event parse_event lets through but PostgreSQL refuses (here: the NUL check switched off) is counted,
    acknowledged and dropped; the events after it, of every door, are stored."""
    monkeypatch.setattr(db, "_check_storable", lambda doc: None, raising=False)
    with Broker(tmp_path / "mq") as broker:
        cfg = _collector_config(broker, pg, client_id="collect-poison")
        collector = Collector(cfg)
        collector.start()
        try:
            assert collector.link.wait_ready(10)
            publish(broker, "facegate/door1/event", _event("door1", 1, "2026-05-01T08:00:00Z"))
            assert wait_until(lambda: db.counts(conn)["events"] == 1, 10)
            publish(broker, "facegate/door1/event", _poison("nul"))
            for seq in range(1, 6):
                publish(broker, "facegate/door2/event", _event("door2", seq, "2026-05-01T08:00:00Z"))
            assert wait_until(lambda: db.counts(conn)["events"] == 6, 15), (db.counts(conn), collector.stats())
            assert wait_until(lambda: collector.rejected == 1, 5)
        finally:
            collector.stop()


def test_purge_goes_by_arrival_and_a_resent_conflict_is_kept_once(conn) -> None:
    with conn.transaction():  # a door whose clock was reset to 1970
        db.insert(conn, [db.parse_event(_event("rtc", 1, "1970-01-01T00:05:00Z"))])
    assert db.purge(conn, 30) == 0 and db.counts(conn)["events"] == 1
    other = _event("rtc", 1, "2026-05-01T08:00:00Z")  # the same key, another event, delivered three times
    for _ in range(3):
        with conn.transaction():
            db.insert(conn, [db.parse_event(other)])
    assert db.counts(conn)["conflicts"] == 1


def test_a_steady_stream_does_not_defer_the_purge(pg, conn, tmp_path) -> None:
    with conn.transaction():
        db.insert(conn, [db.parse_event(_event("old", i, "2024-01-01T00:00:00Z")) for i in range(1, 11)])
        conn.execute("UPDATE events SET received = ts")
    with Broker(tmp_path / "mq") as broker:
        cfg = _collector_config(broker, pg, client_id="collect-purge", retention_days=30, purge_every_s=1)
        collector = Collector(cfg)
        collector._last_purge = time.monotonic()  # the first purge is due a second from now
        collector.start()
        try:
            assert collector.link.wait_ready(10)
            t0, seq = time.monotonic(), 0
            while time.monotonic() - t0 < 4:  # never 0.2 s without an event
                seq += 1
                collector.link.inbox.put(Message("facegate/busy/event", _event("busy", seq, "2026-05-01T08:00:00Z"),
                                                 False, 0, 0))
                time.sleep(0.05)
                if "old" not in db.counts(conn)["devices"]:
                    break
            assert "old" not in db.counts(conn)["devices"], "the purge waited for a quiet inbox"
        finally:
            collector.stop()
