"""Helpers for the fleet tests: keys, a hub's and a door's configuration, synthetic templates.

The templates are random unit vectors under the shipped SFace manifest's name and sha256: gallery sync moves
templates and never computes one, so real face crops would only slow the tests down (the daemon test that
decides on a synced gallery uses real photos).
"""

from __future__ import annotations

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
SFACE_SHA = None


def sface_sha() -> str:
    global SFACE_SHA
    if SFACE_SHA is None:
        from edge.models.registry import Registry

        SFACE_SHA = Registry().manifest("sface").sha256
    return SFACE_SHA


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


def enrol(store: Store, name: str, n: int = 2, embedder: str = "sface", sha: str | None = None,
          seed: str | None = None) -> np.ndarray:
    v = vectors(seed or name, n)
    store.enroll(name, [TemplateIn(vector=x, embedder=embedder, manifest_sha256=sha or sface_sha()) for x in v],
                 command="test enrol")
    return v


def gallery(store_path: Path) -> dict[str, np.ndarray]:
    """name → sface templates of a door's store, read from the file as another process would."""
    with Store(store_path, create=False) as s:
        out: dict[str, list[np.ndarray]] = {}
        for name, _, v in s.templates("sface"):
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
