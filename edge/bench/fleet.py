"""`facegate bench fleet --doors N --gallery M`: gallery sync measured end to end on loopback.

What runs: a hub (`facegate hub run`) and N doors (`facegate fleet sync`: a door's sync without camera or
models), each a process of its own, over mosquitto brokers bridged as a building would be: one hub broker and
one broker per site, every site broker bridged to the hub's (records and manifest in, acknowledgements and events
out), doors spread over the sites. The hub's store gets M identities (random unit vectors under the default
embedder's manifest: sync moves templates and never computes one) in one transaction before the hub starts.

What is measured, from the moment the change committed in the hub's store to the moment each door's
acknowledgement of the new revision reached the benchmark (on the hub broker, through the bridge: an upper
bound of the door's own apply time):
- upsert: a new identity enrolled, `--changes` times, one after the other;
- revoke: an identity deleted, `--changes` times;
- catch-up: one door killed (SIGKILL), `--offline-changes` changes made (enrolments and deletions, each its
  own transaction), the other doors left to take them (`others_in_step_s`), the door started again: the time
  until its acknowledgement shows the hub's revision and hash, from the process start (import and connection
  included) and from its first acknowledgement;
- at the end, every door's hash (its acknowledgement, and its store read directly) against the hub's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from tqdm import tqdm

from edge.errors import FacegateError
from edge.mqtt.broker import HOST, Mosquitto, free_port

PREFIX = "facegate-fleet"


def _toml(data: dict[str, Any]) -> str:
    lines = [f"{k} = {json.dumps(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, values in data.items():
        if isinstance(values, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


class _Acks:
    """Every door's acknowledgements (and the hub's manifests) as they reach the hub broker."""

    def __init__(self, port: int) -> None:
        self.cond = threading.Condition()
        self.acks: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        self.manifests: dict[str, dict[str, Any]] = {}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-fleet-{os.getpid()}")
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe([(f"{PREFIX}/+/ack/+", 1), (f"{PREFIX}/+/manifest", 1)])
        self.client.connect(HOST, port)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        t = time.monotonic()
        try:
            doc = json.loads(m.payload)
        except (ValueError, UnicodeDecodeError):
            return
        with self.cond:
            if m.topic.endswith("/manifest"):
                signed = json.loads(doc["signed"])
                self.manifests[signed["site"]] = signed
            else:
                self.acks.setdefault(doc.get("device", "?"), []).append((t, doc))
            self.cond.notify_all()

    def latest(self, device: str) -> dict[str, Any] | None:
        with self.cond:
            got = self.acks.get(device)
            return got[-1][1] if got else None

    def first_at(self, device: str, rev: int, after: float) -> float | None:
        with self.cond:
            for t, doc in self.acks.get(device, []):
                if t >= after and doc.get("rev", 0) >= rev:
                    return t
        return None

    def wait(self, predicate: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.2))
            return True

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as err:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "edge.cli", *argv], env=env, stdout=subprocess.DEVNULL,
                                stderr=err)


def _status(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/v1/status", timeout=30) as r:
        return json.loads(r.read())


def run(doors: int = 20, gallery: int = 10000, sites: int = 2, changes: int = 20, offline_changes: int = 1000,
        timeout_s: float = 600.0, keep: Path | None = None, progress: bool = True) -> dict[str, Any]:
    from edge.fleet.keys import keygen
    from edge.models.registry import Registry
    from edge.store.db import Store, TemplateIn

    if doors < 1 or gallery < 1 or not 1 <= sites <= 8:
        raise FacegateError("bench fleet: --doors and --gallery at least 1, --sites 1 to 8")
    root = Path(tempfile.mkdtemp(prefix="facegate-bench-fleet-")) if keep is None else Path(keep)
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}
    site_names = [f"site-{chr(97 + i)}" for i in range(sites)]
    keys = keygen(root / "keys", site_names)
    # Templates under the model a door runs when [models] names none (the doors here have no [models]), so
    # they are applied, not refused as another model's.
    registry = Registry()
    model = registry.default_embedder()
    sha = registry.manifest(model).sha256
    rng = np.random.default_rng(19)

    def vec(n: int) -> np.ndarray:
        v = rng.standard_normal((n, 128)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    brokers: list[Mosquitto] = []
    procs: dict[str, subprocess.Popen[bytes]] = {}
    acks: _Acks | None = None
    result: dict[str, Any] = {"doors": doors, "gallery": gallery, "sites": sites, "brokers": sites + 1}
    try:
        # -- brokers: the hub's, and one per site bridged to it ----------------------------------------------
        hub_broker = Mosquitto(root / "broker-hub").start()
        brokers.append(hub_broker)
        site_ports = {}
        for site in site_names:
            b = Mosquitto(root / f"broker-{site}")
            b.config = b._config() + "\n".join([
                "connection hub", f"address {HOST}:{hub_broker.port}", "cleansession false",
                f"remote_clientid bridge-{site}", "bridge_protocol_version mqttv311", "restart_timeout 1 5",
                f"topic {PREFIX}/{site}/records in 1", f"topic {PREFIX}/{site}/manifest in 1",
                f"topic {PREFIX}/{site}/ack/+ out 1", "topic facegate/+/event out 1"]) + "\n"
            b.start()
            brokers.append(b)
            site_ports[site] = b.port
        acks = _Acks(hub_broker.port)

        # -- the hub's store, then the hub -------------------------------------------------------------------
        hub_db = root / "hub" / "people.db"
        t = time.monotonic()
        with Store(hub_db) as store:
            people = {f"person-{i:06d}": [TemplateIn(vector=v, embedder=model, manifest_sha256=sha) for v in vec(2)]
                      for i in range(gallery)}
            store.enroll_many(people, command="bench fleet")
        result["seed_s"] = round(time.monotonic() - t, 2)
        http_port = free_port()
        hub_url = f"http://{HOST}:{http_port}"
        common = {"profile": "kiosk", "log": {"level": "warning"}}
        hub_cfg = {**common, "store": {"path": str(hub_db)},
                   "mqtt": {"host": HOST, "port": hub_broker.port, "device": "hub", "reconnect_min_s": 0.1,
                            "reconnect_max_s": 1.0, "outbox_path": str(root / "hub" / "outbox.db")},
                   "hub": {"sites": site_names, "signing_key_file": keys["signing_key_file"],
                           "site_keys_dir": str(root / "keys"), "journal_path": str(root / "hub" / "journal.db"),
                           "listen": f"{HOST}:{http_port}", "poll_s": 0.02, "manifest_interval_s": 5.0}}
        (root / "hub.toml").write_text(_toml(hub_cfg))
        procs["hub"] = _spawn(["hub", "run", "--config", str(root / "hub.toml")], env, root / "hub.log")
        t = time.monotonic()
        while True:
            try:
                status = _status(hub_url)
                break
            except OSError:
                if procs["hub"].poll() is not None or time.monotonic() - t > timeout_s:
                    raise FacegateError(f"the hub did not start: {(root / 'hub.log').read_text()[-2000:]}") from None
                time.sleep(0.2)
        result["hub_first_batch_s"] = round(time.monotonic() - t, 2)

        # -- the doors ---------------------------------------------------------------------------------------
        device_site = {f"door{i + 1:02d}": site_names[i % sites] for i in range(doors)}

        def start_door(device: str) -> None:
            site = device_site[device]
            cfg = {**common, "store": {"path": str(root / device / "door.db")},
                   "mqtt": {"host": HOST, "port": site_ports[site], "device": device, "reconnect_min_s": 0.1,
                            "reconnect_max_s": 1.0, "outbox_path": str(root / device / "outbox.db")},
                   "fleet": {"enabled": True, "site": site, "hub_url": hub_url, "public_key": keys["public_key"],
                             "site_key_file": keys[f"site_key:{site}"], "poll_s": 30.0}}
            (root / f"{device}.toml").write_text(_toml(cfg))
            procs[device] = _spawn(["fleet", "sync", "--config", str(root / f"{device}.toml")], env,
                                   root / f"{device}.log")

        def in_step(device: str) -> bool:
            a = acks.latest(device)  # type: ignore[union-attr]
            m = acks.manifests.get(device_site[device])  # type: ignore[union-attr]
            return a is not None and m is not None and a["rev"] == m["rev"] and a["hash"] == m["hash"]

        t = time.monotonic()
        for device in device_site:
            start_door(device)
        bar = tqdm(total=doors, desc="doors loading the gallery", disable=not progress)
        done: set[str] = set()
        while len(done) < doors:
            acks.wait(lambda done=done: any(in_step(d) for d in set(device_site) - done), 5.0)
            now_done = {d for d in device_site if in_step(d)}
            bar.update(len(now_done - done))
            done |= now_done
            if time.monotonic() - t > timeout_s:
                raise FacegateError(f"doors not in step after {timeout_s} s: {sorted(set(device_site) - done)}")
        bar.close()
        result["initial_sync_s"] = round(time.monotonic() - t, 2)

        # -- upserts and revocations, one at a time ------------------------------------------------------------
        def measure(kind: str, count: int) -> list[float]:
            lat: list[float] = []
            with Store(hub_db) as store:
                for i in tqdm(range(count), desc=kind, disable=not progress):
                    before = {s: acks.manifests[s]["rev"] for s in site_names}  # type: ignore[union-attr]
                    if kind == "upsert":
                        store.enroll(f"new-{kind}-{i:04d}", [TemplateIn(vector=v, embedder=model,
                                                                        manifest_sha256=sha) for v in vec(2)],
                                     command="bench fleet")
                    else:
                        store.delete(f"person-{i:06d}", command="bench fleet")
                    t0 = time.monotonic()
                    acks.wait(lambda b=before: all(acks.manifests[s]["rev"] > b[s] for s in site_names), 30)  # type: ignore[union-attr]
                    target = {s: acks.manifests[s]["rev"] for s in site_names}  # type: ignore[union-attr]
                    acks.wait(lambda tg=target, t0=t0: all(  # type: ignore[union-attr]
                        acks.first_at(d, tg[device_site[d]], t0) is not None for d in device_site), 60)  # type: ignore[union-attr]
                    for d in device_site:
                        at = acks.first_at(d, target[device_site[d]], t0)  # type: ignore[union-attr]
                        lat.append((at - t0) * 1e3 if at is not None else float("inf"))
            return lat

        for kind in ("upsert", "revoke"):
            lat = measure(kind, changes)
            finite = [v for v in lat if np.isfinite(v)]
            result[kind] = {"samples": len(lat), "missing": len(lat) - len(finite), "p50_ms": _pct(finite, 50),
                            "p99_ms": _pct(finite, 99), "max_ms": round(max(finite), 1) if finite else None}

        # -- a door offline during many changes ----------------------------------------------------------------
        victim = "door01"
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait()
        offline_rev_before = acks.manifests[device_site[victim]]["rev"]
        with Store(hub_db) as store:
            for i in tqdm(range(offline_changes), desc="changes while door01 is offline", disable=not progress):
                if i % 2 == 0:
                    store.enroll(f"offline-{i:05d}", [TemplateIn(vector=v, embedder=model, manifest_sha256=sha)
                                                      for v in vec(2)], command="bench fleet")
                else:
                    store.delete(f"person-{changes + i:06d}", command="bench fleet")
        # settle: the hub has published everything (its revision stops moving)
        last, stable_since = -1, time.monotonic()
        while time.monotonic() - stable_since < 1.0:
            rev = _status(hub_url)["sites"][device_site[victim]]["rev"]
            if rev != last:
                last, stable_since = rev, time.monotonic()
            time.sleep(0.1)
        # ... and the other doors hold it too: they take the same changes meanwhile (a batch too large to keep
        # means a snapshot for each of them), and the catch-up measured is one door's, not a contest for the CPU
        # with 19 others loading snapshots at the same moment.
        t = time.monotonic()
        others = set(device_site) - {victim}
        settled = acks.wait(lambda: all(in_step(d) for d in others), timeout_s)
        result["others_in_step_s"] = round(time.monotonic() - t, 2)
        if not settled:
            raise FacegateError(f"doors not in step after {timeout_s} s: {sorted(d for d in others if not in_step(d))}")
        t_start = time.monotonic()
        start_door(victim)
        ok = acks.wait(lambda: in_step(victim) and acks.first_at(victim, last, t_start) is not None, 120)
        t_done = time.monotonic()
        first = next((t for t, _ in acks.acks.get(victim, []) if t >= t_start), None)
        victim_ack = acks.latest(victim) or {}
        result["catch_up"] = {"changes": offline_changes, "batches": last - offline_rev_before, "converged": ok,
                              "from_process_start_s": round(t_done - t_start, 2),
                              "from_first_ack_s": round(t_done - first, 2) if first else None,
                              "via": "snapshot" if victim_ack.get("snapshots") else "batches"}

        # -- every door's hash against the hub's --------------------------------------------------------------------
        time.sleep(0.5)
        status = _status(hub_url)
        hub_hash = {s: v["hash"] for s, v in status["sites"].items()}
        from edge.store import fleet as fstore

        mismatched = []
        for device, site in device_site.items():
            a = acks.latest(device) or {}
            with Store(root / device / "door.db", create=False) as s:
                st = fstore.state(s)
            if a.get("hash") != hub_hash[site] or st.hash != hub_hash[site]:
                mismatched.append(device)
        result["hashes_equal"] = not mismatched
        result["mismatched"] = mismatched
        result["hub"] = {s: {"rev": v["rev"], "count": v["count"], "hash": v["hash"][:16]}
                         for s, v in status["sites"].items()}
        result["folder"] = str(root) if keep is not None else None
        return result
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        if acks is not None:
            acks.stop()
        for b in brokers:
            b.stop()
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
