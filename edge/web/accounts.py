"""Administrator accounts, sessions and the log-in rate limit, in one small SQLite file (owner-only).

- Passwords: scrypt (hashlib, standard library) with a random 16-byte salt, n = 2^15, r = 8, p = 1 (32 MiB,
  ~0.1 s here); the stored string carries its parameters, so they can be raised later without breaking old
  hashes. A log-in for an unknown account costs the same scrypt, so timing does not tell accounts apart.
- Sessions live on the server: the cookie holds a random 256-bit token, the file only its sha256, so a copy
  of the file does not let anyone in. Each session has its own CSRF token. A session ends on log-out, after
  `idle` seconds unused, or `max_age` seconds after the log-in.
- Failed log-ins are counted per account and per client address; past the limit within the window, log-ins
  are refused (without checking the password) until the window has passed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge.config import WebConfig
from edge.errors import FacegateError

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
SCRYPT_MAXMEM = 64 * 1024 * 1024
MIN_PASSWORD = 10
MAX_PASSWORD = 1024  # scrypt takes any length; a megabyte "password" is a denial of service, not a secret
ACCOUNT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS accounts (name TEXT PRIMARY KEY, hash TEXT NOT NULL, created REAL NOT NULL, "
    "last_login REAL)",
    "CREATE TABLE IF NOT EXISTS sessions (token_sha256 TEXT PRIMARY KEY, account TEXT NOT NULL REFERENCES "
    "accounts(name) ON DELETE CASCADE, csrf TEXT NOT NULL, created REAL NOT NULL, seen REAL NOT NULL)",
)
TOUCH_EVERY_S = 30.0  # a session's last use is written at most this often (not one write per request)


class AccountError(FacegateError):
    """An account cannot be created or used as asked (a clear message, shown on the page or the terminal)."""


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    dk = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=SCRYPT_MAXMEM)
    enc = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${enc(salt).decode()}${enc(dk).decode()}"


def check_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, dk = stored.split("$")
        if kind != "scrypt":
            return False
        want = base64.b64decode(dk)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             maxmem=SCRYPT_MAXMEM, dklen=len(want))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


_DUMMY = hash_password(secrets.token_hex(16))  # what an unknown account's log-in is checked against


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_account_name(name: str) -> str:
    if not 1 <= len(name) <= 64 or not set(name) <= ACCOUNT_CHARS:
        raise AccountError("an account name is 1–64 letters, digits or . _ - @")
    return name


def check_new_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"a password needs at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise AccountError(f"a password has at most {MAX_PASSWORD} characters")
    return password


@dataclass(frozen=True)
class Session:
    account: str
    csrf: str
    created: float


class LoginLimiter:
    """Log-in attempts per key (an account, a client address) within a sliding window; a right password takes its
    own attempt back (see succeeded)."""

    def __init__(self, attempts: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.attempts, self.window_s, self.clock = attempts, window_s, clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._failures.setdefault(key, deque())
        while q and now - q[0] >= self.window_s:
            q.popleft()
        return q

    def begin(self, *keys: str) -> tuple[float, float]:
        """(seconds until a log-in for these keys is accepted again, 0.0) — or (0.0, the attempt's stamp) after
        counting this attempt against every key, in one locked step. An attempt counts from its start, not from
        its failure: counted only after the password check (≈ 0.2 s of scrypt), 150 guesses sent at once all
        passed the check and were all verified against a limit of 5."""
        now = self.clock()
        with self._lock:
            waits = [self.window_s - (now - q[0]) for k in keys if len(q := self._recent(k, now)) >= self.attempts]
            if waits:
                return max(waits), 0.0
            for k in keys:
                self._recent(k, now).append(now)
            if len(self._failures) > 10_000:  # addresses that tried once long ago: forget them
                for k in [k for k, q in self._failures.items() if not self._recent(k, now)]:
                    del self._failures[k]
        return 0.0, now

    def succeeded(self, account_key: str, stamp: float, *other_keys: str) -> None:
        """A right password: the account's count starts afresh, and this attempt no longer counts against the
        other keys (the client address)."""
        with self._lock:
            self._failures.pop(account_key, None)
            for k in other_keys:
                q = self._failures.get(k)
                if q is not None and stamp in q:
                    q.remove(stamp)


class Accounts:
    def __init__(self, path: Path, idle_s: float = 1800.0, max_age_s: float = 43200.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.idle_s, self.max_age_s, self.clock = idle_s, max_age_s, clock
        self._lock = threading.Lock()
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))  # password hashes: owner-only
        try:
            self._conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.execute("PRAGMA journal_mode=WAL")
            for statement in SCHEMA:
                self._conn.execute(statement)
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise AccountError(f"accounts {self.path}: not a facegate accounts file ({exc})") from None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- accounts -------------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT name FROM accounts ORDER BY name")]

    def create(self, name: str, password: str, replace: bool = False) -> None:
        """A new account (or, with `replace`, a new password for an existing one: its sessions end)."""
        check_account_name(name)
        digest = hash_password(check_new_password(password))
        with self._lock:
            exists = self._conn.execute("SELECT 1 FROM accounts WHERE name = ?", (name,)).fetchone()
            if exists and not replace:
                raise AccountError(f"account {name!r} exists (give --reset to set a new password)")
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute("DELETE FROM sessions WHERE account = ?", (name,))
                self._conn.execute("INSERT INTO accounts(name, hash, created) VALUES (?, ?, ?) ON CONFLICT(name) "
                                   "DO UPDATE SET hash = excluded.hash", (name, digest, self.clock()))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def verify(self, name: str, password: str) -> bool:
        with self._lock:
            row = self._conn.execute("SELECT hash FROM accounts WHERE name = ?", (name,)).fetchone()
        ok = check_password(password[:MAX_PASSWORD], row[0] if row else _DUMMY)
        return ok and row is not None

    # -- sessions -------------------------------------------------------------------------------------------
    def login(self, name: str) -> str:
        """A new session for `name` (after `verify`); returns the cookie's token."""
        token = secrets.token_urlsafe(32)
        now = self.clock()
        with self._lock:
            self._conn.execute("INSERT INTO sessions(token_sha256, account, csrf, created, seen) VALUES "
                               "(?, ?, ?, ?, ?)", (_sha(token), name, secrets.token_urlsafe(32), now, now))
            self._conn.execute("UPDATE accounts SET last_login = ? WHERE name = ?", (now, name))
            self._conn.execute("DELETE FROM sessions WHERE seen < ? OR created < ?",
                               (now - self.idle_s, now - self.max_age_s))
        return token

    def session(self, token: str | None) -> Session | None:
        """The live session of a cookie's token, or None (unknown, idle too long, too old)."""
        if not token or len(token) > 128:
            return None
        now = self.clock()
        key = _sha(token)
        with self._lock:
            row = self._conn.execute("SELECT account, csrf, created, seen FROM sessions WHERE token_sha256 = ?",
                                     (key,)).fetchone()
            if row is None:
                return None
            account, csrf, created, seen = row
            if now - seen > self.idle_s or now - created > self.max_age_s:
                self._conn.execute("DELETE FROM sessions WHERE token_sha256 = ?", (key,))
                return None
            if now - seen > TOUCH_EVERY_S:
                self._conn.execute("UPDATE sessions SET seen = ? WHERE token_sha256 = ?", (now, key))
        return Session(account, csrf, created)

    def logout(self, token: str | None) -> None:
        if token:
            with self._lock:
                self._conn.execute("DELETE FROM sessions WHERE token_sha256 = ?", (_sha(token),))


def open_accounts(web: WebConfig) -> Accounts:
    from edge.paths import state_dir

    path = Path(web.accounts_path) if web.accounts_path else state_dir() / "web-accounts.db"
    return Accounts(path, idle_s=web.session_idle_min * 60.0, max_age_s=web.session_max_h * 3600.0)
