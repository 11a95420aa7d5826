"""The central events database (PostgreSQL, through psycopg 3).

One row per event, keyed by (device, seq): the door's outbox allocates seq in the same transaction as the event
and never reuses it, and the broker may deliver an event more than once (QoS 1, outbox re-sends after a
reconnect), so INSERT … ON CONFLICT DO NOTHING on that key stores each event exactly once. A second event with
the same key but another event_id (a door whose outbox was wiped and started again at seq 1) is not silently
dropped: it goes to `conflicts` and is counted.

Migrations are a list (append, never edit), applied under an advisory lock so two collectors starting together
do not race.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from dataclasses import dataclass
from typing import Any

from edge.collect import CollectError

log = logging.getLogger(__name__)

MIGRATIONS: list[tuple[str, ...]] = [
    (
        """CREATE TABLE events (
            device TEXT NOT NULL,
            seq BIGINT NOT NULL,
            event_id UUID NOT NULL,
            ts TIMESTAMPTZ NOT NULL,
            door TEXT NOT NULL,
            decision TEXT NOT NULL,
            identity TEXT,
            score DOUBLE PRECISION,
            payload JSONB NOT NULL,
            received TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (device, seq))""",
        "CREATE INDEX events_by_door_ts ON events (door, ts)",
        "CREATE INDEX events_by_device_ts ON events (device, ts)",
        "CREATE INDEX events_by_identity_ts ON events (identity, ts) WHERE identity IS NOT NULL",
        "CREATE INDEX events_by_ts ON events (ts)",
        """CREATE TABLE conflicts (
            device TEXT NOT NULL,
            seq BIGINT NOT NULL,
            event_id UUID NOT NULL,
            payload JSONB NOT NULL,
            received TIMESTAMPTZ NOT NULL DEFAULT now())""",
    ),
    (
        # A conflicting event re-sent (QoS 1, the outbox) is one conflict, not one row per delivery: duplicates
        # already stored go before the unique index that keeps them out.
        "DELETE FROM conflicts a USING conflicts b WHERE a.device = b.device AND a.seq = b.seq "
        "AND a.event_id = b.event_id AND a.ctid > b.ctid",
        "CREATE UNIQUE INDEX conflicts_once ON conflicts (device, seq, event_id)",
        # The purge goes by arrival, which the collector's clock gives, not by a door's clock.
        "CREATE INDEX events_by_received ON events (received)",
    ),
]
LOCK_ID = 0x66616365  # pg_advisory_xact_lock key for migrations ("face")
REQUIRED = ("event_id", "seq", "ts", "device", "door", "decision")


def connect(dsn: str) -> Any:
    try:
        import psycopg
    except ModuleNotFoundError:
        raise CollectError("the collector needs psycopg (pip install 'facegate[fleet]')") from None
    try:
        return psycopg.connect(dsn, connect_timeout=10)
    except psycopg.Error as exc:
        raise CollectError(f"cannot connect to the events database: {str(exc).strip()[:300]}") from None


def migrate(conn: Any) -> int:
    """Bring the schema to the latest version; returns it."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_ID,))
        conn.execute("CREATE TABLE IF NOT EXISTS facegate_schema (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM facegate_schema").fetchone()
        version = row[0] if row else 0
        if row is None:
            conn.execute("INSERT INTO facegate_schema(version) VALUES (0)")
        if version > len(MIGRATIONS):
            raise CollectError(f"the events database has schema version {version}, newer than this facegate "
                               f"knows ({len(MIGRATIONS)}); upgrade facegate")
        for step in MIGRATIONS[version:]:
            for statement in step:
                conn.execute(statement)
        conn.execute("UPDATE facegate_schema SET version = %s", (len(MIGRATIONS),))
    return len(MIGRATIONS)


@dataclass(frozen=True)
class Event:
    device: str
    seq: int
    event_id: str
    ts: dt.datetime
    door: str
    decision: str
    identity: str | None
    score: float | None
    payload: dict[str, Any]


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number PostgreSQL stores")


def _check_storable(doc: Any) -> None:
    """ValueError for what PostgreSQL refuses in text and jsonb, so one such event never reaches an INSERT: NUL
    characters, unpaired surrogates (no UTF-8 for them) and numbers that are not finite (1e400 parses as
    infinity). Iterative: the document may be as deep as json.loads allowed."""
    todo = [doc]
    while todo:
        value = todo.pop()
        if isinstance(value, dict):
            todo += value.keys()
            todo += value.values()
        elif isinstance(value, list):
            todo += value
        elif isinstance(value, str):
            if "\x00" in value:
                raise ValueError("a NUL character in a text")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("an unpaired surrogate in a text") from None
        elif isinstance(value, float) and not math.isfinite(value):
            raise ValueError("a number that is not finite")


def parse_event(payload: bytes, topic_device: str | None = None) -> Event:
    """An event document (edge/mqtt/event.schema.json) → Event; ValueError saying why it is not one."""
    try:
        doc = json.loads(payload, parse_constant=_no_constant)
    except (ValueError, RecursionError):  # not UTF-8 or JSON, NaN/Infinity, a number over the digit limit
        raise ValueError("not JSON (or NaN, Infinity, a number too long)") from None
    if not isinstance(doc, dict):
        raise ValueError("not an object")
    _check_storable(doc)
    missing = [k for k in REQUIRED if k not in doc]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    seq = doc["seq"]
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 < seq < 2**63:
        raise ValueError("seq is not a positive integer")
    for k in ("event_id", "device", "door", "decision", "ts"):
        if not isinstance(doc[k], str) or not doc[k] or len(doc[k]) > 200:
            raise ValueError(f"{k} is not a short string")
    if topic_device is not None and doc["device"] != topic_device:
        # The broker's ACL lets a door publish only under its own name: the payload must say the same.
        raise ValueError(f"device {doc['device'][:64]!r} published under {topic_device[:64]!r}")
    try:
        ts = dt.datetime.fromisoformat(doc["ts"].replace("Z", "+00:00"))
        if ts.tzinfo is None:
            raise ValueError
        import uuid

        event_id = str(uuid.UUID(doc["event_id"]))
    except ValueError:
        raise ValueError("ts or event_id malformed") from None
    identity = doc.get("identity")
    score = doc.get("score")
    return Event(doc["device"], seq, event_id, ts, doc["door"], doc["decision"],
                 identity if isinstance(identity, str) else None,
                 float(score) if isinstance(score, int | float) and not isinstance(score, bool) else None, doc)


def insert(conn: Any, events: list[Event]) -> tuple[int, int]:
    """Store the events in the current transaction; returns (stored, duplicates). A key seen before with another
    event_id is recorded in `conflicts` (and counted as a duplicate)."""
    stored = dups = 0
    for e in events:
        row = conn.execute(
            "INSERT INTO events (device, seq, event_id, ts, door, decision, identity, score, payload) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (device, seq) DO NOTHING RETURNING seq",
            (e.device, e.seq, e.event_id, e.ts, e.door, e.decision, e.identity, e.score,
             json.dumps(e.payload))).fetchone()
        if row is not None:
            stored += 1
            continue
        dups += 1
        existing = conn.execute("SELECT event_id::text FROM events WHERE device = %s AND seq = %s",
                                (e.device, e.seq)).fetchone()
        if existing is not None and existing[0] != e.event_id:
            log.warning("collect: %s seq %d arrived again with another event_id (%s, stored %s): kept in conflicts",
                        e.device, e.seq, e.event_id, existing[0])
            conn.execute("INSERT INTO conflicts (device, seq, event_id, payload) VALUES (%s, %s, %s, %s) "
                         "ON CONFLICT (device, seq, event_id) DO NOTHING",
                         (e.device, e.seq, e.event_id, json.dumps(e.payload)))
    return stored, dups


def purge(conn: Any, older_than_days: float) -> int:
    """Delete events (and conflicts) received more than this many days ago; returns how many events. By arrival,
    not by the door's `ts`: a door whose clock says 1970 must not have its events deleted as they arrive."""
    with conn.transaction():
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=older_than_days)
        n = conn.execute("DELETE FROM events WHERE received < %s", (cutoff,)).rowcount
        conn.execute("DELETE FROM conflicts WHERE received < %s", (cutoff,))
    return int(n)


def _rows(cur: Any) -> list[dict[str, Any]]:
    names = [d.name for d in cur.description]
    out = []
    for r in cur.fetchall():
        row = dict(zip(names, r, strict=True))
        for k, v in row.items():
            if isinstance(v, dt.datetime):
                row[k] = v.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        out.append(row)
    return out


def entries(conn: Any, door: str, since: dt.datetime, until: dt.datetime, decision: str = "granted",
            limit: int = 10000) -> list[dict[str, Any]]:
    """Who entered door X between since and until: the events of that door (its name, or its device) with that
    decision, oldest first."""
    cur = conn.execute("SELECT ts, identity, device, door, decision, score, seq FROM events "
                       "WHERE (door = %s OR device = %s) AND decision = %s AND ts >= %s AND ts < %s "
                       "ORDER BY ts, device, seq LIMIT %s", (door, door, decision, since, until, limit))
    return _rows(cur)


def whereabouts(conn: Any, identity: str, since: dt.datetime, until: dt.datetime,
                limit: int = 10000) -> list[dict[str, Any]]:
    """Where was identity Y: every event naming it, oldest first."""
    cur = conn.execute("SELECT ts, device, door, decision, score, seq FROM events "
                       "WHERE identity = %s AND ts >= %s AND ts < %s ORDER BY ts, device, seq LIMIT %s",
                       (identity, since, until, limit))
    return _rows(cur)


def counts(conn: Any) -> dict[str, Any]:
    rows = conn.execute("SELECT device, count(*), min(seq), max(seq) FROM events GROUP BY device ORDER BY device")
    per = {d: {"events": n, "min_seq": lo, "max_seq": hi} for d, n, lo, hi in rows.fetchall()}
    conflicts = conn.execute("SELECT count(*) FROM conflicts").fetchone()[0]
    return {"devices": per, "events": sum(v["events"] for v in per.values()), "conflicts": conflicts}
