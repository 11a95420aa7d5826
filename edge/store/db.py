"""The enrolment store: one SQLite file holding identities, templates, optional face crops and an audit log.

Durability and erasure are the point of this module:
- WAL mode with synchronous=FULL: a kill or power cut at any moment leaves either the whole enrolment or
  none of it.
- secure_delete=ON plus a TRUNCATE checkpoint after every delete: erased templates and crops are zeroed in
  the database file and the write-ahead log is emptied, so "delete" means the bytes are gone from disk
  (as far as SQLite controls; the filesystem and flash may keep remnants of their own).
- The audit log records who changed what (names, counts, the command line) and never images or vectors.

One connection serves every thread, behind a re-entrant lock; listeners (the matcher) are told about each
change after it commits and before the lock is released, so they see changes in commit order.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import secrets
import sqlite3
import tempfile
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.atomic import fsync
from edge.sqlitefile import open_private_wal
from edge.store import StoreError
from edge.store.crypto import KEY_ENV, OVERHEAD, Cipher

log = logging.getLogger(__name__)

# Each entry moves the schema from version i to i + 1 (PRAGMA user_version); never edit a released entry,
# append a new one.
MIGRATIONS: list[tuple[str, ...]] = [
    (
        """CREATE TABLE identities (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            display_name TEXT,
            metadata TEXT NOT NULL DEFAULT '{}',
            created REAL NOT NULL)""",
        """CREATE TABLE templates (
            id INTEGER PRIMARY KEY,
            identity_id INTEGER NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
            embedder TEXT NOT NULL,
            manifest_sha256 TEXT NOT NULL,
            vector BLOB NOT NULL,
            quality TEXT NOT NULL DEFAULT '{}',
            created REAL NOT NULL)""",
        "CREATE INDEX templates_by_identity ON templates(identity_id, embedder)",
        "CREATE INDEX templates_by_embedder ON templates(embedder)",
        """CREATE TABLE crops (
            template_id INTEGER PRIMARY KEY REFERENCES templates(id) ON DELETE CASCADE,
            image BLOB NOT NULL)""",
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY,
            ts REAL NOT NULL,
            action TEXT NOT NULL CHECK (action IN ('enroll', 'update', 'delete', 'restore')),
            name TEXT,
            command TEXT NOT NULL,
            details TEXT NOT NULL DEFAULT '{}')""",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB)",
    ),
    (
        # A random name for logs: a log line says "identity 3f9c…" instead of the person's name, and once the
        # identity is deleted nothing links the two any more.
        "ALTER TABLE identities ADD COLUMN pseudonym TEXT",
        "UPDATE identities SET pseudonym = lower(hex(randomblob(6)))",
        # Which photo a template came from (sha256 of its decoded pixels): enrolling the same photo again is a
        # no-op, so re-runs neither inflate the gallery nor its threshold.
        "ALTER TABLE templates ADD COLUMN image_sha256 TEXT",
        "CREATE INDEX templates_by_image ON templates(identity_id, embedder, image_sha256)",
    ),
    (
        # Fleet mode (edge/fleet, edge/store/fleet.py): an identity written from the hub's gallery carries the
        # hub's id for it; each gallery entry the door holds (refused ones too) is kept with the revision and
        # digest it came with, so the door's gallery hash is computed from what it stores.
        "ALTER TABLE identities ADD COLUMN fleet_id TEXT",
        "CREATE UNIQUE INDEX identities_by_fleet_id ON identities(fleet_id) WHERE fleet_id IS NOT NULL",
        """CREATE TABLE fleet_entries (
            fleet_id TEXT PRIMARY KEY,
            rev INTEGER NOT NULL,
            digest TEXT NOT NULL,
            status TEXT NOT NULL)""",
    ),
]

KEY_CHECK = b"facegate store key check"
KEY_CHECK_AAD = b"meta\0key_check"
MAX_NAME = 200
ERASE_CHECKPOINT_S = 2.0  # how long an erasing write retries emptying the WAL while other processes read
# Every embedder L2-normalises its output, so a stored template is unit-length (measured: 0.99999994). One that is
# not was altered (a flipped exponent bit turns -0.08 into -2.6e37, still finite, and a cosine of 4e36 matches
# anyone): refused when written, read and restored.
NORM_TOLERANCE = 1e-3

# (action, identity name, embedder → float32 vectors (n, D)); action is "enroll" (templates added),
# "replace" (the identity's templates of those embedders are now exactly these) or "delete" (gone).
Event = tuple[str, str, dict[str, np.ndarray]]
Listener = Callable[[str, str, dict[str, np.ndarray]], None]


@dataclass
class TemplateIn:
    vector: np.ndarray
    embedder: str
    manifest_sha256: str
    quality: dict[str, Any] = field(default_factory=dict)
    crop: bytes | None = None  # encoded image (PNG/JPEG); stored only when the store keeps crops
    image_sha256: str | None = None  # the photo it came from; a photo already enrolled for the identity is skipped


@dataclass(frozen=True)
class Identity:
    name: str
    display_name: str | None
    metadata: dict[str, Any]
    created: float
    templates: dict[str, int]  # embedder → number of templates
    crops: int


# Characters that reorder or break what is displayed around them: bidi embeddings, overrides, isolates and marks
# ("\u202e" shows "alice\u202eecila" as "aliceecila" reversed in a log or the admin page), line separators.
# Joiners (U+200C / U+200D) stay: Persian and Indic names need them.
DISPLAY_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
                              "\u2028\u2029")


def _check_text(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise StoreError(f"{what} must be a non-empty string")
    if len(value) > MAX_NAME or any(unicodedata.category(c) == "Cc" or c in DISPLAY_CONTROLS for c in value):
        raise StoreError(f"{what} {value[:40]!r}: at most {MAX_NAME} characters, and no control or "
                         f"text-direction characters")
    return value


def _json(text: Any, what: str) -> Any:
    """A JSON column read back; damaged (hand-edited, half-written by another tool) is a StoreError naming the
    row, not a traceback."""
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        raise StoreError(f"the store is damaged: {what} is not valid JSON ({str(text)[:40]!r})") from None


MAX_LIMIT = 1 << 62  # SQLite's LIMIT is a signed 64-bit integer


def _template_aad(name: str, embedder: str) -> bytes:
    return b"template\0" + name.encode() + b"\0" + embedder.encode()


def _crop_aad(name: str, template_id: int) -> bytes:
    return b"crop\0" + name.encode() + b"\0" + str(template_id).encode()


def _connect(path: Path, timeout: float = 5.0) -> sqlite3.Connection:
    return open_private_wal(path, "FULL", "store", StoreError, timeout=timeout, foreign_keys=True)


def _migrate(conn: sqlite3.Connection, path: Path, cipher: Cipher | None) -> None:
    try:
        conn.execute("BEGIN IMMEDIATE")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        latest = len(MIGRATIONS)
        if version > latest:
            raise StoreError(f"{path}: schema version {version} is newer than this facegate knows "
                             f"({latest}); upgrade facegate")
        if version == 0 and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise StoreError(f"{path}: an SQLite database, but not a facegate store")
        for step in MIGRATIONS[version:]:
            for statement in step:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version={latest}")
        if version == 0 and cipher is not None:
            # Written with the schema, in one transaction: a store is encrypted from birth or never.
            conn.execute("INSERT INTO meta(key, value) VALUES ('key_check', ?)",
                         (cipher.seal(KEY_CHECK, KEY_CHECK_AAD),))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _check_key(conn: sqlite3.Connection, path: Path, cipher: Cipher | None) -> None:
    row = conn.execute("SELECT value FROM meta WHERE key = 'key_check'").fetchone()
    if row is None and cipher is not None:
        raise StoreError(f"{path} is not encrypted, but a key was given (key file or ${KEY_ENV}); "
                         f"open it without a key")
    if row is not None and cipher is None:
        raise StoreError(f"{path} is encrypted: give its key (a key file, or ${KEY_ENV})")
    if row is not None and cipher is not None:
        try:
            ok = cipher.open(row[0], KEY_CHECK_AAD) == KEY_CHECK
        except StoreError:
            ok = False
        if not ok:
            raise StoreError(f"wrong key for {path}")


class Store:
    def __init__(self, path: Path, key: bytes | None = None, keep_crops: bool = False, create: bool = True) -> None:
        """Open the store at `path`; with create=False a missing file is an error instead of a new empty
        store (a mistyped path must not turn into a door that knows nobody and says it is healthy)."""
        self.path = Path(path)
        if not create and not self.path.exists():
            raise StoreError(f"no store at {self.path}: enrol someone first (facegate enroll --store …), or "
                             f"check the path; a new empty store is created only when asked (store.create = true, "
                             f"or a command's --create)")
        if not create and self.path.is_file() and self.path.stat().st_size == 0:
            # SQLite takes an empty file for a new database: a store truncated by a failed copy, or any empty
            # file named by mistake, would become an empty store — a door that knows nobody and says it is
            # healthy. A real store is never empty (its header is written when it is made).
            raise StoreError(f"{self.path} is an empty file, not a facegate store: restore it from a backup "
                             f"(facegate store restore), or delete it and create a new store when asked "
                             f"(store.create = true, or a command's --create)")
        self.keep_crops = keep_crops
        self._checkpoint_due = False  # a deletion's old pages may still be in the write-ahead log
        self._cipher = Cipher(key) if key is not None else None
        self._lock = threading.RLock()
        self._listeners: list[Listener] = []
        self._conn = _connect(self.path)
        try:
            _migrate(self._conn, self.path, self._cipher)
            _check_key(self._conn, self.path, self._cipher)
        except sqlite3.OperationalError as exc:
            self._conn.close()
            raise StoreError(f"{self.path}: cannot open the store ({exc})") from None
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise StoreError(f"{self.path}: not a facegate store ({exc})") from None
        except BaseException:
            self._conn.close()
            raise
        _remove_stale_copies(self.path.parent)
        st = os.stat(self.path)
        self._file_id = (st.st_dev, st.st_ino)  # the file this connection reads, whatever the path shows later
        self._file_seen = (st.st_size, st.st_mtime_ns)  # the last (size, mtime) check_file found sound

    # -- plumbing ----------------------------------------------------------------------------------------
    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._conn.close()  # the last connection to close checkpoints and removes -wal/-shm

    @property
    def encrypted(self) -> bool:
        return self._cipher is not None

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold off every change (in this process) for the block: load a follower, then subscribe it."""
        with self._lock:
            yield

    def subscribe(self, callback: Listener) -> Callable[[], None]:
        """Call `callback` after each committed change, in commit order; returns the unsubscribe function."""
        with self._lock:
            self._listeners.append(callback)
        return lambda: self._unsubscribe(callback)

    def _unsubscribe(self, callback: Listener) -> None:
        with self._lock:
            if callback in self._listeners:
                self._listeners.remove(callback)

    @contextmanager
    def _write(self) -> Iterator[tuple[sqlite3.Connection, list[Event]]]:
        """One IMMEDIATE transaction; the events queued in it reach listeners only if it commits."""
        with self._lock:
            events: list[Event] = []
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                yield self._conn, events
                self._conn.execute("COMMIT")
            except BaseException as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):  # locked too long, disk full, read-only, …
                    raise StoreError(f"{self.path}: {exc}") from None
                raise
            for event in events:
                for callback in list(self._listeners):
                    callback(*event)
            self._truncate_wal()  # a log an earlier deletion could not empty: try again now

    @contextmanager
    def _erase(self) -> Iterator[tuple[sqlite3.Connection, list[Event]]]:
        """A write that removes biometric data: after it commits, empty the WAL (under the same lock), so
        pages that held the removed rows survive nowhere but in the main file, where secure_delete zeroed
        them."""
        with self._lock:
            with self._write() as tx:
                yield tx
            self._checkpoint_due = True
            self._truncate_wal(wait_s=ERASE_CHECKPOINT_S)

    def _truncate_wal(self, wait_s: float = 0.0) -> None:
        """Empty the write-ahead log if a change removed data since it was last emptied. A reader (a running
        daemon reads the store every frame, briefly) can hold it for a moment: retry up to `wait_s`, then leave it
        due — the change itself is done and stays done (raising here, after the commit, told the admin page and
        the CLI a deletion had failed, and a retry then found nobody to delete) — and try again after the next
        change (the last connection to close empties it too); a warning says the old pages are still in the log."""
        if not self._checkpoint_due:
            return
        deadline = time.monotonic() + wait_s
        while True:
            busy, _, _ = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        self._checkpoint_due = bool(busy)
        if busy:
            log.warning("store %s: a deletion is done, but another connection is reading, so the write-ahead log "
                        "keeps the old pages until the next checkpoint (after the next change, or when the last "
                        "connection closes)", self.path)

    def _seal(self, data: bytes, aad: bytes) -> bytes:
        return self._cipher.seal(data, aad) if self._cipher else data

    def _unseal(self, blob: bytes, aad: bytes) -> bytes:
        return self._cipher.open(blob, aad) if self._cipher else blob

    def _vector_bytes(self, vector: np.ndarray) -> bytes:
        v = np.asarray(vector)
        if v.ndim != 1 or v.size == 0 or not np.issubdtype(v.dtype, np.number):
            raise StoreError(f"a template vector must be a non-empty 1-D numeric array, got shape {v.shape}")
        v = v.astype("<f4")
        if not np.isfinite(v).all():
            raise StoreError("a template vector contains NaN or infinity")
        norm = float(np.linalg.norm(v.astype(np.float64)))
        if abs(norm - 1.0) > NORM_TOLERANCE:
            raise StoreError(f"a template vector must be unit-length (L2 norm 1, as every embedder writes it), "
                             f"got norm {norm:.6g}")
        return v.tobytes()

    def _decode(self, blob: bytes, name: str, embedder: str, template_id: int | None = None,
                check: bool = True) -> np.ndarray:
        """The stored vector; with `check`, a StoreError naming the identity unless it is a sound template (a
        whole number of float32s, finite, unit-length): a damaged one must never be scored, never match."""
        raw = self._unseal(blob, _template_aad(name, embedder))
        where = f"template {template_id} of {name!r}" if template_id is not None else f"a template of {name!r}"
        if len(raw) % 4:
            raise StoreError(f"{self.path}: {where} ({embedder}) is damaged: {len(raw)} bytes is not a whole "
                             f"number of float32 values")
        vec = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        if check:
            if vec.size == 0 or not np.isfinite(vec).all():
                raise StoreError(f"{self.path}: {where} ({embedder}) is damaged: empty, NaN or infinity")
            norm = float(np.linalg.norm(vec.astype(np.float64)))
            if abs(norm - 1.0) > NORM_TOLERANCE:
                raise StoreError(f"{self.path}: {where} ({embedder}) is damaged or tampered with: its L2 norm is "
                                 f"{norm:.6g}, a stored template is unit-length; restore the store from a backup or "
                                 f"re-enrol {name!r}")
        return vec

    def _dim(self, conn: sqlite3.Connection, embedder: str) -> int | None:
        row = conn.execute("SELECT length(vector) FROM templates WHERE embedder = ? LIMIT 1",
                           (embedder,)).fetchone()
        if row is None:
            return None
        return (row[0] - (OVERHEAD if self._cipher else 0)) // 4

    def _insert_templates(self, conn: sqlite3.Connection, identity_id: int, name: str,
                          templates: list[TemplateIn], now: float,
                          keep_crops: bool | None = None) -> tuple[list[int], dict[str, np.ndarray]]:
        keep_crops = self.keep_crops if keep_crops is None else keep_crops
        ids: list[int] = []
        added: dict[str, list[np.ndarray]] = {}
        for t in templates:
            # Validated inside the transaction, template by template: a bad one rolls back the others.
            embedder = _check_text(t.embedder, "embedder name")
            if t.image_sha256 is not None and conn.execute(
                    "SELECT 1 FROM templates WHERE identity_id = ? AND embedder = ? AND image_sha256 = ?",
                    (identity_id, embedder, t.image_sha256)).fetchone():
                continue  # this photo is already enrolled for this identity: idempotent
            try:
                raw = self._vector_bytes(t.vector)
            except StoreError as exc:
                raise StoreError(f"{name!r} ({embedder}): {exc}") from None
            dim = self._dim(conn, embedder)
            if dim is not None and dim * 4 != len(raw):
                raise StoreError(f"embedder {embedder!r} stores {dim}-d templates; got {len(raw) // 4}-d")
            cur = conn.execute(
                "INSERT INTO templates(identity_id, embedder, manifest_sha256, vector, quality, created, "
                "image_sha256) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (identity_id, embedder, str(t.manifest_sha256), self._seal(raw, _template_aad(name, embedder)),
                 json.dumps(t.quality or {}), now, t.image_sha256))
            tid = int(cur.lastrowid or 0)
            if keep_crops and t.crop is not None:
                conn.execute("INSERT INTO crops(template_id, image) VALUES (?, ?)",
                             (tid, self._seal(bytes(t.crop), _crop_aad(name, tid))))
            ids.append(tid)
            added.setdefault(embedder, []).append(np.frombuffer(raw, dtype="<f4").astype(np.float32))
        return ids, {e: np.stack(v) for e, v in added.items()}

    def _audit(self, conn: sqlite3.Connection, action: str, name: str | None, command: str,
               details: dict[str, Any]) -> None:
        conn.execute("INSERT INTO audit(ts, action, name, command, details) VALUES (?, ?, ?, ?, ?)",
                     (time.time(), action, name, str(command), json.dumps(details, sort_keys=True)))

    # -- changes -----------------------------------------------------------------------------------------
    def enroll(self, name: str, templates: list[TemplateIn], command: str, display_name: str | None = None,
               metadata: dict[str, Any] | None = None) -> list[int]:
        """Add templates to `name` (created if new) in one transaction: all of them, its audit row, or nothing."""
        name = _check_text(name, "identity name")
        if display_name:
            display_name = _check_text(display_name, "display name")
        if not templates:
            raise StoreError(f"nothing to enrol for {name!r}: no templates")
        now = time.time()
        with self._write() as (conn, events):
            row = conn.execute("SELECT id FROM identities WHERE name = ?", (name,)).fetchone()
            if row is None:
                cur = conn.execute("INSERT INTO identities(name, display_name, metadata, created, pseudonym) "
                                   "VALUES (?, ?, ?, ?, ?)", (name, display_name, json.dumps(metadata or {}), now,
                                                              secrets.token_hex(6)))
                identity_id = int(cur.lastrowid or 0)
            else:
                identity_id = row[0]
                if display_name is not None:
                    conn.execute("UPDATE identities SET display_name = ? WHERE id = ?", (display_name, identity_id))
                if metadata is not None:
                    conn.execute("UPDATE identities SET metadata = ? WHERE id = ?",
                                 (json.dumps(metadata), identity_id))
            ids, added = self._insert_templates(conn, identity_id, name, templates, now)
            if not ids:
                if row is None:
                    raise StoreError(f"nothing to enrol for {name!r}: no templates")
                return []  # every photo was already enrolled: nothing changed, nothing to audit
            self._audit(conn, "enroll" if row is None else "update", name, command,
                        {"templates": len(ids), "embedders": sorted(added), "template_ids": ids,
                         "crops_kept": self.keep_crops and any(t.crop is not None for t in templates)})
            events.append(("enroll", name, added))
        return ids

    def enroll_many(self, items: dict[str, list[TemplateIn]], command: str) -> int:
        """Enrol several identities in one transaction (an import, a benchmark's synthetic gallery): each as
        `enroll` would, with its own audit row; all of them or none. Returns the templates added."""
        added_total = 0
        now = time.time()
        with self._write() as (conn, events):
            for name, templates in items.items():
                name = _check_text(name, "identity name")
                if not templates:
                    raise StoreError(f"nothing to enrol for {name!r}: no templates")
                row = conn.execute("SELECT id FROM identities WHERE name = ?", (name,)).fetchone()
                if row is None:
                    identity_id = int(conn.execute(
                        "INSERT INTO identities(name, display_name, metadata, created, pseudonym) VALUES "
                        "(?, NULL, '{}', ?, ?)", (name, now, secrets.token_hex(6))).lastrowid or 0)
                else:
                    identity_id = row[0]
                ids, added = self._insert_templates(conn, identity_id, name, templates, now)
                if not ids:
                    continue
                self._audit(conn, "enroll" if row is None else "update", name, command,
                            {"templates": len(ids), "embedders": sorted(added), "template_ids": ids,
                             "crops_kept": self.keep_crops and any(t.crop is not None for t in templates)})
                events.append(("enroll", name, added))
                added_total += len(ids)
        return added_total

    def update_metadata(self, name: str, changes: dict[str, Any], command: str,
                        display_name: str | None = None) -> dict[str, Any]:
        """Set (or, with a None value, remove) metadata keys of `name` (access windows, validity period) and
        optionally its display name, audited; returns the new metadata."""
        if display_name:  # "" clears it
            display_name = _check_text(display_name, "display name")
        with self._write() as (conn, _):
            row = conn.execute("SELECT id, metadata, display_name FROM identities WHERE name = ?",
                               (name,)).fetchone()
            if row is None:
                raise StoreError(f"unknown identity {name!r}")
            metadata = _json(row[1], f"metadata of identity {name!r}")
            before = {k: metadata.get(k) for k in changes}
            for key, value in changes.items():
                if value is None:
                    metadata.pop(key, None)
                else:
                    metadata[key] = value
            conn.execute("UPDATE identities SET metadata = ? WHERE id = ?", (json.dumps(metadata), row[0]))
            details: dict[str, Any] = {"metadata": {k: {"from": before[k], "to": changes[k]} for k in changes
                                                    if before[k] != changes[k]}}
            if display_name is not None and display_name != (row[2] or ""):
                conn.execute("UPDATE identities SET display_name = ? WHERE id = ?", (display_name or None, row[0]))
                details["display_name"] = {"from": row[2], "to": display_name or None}
            self._audit(conn, "update", name, command, details)
        return metadata

    def delete(self, name: str, command: str) -> bool:
        """Remove `name` with its templates and crops; False if unknown. The bytes leave the disk files too."""
        with self._erase() as (conn, events):
            row = conn.execute("SELECT id FROM identities WHERE name = ?", (name,)).fetchone()
            if row is None:
                return False
            removed: dict[str, list[np.ndarray]] = {}
            count = 0
            for embedder, blob in conn.execute("SELECT embedder, vector FROM templates WHERE identity_id = ? "
                                               "ORDER BY id", (row[0],)):
                count += 1
                try:
                    removed.setdefault(embedder, []).append(self._decode(blob, name, embedder, check=False))
                except StoreError:
                    removed.setdefault(embedder, [])  # damaged: never loaded, but deleted all the same
            conn.execute("DELETE FROM identities WHERE id = ?", (row[0],))  # cascades to templates, crops
            self._audit(conn, "delete", name, command,
                        {"templates": count, "embedders": sorted(removed)})
            events.append(("delete", name, {e: np.stack(v) for e, v in removed.items() if v}))
        _remove_stale_copies(self.path.parent)  # an interrupted backup's copy would still hold the identity
        return True

    def replace_templates(self, embedder: str, items: dict[str, list[TemplateIn]], command: str) -> None:
        """For each named identity, its `embedder` templates become exactly `items[name]` (`store reembed`)."""
        with self._erase() as (conn, events):
            for name, templates in items.items():
                row = conn.execute("SELECT id FROM identities WHERE name = ?", (name,)).fetchone()
                if row is None:
                    raise StoreError(f"unknown identity {name!r}")
                if any(t.embedder != embedder for t in templates):
                    raise StoreError(f"replace_templates({embedder!r}): a template for {name!r} names "
                                     f"another embedder")
                # Crops these templates held move to their replacements (given as TemplateIn.crop) even when this
                # connection was not opened with keep_crops: re-embedding must not erase what it re-embeds from.
                had_crops = conn.execute(
                    "SELECT 1 FROM templates t JOIN crops c ON c.template_id = t.id WHERE t.identity_id = ? AND "
                    "t.embedder = ? LIMIT 1", (row[0], embedder)).fetchone() is not None
                old = conn.execute("DELETE FROM templates WHERE identity_id = ? AND embedder = ?",
                                   (row[0], embedder)).rowcount
                ids, added = self._insert_templates(conn, row[0], name, templates, time.time(),
                                                    keep_crops=self.keep_crops or had_crops)
                self._audit(conn, "update", name, command,
                            {"embedder": embedder, "replaced": old, "templates": len(ids), "template_ids": ids})
                events.append(("replace", name, {embedder: added.get(embedder, np.zeros((0, 0), np.float32))}))

    # -- reads -------------------------------------------------------------------------------------------
    def identities(self, name: str | None = None) -> list[Identity]:
        """Every identity (or just `name`), sorted by name, with its template counts per embedder."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT i.name, i.display_name, i.metadata, i.created, t.embedder, count(t.id), "
                "count(c.template_id) FROM identities i LEFT JOIN templates t ON t.identity_id = i.id "
                "LEFT JOIN crops c ON c.template_id = t.id WHERE (? IS NULL OR i.name = ?) "
                "GROUP BY i.id, t.embedder ORDER BY i.name, t.embedder", (name, name)).fetchall()
        info: dict[str, tuple[str | None, str, float]] = {}
        counts: dict[str, dict[str, int]] = {}
        crops: dict[str, int] = {}
        for who, display, meta, created, embedder, n_templates, n_crops in rows:
            info[who] = (display, meta, created)
            counts.setdefault(who, {})
            crops[who] = crops.get(who, 0) + n_crops
            if embedder is not None:
                counts[who][embedder] = n_templates
        return [Identity(who, display, _json(meta, f"metadata of identity {who!r}"), created, counts[who], crops[who])
                for who, (display, meta, created) in info.items()]

    def people(self, query: str = "", offset: int = 0, limit: int = 50,
               embedder: str | None = None) -> tuple[int, list[dict[str, Any]]]:
        """One page of identities, sorted by name, whose name or display name contains `query` (case-blind for
        ASCII): (how many match, rows). Filtering and paging happen in SQL and only the page's identities are
        aggregated, so a page costs the same with 10 or 100,000 people. Each row: name, display name, created,
        metadata, templates per embedder, crops kept, photos and the weakest photo's quality (of `embedder`,
        default the first one enrolled)."""
        like = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where = "WHERE (? = '' OR name LIKE ? ESCAPE '\\' OR display_name LIKE ? ESCAPE '\\')"
        with self._lock:
            total = self._conn.execute(f"SELECT count(*) FROM identities {where}", (query, like, like)).fetchone()[0]
            page = self._conn.execute(f"SELECT id, name, display_name, created, metadata FROM identities {where} "
                                      "ORDER BY name LIMIT ? OFFSET ?",
                                      (query, like, like, max(0, min(limit, MAX_LIMIT)),
                                       max(0, min(offset, MAX_LIMIT)))).fetchall()
            ids = [r[0] for r in page]
            marks = ",".join("?" * len(ids))
            counts = self._conn.execute(
                f"SELECT identity_id, embedder, count(*), min(json_extract(quality, '$.inter_eye_px')), "
                f"min(json_extract(quality, '$.sharpness')), max(abs(json_extract(quality, '$.yaw_deg'))), "
                f"max(created) FROM templates WHERE identity_id IN ({marks}) GROUP BY identity_id, embedder "
                f"ORDER BY identity_id, embedder", ids).fetchall() if ids else []
            crops = dict(self._conn.execute(
                f"SELECT t.identity_id, count(*) FROM crops c JOIN templates t ON t.id = c.template_id "
                f"WHERE t.identity_id IN ({marks}) GROUP BY t.identity_id", ids).fetchall()) if ids else {}
        per: dict[int, dict[str, tuple[Any, ...]]] = {}
        for identity_id, emb, n, eyes, sharp, yaw, last in counts:
            per.setdefault(identity_id, {})[emb] = (n, eyes, sharp, yaw, last)
        rows = []
        for identity_id, name, display, created, meta in page:
            mine = per.get(identity_id, {})
            primary = embedder if embedder in mine else next(iter(mine), None)
            n, eyes, sharp, yaw, last = mine[primary] if primary else (0, None, None, None, None)
            rows.append({"name": name, "display_name": display, "created": created,
                         "metadata": _json(meta, f"metadata of identity {name!r}"),
                         "templates": {e: v[0] for e, v in mine.items()}, "photos": n,
                         "crops": crops.get(identity_id, 0),
                         "quality": {"min_inter_eye_px": eyes, "min_sharpness": sharp, "max_abs_yaw_deg": yaw},
                         "last_enrolled": last})
        return total, rows

    def template_rows(self, name: str) -> list[dict[str, Any]]:
        """The identity's templates without their vectors: id, embedder, quality, created, whether a crop is kept."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT t.id, t.embedder, t.quality, t.created, c.template_id IS NOT NULL FROM templates t "
                "JOIN identities i ON i.id = t.identity_id LEFT JOIN crops c ON c.template_id = t.id "
                "WHERE i.name = ? ORDER BY t.id", (name,)).fetchall()
        return [{"id": tid, "embedder": emb, "quality": _json(q, f"quality of template {tid}"), "created": created,
                 "crop": bool(crop)}
                for tid, emb, q, created, crop in rows]

    def crop(self, name: str, template_id: int) -> bytes | None:
        """One kept crop of the identity (decrypted), or None."""
        with self._lock:
            row = self._conn.execute(
                "SELECT c.image FROM crops c JOIN templates t ON t.id = c.template_id JOIN identities i ON "
                "i.id = t.identity_id WHERE i.name = ? AND t.id = ?", (name, template_id)).fetchone()
        return None if row is None else self._unseal(row[0], _crop_aad(name, template_id))

    def audit_page(self, offset: int = 0, limit: int = 50, name: str | None = None) -> tuple[int, list[dict[str, Any]]]:
        """Audit rows newest first, one page (of one identity, if `name`): (how many, rows)."""
        with self._lock:
            total = self._conn.execute("SELECT count(*) FROM audit WHERE (? IS NULL OR name = ?)",
                                       (name, name)).fetchone()[0]
            rows = self._conn.execute("SELECT id, ts, action, name, command, details FROM audit WHERE "
                                      "(? IS NULL OR name = ?) ORDER BY id DESC LIMIT ? OFFSET ?",
                                      (name, name, max(0, min(int(limit), MAX_LIMIT)),
                                       max(0, min(int(offset), MAX_LIMIT)))).fetchall()
        return total, [{"id": i, "ts": ts, "action": a, "name": n, "command": c,
                 "details": _json(d, f"details of audit row {i}")}
                       for i, ts, a, n, c, d in rows]

    def image_hashes(self, name: str) -> dict[int, str]:
        """{template id: sha256 of the photo it came from} for the identity's templates that record one."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT t.id, t.image_sha256 FROM templates t JOIN identities i ON i.id = t.identity_id "
                "WHERE i.name = ? AND t.image_sha256 IS NOT NULL", (name,)).fetchall()
        return {tid: sha for tid, sha in rows}

    def pseudonym(self, name: str) -> str | None:
        """The identity's random log name (None once it is deleted): logs never need the person's name."""
        with self._lock:
            row = self._conn.execute("SELECT pseudonym FROM identities WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def has_image(self, name: str, image_sha256: str) -> bool:
        """Whether this photo (sha256 of its pixels) is already enrolled for `name`."""
        with self._lock:
            return self._conn.execute(
                "SELECT 1 FROM templates t JOIN identities i ON i.id = t.identity_id WHERE i.name = ? AND "
                "t.image_sha256 = ? LIMIT 1", (name, image_sha256)).fetchone() is not None

    def check_file(self) -> None:
        """Raise StoreError if the file at the store's path is no longer the sound store this connection opened:
        deleted, replaced by another file (a copy or move onto the path), or overwritten or damaged in place.

        SQLite cannot see any of that by itself: its page cache keeps answering from the old pages until it
        reads one that is gone. One os.stat per call; the file is read (its header, then a quick_check on a
        fresh connection, so no cached page hides the damage) only when its size or time stamp moved, which
        also happens on every checkpoint, about once per thousand changed pages."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise StoreError(f"{self.path} was deleted under the running daemon") from None
        except OSError as exc:
            raise StoreError(f"{self.path} cannot be read ({exc.strerror or exc})") from None
        if (st.st_dev, st.st_ino) != self._file_id:
            raise StoreError(f"{self.path} was replaced by another file under the running daemon (restore a "
                             f"store with `facegate store restore`, never by copying over it, then restart)")
        seen = (st.st_size, st.st_mtime_ns)
        if seen == self._file_seen:
            return
        try:
            with open(self.path, "rb") as f:
                header = f.read(100)
            page = int.from_bytes(header[16:18], "big") if len(header) == 100 else 0
            page = 65536 if page == 1 else page
            if header[:16] != b"SQLite format 3\0" or page < 512 or st.st_size % page:
                raise StoreError(f"{self.path} was overwritten or damaged under the running daemon (not an "
                                 f"SQLite database any more)")
            with closing(sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True, timeout=1.0)) as c:
                found = [r[0] for r in c.execute("PRAGMA quick_check(3)").fetchall()]
            if found != ["ok"]:
                raise StoreError(f"{self.path} is damaged: {'; '.join(found)}")
        except OSError as exc:
            raise StoreError(f"{self.path} cannot be read ({exc.strerror or exc})") from None
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return  # a writer holds it right now: look again on the next call
            raise StoreError(f"{self.path} cannot be read ({exc})") from None
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} was overwritten or damaged under the running daemon ({exc})") from None
        self._file_seen = seen

    def data_version(self) -> int:
        """SQLite's data_version: it changes when another connection (another process: the CLI, a sync) has
        committed a change since this connection last looked. A few microseconds; polled once per frame."""
        with self._lock:
            return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def template_ids(self, embedder: str) -> dict[str, frozenset[int]]:
        """{identity: its template ids} for one embedder, without reading a single vector (a cheap way to see
        what changed)."""
        with self._lock:
            rows = self._conn.execute("SELECT i.name, t.id FROM templates t JOIN identities i ON i.id = "
                                      "t.identity_id WHERE t.embedder = ?", (embedder,)).fetchall()
        out: dict[str, set[int]] = {}
        for who, tid in rows:
            out.setdefault(who, set()).add(tid)
        return {who: frozenset(ids) for who, ids in out.items()}

    def identity(self, name: str) -> Identity | None:
        found = self.identities(name)
        return found[0] if found else None

    def embedders(self) -> list[tuple[str, str, int]]:
        """(embedder, manifest sha256, templates): which model files made the stored templates."""
        with self._lock:
            return [tuple(r) for r in self._conn.execute(
                "SELECT embedder, manifest_sha256, count(*) FROM templates GROUP BY 1, 2 ORDER BY 1, 2")]

    def templates(self, embedder: str, name: str | None = None) -> list[tuple[str, int, np.ndarray]]:
        """(identity name, template id, float32 vector) for one embedder (and one identity, if `name`); other
        embedders never mix in. A 1:1 check reads only the claimed identity's rows, not the whole gallery."""
        sql = ("SELECT i.name, t.id, t.vector FROM templates t JOIN identities i ON i.id = t.identity_id "
               "WHERE t.embedder = ?")
        # Two statements, not "(? IS NULL OR i.name = ?)": that form keeps SQLite from using the name index, and
        # one identity's read became a scan of the whole gallery (quadratic when a sync changes thousands).
        args: tuple[str, ...] = (embedder,) if name is None else (embedder, name)
        with self._lock:
            rows = self._conn.execute(sql + (" AND i.name = ?" if name is not None else "") + " ORDER BY t.id",
                                      args).fetchall()
        return [(who, tid, self._decode(blob, who, embedder, tid)) for who, tid, blob in rows]

    def crops(self, name: str, embedder: str | None = None) -> list[tuple[int, bytes]]:
        """(template id, image bytes) for each of the identity's templates (of `embedder`, if given)."""
        with self._lock:
            row = self._conn.execute("SELECT id FROM identities WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise StoreError(f"unknown identity {name!r}")
            rows = self._conn.execute(
                "SELECT t.id, c.image FROM templates t LEFT JOIN crops c ON c.template_id = t.id "
                "WHERE t.identity_id = ? AND (? IS NULL OR t.embedder = ?) ORDER BY t.id",
                (row[0], embedder, embedder)).fetchall()
        if not rows or any(image is None for _, image in rows):
            raise StoreError(f"re-enrol needed: face crops of {name!r} were not kept (the store keeps them "
                             f"only when opened with keep_crops), so its templates cannot be re-embedded")
        return [(tid, self._unseal(image, _crop_aad(name, tid))) for tid, image in rows]

    def audit(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Audit rows, oldest first (the most recent `limit` of them, if given)."""
        with self._lock:
            rows = self._conn.execute("SELECT id, ts, action, name, command, details FROM audit "
                                      "ORDER BY id DESC LIMIT ?",
                                      (-1 if limit is None else max(0, min(int(limit), MAX_LIMIT)),)).fetchall()
        return [{"id": i, "ts": ts, "action": a, "name": n, "command": c,
                 "details": _json(d, f"details of audit row {i}")}
                for i, ts, a, n, c, d in reversed(rows)]

    # -- backup and restore ------------------------------------------------------------------------------
    def backup(self, dest: Path) -> None:
        """A consistent copy via SQLite's online backup (still encrypted, key not included), written atomically."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_copies(dest.parent)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".tmp")
        fcntl.flock(fd, fcntl.LOCK_EX)  # "in use": held until the copy is renamed or removed (see _remove_stale_copies)
        try:
            with closing(sqlite3.connect(tmp, isolation_level=None)) as out:
                with self._lock:
                    self._conn.backup(out)
                out.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
            fsync(Path(tmp))
            os.replace(tmp, dest)
            fsync(dest.parent)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)  # mkstemp created it 0600, which the copy keeps

    @staticmethod
    def restore(src: Path, dest: Path, key: bytes | None, command: str = "store restore",
                replace_encrypted: bool = False, deleted: str = "refuse") -> list[str]:
        """Replace the store at `dest` by the backup `src`, after checking it; `dest` must not be open.

        An encrypted `dest` is replaced only with its own key, by a backup sealed with the same key, unless
        `replace_encrypted` (a plaintext or differently keyed store taking its place is a downgrade an attacker
        with the CLI would love). The current store's audit rows newer than the backup are carried into the
        restored one, so no deletion disappears from the log. Identities the backup holds but the current store
        deleted after the backup was made would come back: `deleted` says what to do — "refuse" (a StoreError
        naming them), "reapply" (delete them again, audited) or "restore" (bring them back). Returns the names
        deleted again."""
        src, dest = Path(src), Path(dest)
        if deleted not in ("refuse", "reapply", "restore"):
            raise ValueError(f"deleted={deleted!r}")
        if not src.is_file():
            raise StoreError(f"backup {src} does not exist")
        current = _current_state(dest)
        if current is not None and current[0] is not None and not replace_encrypted:
            if key is None:
                raise StoreError(f"{dest} is encrypted: give its key (a key file, or ${KEY_ENV}) to restore it; "
                                 f"replacing it by a plaintext store needs --replace-encrypted")
            try:
                same = Cipher(key).open(current[0], KEY_CHECK_AAD) == KEY_CHECK
            except StoreError:
                same = False
            if not same:
                raise StoreError(f"wrong key for {dest}: a restore keeps the store's key (a backup sealed with "
                                 f"another key needs --replace-encrypted)")
        dest.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_copies(dest.parent)
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".restore")
        fcntl.flock(fd, fcntl.LOCK_EX)  # "in use" until it replaces the store or is removed
        tmp = Path(name)
        try:
            try:
                with closing(sqlite3.connect(src.resolve().as_uri() + "?mode=ro", uri=True)) as s, \
                        closing(sqlite3.connect(tmp, isolation_level=None)) as d:
                    s.backup(d)
                    _validate(d, src)
                    _check_key(d, src, Cipher(key) if key is not None else None)
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"backup {src} is unreadable or corrupt ({exc})") from None
            reapplied: list[str] = []
            with Store(tmp, key) as restored:  # migrates an older schema and checks the key
                restored._verify_blobs(src)
                with restored._lock:
                    since = restored._conn.execute("SELECT max(ts) FROM audit").fetchone()[0]
                    held = {r[0] for r in restored._conn.execute("SELECT name FROM identities")}
                later = [r for r in (current[1] if current else []) if since is None or r[1] > since]
                gone = _deleted_since(later, held)
                if gone and deleted == "refuse":
                    raise StoreError(f"backup {src} holds {len(gone)} identit{'y' if len(gone) == 1 else 'ies'} "
                                     f"deleted from {dest} after it was made: {', '.join(sorted(gone)[:10])}"
                                     f"{' …' if len(gone) > 10 else ''}; give --reapply-deletions to delete them "
                                     f"again after restoring, or --force to bring them back")
                with restored._write() as (conn, _):
                    for _, ts, action, name, cmd, details in later:  # the log outlives the data it describes
                        conn.execute("INSERT INTO audit(ts, action, name, command, details) VALUES (?, ?, ?, ?, ?)",
                                     (ts, action, name, cmd, details))
                    restored._audit(conn, "restore", None, command,
                                    {"source": str(src.resolve()), "audit_rows_carried": len(later),
                                     "deleted_since_backup": sorted(gone), "deletions": deleted if gone else None})
                if deleted == "reapply":
                    for name in sorted(gone):
                        restored.delete(name, f"{command} (deleted again: deleted after the backup was made)")
                        reapplied.append(name)
            _quiesce(dest)
            os.replace(tmp, dest)
            fsync(dest.parent)
        except BaseException:
            for p in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
                p.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        return reapplied

    def _verify_blobs(self, origin: Path) -> None:
        """Decode every template and crop: integrity_check sees structure, not altered contents."""
        with self._lock:
            rows = self._conn.execute("SELECT i.name, t.id, t.embedder, t.vector, c.image FROM templates t "
                                      "JOIN identities i ON i.id = t.identity_id "
                                      "LEFT JOIN crops c ON c.template_id = t.id").fetchall()
        for name, tid, embedder, blob, image in rows:
            try:
                self._decode(blob, name, embedder, tid)
                if image is not None:
                    self._unseal(image, _crop_aad(name, tid))
            except (StoreError, ValueError) as exc:
                raise StoreError(f"backup {origin}: template {tid} of {name!r} is damaged ({exc})") from None


def _validate(conn: sqlite3.Connection, origin: Path) -> None:
    problems = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
    if problems != ["ok"]:
        raise StoreError(f"backup {origin} is corrupt: {'; '.join(problems[:3])}")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if not 1 <= version <= len(MIGRATIONS):
        raise StoreError(f"backup {origin}: schema version {version}, this facegate reads 1..{len(MIGRATIONS)}")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    missing = {"identities", "templates", "crops", "audit", "meta"} - tables
    if missing:
        raise StoreError(f"backup {origin} is not a facegate store (no {', '.join(sorted(missing))})")


STALE_COPY = re.compile(r".+\.[A-Za-z0-9_]{8}\.(restore|tmp)")  # what backup and restore's mkstemp names


def _remove_stale_copies(folder: Path) -> list[Path]:
    """Remove the temporary copies a killed `store backup` / `store restore` left in `folder` (each a full copy of
    the gallery, which a later deletion would not reach), with their -wal/-shm/-journal files. A copy still
    being written is flock'ed by its writer and left alone; a file that is not (yet) an SQLite database is never
    touched. The bytes are overwritten before the file is unlinked (as far as the filesystem honours that)."""
    removed: list[Path] = []
    try:
        candidates = [p for p in folder.iterdir() if STALE_COPY.fullmatch(p.name) and p.is_file()]
    except OSError:
        return removed
    for path in candidates:
        try:
            with open(path, "r+b") as f:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a backup or restore is writing it right now
                # Only a database: an empty file holds nothing, and may be another writer's fresh temporary file
                # (atomic_write_bytes names its own NAME.XXXXXXXX.tmp the same way, in the same state folder).
                if f.read(16) != b"SQLite format 3\0":
                    continue
                size = os.fstat(f.fileno()).st_size
                f.seek(0)
                f.write(bytes(size))
                f.flush()
                os.fsync(f.fileno())
            for extra in ("", "-wal", "-shm", "-journal"):
                path.with_name(path.name + extra).unlink(missing_ok=True)
            removed.append(path)
        except OSError as exc:
            log.warning("cannot remove the stale store copy %s (%s)", path, exc.strerror or exc)
    if removed:
        log.warning("removed %d copy(ies) of the store left by an interrupted backup or restore: %s", len(removed),
                    ", ".join(p.name for p in removed))
    return removed


def _current_state(dest: Path) -> tuple[bytes | None, list[tuple[Any, ...]]] | None:
    """(its key check or None, its audit rows) of the store a restore is about to replace; None when there is no
    store there or it cannot be read (a damaged store is what restores are for)."""
    if not dest.is_file() or dest.stat().st_size == 0:
        return None
    try:
        with closing(sqlite3.connect(dest, timeout=1.0)) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'key_check'").fetchone()
            audit = conn.execute("SELECT id, ts, action, name, command, details FROM audit ORDER BY id").fetchall()
    except sqlite3.Error:
        return None
    return (row[0] if row else None), audit


def _deleted_since(rows: list[tuple[Any, ...]], held: set[str]) -> set[str]:
    """Names the backup holds whose last audited action in `rows` (the current store's, after the backup) is a
    deletion: restoring the backup would bring them back."""
    last: dict[str, str] = {}
    for _, _, action, name, _, _ in rows:
        if name is not None:
            last[name] = action
    return {n for n, action in last.items() if action == "delete" and n in held}


def _quiesce(dest: Path) -> None:
    """Fold the old store's WAL into it and make sure nobody else has it open, before it is replaced.

    A stale -wal left beside the new file would be replayed into it on the next open.
    """
    if not dest.exists():
        return
    try:
        with closing(sqlite3.connect(dest, timeout=1.0, isolation_level=None)) as conn:
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            conn.execute("BEGIN EXCLUSIVE")
            conn.execute("COMMIT")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.OperationalError as exc:
        raise StoreError(f"{dest} is in use by another process ({exc}); stop the daemon before restoring") \
            from None
    except sqlite3.DatabaseError:
        pass  # the store being replaced is itself damaged: nothing of it is worth keeping
    for suffix in ("-wal", "-shm"):
        dest.with_name(dest.name + suffix).unlink(missing_ok=True)
