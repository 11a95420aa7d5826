"""Gallery records on their own: signatures that must fail when forged, sealed bodies that only the site key
opens, the incremental gallery hash, and the door's store applying batches atomically (no broker)."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.fleet.records import (
    EMPTY_HASH,
    Body,
    Refused,
    canonical,
    entry_digest,
    hash_add,
    hash_sub,
    open_entry,
    seal_entry,
    sign,
    tombstone,
    verify,
)
from edge.store import fleet as fstore
from edge.store.crypto import Cipher
from edge.store.db import Store, TemplateIn
from tests.fleet_harness import model_sha, vectors

KEY = Ed25519PrivateKey.generate()
SITE_KEY = Cipher(bytes(range(32)))


def _batch(rev: int, entries: list[dict], h: str, count: int, key: Ed25519PrivateKey = KEY, **extra) -> bytes:
    doc = {"v": 1, "kind": "batch", "site": "a", "epoch": "e1", "rev": rev, "ts": 1.0, "hash": h, "count": count,
           "entries": entries, **extra}
    return sign(key, doc)


def _body(name: str, n: int = 2) -> Body:
    return Body(name, None, {"access": ["mon-fri 08:00-18:00"]}, {"sface": (model_sha(), vectors(name, n))})


def test_signatures_hold_and_forgeries_fail() -> None:
    env = _batch(1, [], EMPTY_HASH, 0)
    assert verify(KEY.public_key(), env, "batch")["rev"] == 1
    with pytest.raises(Refused) as exc:  # another key
        verify(Ed25519PrivateKey.generate().public_key(), env, "batch")
    assert exc.value.reason == "bad_signature"
    doc = json.loads(env)
    doc["signed"] = doc["signed"].replace('"rev":1', '"rev":2')  # altered after signing
    with pytest.raises(Refused) as exc:
        verify(KEY.public_key(), json.dumps(doc), "batch")
    assert exc.value.reason == "bad_signature"
    with pytest.raises(Refused) as exc:  # a manifest's envelope is not a batch, whatever it says
        verify(KEY.public_key(), env.replace(b'"kind":"batch"', b'"kind":"manifest"', 1), "manifest")
    assert exc.value.reason in ("bad_signature", "malformed")
    for bad in (b"", b"{", b'{"signed": 1}', b"[" * 100000):
        with pytest.raises(Refused):
            verify(KEY.public_key(), bad, "batch")


def test_templates_are_sealed_with_the_site_key() -> None:
    body = _body("alice")
    entry = seal_entry(SITE_KEY, "a", "id1", 3, body)
    text = canonical(entry)
    assert "alice" not in text and base64.b64encode(body.templates["sface"][1].tobytes()).decode()[:40] not in text
    opened = open_entry(SITE_KEY, "a", entry)
    assert opened.name == "alice" and opened.metadata == body.metadata
    np.testing.assert_array_equal(opened.templates["sface"][1], body.templates["sface"][1])
    for cipher, site, change in ((Cipher(bytes(range(1, 33))), "a", {}), (SITE_KEY, "b", {}),
                                 (SITE_KEY, "a", {"rev": 4}), (SITE_KEY, "a", {"id": "id2"}),
                                 (SITE_KEY, "a", {"models": {"sface": "0" * 64}})):
        with pytest.raises(Refused) as exc:  # another key, site, revision, identity or model: does not open
            open_entry(cipher, site, {**entry, **change})
        assert exc.value.reason == "undecryptable"


def test_the_gallery_hash_is_incremental_and_order_free() -> None:
    digests = {f"id{i}": entry_digest({"id": f"id{i}", "n": i}) for i in range(5)}
    h1 = EMPTY_HASH
    for fid in sorted(digests):
        h1 = hash_add(h1, "a", fid, digests[fid])
    h2 = EMPTY_HASH
    for fid in sorted(digests, reverse=True):
        h2 = hash_add(h2, "a", fid, digests[fid])
    assert h1 == h2 != EMPTY_HASH
    assert hash_sub(h1, "a", "id3", digests["id3"]) != h1
    assert hash_add(hash_sub(h1, "a", "id3", digests["id3"]), "a", "id3", digests["id3"]) == h1
    assert hash_add(EMPTY_HASH, "b", "id0", digests["id0"]) != hash_add(EMPTY_HASH, "a", "id0", digests["id0"])


def _changes(entries: list[dict]) -> list[fstore.Change]:
    out = []
    for e in entries:
        if e["op"] == "delete":
            out.append(fstore.Change(e["id"], e["rev"], entry_digest(e), "deleted"))
        else:
            out.append(fstore.Change(e["id"], e["rev"], entry_digest(e), "ok", open_entry(SITE_KEY, "a", e)))
    return out


def test_the_door_store_applies_batches_whole_or_not_at_all(tmp_path) -> None:
    path = tmp_path / "door.db"
    e1 = [seal_entry(SITE_KEY, "a", f"id{i}", 1, _body(f"p{i}")) for i in range(3)]
    h = EMPTY_HASH
    for e in e1:
        h = hash_add(h, "a", e["id"], entry_digest(e))
    with Store(path) as store:
        store.enroll("local", [TemplateIn(vector=vectors("local", 1)[0], embedder="sface",
                                          manifest_sha256=model_sha())], command="t")
        out = fstore.apply(store, "a", "e1", 1, h, 10.0, _changes(e1))
        assert (out.state.rev, out.state.count, out.state.hash) == (1, 3, h)
        assert {i.name for i in store.identities()} == {"local", "p0", "p1", "p2"}
        # rev 2: delete p1, change p2 — with a wrong hash: nothing is written
        e2 = [tombstone("id1", 2), seal_entry(SITE_KEY, "a", "id2", 2, _body("p2-renamed", 1))]
        with pytest.raises(fstore.HashMismatch):
            fstore.apply(store, "a", "e1", 2, "f" * 64, 11.0, _changes(e2))
        assert fstore.state(store).rev == 1 and {i.name for i in store.identities()} >= {"p1", "p2"}
        h2 = hash_sub(h, "a", "id1", entry_digest(e1[1]))
        h2 = hash_add(hash_sub(h2, "a", "id2", entry_digest(e1[2])), "a", "id2", entry_digest(e2[1]))
        out = fstore.apply(store, "a", "e1", 2, h2, 11.0, _changes(e2))
        assert out.state.count == 2 and {i.name for i in store.identities()} == {"local", "p0", "p2-renamed"}
        assert len(store.templates("sface", "p2-renamed")) == 1
        # a snapshot lists only p0: everything else of the fleet goes (the local enrolment stays)
        out = fstore.apply(store, "a", "e1", 3, hash_add(EMPTY_HASH, "a", "id0", entry_digest(e1[0])), 12.0,
                           _changes([e1[0]]), replace_all=True)
        assert out.state.count == 1 and {i.name for i in store.identities()} == {"local", "p0"}
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("door.db"))
    assert vectors("p1", 2)[0].tobytes() not in raw  # the deleted person's templates left the files
    with Store(path, create=False) as store:  # what a restart reads back
        assert fstore.state(store).rev == 3


def test_the_documents_follow_the_published_schema(tmp_path) -> None:
    """deploy/FLEET.md points to edge/fleet/fleet.schema.json: real envelopes, batches, manifests, snapshots and
    acknowledgements validate against it, and a document that breaks it does not."""
    jsonschema = pytest.importorskip("jsonschema")
    from pathlib import Path

    from edge.fleet.door import DoorSync
    from edge.fleet.hub import Hub
    from tests.fleet_harness import door_config, enrol, hub_config, make_keys

    schema = json.loads((Path(__file__).resolve().parents[2] / "edge/fleet/fleet.schema.json").read_text())
    defs = schema["$defs"]

    def check(doc: dict, name: str) -> None:
        jsonschema.validate(doc, {**defs[name], "$defs": defs})

    keys = make_keys(tmp_path, ["a"])
    hub = Hub(hub_config(tmp_path, keys, 1, ["a"]), connect=False)
    try:
        enrol(hub.store, "alice")
        enrol(hub.store, "bob")
        hub.sync_now()
        hub.store.delete("bob", command="t")
        (batch,) = hub.sync_now()
        for env, kind in ((batch.envelope, "batch"), (hub.manifest("a"), "manifest")):
            outer = json.loads(env)
            check(outer, "envelope")
            check(json.loads(outer["signed"]), kind)
        hub.start()
        d = DoorSync(door_config(tmp_path, keys, 1, "a", "door1", hub.url), connect=False)
        try:
            assert d.poll() and d.state.count == 1
            check(d.ack(), "ack")
        finally:
            d.stop()
        import urllib.request

        with urllib.request.urlopen(hub.url + "/v1/sites/a/snapshot", timeout=10) as r:
            outer = json.loads(r.read())
        check(outer, "envelope")
        snap = json.loads(outer["signed"])
        check(snap, "snapshot")
        with pytest.raises(jsonschema.ValidationError):
            check({**snap, "hash": "xyz"}, "snapshot")
        with pytest.raises(jsonschema.ValidationError):
            check({**snap["entries"][0], "name": "alice"}, "upsert")  # no name beside the sealed body
    finally:
        hub.close()
