"""The keys of a fleet: the hub's Ed25519 signing key (only the hub has it), its public key (every door), and one
AES-256 key per site that seals the templates on the wire (the hub and that site's doors).

Private keys are files readable by their owner only, as ssh requires of its keys: a key file its group or others
may read is refused.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.atomic import atomic_write_bytes
from edge.fleet import FleetError
from edge.store.crypto import load_key, new_key


def _private_file(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as exc:
        raise FleetError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if mode & 0o077:
        raise FleetError(f"{what} {path} can be read by its group or others (mode {stat.S_IMODE(mode):04o}); "
                         f"make it private: chmod 600 {path}")
    return data


def load_signing_key(path: str | Path) -> Ed25519PrivateKey:
    p = Path(path)
    data = _private_file(p, "hub signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise FleetError(f"{p}: not a PEM private key (make one with `facegate hub keygen`)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise FleetError(f"{p}: not an Ed25519 key (make one with `facegate hub keygen`)")
    return key


def public_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The public key as base64 of its 32 raw bytes: what a door's fleet.public_key holds."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return base64.b64encode(pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


def parse_public_key(text: str, origin: str) -> Ed25519PublicKey:
    """base64 of 32 raw bytes, or a PEM public key."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError("not Ed25519")
            return key
        raw = base64.b64decode(text, validate=True)
        if len(raw) != 32:
            raise ValueError(f"{len(raw)} bytes")
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, binascii.Error, UnsupportedAlgorithm) as exc:
        raise FleetError(f"{origin}: not the hub's Ed25519 public key (base64 of 32 bytes, or PEM): {exc}") from None


def load_public_key(value: str, file: str) -> Ed25519PublicKey:
    if file:
        try:
            return parse_public_key(Path(file).read_text(encoding="utf-8"), f"fleet.public_key_file {file}")
        except OSError as exc:
            raise FleetError(f"fleet.public_key_file: cannot read {file} ({exc.strerror or exc})") from None
    return parse_public_key(value, "fleet.public_key")


def load_site_key(path: str | Path, origin: str) -> bytes:
    """A site key file (64 hex characters, like a store key); refused if others may read it."""
    p = Path(path)
    if not p.is_file():
        raise FleetError(f"{origin}: no site key at {p} (make one with `facegate hub keygen --site NAME`)")
    return load_key(p, env="FACEGATE_NO_SUCH_VARIABLE")


def keygen(folder: Path, sites: list[str], force: bool = False) -> dict[str, str]:
    """A new signing key (signing.key, signing.pub) and a key per site (<site>.key) in `folder`, all 0600; an
    existing file is kept unless `force` (a new signing key means every door needs the new public key)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    out: dict[str, str] = {}
    signing = folder / "signing.key"
    if signing.exists() and not force:
        key = load_signing_key(signing)
    else:
        key = Ed25519PrivateKey.generate()
        atomic_write_bytes(signing, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    out["signing_key_file"] = str(signing)
    pub = public_text(key)
    atomic_write_bytes(folder / "signing.pub", (pub + "\n").encode())
    out["public_key"] = pub
    for site in sites:
        path = folder / f"{site}.key"
        if not path.exists() or force:
            atomic_write_bytes(path, (new_key() + "\n").encode())
        out[f"site_key:{site}"] = str(path)
    return out
