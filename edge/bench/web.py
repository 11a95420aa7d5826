"""`facegate bench web`: the admin page's people page on a large store, timed on the server.

A scratch store is filled with N identities (synthetic unit vectors under the configured embedder, plausible
quality figures: the listing never reads a vector) in one transaction, and a decision log with M decisions
naming them (the "last seen" column). The page is served by the real app under uvicorn on loopback, logged
in with a real session, and each request's server time is read from its Server-Timing header (request in,
SQL, template rendered, response out); the client's round trip is reported beside it. Pages: the first, one
in the middle, the last, a search that matches a few people, and one that matches nobody.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm


def _fill(store: Any, embedder: Any, n: int, seed: int) -> None:
    from edge.store.db import TemplateIn

    rng = np.random.default_rng(seed)
    dim = embedder.output_dim or 128
    items = {}
    for i in tqdm(range(n), desc="identities", unit="id", disable=None, leave=False):
        v = rng.standard_normal(dim).astype(np.float32)
        q = {"inter_eye_px": float(rng.uniform(30, 90)), "yaw_deg": float(rng.uniform(-25, 25)),
             "pitch_deg": float(rng.uniform(-15, 15)), "roll_deg": 0.0, "sharpness": float(rng.uniform(20, 400)),
             "brightness": float(rng.uniform(60, 200)), "clipped": 0.0, "score": 0.95}
        items[f"person-{i:05d}"] = [TemplateIn(v / np.linalg.norm(v), embedder.name, embedder.sha256, q)]
    store.enroll_many(items, command="bench web (synthetic templates)")


def _fill_log(log: Any, n_people: int, n: int, seed: int, model: str) -> None:
    rng = np.random.default_rng(seed + 1)
    now = time.time()
    for i in tqdm(range(n), desc="decisions", unit="ev", disable=None, leave=False):
        who = f"person-{int(rng.integers(n_people)):05d}"
        granted = rng.random() < 0.7
        log.add({"decision": "granted" if granted else "unknown", "identity": who if granted else None,
                 "score": float(rng.uniform(0.3, 0.9)), "threshold": 0.41, "door": "front", "device": "bench",
                 "latency_ms": float(rng.uniform(20, 80)), "frames": 5, "reason": "", "model": model,
                 "liveness": {"verdict": "not_checked", "score": None}, "event_id": f"bench-{i}"},
                margin=float(rng.uniform(0, 0.3)), candidate=who, ts=now - (n - i))


def _get(url: str, cookie: str) -> tuple[float, float, int, int]:
    """(server ms, round-trip ms, status, bytes) of one GET."""
    req = urllib.request.Request(url, headers={"Cookie": cookie})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=30) as r:
        body = r.read()
        timing = r.headers.get("Server-Timing", "")
        status = r.status
    wall = (time.perf_counter() - t) * 1e3
    server = float(timing.split("dur=")[1]) if "dur=" in timing else float("nan")
    return server, wall, status, len(body)


def run(people: int = 10_000, decisions: int = 10_000, repeat: int = 20, seed: int = 0,
        base_cfg: Any = None) -> dict[str, Any]:
    from dataclasses import replace

    from edge import config as config_mod
    from edge.web.server import WebServer, bind_socket
    from edge.web.services import Services

    with tempfile.TemporaryDirectory(prefix="facegate-bench-web-") as tmp:
        root = Path(tmp)
        cfg = base_cfg or config_mod.Config()
        cfg = replace(cfg, store=replace(cfg.store, path=str(root / "people.db"), key_file="", create=True),
                      web=replace(cfg.web, accounts_path=str(root / "accounts.db"),
                                  decisions_path=str(root / "decisions.db"), decisions_kept=max(decisions, 1),
                                  listen="127.0.0.1:0"))
        services = Services.standalone(cfg)
        t = time.perf_counter()
        _fill(services.store, services.pipeline.manifest, people, seed)
        fill_s = time.perf_counter() - t
        if services.decision_log is not None and decisions:
            _fill_log(services.decision_log, people, decisions, seed, services.pipeline.manifest.name)
        services.scorer.gallery.load()  # K for the thresholds the other pages show
        services.accounts.create("bench", "bench-password-" + str(seed))
        cookie = f"facegate_session={services.accounts.login('bench')}"
        server = WebServer(bind_socket(cfg.web.listen))
        server.mount(services)
        server.start()
        try:
            if not server.wait_started():
                raise RuntimeError("the web server did not start")
            last = max(1, -(-people // 50))
            pages = {"first page": "/people", "middle page": f"/people?page={max(1, last // 2)}",
                     "last page": f"/people?page={last}", "search, 10 matches": "/people?q=person-0123",
                     "search, no match": "/people?q=nobody-here"}
            rows = {}
            for label, path in pages.items():
                _get(server.url + path, cookie)  # warm: templates compiled, pages cached by SQLite
                samples = [_get(server.url + path, cookie) for _ in range(repeat)]
                assert all(s[2] == 200 for s in samples), f"{path}: status {samples[0][2]}"
                server_ms = sorted(s[0] for s in samples)
                wall_ms = sorted(s[1] for s in samples)
                rows[label] = {"path": path, "server_ms_median": round(statistics.median(server_ms), 2),
                               "server_ms_p95": round(server_ms[int(0.95 * (len(server_ms) - 1))], 2),
                               "server_ms_max": round(server_ms[-1], 2),
                               "round_trip_ms_median": round(statistics.median(wall_ms), 2),
                               "bytes": samples[0][3]}
        finally:
            server.stop()
    worst = max(r["server_ms_max"] for r in rows.values())
    return {"people": people, "decisions": decisions, "repeat": repeat, "fill_s": round(fill_s, 2),
            "pages": rows, "server_ms_max_overall": worst, "target_ms": 300.0, "within_target": worst <= 300.0}
