"""The documents of gallery sync, as they cross the wire.

A hub change becomes a **batch**: one revision of one site, holding one entry per identity that changed —
a tombstone ({"id", "rev", "op": "delete"}) or an upsert ({"id", "rev", "op": "upsert", "models", "body"}).
`models` names the embedders and the sha256 of the model files the templates came from, in clear, so a door can
refuse templates of a model it does not run before it decrypts anything. `body` is AES-256-GCM under the site
key, bound by its associated data to site, identity id, revision and models: it holds the name, display name,
metadata (access windows) and the template vectors. Nothing biometric is readable on the wire.

Three kinds of signed documents, each an envelope {"kind", "signed": canonical JSON text, "sig": base64}:
- batch     {v, kind, site, epoch, rev, ts, hash, count, entries}: QoS 1 on <prefix>/<site>/records, and
            from the hub's HTTP /batches for a door catching up;
- manifest  {v, kind, site, epoch, rev, ts, hash, count}: retained on <prefix>/<site>/manifest and from HTTP;
            a hint and a freshness proof, never the truth;
- snapshot  {v, kind, site, epoch, rev, ts, hash, count, entries}: every live entry, from HTTP only.
The signature (Ed25519) covers a domain string, the kind and the exact signed text, so a manifest can never be
passed off as a batch, nor a document of another protocol as either.

The gallery **hash** of a site is the sum, modulo 2^256, of sha256(site, id, entry digest) over its live
entries: a door updates it entry by entry (a revocation does not rehash 10,000 identities), and two galleries
have the same hash when they hold the same entries at the same revisions.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.store import StoreError
from edge.store.crypto import Cipher

VERSION = 1
KINDS = ("batch", "manifest", "snapshot")
DOMAIN = b"facegate-fleet-v1\0"
EMPTY_HASH = "0" * 64
MOD = 2**256
MAX_TEXT = 200
MAX_TEMPLATES = 1000  # per identity and embedder
MAX_DIM = 4096


class Refused(Exception):
    """A document or entry a door does not apply; `reason` is a stable code (acks, counters), `detail` for people."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _message(kind: str, text: str) -> bytes:
    return DOMAIN + kind.encode() + b"\0" + text.encode()


def sign(key: Ed25519PrivateKey, doc: dict[str, Any]) -> bytes:
    """The envelope of `doc` (whose "kind" says what it is), as bytes to publish or serve."""
    return sign_text(key, doc["kind"], canonical(doc))


def sign_text(key: Ed25519PrivateKey, kind: str, text: str) -> bytes:
    """The envelope of a document already written as JSON text (the text signed is exactly this one)."""
    sig = key.sign(_message(kind, text))
    return canonical({"kind": kind, "signed": text, "sig": base64.b64encode(sig).decode()}).encode()


def verify(key: Ed25519PublicKey, payload: bytes | str, kind: str) -> dict[str, Any]:
    """The signed document inside an envelope of `kind`; Refused if it is malformed, unsigned, of another kind or
    not signed by `key`."""
    try:
        env = json.loads(payload)
    except (ValueError, RecursionError):  # not UTF-8 or JSON, or a number over Python's digit limit
        raise Refused("malformed", "not a JSON envelope") from None
    if not isinstance(env, dict) or not isinstance(env.get("signed"), str):
        raise Refused("unsigned", 'no "signed" text in the envelope')
    if not isinstance(env.get("sig"), str):
        raise Refused("unsigned", 'no "sig" in the envelope')
    if env.get("kind") != kind:
        raise Refused("wrong_kind", f"a {str(env.get('kind'))[:20]!r} document where a {kind} was expected")
    try:
        sig = base64.b64decode(env["sig"], validate=True)
        key.verify(sig, _message(kind, env["signed"]))
    except (binascii.Error, ValueError, InvalidSignature, UnicodeEncodeError):
        raise Refused("bad_signature", f"the {kind} is not signed by the hub's key") from None
    # Authentic from here on: the hub wrote it.
    try:
        doc = json.loads(env["signed"])
    except (ValueError, RecursionError):
        raise Refused("malformed", "the signed text is not JSON") from None
    if not isinstance(doc, dict) or doc.get("v") != VERSION or doc.get("kind") != kind:
        raise Refused("malformed", f"unsupported {kind} (this door reads version {VERSION})")
    for field, tp in (("site", str), ("epoch", str), ("rev", int), ("ts", float | int), ("hash", str), ("count", int)):
        if not isinstance(doc.get(field), tp) or isinstance(doc.get(field), bool):
            raise Refused("malformed", f"{kind}: {field} missing or of the wrong type")
    if kind in ("batch", "snapshot") and not isinstance(doc.get("entries"), list):
        raise Refused("malformed", f"{kind}: no entries list")
    return doc


# -- entries ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Body:
    name: str
    display_name: str | None
    metadata: dict[str, Any]
    templates: dict[str, tuple[str, np.ndarray]]  # embedder → (model sha256, (T, D) float32)


def _aad(site: str, fleet_id: str, rev: int, models: dict[str, str]) -> bytes:
    return b"facegate-fleet-entry\0" + canonical([site, fleet_id, rev, models]).encode()


def seal_entry(cipher: Cipher, site: str, fleet_id: str, rev: int, body: Body) -> dict[str, Any]:
    models = {e: sha for e, (sha, _) in sorted(body.templates.items())}
    plain = {"name": body.name, "display_name": body.display_name, "metadata": body.metadata, "templates": {
        e: {"model": sha, "dim": int(v.shape[1]), "count": int(v.shape[0]),
            "vectors": base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode()}
        for e, (sha, v) in sorted(body.templates.items())}}
    sealed = cipher.seal(canonical(plain).encode(), _aad(site, fleet_id, rev, models))
    return {"id": fleet_id, "rev": rev, "op": "upsert", "models": models, "body": base64.b64encode(sealed).decode()}


def tombstone(fleet_id: str, rev: int) -> dict[str, Any]:
    return {"id": fleet_id, "rev": rev, "op": "delete"}


def check_entry(entry: Any, max_rev: int) -> dict[str, Any]:
    """The entry's shape (not its body); Refused("malformed") otherwise."""
    if not isinstance(entry, dict):
        raise Refused("malformed", "an entry is not an object")
    fid, rev, op = entry.get("id"), entry.get("rev"), entry.get("op")
    if not isinstance(fid, str) or not 0 < len(fid) <= MAX_TEXT or any(ord(c) < 33 for c in fid):
        raise Refused("malformed", "an entry's id is not a short printable string")
    if isinstance(rev, bool) or not isinstance(rev, int) or not 0 < rev <= max_rev:
        raise Refused("malformed", f"entry {fid}: revision {rev!r} is not in 1..{max_rev}")
    if op == "delete":
        return entry
    if op != "upsert":
        raise Refused("malformed", f"entry {fid}: op {str(op)[:20]!r} is neither upsert nor delete")
    models = entry.get("models")
    if not isinstance(models, dict) or not models or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in models.items()):
        raise Refused("malformed", f"entry {fid}: models must map embedder names to sha256")
    if not isinstance(entry.get("body"), str):
        raise Refused("malformed", f"entry {fid}: no sealed body")
    return entry


def open_entry(cipher: Cipher, site: str, entry: dict[str, Any]) -> Body:
    """Decrypt and check an upsert's body; Refused("undecryptable" | "malformed")."""
    fid = entry["id"]
    try:
        sealed = base64.b64decode(entry["body"], validate=True)
        plain = json.loads(cipher.open(sealed, _aad(site, fid, entry["rev"], entry["models"])))
    except (binascii.Error, ValueError, StoreError):
        raise Refused("undecryptable", f"entry {fid}: the body does not open with this site's key") from None
    try:
        name = plain["name"]
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_TEXT or any(ord(c) < 32 for c in name):
            raise ValueError("name")
        display = plain.get("display_name")
        if display is not None and not isinstance(display, str):
            raise ValueError("display_name")
        metadata = plain.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise ValueError("metadata")
        templates: dict[str, tuple[str, np.ndarray]] = {}
        if set(plain["templates"]) != set(entry["models"]):
            raise ValueError("templates do not match models")
        for embedder, t in plain["templates"].items():
            dim, count = int(t["dim"]), int(t["count"])
            if t["model"] != entry["models"][embedder] or not 0 < dim <= MAX_DIM or not 0 < count <= MAX_TEMPLATES:
                raise ValueError(f"templates of {embedder}")
            v = np.frombuffer(base64.b64decode(t["vectors"], validate=True), dtype="<f4")
            if v.size != dim * count or not np.isfinite(v).all():
                raise ValueError(f"vectors of {embedder}")
            templates[embedder] = (t["model"], v.reshape(count, dim).astype(np.float32))
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise Refused("malformed", f"entry {fid}: the body is not a gallery entry ({exc})") from None
    return Body(name, display, metadata, templates)


def entry_digest(entry: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(entry).encode()).hexdigest()


def _term(site: str, fleet_id: str, digest: str) -> int:
    h = hashlib.sha256(b"facegate-gallery\0" + site.encode() + b"\0" + fleet_id.encode() + b"\0" + digest.encode())
    return int.from_bytes(h.digest(), "big")


def hash_add(h: str, site: str, fleet_id: str, digest: str) -> str:
    return format((int(h, 16) + _term(site, fleet_id, digest)) % MOD, "064x")


def hash_sub(h: str, site: str, fleet_id: str, digest: str) -> str:
    return format((int(h, 16) - _term(site, fleet_id, digest)) % MOD, "064x")
