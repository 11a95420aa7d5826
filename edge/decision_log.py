"""The local decision log: the most recent decisions for the admin page's decisions view.

The MQTT outbox keeps only events not yet acknowledged, so it cannot show what happened an hour ago; this log
keeps the last `limit` decisions (time, outcome, identity, score, threshold, margin, liveness, door, latency)
in its own SQLite file, written by the daemon, read by `facegate web`.

It names people, so it is erasable like the outbox and the store: secure_delete=ON, `forget(name)` removes
every row naming an identity (the daemon calls it when an identity is deleted, `forget_absent` catches
deletions made while no daemon ran) and empties the write-ahead log afterwards. Face crops of "unknown"
decisions are kept only when asked (`[web] keep_unknown_crops_h` > 0), sealed with the store key when the
store is encrypted, and erased by `purge_crops` once older than that.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edge.errors import FacegateError
from edge.store.crypto import Cipher

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS decisions (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        event_id TEXT,
        decision TEXT NOT NULL,
        identity TEXT,
        candidate TEXT,
        score REAL,
        threshold REAL,
        margin REAL,
        liveness TEXT,
        liveness_score REAL,
        door TEXT,
        device TEXT,
        latency_ms REAL,
        frames INTEGER,
        reason TEXT,
        model TEXT,
        crop BLOB,
        crop_sealed INTEGER NOT NULL DEFAULT 0,
        assigned TEXT)""",
    "CREATE INDEX IF NOT EXISTS decisions_by_identity ON decisions(identity, ts)",
    "CREATE INDEX IF NOT EXISTS decisions_by_ts ON decisions(ts)",
)
COLUMNS = ("id", "ts", "event_id", "decision", "identity", "candidate", "score", "threshold", "margin", "liveness",
           "liveness_score", "door", "device", "latency_ms", "frames", "reason", "model", "assigned")
OUTCOMES = ("granted", "denied", "unknown", "spoof")


class DecisionLogError(FacegateError):
    """The decision log cannot be opened or changed."""


def _crop_aad(event_id: str) -> bytes:
    return b"decision crop\0" + event_id.encode()


class DecisionLog:
    def __init__(self, path: Path, key: bytes | None = None, limit: int = 1000) -> None:
        self.path = Path(path)
        self.limit = limit
        self._cipher = Cipher(key) if key is not None else None
        self._lock = threading.Lock()
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))  # names of people: owner-only
        try:
            self._conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA secure_delete=ON")
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise DecisionLogError(f"decision log {self.path}: cannot switch to WAL mode (got {mode!r})")
            # No fsync per decision (the door's frame loop writes here): a power cut may lose the last few rows,
            # never corrupt the file. The events themselves are made durable by the MQTT outbox.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            with self._tx() as conn:
                for statement in SCHEMA:
                    conn.execute(statement)
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise DecisionLogError(f"decision log {self.path}: not a facegate decision log ({exc})") from None
        except BaseException:
            if hasattr(self, "_conn"):
                self._conn.close()
            raise

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):
                    raise DecisionLogError(f"decision log {self.path}: {exc}") from None
                raise

    def _checkpoint(self) -> None:
        # secure_delete zeroed the rows' pages in the main file; their old copies may sit in the WAL.
        with self._lock:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> DecisionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes ----------------------------------------------------------------------------------------------
    def add(self, event: dict[str, Any], margin: float | None = None, candidate: str | None = None,
            crop: bytes | None = None, ts: float | None = None) -> int:
        """Log one decision (the event as the sink sent it); trims the log to its limit. Returns the row id."""
        live = event.get("liveness") or {}
        event_id = str(event.get("event_id") or os.urandom(8).hex())
        sealed = crop is not None and self._cipher is not None
        blob = self._cipher.seal(crop, _crop_aad(event_id)) if sealed and crop is not None else crop
        with self._tx() as conn:
            row_id = int(conn.execute(
                "INSERT INTO decisions(ts, event_id, decision, identity, candidate, score, threshold, margin, "
                "liveness, liveness_score, door, device, latency_ms, frames, reason, model, crop, crop_sealed) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (time.time() if ts is None else ts, event_id, str(event.get("decision")), event.get("identity"),
                 candidate, event.get("score"), event.get("threshold"), margin, live.get("verdict"),
                 live.get("score"), event.get("door"), event.get("device"), event.get("latency_ms"),
                 event.get("frames"), event.get("reason"), event.get("model"), blob, int(sealed))).lastrowid or 0)
            trimmed = conn.execute("DELETE FROM decisions WHERE id <= ?", (row_id - self.limit,)).rowcount
        if trimmed:
            self._checkpoint()
        return row_id

    def forget(self, name: str) -> int:
        """Erase every row naming `name` (as the decided identity, or as whom a kept crop was assigned to), and
        the name where it was only the closest candidate of an unknown face. Returns the rows removed."""
        with self._tx() as conn:
            removed = conn.execute("DELETE FROM decisions WHERE identity = ? OR assigned = ?", (name, name)).rowcount
            conn.execute("UPDATE decisions SET candidate = NULL WHERE candidate = ?", (name,))
        self._checkpoint()
        return removed

    def forget_absent(self, enrolled: Iterable[str]) -> list[str]:
        """Forget the identities the log names that are no longer enrolled (deleted while no daemon ran)."""
        known = set(enrolled)
        with self._lock:
            named = {r[0] for r in self._conn.execute(
                "SELECT identity FROM decisions WHERE identity IS NOT NULL UNION SELECT assigned FROM decisions "
                "WHERE assigned IS NOT NULL UNION SELECT candidate FROM decisions WHERE candidate IS NOT NULL")}
        gone = sorted(named - known)
        for name in gone:
            self.forget(name)
        return gone

    def purge_crops(self, keep_hours: float, now: float | None = None) -> int:
        """Erase kept face crops older than `keep_hours` (all of them when 0). Returns how many."""
        cutoff = (time.time() if now is None else now) - keep_hours * 3600.0
        with self._tx() as conn:
            n = conn.execute("UPDATE decisions SET crop = NULL, crop_sealed = 0 WHERE crop IS NOT NULL AND "
                             "(? <= 0 OR ts < ?)", (keep_hours, cutoff)).rowcount
        if n:
            self._checkpoint()
        return n

    def assigned(self, row_id: int, name: str) -> None:
        """The row's kept crop was enrolled as `name`: the crop leaves the log, the row says who it was."""
        with self._tx() as conn:
            conn.execute("UPDATE decisions SET crop = NULL, crop_sealed = 0, assigned = ? WHERE id = ?",
                         (name, row_id))
        self._checkpoint()

    # -- reads -----------------------------------------------------------------------------------------------
    def query(self, person: str = "", door: str = "", outcome: str = "", offset: int = 0,
              limit: int = 50) -> tuple[int, list[dict[str, Any]]]:
        """Newest first, filtered in SQL: (how many match, one page of rows, each with has_crop)."""
        where = ("WHERE (? = '' OR identity = ? OR assigned = ?) AND (? = '' OR door = ?) AND "
                 "(? = '' OR decision = ?)")
        args = (person, person, person, door, door, outcome, outcome)
        with self._lock:
            total = self._conn.execute(f"SELECT count(*) FROM decisions {where}", args).fetchone()[0]
            rows = self._conn.execute(f"SELECT {', '.join(COLUMNS)}, crop IS NOT NULL FROM decisions {where} "
                                      "ORDER BY id DESC LIMIT ? OFFSET ?", (*args, limit, offset)).fetchall()
        return total, [{**dict(zip(COLUMNS, r[:-1], strict=True)), "has_crop": bool(r[-1])} for r in rows]

    def get(self, row_id: int) -> dict[str, Any] | None:
        with self._lock:
            r = self._conn.execute(f"SELECT {', '.join(COLUMNS)}, crop IS NOT NULL FROM decisions WHERE id = ?",
                                   (row_id,)).fetchone()
        return None if r is None else {**dict(zip(COLUMNS, r[:-1], strict=True)), "has_crop": bool(r[-1])}

    def crop(self, row_id: int) -> bytes | None:
        """The kept crop of a row, unsealed; None when none is kept (or it cannot be opened with this key)."""
        with self._lock:
            r = self._conn.execute("SELECT event_id, crop, crop_sealed FROM decisions WHERE id = ?",
                                   (row_id,)).fetchone()
        if r is None or r[1] is None:
            return None
        if not r[2]:
            return bytes(r[1])
        if self._cipher is None:
            return None
        try:
            return self._cipher.open(r[1], _crop_aad(r[0]))
        except FacegateError:
            return None

    def doors(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute(
                "SELECT DISTINCT door FROM decisions WHERE door IS NOT NULL ORDER BY door")]

    def last_seen(self, names: Iterable[str]) -> dict[str, float]:
        """{identity: time of its most recent decision} for the given names (one indexed lookup each)."""
        names = list(names)
        if not names:
            return {}
        marks = ",".join("?" * len(names))
        with self._lock:
            return dict(self._conn.execute(f"SELECT identity, max(ts) FROM decisions WHERE identity IN ({marks}) "
                                           "GROUP BY identity", names).fetchall())


def open_decision_log(web: Any, key: bytes | None) -> DecisionLog | None:
    """The log `[web]` configures (decisions_path, decisions_kept), or None when it keeps no decisions."""
    from edge.paths import state_dir

    if web.decisions_kept <= 0:
        return None
    path = Path(web.decisions_path) if web.decisions_path else state_dir() / "decisions.db"
    return DecisionLog(path, key=key, limit=web.decisions_kept)
