"""Helpers for the fleet tests: keys, a hub's and a door's configuration, synthetic templates.

The templates are random unit vectors under the default embedder's name and manifest sha256 (what a door with
no [models] setting scores with): gallery sync moves
templates and never computes one, so real face crops would only slow the tests down (the daemon test that
decides on a synced gallery uses real photos).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import Config, parse
from edge.fleet.keys import keygen
from edge.store.db import Store, TemplateIn

HOST = "127.0.0.1"
_MODEL: tuple[str, str] | None = None


def model() -> tuple[str, str]:
    """(name, manifest sha256) of the registry's default embedder: the model a door runs when none is named."""
    global _MODEL
    if _MODEL is None:
        from edge.models.registry import Registry

        registry = Registry()
        name = registry.default_embedder()
        _MODEL = (name, registry.manifest(name).sha256)
    return _MODEL


def embedder() -> str:
    return model()[0]


def model_sha() -> str:
    return model()[1]


def make_keys(root: Path, sites: list[str]) -> dict[str, str]:
    return keygen(root / "keys", sites)


def hub_config(root: Path, keys: dict[str, str], port: int, sites: list[str], **hub: Any) -> Config:
    return parse({"profile": "kiosk",
                  "store": {"path": str(root / "hub" / "people.db"), "create": True},
                  "mqtt": {"host": HOST, "port": port, "device": "hub", "reconnect_min_s": 0.1,
                           "reconnect_max_s": 0.5, "outbox_path": str(root / "hub" / "outbox.db")},
                  "hub": {"sites": sites, "signing_key_file": keys["signing_key_file"],
                          "site_keys_dir": str(Path(keys["signing_key_file"]).parent),
                          "journal_path": str(root / "hub" / "journal.db"), "listen": f"{HOST}:0",
                          "poll_s": 0.02, "manifest_interval_s": 1.0, **hub}})


def door_dict(root: Path, keys: dict[str, str], port: int, site: str, device: str, hub_url: str,
              **fleet: Any) -> dict[str, Any]:
    return {"profile": "kiosk",
            "store": {"path": str(root / device / "door.db")},
            "mqtt": {"host": HOST, "port": port, "device": device, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5,
                     "outbox_path": str(root / device / "outbox.db")},
            "fleet": {"enabled": True, "site": site, "hub_url": hub_url, "public_key": keys["public_key"],
                      "site_key_file": keys[f"site_key:{site}"], "poll_s": 30.0, **fleet}}


def door_config(*args: Any, **kwargs: Any) -> Config:
    return parse(door_dict(*args, **kwargs))


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    """A TOML file of nested tables of scalars and lists (what the configurations here hold)."""
    lines: list[str] = []
    top = {k: v for k, v in data.items() if not isinstance(v, dict)}
    for k, v in top.items():
        lines.append(f"{k} = {json.dumps(v)}")
    for section, values in data.items():
        if isinstance(values, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def vectors(seed: str, n: int = 2, dim: int = 128) -> np.ndarray:
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "little"))
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def enrol(store: Store, name: str, n: int = 2, embedder_name: str | None = None, sha: str | None = None,
          seed: str | None = None) -> np.ndarray:
    v = vectors(seed or name, n)
    store.enroll(name, [TemplateIn(vector=x, embedder=embedder_name or embedder(), manifest_sha256=sha or model_sha())
                        for x in v],
                 command="test enrol")
    return v


def gallery(store_path: Path) -> dict[str, np.ndarray]:
    """name → default-embedder templates of a door's store, read from the file as another process would."""
    with Store(store_path, create=False) as s:
        out: dict[str, list[np.ndarray]] = {}
        for name, _, v in s.templates(embedder()):
            out.setdefault(name, []).append(v)
    return {k: np.stack(v) for k, v in out.items()}


def facegate(*args: str, env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen[bytes]:
    """A `facegate …` process of this checkout."""
    full = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "edge.cli", *args], env=full, **kw)


def wait(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class Proxy:
    """A TCP forwarder on loopback between a bridge and its remote broker: cut() is the network link going down
    (every connection dropped, new ones refused), restore() brings it back on the same port."""

    def __init__(self, target_port: int) -> None:
        import socket
        import threading

        self._socket, self._threading = socket, threading
        self.target = target_port
        with socket.socket() as s:
            s.bind((HOST, 0))
            self.port = s.getsockname()[1]
        self._conns: list[Any] = []
        self._listener: Any = None
        self._lock = threading.Lock()

    def _pump(self, a: Any, b: Any) -> None:
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()

    def _accept(self, listener: Any) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = self._socket.create_connection((HOST, self.target))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                self._threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def restore(self) -> Proxy:
        listener = self._socket.socket()
        listener.setsockopt(self._socket.SOL_SOCKET, self._socket.SO_REUSEADDR, 1)
        listener.bind((HOST, self.port))
        listener.listen(16)
        self._listener = listener
        self._threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def cut(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(self._socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass


def bridge_lines(remote_port: int, site: str, name: str) -> str:
    """mosquitto bridge configuration of a site broker towards the hub's broker (as deploy/FLEET.md shows)."""
    return "\n".join([f"connection {name}", f"address {HOST}:{remote_port}", "cleansession false",
                      f"remote_clientid bridge-{site}", "restart_timeout 1 2", "keepalive_interval 5",
                      f"topic facegate-fleet/{site}/records in 1", f"topic facegate-fleet/{site}/manifest in 1",
                      f"topic facegate-fleet/{site}/ack/+ out 1", "topic facegate/+/event out 1"]) + "\n"
