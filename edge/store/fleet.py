"""A door's side of gallery sync, in the door's own store: identities written from the hub's entries, the
entries held (with revision and digest), and the site's revision, hash and freshness in `meta`.

Each batch or snapshot is applied in one transaction with the new revision and hash, so a kill at any moment
leaves the door at the old revision or the new one, never between. Deletions are erasures as in `store
delete`: secure_delete zeroes the rows and the write-ahead log is emptied afterwards. A running daemon follows
these commits like any other process's (edge/match/gallery.py).

The sync opens its own Store on the file: its changes reach the daemon's gallery through data_version, exactly
as a CLI deletion does, and no listener of the daemon's connection runs on the sync's thread.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge.fleet.records import EMPTY_HASH, Body, hash_add, hash_sub
from edge.store import StoreError
from edge.store.db import ERASE_CHECKPOINT_S, Store, TemplateIn

log = logging.getLogger(__name__)

META = ("fleet_site", "fleet_epoch", "fleet_rev", "fleet_hash", "fleet_count", "fleet_confirmed")


@dataclass(frozen=True)
class FleetState:
    site: str = ""
    epoch: str = ""
    rev: int = 0
    hash: str = EMPTY_HASH
    count: int = 0
    confirmed: float = 0.0  # the hub's time of the newest signed document that showed this state to be current


@dataclass
class Change:
    """One entry to apply: a deletion (body None, status "deleted"), an upsert with its opened body (status "ok"),
    or an entry held but not usable here (body None, status = the refusal reason)."""

    fleet_id: str
    rev: int
    digest: str
    status: str
    body: Body | None = None


@dataclass
class Applied:
    state: FleetState
    upserts: int = 0
    deletes: int = 0
    refused: dict[str, str] = field(default_factory=dict)  # fleet id → reason
    erased: bool = False  # something was deleted (its bytes leave the WAL at the next checkpoint)


class HashMismatch(StoreError):
    """The entries applied do not give the hash the hub signed: nothing was written."""


def state(store: Store) -> FleetState:
    with store._lock:
        rows = dict(store._conn.execute(
            f"SELECT key, value FROM meta WHERE key IN ({','.join('?' * len(META))})", META).fetchall())
    return FleetState(site=str(rows.get("fleet_site") or ""), epoch=str(rows.get("fleet_epoch") or ""),
                      rev=int(rows.get("fleet_rev") or 0), hash=str(rows.get("fleet_hash") or EMPTY_HASH),
                      count=int(rows.get("fleet_count") or 0), confirmed=float(rows.get("fleet_confirmed") or 0.0))


def entries(store: Store, ids: list[str] | None = None) -> dict[str, tuple[int, str, str]]:
    """fleet id → (revision, digest, status) of every entry the door holds (or of those among `ids`)."""
    sql = "SELECT fleet_id, rev, digest, status FROM fleet_entries"
    with store._lock:
        if ids is None:
            return {fid: (rev, digest, status) for fid, rev, digest, status in store._conn.execute(sql)}
        out = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            out.update((fid, (rev, digest, status)) for fid, rev, digest, status in store._conn.execute(
                f"{sql} WHERE fleet_id IN ({','.join('?' * len(chunk))})", chunk))
        return out


def refused(store: Store) -> dict[str, str]:
    with store._lock:
        return dict(store._conn.execute("SELECT fleet_id, status FROM fleet_entries WHERE status != 'ok'"))


def confirm(store: Store, ts: float) -> None:
    """Record that the hub showed, at its time `ts`, that this door's gallery is current."""
    with store._write() as (conn, _):
        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('fleet_confirmed', ?)", (float(ts),))


def _put_meta(conn: Any, s: FleetState) -> None:
    conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                     [("fleet_site", s.site), ("fleet_epoch", s.epoch), ("fleet_rev", s.rev), ("fleet_hash", s.hash),
                      ("fleet_count", s.count), ("fleet_confirmed", s.confirmed)])


def _drop_identity(conn: Any, fleet_id: str) -> None:
    conn.execute("DELETE FROM identities WHERE fleet_id = ?", (fleet_id,))  # cascades to templates and crops


def _write_identity(store: Store, conn: Any, change: Change, now: float) -> None:
    body = change.body
    assert body is not None
    _drop_identity(conn, change.fleet_id)
    other = conn.execute("SELECT fleet_id FROM identities WHERE name = ?", (body.name,)).fetchone()
    if other is not None:
        # The hub is the authority on this door's people: a local enrolment (or an entry the hub has renamed
        # since) under the same name gives way.
        log.warning("fleet entry %s takes over an identity of the same name enrolled %s", change.fleet_id,
                    "locally" if other[0] is None else f"under fleet id {other[0]}")
        conn.execute("DELETE FROM identities WHERE name = ?", (body.name,))
        if other[0] is not None:
            conn.execute("DELETE FROM fleet_entries WHERE fleet_id = ?", (other[0],))
    cur = conn.execute("INSERT INTO identities(name, display_name, metadata, created, pseudonym, fleet_id) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (body.name, body.display_name, json.dumps(body.metadata), now,
                                                     secrets.token_hex(6), change.fleet_id))
    templates = [TemplateIn(vector=v, embedder=embedder, manifest_sha256=sha)
                 for embedder, (sha, vectors) in sorted(body.templates.items()) for v in vectors]
    store._insert_templates(conn, int(cur.lastrowid or 0), body.name, templates, now)


def apply(store: Store, site: str, epoch: str, rev: int, expected_hash: str, ts: float, changes: list[Change],
          replace_all: bool = False, command: str = "fleet sync", erase_now: bool = True) -> Applied:
    """Apply one batch (or, with replace_all, a snapshot: entries it does not list are deleted) and move the door
    to `rev`; tombstones go first. Raises HashMismatch (nothing written) if the result is not `expected_hash`.
    After a deletion the write-ahead log is emptied, unless `erase_now` is false: then `Applied.erased` says the
    caller must call checkpoint() itself (once after a run of batches, not once for each)."""
    now = time.time()
    out = Applied(state=FleetState())
    erased = False
    with store._write() as (conn, _):
        current = state(store) if not replace_all else FleetState(site=site, epoch=epoch)
        held = entries(store) if replace_all else entries(store, [c.fleet_id for c in changes])
        h, count = (current.hash, current.count) if not replace_all else (EMPTY_HASH, 0)
        if replace_all:
            listed = {c.fleet_id for c in changes}
            for fid in sorted(set(held) - listed):
                _drop_identity(conn, fid)
                conn.execute("DELETE FROM fleet_entries WHERE fleet_id = ?", (fid,))
                out.deletes += 1
                erased = True
            # Entries the snapshot lists at the revision and digest held already are kept as they are.
            keep = [c for c in changes if held.get(c.fleet_id, (0, "", ""))[:2] == (c.rev, c.digest)]
            for c in keep:
                h, count = hash_add(h, site, c.fleet_id, c.digest), count + 1
                if held[c.fleet_id][2] != "ok":
                    out.refused[c.fleet_id] = held[c.fleet_id][2]
            changes = [c for c in changes if held.get(c.fleet_id, (0, "", ""))[:2] != (c.rev, c.digest)]
            held = {fid: v for fid, v in held.items() if fid in listed}
        # Tombstones before upserts: a batch holds one entry per identity, so the order only matters for names
        # (an identity renamed to the name a deleted one freed).
        for c in sorted(changes, key=lambda c: c.status != "deleted"):
            if c.fleet_id in held and not replace_all:
                h, count = hash_sub(h, site, c.fleet_id, held[c.fleet_id][1]), count - 1
            if c.status == "deleted":
                _drop_identity(conn, c.fleet_id)
                conn.execute("DELETE FROM fleet_entries WHERE fleet_id = ?", (c.fleet_id,))
                out.deletes += 1
                erased = True
                continue
            if c.body is not None:
                _write_identity(store, conn, c, now)
                out.upserts += 1
            else:
                _drop_identity(conn, c.fleet_id)  # its old templates must not stay in use either
                erased = True
                out.refused[c.fleet_id] = c.status
            conn.execute("INSERT OR REPLACE INTO fleet_entries(fleet_id, rev, digest, status) VALUES (?, ?, ?, ?)",
                         (c.fleet_id, c.rev, c.digest, "ok" if c.body is not None else c.status))
            h, count = hash_add(h, site, c.fleet_id, c.digest), count + 1
        if h != expected_hash:
            raise HashMismatch(f"fleet {site} rev {rev}: the gallery would hash to {h[:12]}…, the hub signed "
                               f"{expected_hash[:12]}…")
        out.state = FleetState(site=site, epoch=epoch, rev=rev, hash=h, count=count,
                               confirmed=max(ts, current.confirmed))
        _put_meta(conn, out.state)
        store._audit(conn, "update", None, f"{command} {site} rev {rev}",
                     {"upserts": out.upserts, "deletes": out.deletes, "refused": len(out.refused),
                      "snapshot": replace_all})
    out.erased = erased
    if erased and erase_now:
        checkpoint(store)
    return out


def checkpoint(store: Store, wait_s: float = ERASE_CHECKPOINT_S, warn: Callable[[str], None] | None = None) -> bool:
    """Empty the write-ahead log after an erasure (as Store.delete does); a reader holding it open for longer
    than `wait_s` leaves it for the next checkpoint, which is logged, not raised: the change itself committed."""
    deadline = time.monotonic() + wait_s
    with store._lock:
        while True:
            busy = store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if not busy or time.monotonic() > deadline:
                break
            time.sleep(0.01)
    if busy:
        (warn or log.warning)(f"{store.path}: erased entries stay in the write-ahead log until the next checkpoint "
                              f"(a reader held it)")
    return not busy
