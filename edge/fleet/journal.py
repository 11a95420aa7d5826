"""The hub's journal (SQLite, WAL, synchronous=FULL, secure_delete): for each site its revision, gallery hash
and live entries, the signed batches doors catch up from, what each identity looked like when it was last
published, and the doors' acknowledgements.

A batch and everything it changes are one transaction: a hub killed at any moment has published a revision
completely or not at all, and on restart it compares the store with `sources` again, so a change committed to
the store but not yet to the journal becomes the next batch.

Erasure: a tombstone removes every stored batch that carried the person's templates (and raises the site's
`floor`: a door behind it loads a snapshot instead), so a deleted person's sealed templates leave the hub too.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from edge.fleet import FleetError
from edge.fleet.records import EMPTY_HASH
from edge.sqlitefile import immediate_tx, open_private_wal

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS sites (site TEXT PRIMARY KEY, rev INTEGER NOT NULL, hash TEXT NOT NULL,
        count INTEGER NOT NULL, floor INTEGER NOT NULL DEFAULT 0, ts REAL NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS batches (site TEXT NOT NULL, rev INTEGER NOT NULL, ts REAL NOT NULL,
        envelope BLOB NOT NULL, PRIMARY KEY (site, rev))""",
    """CREATE TABLE IF NOT EXISTS batch_ids (site TEXT NOT NULL, fleet_id TEXT NOT NULL, rev INTEGER NOT NULL,
        PRIMARY KEY (site, fleet_id, rev))""",
    """CREATE TABLE IF NOT EXISTS entries (site TEXT NOT NULL, fleet_id TEXT NOT NULL, rev INTEGER NOT NULL,
        entry TEXT NOT NULL, digest TEXT NOT NULL, PRIMARY KEY (site, fleet_id))""",
    """CREATE TABLE IF NOT EXISTS sources (site TEXT NOT NULL, fleet_id TEXT NOT NULL, signature TEXT NOT NULL,
        PRIMARY KEY (site, fleet_id))""",
    """CREATE TABLE IF NOT EXISTS doors (site TEXT NOT NULL, device TEXT NOT NULL, ack TEXT NOT NULL,
        received REAL NOT NULL, PRIMARY KEY (site, device))""",
)


@dataclass(frozen=True)
class SiteState:
    site: str
    rev: int
    hash: str
    count: int
    floor: int
    ts: float


@dataclass
class NewBatch:
    site: str
    rev: int
    ts: float
    hash: str
    count: int
    envelope: bytes
    upserts: dict[str, tuple[str, str]]  # fleet id → (entry JSON, digest)
    deletes: list[str]
    signatures: dict[str, str | None]  # fleet id → its new source signature (None: gone)


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._conn = open_private_wal(self.path, "FULL", "hub journal", FleetError, timeout=10.0)
        try:
            with self.tx() as conn:
                for statement in SCHEMA:
                    conn.execute(statement)
                conn.execute("CREATE INDEX IF NOT EXISTS batch_ids_by_rev ON batch_ids(site, rev)")
                # The journal's epoch: revisions count within it. A journal made anew (lost, or reset on purpose)
                # has another epoch, and doors then load its snapshot instead of refusing its low revisions.
                conn.execute("INSERT OR IGNORE INTO info(key, value) VALUES ('epoch', ?)", (secrets.token_hex(8),))
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise FleetError(f"hub journal {self.path}: not usable ({exc})") from None
        self.epoch = str(self._conn.execute("SELECT value FROM info WHERE key = 'epoch'").fetchone()[0])

    def tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return immediate_tx(self._conn, self._lock)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- reads -------------------------------------------------------------------------------------------------
    def site(self, site: str) -> SiteState:
        with self._lock:
            row = self._conn.execute("SELECT rev, hash, count, floor, ts FROM sites WHERE site = ?",
                                     (site,)).fetchone()
        if row is None:
            return SiteState(site, 0, EMPTY_HASH, 0, 0, 0.0)
        return SiteState(site, *row)

    def sources(self, site: str) -> dict[str, str]:
        with self._lock:
            return dict(self._conn.execute("SELECT fleet_id, signature FROM sources WHERE site = ?", (site,)))

    def entry_digests(self, site: str) -> dict[str, str]:
        with self._lock:
            return dict(self._conn.execute("SELECT fleet_id, digest FROM entries WHERE site = ?", (site,)))

    def entries(self, site: str) -> list[str]:
        """The live entries' JSON, in id order (a snapshot's body)."""
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT entry FROM entries WHERE site = ? ORDER BY fleet_id",
                                                     (site,))]

    def batches(self, site: str, after: int, max_bytes: int) -> list[bytes]:
        """Stored envelopes with rev > after, in order, up to about max_bytes (at least one)."""
        out: list[bytes] = []
        size = 0
        with self._lock:
            for (env,) in self._conn.execute("SELECT envelope FROM batches WHERE site = ? AND rev > ? ORDER BY rev",
                                             (site, after)):
                if out and size + len(env) > max_bytes:
                    break
                out.append(bytes(env))
                size += len(env)
        return out

    def doors(self) -> list[tuple[str, str, str, float]]:
        with self._lock:
            return [tuple(r) for r in self._conn.execute(
                "SELECT site, device, ack, received FROM doors ORDER BY site, device")]

    # -- writes ------------------------------------------------------------------------------------------------
    def commit(self, batches: list[NewBatch], keep_batches: int, keep_bytes: int) -> bool:
        """Record the batches (one per site, all or none); returns whether anything was erased (the caller
        empties the WAL then). A batch larger than `keep_bytes` (a first publication, an imported folder) is not
        kept for catch-up: a door behind it loads a snapshot, about as large, and a later revocation of one of
        its people does not have to erase megabytes first."""
        erased = False
        with self.tx() as conn:
            for b in batches:
                floor = self.site(b.site).floor
                kept = len(b.envelope) <= keep_bytes
                if kept:
                    conn.execute("INSERT INTO batches(site, rev, ts, envelope) VALUES (?, ?, ?, ?)",
                                 (b.site, b.rev, b.ts, b.envelope))
                else:
                    floor = b.rev
                for fid in b.deletes:
                    conn.execute("DELETE FROM entries WHERE site = ? AND fleet_id = ?", (b.site, fid))
                    revs = [r for (r,) in conn.execute(
                        "SELECT rev FROM batch_ids WHERE site = ? AND fleet_id = ?", (b.site, fid))]
                    if revs:
                        # The person's sealed templates leave the log with the batches that carried them.
                        marks = ",".join("?" * len(revs))
                        conn.execute(f"DELETE FROM batches WHERE site = ? AND rev IN ({marks})", (b.site, *revs))
                        conn.execute(f"DELETE FROM batch_ids WHERE site = ? AND rev IN ({marks})", (b.site, *revs))
                        floor = max(floor, *revs)
                        erased = True
                    erased = True
                for fid, (entry, digest) in b.upserts.items():
                    conn.execute("INSERT OR REPLACE INTO entries(site, fleet_id, rev, entry, digest) "
                                 "VALUES (?, ?, ?, ?, ?)", (b.site, fid, b.rev, entry, digest))
                    if kept:
                        conn.execute("INSERT OR IGNORE INTO batch_ids(site, fleet_id, rev) VALUES (?, ?, ?)",
                                     (b.site, fid, b.rev))
                for fid, sig in b.signatures.items():
                    if sig is None:
                        conn.execute("DELETE FROM sources WHERE site = ? AND fleet_id = ?", (b.site, fid))
                    else:
                        conn.execute("INSERT OR REPLACE INTO sources(site, fleet_id, signature) VALUES (?, ?, ?)",
                                     (b.site, fid, sig))
                if b.rev > keep_batches:
                    old = b.rev - keep_batches
                    conn.execute("DELETE FROM batches WHERE site = ? AND rev <= ?", (b.site, old))
                    conn.execute("DELETE FROM batch_ids WHERE site = ? AND rev <= ?", (b.site, old))
                    floor = max(floor, old)
                conn.execute("INSERT OR REPLACE INTO sites(site, rev, hash, count, floor, ts) "
                             "VALUES (?, ?, ?, ?, ?, ?)", (b.site, b.rev, b.hash, b.count, floor, b.ts))
        if erased:
            with self._lock:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return erased

    def record_ack(self, site: str, device: str, ack: str) -> None:
        self.record_acks([(site, device, ack)])

    def record_acks(self, acks: list[tuple[str, str, str]]) -> None:
        """(site, device, ack JSON) of several doors in one transaction: one fsync, however many arrived."""
        now = time.time()
        with self.tx() as conn:
            conn.executemany("INSERT OR REPLACE INTO doors(site, device, ack, received) VALUES (?, ?, ?, ?)",
                             [(site, device, ack, now) for site, device, ack in acks])
