"""The private SQLite files beside the store (MQTT outbox, decision log): created owner-only, WAL, deleted
rows overwritten. One opener so every such file gets the same guarantees."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any


def open_private_wal(path: Path, synchronous: str, what: str, error: type[Exception], timeout: float = 5.0,
                     foreign_keys: bool = False) -> sqlite3.Connection:
    """Open (creating with mode 0600 from the first byte: these files hold or name people; SQLite gives -wal and
    -shm the same mode) a WAL-mode SQLite file with secure_delete on (a per-connection setting).

    `synchronous` is "FULL" where a row must survive a power cut (store, outbox, journal) or "NORMAL" where
    losing the last rows is acceptable but corruption is not. Failures raise `error` naming `what` and the
    path: a file that cannot be opened or locked, or one that is not an SQLite database."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    try:
        conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise error(f"{what} {path}: cannot open ({exc})") from None
    try:
        if foreign_keys:
            conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA secure_delete=ON")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise error(f"{what} {path}: cannot switch to WAL mode (got {mode!r}; a network filesystem?)")
        conn.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'FULL' else 'NORMAL'}")
    except sqlite3.OperationalError as exc:
        conn.close()
        raise error(f"{what} {path}: cannot open ({exc})") from None
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise error(f"{what} {path}: not a facegate {what} ({exc})") from None
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def immediate_tx(conn: sqlite3.Connection, lock: AbstractContextManager[Any]) -> Iterator[sqlite3.Connection]:
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
