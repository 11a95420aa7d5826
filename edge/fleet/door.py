"""A door's gallery sync: signed batches in revision order into the door's own store.

Runs as a thread of the daemon in fleet mode (`[fleet] enabled`), or on its own (`facegate fleet sync`). What
arrives, and what the door does with it:
- a batch for revision applied + 1 of its site and epoch, signed by the hub: applied in one transaction
  (tombstones first, then upserts); the result must hash to what the hub signed, else nothing is written and
  the door loads a snapshot;
- a batch further ahead (a gap: the broker lost something, the door was away): the door asks the hub over HTTP
  for the batches after its revision, or a snapshot if the hub no longer has them;
- an older batch (a replay, or a duplicate after a reconnect) or one of another site: refused and counted;
- anything unsigned or wrongly signed: refused and counted, never applied;
- a manifest (retained; a hint): ahead of the door → catch up; equal, with the same hash → the gallery is
  current as of the manifest's time; equal with another hash → snapshot.
Besides, the door asks the hub over HTTP every fleet.poll_s: correctness never depends on a retained message
reaching it (RabbitMQ keeps retained messages per node) nor on a delta arriving.

An entry whose templates come from a model the door does not run (another embedder, or the same one from
another file) is refused with a status ("unknown_model" / "model_mismatch") in the door's acknowledgement and
`facegate fleet status`; the door keeps the entry's place (so its hash still follows the hub) but no template
of it, and any older templates of that identity are removed with it.

After each change the door publishes a retained acknowledgement on <prefix>/<site>/ack/<device>: revision,
hash, count and refused entries.

Freshness: `age()` is the time since the hub last showed (in a signed manifest, batch or snapshot) that this
door's gallery is current. The daemon denies every grant while it exceeds fleet.max_gallery_age_s.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from edge.config import CREDENTIAL_SITE_KEY, Config, ConfigError, credential
from edge.fleet import FleetError
from edge.fleet.keys import load_public_key, load_site_key
from edge.fleet.link import Link
from edge.fleet.records import Refused, check_entry, entry_digest, open_entry, verify
from edge.ratelimit import LogLimiter, one_line
from edge.store import fleet as fstore
from edge.store.crypto import Cipher
from edge.store.db import Store

log = logging.getLogger(__name__)
limited = LogLimiter(log)
MAX_RESPONSE = 512 * 2**20
HTTP_TIMEOUT_S = 30.0
FUTURE_SKEW_S = 300.0  # a signed time this far ahead of the door's clock is not believed


def door_models(cfg: Config) -> dict[str, str]:
    """embedder → model sha256 of what this door scores with (the configured scorer's embedders)."""
    from edge.match.factory import make_scorer
    from edge.models.registry import Registry

    registry = Registry(Path(cfg.models.model_dir) if cfg.models.model_dir else None)
    scorer = make_scorer(registry, cfg.models.embedder, cfg.models.verifier, fusion=cfg.models.fusion)
    return {e: registry.manifest(e).sha256 for e in scorer.embedders}


def site_key(cfg: Config) -> bytes:
    if cfg.fleet.site_key_file:
        return load_site_key(cfg.fleet.site_key_file, "fleet.site_key_file")
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if directory and credential(CREDENTIAL_SITE_KEY) is not None:
        return load_site_key(Path(directory) / CREDENTIAL_SITE_KEY, "credential facegate.site-key")
    raise ConfigError("fleet.site_key_file: a fleet door needs its site's key (from `facegate hub keygen`), in "
                      "this key or the credential facegate.site-key")


def check(cfg: Config) -> None:
    """What fleet mode needs, short of connecting (`facegate run --check`): the hub's public key, the site key
    (readable, private), the TLS files for an https hub, and the models whose templates the door accepts."""
    f = cfg.fleet
    if not f.enabled:
        return
    load_public_key(f.public_key, f.public_key_file)
    site_key(cfg)
    if f.hub_url.startswith("https://"):
        try:
            context = ssl.create_default_context(cafile=f.hub_ca or None)
            if f.hub_cert:
                context.load_cert_chain(f.hub_cert, f.hub_key)
        except (OSError, ValueError) as exc:
            raise FleetError(f"fleet.hub_ca / hub_cert: unusable TLS files ({exc})") from None
    door_models(cfg)


def _batches_reply(body: bytes) -> tuple[int, list[str]] | None:
    """(hub revision, envelopes) of a /batches reply, or None if it is not one (the reply itself is unsigned:
    only its envelopes are checked further)."""
    try:
        reply = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(reply, dict):
        return None
    rev, batches = reply.get("rev"), reply.get("batches") or []
    if isinstance(rev, bool) or not isinstance(rev, int) or not isinstance(batches, list):
        return None
    if not all(isinstance(b, str) for b in batches):
        return None
    return rev, batches


class DoorSync:
    def __init__(self, cfg: Config, models: dict[str, str] | None = None, connect: bool = True) -> None:
        from edge.daemon import open_store

        f = cfg.fleet
        if not f.enabled:
            raise ConfigError("fleet.enabled: this door is not in fleet mode")
        self.cfg = cfg
        self.site = f.site
        self.prefix = f.topic_prefix
        self.public_key = load_public_key(f.public_key, f.public_key_file)
        self.cipher = Cipher(site_key(cfg))
        self.models = models if models is not None else door_models(cfg)
        # Its own connection to the store: the daemon follows these commits as any other process's.
        self.store: Store = open_store(replace(cfg, store=replace(cfg.store, create=True)))
        self.state = fstore.state(self.store)
        self.refusals: Counter[str] = Counter()
        self._erase_pending = False  # batches applied with deletions whose WAL is not emptied yet
        self.applied_batches = 0
        self.snapshots = 0
        self._confirmed = self.state.confirmed
        self._persisted_confirmed = self.state.confirmed
        # The same confirmation on the monotonic clock (None until this process confirms): a wall clock set back
        # (by hand, or by a spoofed time server) must not make a gallery nobody confirms look current again.
        self._confirmed_mono: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._ssl = self._ssl_context()
        self.link: Link | None = None
        self.device = cfg.mqtt.resolved().device
        if connect:
            settings = cfg.mqtt.resolved()
            client_id = f.client_id or f"{settings.effective_client_id}-fleet"
            self.link = Link(settings, client_id, [f"{self.prefix}/{self.site}/records",
                                                   f"{self.prefix}/{self.site}/manifest"],
                             persistent=True, on_connect=self._wake.set)
        self._ack_due = True
        self._closed = False

    def _ssl_context(self) -> ssl.SSLContext | None:
        f = self.cfg.fleet
        if not f.hub_url.startswith("https://"):
            return None
        try:
            context = ssl.create_default_context(cafile=f.hub_ca or None)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            if f.hub_cert:
                context.load_cert_chain(f.hub_cert, f.hub_key)
        except (OSError, ValueError) as exc:
            raise FleetError(f"fleet.hub_ca / hub_cert: unusable TLS files ({exc})") from None
        return context

    # -- freshness ---------------------------------------------------------------------------------------------
    def age(self) -> float | None:
        """Seconds since the hub last showed this gallery to be current; None if it never has."""
        if self._confirmed <= 0:
            return None
        age = max(0.0, time.time() - self._confirmed)
        if self._confirmed_mono is not None:  # whichever clock says older: a clock set back cannot rejuvenate
            age = max(age, time.monotonic() - self._confirmed_mono)
        return age

    def problem(self) -> str | None:
        """The daemon's "gallery" problem (no grants), or None."""
        limit = self.cfg.fleet.max_gallery_age_s
        age = self.age()
        if age is None:
            return f"gallery: never synced with the fleet hub ({self.cfg.fleet.hub_url}); no grants until it has"
        if age > limit:
            return (f"gallery: the fleet gallery was last confirmed current {age:.0f} s ago (fleet.max_gallery_age_s "
                    f"= {limit:.0f}); no grants until the hub is reached")
        return None

    def _confirm(self, ts: float) -> None:
        ts = min(ts, time.time() + FUTURE_SKEW_S)
        if ts <= self._confirmed:
            return
        self._confirmed = ts
        self._confirmed_mono = time.monotonic() - max(0.0, time.time() - ts)
        # Persisted now and then (a restarted door keeps its age), not on every manifest: each write wakes the
        # daemon's gallery follower.
        if ts - self._persisted_confirmed >= min(60.0, self.cfg.fleet.max_gallery_age_s / 10):
            fstore.confirm(self.store, ts)
            self._persisted_confirmed = ts

    # -- applying ----------------------------------------------------------------------------------------------
    def _changes(self, doc: dict[str, Any], held: dict[str, tuple[int, str, str]] | None = None) -> list[fstore.Change]:
        """The entries of a batch or snapshot, checked, and opened where they are to be used; an entry the door
        already holds at the same revision and digest (most of a snapshot) is not opened again."""
        changes = []
        seen: set[str] = set()
        for raw in doc["entries"]:
            entry = check_entry(raw, doc["rev"])
            if entry["id"] in seen:
                raise Refused("malformed", f"entry {entry['id']} twice in one {doc['kind']}")
            seen.add(entry["id"])
            digest = entry_digest(entry)
            if held is not None and held.get(entry["id"], (0, "", ""))[:2] == (entry["rev"], digest):
                changes.append(fstore.Change(entry["id"], entry["rev"], digest, "held"))
                continue
            if entry["op"] == "delete":
                if doc["kind"] == "snapshot":
                    raise Refused("malformed", "a tombstone in a snapshot")
                changes.append(fstore.Change(entry["id"], entry["rev"], digest, "deleted"))
                continue
            status = self._model_status(entry["models"])
            body = None
            if status == "ok":
                try:
                    body = open_entry(self.cipher, self.site, entry)
                except Refused as exc:
                    status = exc.reason  # kept in place (the hash follows the hub) but unusable: and said so
                    limited.warning(f"entry:{exc.reason}", "fleet: %s", exc.detail)
            changes.append(fstore.Change(entry["id"], entry["rev"], digest, status, body))
        return changes

    def _model_status(self, models: dict[str, str]) -> str:
        for embedder, sha in models.items():
            if embedder not in self.models:
                return "unknown_model"
            if self.models[embedder] != sha:
                return "model_mismatch"
        if set(self.models) - set(models):
            return "unknown_model"  # a template set that misses an embedder this door scores with
        return "ok"

    def _refuse(self, exc: Refused, what: str) -> None:
        self.refusals[exc.reason] += 1
        # A genuine batch the door already holds (it arrived after the same revision came over HTTP) is routine;
        # anything else is worth a warning.
        level = logging.INFO if exc.reason == "old" else logging.WARNING
        limited.log(level, f"refused:{exc.reason}", "fleet: %s refused: %s (%s)", what, exc.reason, exc.detail)

    def _site_document(self, payload: bytes, kind: str) -> dict | None:
        """The hub-signed document of this `kind` for this door's site, or None (refused and logged)."""
        try:
            doc = verify(self.public_key, payload, kind)
            if doc["site"] != self.site:
                raise Refused("wrong_site", f"a {kind} of site {doc['site'][:64]!r}")
        except Refused as exc:
            self._refuse(exc, f"a {kind}")
            return None
        return doc

    def handle_batch(self, payload: bytes) -> bool:
        """Apply a batch from the broker if it is the next revision; True if applied."""
        doc = self._site_document(payload, "batch")
        if doc is None:
            return False
        with self._lock:
            s = self.state
            if doc["epoch"] == s.epoch and doc["rev"] <= s.rev:
                self._refuse(Refused("old", f"rev {doc['rev']} is not above the door's {s.rev} (a replay or a "
                                            f"duplicate)"), "a batch")
                return False
            if doc["epoch"] != s.epoch:
                self._snapshot()  # another journal (or none yet): only its snapshot says the gallery (see _follow)
                return False
            if doc["rev"] > s.rev + 1:
                self._catch_up()
                return False
            if self._apply(doc):
                return True
            self._snapshot()  # a signed batch that does not apply: the hub's snapshot is the truth
            return False

    def _apply(self, doc: dict[str, Any], replace_all: bool = False, erase_now: bool = True) -> bool:
        try:
            changes = self._changes(doc, fstore.entries(self.store) if replace_all else None)
        except Refused as exc:
            self._refuse(exc, f"{doc['kind']} rev {doc['rev']}")
            return False
        try:
            out = fstore.apply(self.store, self.site, doc["epoch"], doc["rev"], doc["hash"], doc["ts"], changes,
                               replace_all=replace_all, erase_now=erase_now)
        except fstore.HashMismatch as exc:
            self._refuse(Refused("hash_mismatch", str(exc)), f"{doc['kind']} rev {doc['rev']}")
            return False
        self.state = out.state
        self._erase_pending |= out.erased and not erase_now
        self._confirm(doc["ts"])
        self._persisted_confirmed = max(self._persisted_confirmed, out.state.confirmed)
        if replace_all:
            self.snapshots += 1
        else:
            self.applied_batches += 1
        for fid, reason in out.refused.items():
            limited.warning(f"model:{reason}", "fleet: entry %s not used here: %s (this door runs %s)", fid, reason,
                            ", ".join(f"{e} {sha[:12]}…" for e, sha in self.models.items()))
        log.info("fleet: %s rev %d applied (%d upserts, %d deletions%s), %d identities", self.site, doc["rev"],
                 out.upserts, out.deletes, f", {len(out.refused)} refused" if out.refused else "", out.state.count)
        self._ack_due = True
        return True

    def handle_manifest(self, payload: bytes) -> None:
        doc = self._site_document(payload, "manifest")
        if doc is None:
            return
        with self._lock:
            self._follow(doc)

    def _follow(self, manifest: dict[str, Any]) -> None:
        s = self.state
        if manifest["epoch"] == s.epoch and manifest["rev"] == s.rev:
            if manifest["hash"] == s.hash:
                self._confirm(manifest["ts"])
            else:
                self._snapshot()
        elif manifest["epoch"] != s.epoch:
            # Another journal (a hub rebuilt or restored), or none yet: revisions of two epochs do not compare, so
            # nothing but its snapshot says what the gallery is — asking for batches "after rev N" of the new
            # journal found none when it stood at the same N, and the door kept people the new journal had
            # deleted. The snapshot is checked for freshness (_snapshot), so a replayed manifest of an old epoch
            # only costs a request.
            self._snapshot()
        elif manifest["rev"] > s.rev:
            self._catch_up()
        # An older manifest of this epoch: stale (a retained copy on another node, a replay); nothing to do.

    # -- HTTP ------------------------------------------------------------------------------------------------
    def _get(self, path: str) -> tuple[int, bytes]:
        """(status, body) from the hub; OSError when nothing usable answered — whoever answers at hub_url may
        speak no HTTP at all, and that is the same to the door as no hub."""
        url = self.cfg.fleet.hub_url.rstrip("/") + path
        try:
            with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S, context=self._ssl) as r:
                return r.status, r.read(MAX_RESPONSE)
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, exc.read(65536)
            except (OSError, http.client.HTTPException):
                return exc.code, b""
        except http.client.HTTPException as exc:  # BadStatusLine, IncompleteRead, …: not an HTTP answer
            raise OSError(f"not an HTTP answer ({type(exc).__name__}: {one_line(exc, 80)})") from None

    def poll(self) -> bool:
        """Ask the hub for its manifest and follow it; False if the hub could not be reached."""
        try:
            code, body = self._get(f"/v1/sites/{self.site}/manifest")
        except (OSError, urllib.error.URLError) as exc:
            limited.warning("http", "fleet: hub %s unreachable (%s)", self.cfg.fleet.hub_url, exc)
            return False
        if code != 200:
            limited.warning("http", "fleet: hub answered %d for the manifest", code)
            return False
        self.handle_manifest(body)
        return True

    def _catch_up(self) -> None:
        """Batches after the door's revision from the hub, in order; a snapshot when they are gone (or of another
        epoch). The write-ahead log is emptied once at the end, not after each batch: a door that was away for a
        thousand changes would otherwise spend most of its catch-up in checkpoints."""
        try:
            self._catch_up_batches()
        finally:
            if self._erase_pending:
                fstore.checkpoint(self.store)
                self._erase_pending = False

    def _catch_up_batches(self) -> None:
        try:
            while self._catch_up_round():
                pass
        except OSError as exc:  # urllib's URLError included
            limited.warning("http", "fleet: catching up from %s failed (%s)", self.cfg.fleet.hub_url, exc)

    def _catch_up_round(self) -> bool:
        """One request for the batches after the door's revision, applied in order; True if it moved the door
        forward (then it asks again). A reply that brings nothing new ends the catch-up: asking again at once would
        only spin for as long as whoever answers keeps replying the same."""
        s = self.state
        code, body = self._get(f"/v1/sites/{self.site}/batches?after={s.rev}")
        if code == 410:
            self._snapshot()
            return False
        if code != 200:
            limited.warning("http", "fleet: hub answered %d for batches", code)
            return False
        reply = _batches_reply(body)
        if reply is None:
            limited.warning("http", "fleet: the hub's batches reply is not {rev: integer, batches: [envelope, …]}")
            return False
        hub_rev, batches = reply
        if not batches:
            if hub_rev < s.rev:  # the hub is behind this door: another journal
                self._snapshot()
            return False
        moved = False
        for env in batches:
            try:
                doc = verify(self.public_key, env, "batch")
            except Refused as exc:
                self._refuse(exc, "a batch from the hub's HTTP")
                return False
            if doc["site"] != self.site or doc["epoch"] != self.state.epoch:
                self._snapshot()
                return False
            if doc["rev"] <= self.state.rev:
                continue
            if doc["rev"] != self.state.rev + 1 or not self._apply(doc, erase_now=False):
                self._snapshot()
                return False
            moved = True
        return moved

    def _snapshot(self) -> None:
        try:
            code, body = self._get(f"/v1/sites/{self.site}/snapshot")
        except (OSError, urllib.error.URLError) as exc:
            limited.warning("http", "fleet: snapshot from %s failed (%s)", self.cfg.fleet.hub_url, exc)
            return
        if code != 200:
            limited.warning("http", "fleet: hub answered %d for the snapshot", code)
            return
        try:
            doc = verify(self.public_key, body, "snapshot")
            if doc["site"] != self.site:
                raise Refused("wrong_site", f"a snapshot of site {doc['site'][:64]!r}")
            if doc["epoch"] == self.state.epoch and doc["rev"] < self.state.rev:
                raise Refused("old", f"snapshot rev {doc['rev']} is below the door's {self.state.rev}")
            if doc["epoch"] != self.state.epoch and doc["ts"] <= self._confirmed:
                # Within an epoch revisions order the documents; across epochs only the hub's signed time
                # does. A snapshot of another epoch signed before the last time this door confirmed its gallery
                # is a recording (an old journal's, replayed by whoever answers for hub_url): applying it would
                # bring back people deleted since.
                raise Refused("replayed", f"a snapshot of another epoch signed {self._confirmed - doc['ts']:.0f} s "
                                     f"before the door's last confirmation")
        except Refused as exc:
            self._refuse(exc, "a snapshot")
            return
        self._apply(doc, replace_all=True)

    # -- acknowledgements and the loop ---------------------------------------------------------------------------
    def ack(self) -> dict[str, Any]:
        s = self.state
        refused = fstore.refused(self.store)
        doc = {"v": 1, "device": self.device, "site": self.site, "epoch": s.epoch, "rev": s.rev, "hash": s.hash,
               "count": s.count, "status": "ok" if not refused else "refused_entries",
               "refused": dict(sorted(refused.items())[:100]), "refused_total": len(refused),
               "refusals": dict(self.refusals), "age_s": self.age(), "batches_applied": self.applied_batches,
               "snapshots": self.snapshots, "ts": time.time()}
        if self.link is not None:
            self.link.publish(f"{self.prefix}/{self.site}/ack/{self.device}", json.dumps(doc), retain=True)
        return doc

    def step(self, timeout: float) -> None:
        """Handle what arrived (or wait up to `timeout` for it)."""
        if self.link is None:
            self._wake.wait(timeout)
            self._wake.clear()
            return
        m = self.link.get(timeout)
        while m is not None:
            if m.topic.endswith("/records"):
                self.handle_batch(m.payload)
            elif m.topic.endswith("/manifest"):
                self.handle_manifest(m.payload)
            m = self.link.get(0)

    def start(self) -> None:
        if self.link is not None:
            self.link.start()
        self._thread = threading.Thread(target=self._loop, name="fleet-sync", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        last_poll = -1e9
        while not self._stop.is_set():
            try:
                if self._wake.is_set() or time.monotonic() - last_poll >= self.cfg.fleet.poll_s:
                    self._wake.clear()
                    self.poll()
                    last_poll = time.monotonic()
                    self._ack_due = True
                self.step(0.2)
                if self._ack_due and self.link is not None and self.link.connected:
                    self._ack_due = False
                    self.ack()
            except Exception:  # the sync must outlive a bug in one message; the door keeps its gallery
                log.exception("fleet: sync step failed")
                time.sleep(0.5)

    def stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        if self.link is not None:
            self.link.stop()
        if self._confirmed > self._persisted_confirmed:
            fstore.confirm(self.store, self._confirmed)
        self.store.close()

    def status(self) -> dict[str, Any]:
        s = self.state
        return {"site": s.site or self.site, "epoch": s.epoch, "rev": s.rev, "hash": s.hash, "count": s.count,
                "age_s": self.age(), "problem": self.problem(), "refused": fstore.refused(self.store),
                "refusals": dict(self.refusals), "batches_applied": self.applied_batches, "snapshots": self.snapshots}
