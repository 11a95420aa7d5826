"""Encryption at rest: AES-256-GCM over each blob, bound to its row by associated data.

A sealed blob is a random 96-bit nonce followed by the ciphertext and its 16-byte tag. The associated data
names the row the blob belongs to (e.g. `template\\0<name>\\0<embedder>`), so a blob copied into another
identity's row fails to open instead of silently matching the wrong person.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge.store import StoreError

KEY_ENV = "FACEGATE_STORE_KEY"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
OVERHEAD = NONCE_BYTES + TAG_BYTES


# 32 random bytes hold about 30 distinct values; fewer than 12 happens by chance with a probability far below
# 1e-9 — such a key is a pattern ("abab…", "0102…01") someone typed.
MIN_DISTINCT_BYTES = 12


def parse_key(data: bytes, origin: str) -> bytes:
    """32 raw bytes, 64 hex characters, or base64 of 32 bytes → the 32-byte key; anything else is refused."""
    if len(data) == KEY_BYTES:
        key = data
    else:
        text = data.strip()
        key = b""
        if len(text) == 2 * KEY_BYTES:
            try:
                key = bytes.fromhex(text.decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                key = b""
        if not key:
            try:
                key = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                key = b""
        if len(key) != KEY_BYTES:
            raise StoreError(f"{origin}: not a store key (want 32 raw bytes, 64 hex characters or base64 of "
                             f"32 bytes; got {len(data)} bytes); make one with `openssl rand -hex 32`")
    if len(set(key)) == 1:  # all zeros and the like: a placeholder, not a key
        raise StoreError(f"{origin}: the key is one repeated byte; use a random key (`openssl rand -hex 32`)")
    if len(data) == KEY_BYTES and all(0x20 <= b < 0x7F for b in data):
        # 32 typed characters: a passphrase someone chose, guessable, taken as raw bytes. 32 random bytes are
        # all printable with a chance of (95/256)^32 ≈ 2e-14.
        raise StoreError(f"{origin}: 32 typed characters are a passphrase, not a random key; use 64 hex "
                         f"characters from `openssl rand -hex 32`")
    if len(set(key)) < MIN_DISTINCT_BYTES:
        raise StoreError(f"{origin}: the key repeats a short pattern ({len(set(key))} distinct bytes); use a "
                         f"random key (`openssl rand -hex 32`)")
    return key


def load_key(path: str | Path | None, env: str = KEY_ENV, *, store: Path | None = None) -> bytes | None:
    """The key from a file (if `path`), else from the environment variable `env`, else None (no encryption).

    `store`, when given, is the database the key is for: a key file anywhere under the store's folder is
    refused, because a backup or a stolen copy of that folder would then carry its own key. A key file that
    its group or others may read is refused too, as ssh refuses such private keys.
    """
    if path is not None:
        p = Path(path)
        try:
            data = p.read_bytes()
            mode = p.stat().st_mode
        except OSError as exc:
            raise StoreError(f"cannot read key file {p}: {exc.strerror or exc}") from None
        if store is not None:
            folder = Path(store).resolve().parent
            if folder == p.resolve().parent or folder in p.resolve().parents:
                raise StoreError(f"key file {p} lies in the store's folder {folder}; keep it in another directory "
                                 f"(e.g. /etc/credstore or a systemd credential)")
        if mode & 0o077:
            raise StoreError(f"key file {p} can be read by its group or others (mode {stat.S_IMODE(mode):04o}); "
                             f"make it private: chmod 600 {p}")
        return parse_key(data, str(p))
    value = os.environ.get(env)
    if value is None:
        return None
    if not value.strip():
        raise StoreError(f"${env} is set but empty; unset it for an unencrypted store, or give a key")
    return parse_key(value.encode(), f"${env}")


def new_key() -> str:
    """A fresh random key as 64 hex characters (what `load_key` reads back)."""
    return os.urandom(KEY_BYTES).hex()


class Cipher:
    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise StoreError(f"a store key is {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)  # random nonces: 2^32 blobs per key stay far below the collision risk
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        """The plaintext; StoreError if the key is wrong, the blob was altered or it belongs to another row."""
        if len(blob) < OVERHEAD:
            raise StoreError("encrypted blob is truncated")
        try:
            return self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
        except InvalidTag:
            raise StoreError("cannot decrypt a stored blob: wrong key, or the store was altered") from None
