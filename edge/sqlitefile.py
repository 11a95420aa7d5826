"""The private SQLite files beside the store (MQTT outbox, decision log): created owner-only, WAL, deleted
rows overwritten. One opener so every such file gets the same guarantees."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def open_private_wal(path: Path, synchronous: str, what: str, error: type[Exception]) -> sqlite3.Connection:
    """Open (creating with mode 0600: these files name people) a WAL-mode SQLite file with secure_delete on.

    `synchronous` is "FULL" where a row must survive a power cut (the outbox) or "NORMAL" where losing the last
    rows is acceptable but corruption is not. Failures raise `error` naming `what` and the path."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    try:
        conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise error(f"{what} {path}: cannot open ({exc})") from None
    try:
        conn.execute("PRAGMA secure_delete=ON")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise error(f"{what} {path}: cannot switch to WAL mode (got {mode!r})")
        conn.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'FULL' else 'NORMAL'}")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise error(f"{what} {path}: not a facegate {what} ({exc})") from None
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def immediate_tx(conn: sqlite3.Connection, lock: threading.Lock) -> Iterator[sqlite3.Connection]:
    """One writer at a time (the lock, for this process's threads; BEGIN IMMEDIATE, for other processes); committed
    whole or rolled back."""
    with lock:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
