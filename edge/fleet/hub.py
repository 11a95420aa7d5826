"""`facegate hub run`: the authoritative store, published to every site's doors as signed, sealed batches.

The hub does not change how people are enrolled: `facegate enroll`, `enroll-dir`, `store delete` and `store
reembed` work on the hub's store ([store] of its configuration) as on a door's. The hub follows that store
(SQLite's data_version, polled every hub.poll_s) and, when it moved, compares each identity with what it last
published (names, metadata, template ids and model files: no vector is read for an unchanged identity). The
differences become one batch per site — tombstones for identities gone (or left without templates), upserts
with the identity's current templates — committed to the journal, then published: QoS 1 on
<prefix>/<site>/records when small enough, and always a signed, retained manifest on <prefix>/<site>/manifest.
The manifest is re-published every hub.manifest_interval_s, signed with the time of the hub's last successful
look at its store: the doors' proof that their gallery is current (fleet.max_gallery_age_s), which a hub whose
sync has stopped cannot give.

Doors that missed something catch up over HTTP (hubhttp.py): batches after their revision, or a snapshot.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import CREDENTIAL_HUB_SIGNING_KEY, Config, ConfigError
from edge.fleet import FleetError
from edge.fleet.journal import Journal, NewBatch
from edge.fleet.keys import load_signing_key, load_site_key
from edge.fleet.link import Link
from edge.fleet.records import (
    VERSION,
    Body,
    canonical,
    entry_digest,
    hash_add,
    hash_sub,
    seal_entry,
    sign,
    tombstone,
)
from edge.paths import state_dir
from edge.ratelimit import LogLimiter, printable
from edge.store.crypto import Cipher
from edge.store.db import Store

log = logging.getLogger(__name__)
limited = LogLimiter(log)
MAX_ACK_BYTES = 65536
MAX_ACKS_PER_TURN = 1000  # acknowledgements handled between two syncs (a flooding door waits, a revocation not)
# The fields of a door's acknowledgement the hub keeps, and their types: anything else a door sends is dropped,
# so what the journal holds is always safe to show (hub status, /v1/status).
ACK_FIELDS: dict[str, type | tuple[type, ...]] = {
    "v": int, "device": str, "site": str, "epoch": str, "rev": int, "hash": str, "count": int, "status": str,
    "refused": dict, "refused_total": int, "refusals": dict, "age_s": (int, float), "batches_applied": int,
    "snapshots": int, "ts": (int, float)}


@dataclass
class Source:
    """An identity of the hub's store as the hub sees it for publishing."""

    name: str
    display_name: str | None
    metadata_text: str
    models: dict[str, str] = field(default_factory=dict)  # embedder → model sha256 (of its first template)
    ids: dict[str, list[int]] = field(default_factory=dict)  # embedder → template ids

    @property
    def metadata(self) -> dict[str, Any]:
        return json.loads(self.metadata_text)

    def key(self) -> tuple[Any, ...]:
        """Cheap to build and compare: what the signature is computed from."""
        return (self.name, self.display_name, self.metadata_text,
                tuple((e, self.models[e], tuple(self.ids[e])) for e in sorted(self.ids)))

    def signature(self) -> str:
        return hashlib.sha256(canonical([self.name, self.display_name, self.metadata, self.models,
                                         self.ids]).encode()).hexdigest()


# The hub's change log in its own store: triggers note the pseudonym of every identity whose row or templates
# change, whoever commits (this process, `facegate enroll`, `store delete`), so a change to one of 10,000
# people is found without reading the other 9,999. Created by the hub in the hub's store only; the hub deletes
# the rows it has published.
CHANGE_LOG = (
    "CREATE TABLE IF NOT EXISTS fleet_changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, pseudonym TEXT)",
    "CREATE TRIGGER IF NOT EXISTS fleet_changes_ti AFTER INSERT ON templates BEGIN INSERT INTO "
    "fleet_changes(pseudonym) SELECT pseudonym FROM identities WHERE id = NEW.identity_id; END",
    "CREATE TRIGGER IF NOT EXISTS fleet_changes_td AFTER DELETE ON templates BEGIN INSERT INTO "
    "fleet_changes(pseudonym) SELECT pseudonym FROM identities WHERE id = OLD.identity_id; END",
    "CREATE TRIGGER IF NOT EXISTS fleet_changes_tu AFTER UPDATE ON templates BEGIN INSERT INTO "
    "fleet_changes(pseudonym) SELECT pseudonym FROM identities WHERE id IN (OLD.identity_id, NEW.identity_id); END",
    "CREATE TRIGGER IF NOT EXISTS fleet_changes_id AFTER DELETE ON identities BEGIN INSERT INTO "
    "fleet_changes(pseudonym) VALUES (OLD.pseudonym); END",
    "CREATE TRIGGER IF NOT EXISTS fleet_changes_iu AFTER UPDATE ON identities BEGIN INSERT INTO "
    "fleet_changes(pseudonym) VALUES (OLD.pseudonym), (NEW.pseudonym); END",
)
FULL_CHECK_S = 600.0  # the whole store is compared with the journal this often too (and at start)


def view(store: Store, scope: set[str] | None = None) -> dict[str, Source]:
    """fleet id (the identity's pseudonym) → Source, for every identity with templates (or those in `scope`).
    An identity with templates of one embedder from two model files publishes only those of the first file seen
    (and says so)."""
    sql = ("SELECT i.pseudonym, i.name, i.display_name, i.metadata, t.embedder, t.manifest_sha256, t.id "
           "FROM identities i JOIN templates t ON t.identity_id = i.id")
    order = " ORDER BY i.id, t.embedder, t.id"
    with store._lock:
        if scope is None:
            rows = store._conn.execute(sql + order).fetchall()
        else:
            ids, rows = sorted(scope), []
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                rows += store._conn.execute(f"{sql} WHERE i.pseudonym IN ({','.join('?' * len(chunk))}){order}",
                                            chunk).fetchall()
    out: dict[str, Source] = {}
    for fid, name, display, meta, embedder, sha, tid in rows:
        src = out.get(fid)
        if src is None:
            src = out[fid] = Source(name, display, meta)
        model = src.models.setdefault(embedder, sha)
        if model != sha:
            log.warning("identity %s has %s templates of two model files; only those of %s… are published (run "
                        "facegate store reembed)", fid, embedder, model[:12])
            continue
        src.ids.setdefault(embedder, []).append(tid)
    return out


def _acceptable(value: Any, kind: type | tuple[type, ...]) -> bool:
    if isinstance(value, bool) or not isinstance(value, kind):
        return False
    if isinstance(value, int):
        return -2**63 <= value < 2**63
    if isinstance(value, float):
        return value == value and abs(value) != float("inf")
    if isinstance(value, str):
        return len(value) <= 200
    if isinstance(value, dict):  # refused / refusals: short names to a short reason or a count
        return len(value) <= 1000 and all(
            isinstance(k, str) and len(k) <= 200 and (_acceptable(v, str) or _acceptable(v, int))
            for k, v in value.items())
    return True


def parse_ack(payload: bytes) -> str | None:
    """A door's acknowledgement as the JSON text the journal keeps (only the known fields, each of its type), or
    None when it is not one. Whatever a door publishes ends here: nothing raises."""
    if len(payload) >= MAX_ACK_BYTES:
        return None
    try:
        doc = json.loads(payload.decode("utf-8", errors="strict"))
    except (ValueError, RecursionError):  # not UTF-8, not JSON, a number too long to convert, nested too deep
        return None
    if not isinstance(doc, dict):
        return None
    kept = {k: doc[k] for k, kind in ACK_FIELDS.items() if k in doc and _acceptable(doc[k], kind)}
    if "rev" not in kept or "hash" not in kept:
        return None
    return json.dumps(kept, sort_keys=True)


def hub_paths(cfg: Config) -> tuple[Path, Path]:
    journal = Path(cfg.hub.journal_path) if cfg.hub.journal_path else state_dir() / "hub-journal.db"
    keys = Path(cfg.hub.site_keys_dir) if cfg.hub.site_keys_dir else state_dir() / "hub-keys"
    return journal, keys


def signing_key_path(cfg: Config) -> Path:
    if cfg.hub.signing_key_file:
        return Path(cfg.hub.signing_key_file)
    import os

    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if directory and (Path(directory) / CREDENTIAL_HUB_SIGNING_KEY).is_file():
        return Path(directory) / CREDENTIAL_HUB_SIGNING_KEY
    raise ConfigError("hub.signing_key_file: the hub needs its signing key (facegate hub keygen makes one), in "
                      "this key or the credential facegate.hub-signing-key")


class Hub:
    def __init__(self, cfg: Config, store: Store | None = None, connect: bool = True) -> None:
        from edge.daemon import open_store

        if not cfg.hub.sites:
            raise ConfigError("hub.sites: name at least one site")
        self.cfg = cfg
        self.prefix = cfg.hub.topic_prefix
        self.key = load_signing_key(signing_key_path(cfg))
        journal_path, keys_dir = hub_paths(cfg)
        self.ciphers = {site: Cipher(load_site_key(keys_dir / f"{site}.key", f"hub.site_keys_dir ({site})"))
                        for site in cfg.hub.sites}
        self.store = store if store is not None else open_store(cfg)
        self._own_store = store is None
        self.journal = Journal(journal_path)
        self._lock = threading.Lock()  # one sync at a time (the loop, a test's sync_now)
        self._version: int | None = None
        # Changes through this process's own connection do not move its data_version: its listeners say so.
        self._dirty = threading.Event()
        self._unsubscribe = self.store.subscribe(lambda *_: self._dirty.set())
        with self.store._write() as (conn, _):
            for statement in CHANGE_LOG:
                conn.execute(statement)
        self._seen_seq = 0
        self._full_at = -1e9  # the first sync compares everything
        # When the journal was last known to say what the store holds: the time manifests are signed with, so a
        # hub whose sync fails (or stops) soon makes the doors' galleries stale instead of vouching for them.
        self.synced_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.published: list[tuple[str, int, float]] = []
        # In-memory copies (loaded from the journal once, kept in step after each commit) and each identity's
        # signature by its cheap key: a change to one of 10,000 people costs a store read, not 10,000 hashes.
        self._signatures: dict[str, tuple[tuple[Any, ...], str]] = {}
        self._sources: dict[str, dict[str, str]] = {}
        self._digests: dict[str, dict[str, str]] = {}  # (site, rev, time committed) of recent batches
        self.on_batch: Callable[[NewBatch], None] | None = None
        self.link: Link | None = None
        if connect:
            settings = cfg.mqtt.resolved()
            client_id = cfg.mqtt.client_id or f"facegate-hub-{settings.device}"
            self.link = Link(settings, client_id, [f"{self.prefix}/{site}/ack/+" for site in cfg.hub.sites],
                             on_connect=self._announce)
        self.http = None

    # -- following the store -----------------------------------------------------------------------------------
    def sync_now(self, force: bool = False) -> list[NewBatch]:
        """Turn what changed in the store since the last call into one batch per site (committed, published)."""
        with self._lock:
            started = time.time()
            made = self._sync(force)
            self.synced_at = started  # what the store held at `started` is in the journal now
            return made

    def _sync(self, force: bool) -> list[NewBatch]:
        version = self.store.data_version()
        if version == self._version and not force and not self._dirty.is_set():
            return []
        self._version = version
        self._dirty.clear()
        with self.store._lock:
            changes = self.store._conn.execute("SELECT seq, pseudonym FROM fleet_changes WHERE seq > ? "
                                               "ORDER BY seq", (self._seen_seq,)).fetchall()
        full = force or time.monotonic() - self._full_at > FULL_CHECK_S
        if not changes and not full:
            return []
        top = changes[-1][0] if changes else self._seen_seq
        scope = None if full else {p for _, p in changes if p}
        if full:
            self._full_at = time.monotonic()
        current = view(self.store, scope)
        signatures = {}
        for fid, src in current.items():
            key = src.key()
            known = self._signatures.get(fid)
            signatures[fid] = known[1] if known is not None and known[0] == key else src.signature()
            self._signatures[fid] = (key, signatures[fid])
        for fid in (set(self._signatures) if scope is None else scope) - set(current):
            self._signatures.pop(fid, None)
        made: list[NewBatch] = []
        cache: dict[str, dict[str, tuple[str, np.ndarray]]] = {}  # templates read once for every site
        for site in self.cfg.hub.sites:
            batch = self._batch(site, current, signatures, cache, scope)
            if batch is not None:
                made.append(batch)
        if made:
            try:
                self.journal.commit(made, self.cfg.hub.keep_batches, self.cfg.hub.max_delta_bytes)
            except BaseException:
                self._sources, self._digests = {}, {}  # reloaded from the journal on the next sync
                raise
            for b in made:
                for fid, sig in b.signatures.items():
                    if sig is None:
                        self._sources[b.site].pop(fid, None)
                    else:
                        self._sources[b.site][fid] = sig
                for fid in b.deletes:
                    self._digests[b.site].pop(fid, None)
                self._digests[b.site].update((fid, digest) for fid, (_, digest) in b.upserts.items())
                log.info("hub: %s rev %d: %d upserts, %d deletions, %d identities", b.site, b.rev,
                         len(b.upserts), len(b.deletes), b.count)
                self.published.append((b.site, b.rev, b.ts))
                self._publish(b)
            del self.published[:-10000]
        if top > self._seen_seq:
            with self.store._write() as (conn, _):  # published (or nothing to publish): forget them
                conn.execute("DELETE FROM fleet_changes WHERE seq <= ?", (top,))
            self._seen_seq = top
        return made

    def _batch(self, site: str, current: dict[str, Source], signatures: dict[str, str],
               cache: dict[str, dict[str, tuple[str, np.ndarray]]], scope: set[str] | None) -> NewBatch | None:
        if site not in self._sources:
            self._sources[site] = self.journal.sources(site)
            self._digests[site] = self.journal.entry_digests(site)
        known = self._sources[site]
        signatures = dict(signatures)
        gone = sorted((set(known) if scope is None else scope & set(known)) - set(current))
        changed = sorted(fid for fid, sig in signatures.items() if known.get(fid) != sig)
        if not gone and not changed:
            return None
        state = self.journal.site(site)
        rev, ts = state.rev + 1, time.time()
        digests = self._digests[site]
        h, count = state.hash, state.count
        entries: list[dict[str, Any]] = []
        upserts: dict[str, tuple[str, str]] = {}
        for fid in gone:
            entries.append(tombstone(fid, rev))
            if fid in digests:
                h, count = hash_sub(h, site, fid, digests[fid]), count - 1
        for fid in changed:
            src = current[fid]
            if fid not in cache:
                self._read(current, changed, cache)
            templates = cache[fid]
            if not templates:  # deleted between the view and this read: the next poll sends its tombstone
                signatures.pop(fid)
                continue
            entry = seal_entry(self.ciphers[site], site, fid, rev,
                               Body(src.name, src.display_name, src.metadata, templates))
            digest = entry_digest(entry)
            if fid in digests:
                h, count = hash_sub(h, site, fid, digests[fid]), count - 1
            h, count = hash_add(h, site, fid, digest), count + 1
            entries.append(entry)
            upserts[fid] = (canonical(entry), digest)
        doc = {"v": VERSION, "kind": "batch", "site": site, "epoch": self.journal.epoch, "rev": rev, "ts": ts,
               "hash": h, "count": count, "entries": entries}
        sigs: dict[str, str | None] = {fid: None for fid in gone}
        sigs.update({fid: signatures[fid] for fid in changed if fid in signatures})
        return NewBatch(site, rev, ts, h, count, sign(self.key, doc), upserts, gone, sigs)

    def _read(self, current: dict[str, Source], changed: list[str],
              cache: dict[str, dict[str, tuple[str, np.ndarray]]]) -> None:
        """The current templates of the changed identities into `cache`: one identity's rows at a time for a few,
        one pass over each embedder's templates for many (a first publication of 10,000 people)."""
        todo = [fid for fid in changed if fid not in cache]
        by_id: dict[int, np.ndarray] = {}
        if len(todo) > 50:
            for embedder in {e for fid in todo for e in current[fid].ids}:
                by_id.update((tid, v) for _, tid, v in self.store.templates(embedder))
        for fid in todo:
            src = current[fid]
            templates: dict[str, tuple[str, np.ndarray]] = {}
            for embedder, ids in src.ids.items():
                if len(todo) <= 50:
                    by_id.update((tid, v) for _, tid, v in self.store.templates(embedder, src.name))
                rows = [by_id[t] for t in ids if t in by_id]
                if rows:
                    templates[embedder] = (src.models[embedder], np.stack(rows))
            cache[fid] = templates

    # -- publishing --------------------------------------------------------------------------------------------
    def manifest(self, site: str) -> bytes:
        s = self.journal.site(site)
        return sign(self.key, {"v": VERSION, "kind": "manifest", "site": site, "epoch": self.journal.epoch,
                               "rev": s.rev, "ts": self.synced_at, "hash": s.hash, "count": s.count})

    def _publish(self, b: NewBatch) -> None:
        if self.link is None:
            return
        if len(b.envelope) <= self.cfg.hub.max_delta_bytes:
            self.link.publish(f"{self.prefix}/{b.site}/records", b.envelope)
        else:  # the doors pull it over HTTP when the manifest shows the new revision
            log.info("hub: %s rev %d is %d bytes (> hub.max_delta_bytes): announced by the manifest only", b.site,
                     b.rev, len(b.envelope))
        self.link.publish(f"{self.prefix}/{b.site}/manifest", self.manifest(b.site), retain=True)

    def _announce(self) -> None:
        for site in self.cfg.hub.sites:
            self.link.publish(f"{self.prefix}/{site}/manifest", self.manifest(site), retain=True)  # type: ignore[union-attr]

    def _take_acks(self) -> None:
        """Record the doors' acknowledgements waiting in the inbox: at most MAX_ACKS_PER_TURN a turn (a door
        flooding its ack topic must not keep the loop from syncing), only the latest of each door, all in one
        transaction. Anything that is not a well-formed acknowledgement is dropped with one log line."""
        if self.link is None:
            return
        latest: dict[tuple[str, str], str] = {}
        for _ in range(MAX_ACKS_PER_TURN):
            m = self.link.get(0)
            if m is None:
                break
            parts = m.topic.split("/")
            if len(parts) < 3 or parts[-2] != "ack" or parts[-3] not in self.ciphers:
                continue
            site, device = parts[-3], parts[-1]
            ack = parse_ack(m.payload)
            if ack is None:
                limited.warning("ack", "hub: %s/%s sent an acknowledgement that is not one (%d bytes): ignored",
                                site, printable(device, 64), len(m.payload))
                continue
            latest[(site, device)] = ack
        if latest:
            self.journal.record_acks([(site, device, ack) for (site, device), ack in latest.items()])

    # -- running -----------------------------------------------------------------------------------------------
    def start(self) -> None:
        from edge.fleet.hubhttp import HubServer

        self.sync_now(force=True)
        self.http = HubServer(self)
        self.http.start()
        if self.link is not None:
            self.link.start()
        self._thread = threading.Thread(target=self._loop, name="fleet-hub", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        last_manifest = time.monotonic()
        while not self._stop.wait(self.cfg.hub.poll_s):
            # Everything inside the try: a store read, a journal write or the broker failing must not end this
            # thread (the HTTP side would go on serving an old revision). Should it fail on every turn, the
            # manifests keep the time of the last good sync and the doors fail secure.
            try:
                self.sync_now()
            except Exception as exc:  # tried again every poll_s: one line now and then, the traceback in debug
                limited.log(logging.ERROR, "sync", "hub: sync failed (%s: %s); manifests keep the time of the last "
                            "good sync (%.0f s ago)", type(exc).__name__, exc, time.time() - self.synced_at)
                log.debug("hub: sync failed", exc_info=True)
            try:
                self._take_acks()
                if time.monotonic() - last_manifest >= self.cfg.hub.manifest_interval_s and self.link is not None:
                    self._announce()
                    last_manifest = time.monotonic()
            except Exception as exc:
                limited.log(logging.ERROR, "acks", "hub: recording acknowledgements or announcing failed (%s: %s)",
                            type(exc).__name__, exc)
                log.debug("hub: acknowledgements or announcement failed", exc_info=True)

    def run(self) -> int:
        import signal

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
            signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        self.start()
        host, port = self.http.address  # type: ignore[union-attr]
        log.info("hub running: sites %s, HTTP on %s:%d, epoch %s", ", ".join(self.cfg.hub.sites), host, port,
                 self.journal.epoch)
        try:
            while not self._stop.wait(0.5):
                pass
        finally:
            self.close()
        return 0

    @property
    def url(self) -> str:
        """The HTTP(S) address doors catch up from (once started)."""
        host, port = self.http.address  # type: ignore[union-attr]
        return f"{'https' if self.cfg.hub.tls_cert else 'http'}://{host}:{port}"

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        if self.http is not None:
            self.http.stop()
        if self.link is not None:
            self.link.stop()
        self.journal.close()
        self._unsubscribe()
        if self._own_store:
            self.store.close()

    def status(self) -> dict[str, Any]:
        sites = {}
        for site in self.cfg.hub.sites:
            s = self.journal.site(site)
            sites[site] = {"rev": s.rev, "hash": s.hash, "count": s.count, "floor": s.floor, "ts": s.ts}
        doors = []
        for site, device, ack, received in self.journal.doors():
            # Journals of older versions stored acks unchecked: read back through the same check as new ones.
            text = parse_ack(ack.encode("utf-8", errors="replace"))
            doc = json.loads(text) if text is not None else {}
            current = sites.get(site, {})
            doors.append({"site": site, "device": device, "rev": doc.get("rev"), "hash": doc.get("hash"),
                          "in_step": doc.get("rev") == current.get("rev") and doc.get("hash") == current.get("hash"),
                          "refused": doc.get("refused", {}), "received": received})
        return {"epoch": self.journal.epoch, "sites": sites, "doors": doors}


def check(cfg: Config) -> list[str]:
    """The hub's configuration problems, all at once (hub run refuses to start with any)."""
    problems = []
    if not cfg.hub.sites:
        problems.append("hub.sites: name at least one site")
    try:
        load_signing_key(signing_key_path(cfg))
    except (FleetError, ConfigError) as exc:
        problems.append(str(exc))
    _, keys_dir = hub_paths(cfg)
    for site in cfg.hub.sites:
        try:
            load_site_key(keys_dir / f"{site}.key", f"hub.site_keys_dir ({site})")
        except Exception as exc:
            problems.append(str(exc))
    return problems
