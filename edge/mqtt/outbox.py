"""The event outbox: every event is committed here before it is published, and leaves only after the broker's PUBACK.

One SQLite file per daemon (WAL, synchronous=FULL, owner-only), so an event survives a crash, a power cut or a
broker outage. It also owns the per-device sequence number, allocated in the same transaction as the row, which
is why `seq` survives restarts and never repeats. The outbox is bounded: beyond `limit` rows the oldest are
dropped and counted (the count is persisted too), because a door that cannot reach its broker for weeks must not
fill its SD card.

Events name people, so removal is erasure as in the enrolment store: secure_delete=ON, and `forget` empties the
write-ahead log afterwards.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from edge.mqtt import MqttError
from edge.sqlitefile import immediate_tx, open_private_wal

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS events (
        device TEXT NOT NULL,
        seq INTEGER NOT NULL,
        event_id TEXT NOT NULL UNIQUE,
        payload TEXT NOT NULL,
        PRIMARY KEY (device, seq))""",
    # Older outbox files also have an `identity` column (nullable, no longer written): forget reads the names
    # from the payload, where every name field is.
    """CREATE TABLE IF NOT EXISTS counters (
        device TEXT PRIMARY KEY,
        last_seq INTEGER NOT NULL DEFAULT 0,
        dropped INTEGER NOT NULL DEFAULT 0)""",
)


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays (scores, latencies) come straight from the pipeline; .item()/.tolist() make them
    # plain numbers without importing numpy here.
    for attr in ("item", "tolist"):
        if hasattr(value, attr):
            return getattr(value, attr)()
    raise TypeError(f"event field of type {type(value).__name__} is not JSON serialisable")


# Event fields that hold a person's name: who the face matched, and who a badge claimed (Decision.event).
NAME_FIELDS = ("identity", "claim")


def _names(payload: str, name: str) -> bool:
    """True if the stored event `payload` has `name` in one of NAME_FIELDS (or cannot be read: erase it)."""
    try:
        event = json.loads(payload)
    except (ValueError, RecursionError):
        return True  # fail towards erasure: an unreadable row that contains the name's text is not kept
    if not isinstance(event, dict):
        return True
    return any(event.get(field) == name for field in NAME_FIELDS)


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=_json_default, allow_nan=False, separators=(",", ":"), ensure_ascii=False)


class Outbox:
    def __init__(self, path: Path, device: str, limit: int = 10000) -> None:
        self.path = Path(path)
        self.device = device
        self.limit = limit
        self._lock = threading.Lock()
        self._conn = open_private_wal(self.path, "FULL", "outbox", MqttError)
        try:
            with self._tx() as conn:
                for statement in SCHEMA:
                    conn.execute(statement)
                conn.execute("INSERT OR IGNORE INTO counters(device) VALUES (?)", (device,))
            self._depth = self._conn.execute("SELECT count(*) FROM events WHERE device = ?", (device,)).fetchone()[0]
            self._dropped = self._conn.execute("SELECT dropped FROM counters WHERE device = ?",
                                               (device,)).fetchone()[0]
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise MqttError(f"outbox {self.path}: not a facegate outbox ({exc})") from None
        except BaseException:
            self._conn.close()
            raise

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return immediate_tx(self._conn, self._lock)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def dropped(self) -> int:
        """Events dropped to respect the limit since the outbox file was created."""
        return self._dropped

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT last_seq FROM counters WHERE device = ?", (self.device,)).fetchone()[0]

    def add(self, build: Callable[[int], dict[str, Any]]) -> tuple[dict[str, Any], list[tuple[int, str]]]:
        """Allocate the next seq, store build(seq) and trim to the limit, in one transaction.

        Returns the stored event and the (seq, event_id) of the rows dropped to make room (oldest first).
        """
        with self._tx() as conn:
            # No RETURNING: it needs SQLite 3.35, newer than some device distributions ship.
            conn.execute("UPDATE counters SET last_seq = last_seq + 1 WHERE device = ?", (self.device,))
            seq = conn.execute("SELECT last_seq FROM counters WHERE device = ?", (self.device,)).fetchone()[0]
            event = build(seq)
            conn.execute("INSERT INTO events(device, seq, event_id, payload) VALUES (?, ?, ?, ?)",
                         (self.device, seq, event["event_id"], dumps(event)))
            depth = self._depth + 1
            dropped: list[tuple[int, str]] = []
            if depth > self.limit:
                dropped = [tuple(r) for r in conn.execute(
                    "SELECT seq, event_id FROM events WHERE device = ? ORDER BY seq LIMIT ?",
                    (self.device, depth - self.limit))]
                conn.execute("DELETE FROM events WHERE device = ? AND seq <= ?", (self.device, dropped[-1][0]))
                conn.execute("UPDATE counters SET dropped = dropped + ? WHERE device = ?", (len(dropped), self.device))
                depth -= len(dropped)
                self._dropped += len(dropped)
            self._depth = depth
        return event, dropped

    def pending(self, after_seq: int = 0, limit: int = 100) -> list[tuple[int, str]]:
        """(seq, JSON payload) of stored events with seq > after_seq, oldest first."""
        with self._lock:
            return [tuple(r) for r in self._conn.execute(
                "SELECT seq, payload FROM events WHERE device = ? AND seq > ? ORDER BY seq LIMIT ?",
                (self.device, after_seq, limit))]

    def remove(self, seqs: Iterable[int]) -> int:
        """Delete acknowledged events (unknown seqs are ignored: a row may have been dropped or forgotten)."""
        seqs = list(seqs)
        if not seqs:
            return 0
        with self._tx() as conn:
            removed = conn.executemany("DELETE FROM events WHERE device = ? AND seq = ?",
                                       [(self.device, s) for s in seqs]).rowcount
            self._depth -= removed
        return removed

    def forget(self, identity: str) -> int:
        """Erase every pending event naming `identity` in any name field (NAME_FIELDS: the matched identity or a
        badge claim); the bytes leave the WAL too. Returns how many."""
        # An "unknown" made under a badge claim names the person in `claim` alone. Rows are found by the name's
        # JSON string literal in the payload (how dumps wrote it, whichever field holds it), then confirmed by
        # parsing, so a name that is merely part of another string does not erase someone else's event.
        needle = json.dumps(identity, ensure_ascii=False)
        with self._tx() as conn:
            candidates = conn.execute("SELECT device, seq, payload FROM events WHERE instr(payload, ?) > 0",
                                      (needle,)).fetchall()
            doomed = [(device, seq) for device, seq, payload in candidates if _names(payload, identity)]
            removed = conn.executemany("DELETE FROM events WHERE device = ? AND seq = ?", doomed).rowcount \
                if doomed else 0
            own = conn.execute("SELECT count(*) FROM events WHERE device = ?", (self.device,)).fetchone()[0]
            self._depth = own
        with self._lock:
            # Pages holding the deleted rows were zeroed in the main file (secure_delete) but their old copies
            # may still sit in the WAL; fold it in and truncate it.
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return removed
