"""Key loading and AES-GCM sealing: every accepted key form, every refusal, and row binding."""

from __future__ import annotations

import base64
import os

import pytest

from edge.store import StoreError
from edge.store.crypto import Cipher, load_key, new_key, parse_key

KEY = bytes(range(1, 33))


@pytest.mark.parametrize("content", [KEY, KEY.hex().encode() + b"\n", base64.b64encode(KEY) + b"\n",
                                     KEY.hex().upper().encode()])
def test_key_file_forms(tmp_path, content):
    path = tmp_path / "keys" / "store.key"
    path.parent.mkdir()
    path.write_bytes(content)
    path.chmod(0o600)
    assert load_key(str(path)) == KEY


def test_key_from_environment(monkeypatch):
    monkeypatch.setenv("FACEGATE_STORE_KEY", KEY.hex())
    assert load_key(None) == KEY
    monkeypatch.setenv("OTHER_KEY", base64.b64encode(KEY).decode())
    assert load_key(None, env="OTHER_KEY") == KEY


def test_no_key_means_none(monkeypatch):
    monkeypatch.delenv("FACEGATE_STORE_KEY", raising=False)
    assert load_key(None) is None


@pytest.mark.parametrize("content", [b"", b"short", KEY.hex()[:-2].encode(), b"z" * 64,
                                     base64.b64encode(KEY[:16]), os.urandom(33)])
def test_bad_keys_are_refused(tmp_path, content):
    path = tmp_path / "k"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(StoreError, match=r"not a store key|repeated byte"):
        load_key(str(path))


def test_placeholder_key_refused():
    with pytest.raises(StoreError, match="repeated byte"):
        parse_key(bytes(32), "test")


@pytest.mark.parametrize("content", [b"password1234password1234password", b"ab" * 16, ("0102030405" * 7)[:64].encode(),
                                     bytes.fromhex("abcd" * 16).hex().encode()])
def test_typed_and_patterned_keys_are_refused(tmp_path, monkeypatch, content):
    """A passphrase of 32 typed characters (taken as raw bytes before) and short repeated patterns are not random
    keys, whichever way they are given."""
    path = tmp_path / "k"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(StoreError, match=r"passphrase|pattern"):
        load_key(str(path))
    monkeypatch.setenv("FACEGATE_STORE_KEY", content.decode())
    with pytest.raises(StoreError, match=r"passphrase|pattern"):
        load_key(None)
    assert len(parse_key(new_key().encode(), "fresh")) == 32  # what `store keygen` makes passes


def test_empty_env_and_missing_file(monkeypatch, tmp_path):
    monkeypatch.setenv("FACEGATE_STORE_KEY", " ")
    with pytest.raises(StoreError, match="set but empty"):
        load_key(None)
    with pytest.raises(StoreError, match="cannot read key file"):
        load_key(str(tmp_path / "absent.key"))


def _key(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new_key())
    path.chmod(0o600)
    return str(path)


def test_key_file_in_the_store_folder_refused(tmp_path):
    store = tmp_path / "data" / "facegate.db"
    for inside in (tmp_path / "data" / "store.key", tmp_path / "data" / "keys" / "deep" / "store.key"):
        with pytest.raises(StoreError, match="in the store's folder"):
            load_key(_key(inside), store=store)
    assert len(load_key(_key(tmp_path / "secrets" / "store.key"), store=store) or b"") == 32


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_key_file_others_can_read_is_refused(tmp_path, mode):
    path = _key(tmp_path / "secrets" / "store.key")
    os.chmod(path, mode)
    with pytest.raises(StoreError, match="chmod 600"):
        load_key(path)


def test_seal_binds_to_row_and_key():
    cipher = Cipher(KEY)
    a = cipher.seal(b"vector bytes", b"template\0alice\0sface")
    assert a != cipher.seal(b"vector bytes", b"template\0alice\0sface")  # fresh nonce every time
    assert b"vector bytes" not in a
    assert cipher.open(a, b"template\0alice\0sface") == b"vector bytes"
    with pytest.raises(StoreError, match="cannot decrypt"):
        cipher.open(a, b"template\0bob\0sface")  # moved to another identity's row
    with pytest.raises(StoreError, match="cannot decrypt"):
        Cipher(bytes(range(2, 34))).open(a, b"template\0alice\0sface")
    tampered = a[:-1] + bytes([a[-1] ^ 1])
    with pytest.raises(StoreError, match="cannot decrypt"):
        cipher.open(tampered, b"template\0alice\0sface")
    with pytest.raises(StoreError, match="truncated"):
        cipher.open(a[:10], b"x")
