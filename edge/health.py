"""/healthz and Prometheus /metrics on a loopback port: stdlib http.server in a thread.

The text exposition format is simple enough to write by hand (counters, gauges, cumulative histograms),
which keeps prometheus_client and its dependencies off the device.
"""

from __future__ import annotations

import bisect
import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

# Milliseconds: fine around the 10–100 ms a stage or a frame takes on a small CPU.
LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 250, 500, 1000, 2500)


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS_MS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last is +Inf
        self.sum = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self.counts[bisect.bisect_left(self.buckets, value)] += 1
            self.sum += value
            self.count += 1

    def snapshot(self) -> tuple[list[int], float, int]:
        with self._lock:
            return list(self.counts), self.sum, self.count


class Metrics:
    """Counters, gauges (values or callables read at scrape time) and histograms, each with labels."""

    def __init__(self, prefix: str = "facegate") -> None:
        self.prefix = prefix
        self._help: dict[str, tuple[str, str]] = {}  # name → (type, help)
        self._values: dict[tuple[str, tuple[tuple[str, str], ...]], float | Callable[[], float]] = {}
        self._hists: dict[tuple[str, tuple[tuple[str, str], ...]], Histogram] = {}
        self._lock = threading.Lock()

    def describe(self, name: str, kind: str, text: str) -> None:
        self._help[name] = (kind, text)

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            current = self._values.get(key, 0.0)
            self._values[key] = (current if isinstance(current, float | int) else 0.0) + amount

    def set(self, name: str, value: float | Callable[[], float], **labels: str) -> None:
        with self._lock:
            self._values[(name, tuple(sorted(labels.items())))] = value

    def histogram(self, name: str, **labels: str) -> Histogram:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            if key not in self._hists:
                self._hists[key] = Histogram()
            return self._hists[key]

    def value(self, name: str, **labels: str) -> float:
        v = self._values.get((name, tuple(sorted(labels.items()))), 0.0)
        return float(v() if callable(v) else v)

    def render(self) -> str:
        """Prometheus text exposition format 0.0.4."""
        lines: list[str] = []
        with self._lock:
            values = dict(self._values)
            hists = dict(self._hists)
        names = sorted({k[0] for k in values} | {k[0] for k in hists})
        for name in names:
            full = f"{self.prefix}_{name}"
            kind, text = self._help.get(name, ("histogram" if any(k[0] == name for k in hists) else "gauge", name))
            lines += [f"# HELP {full} {text}", f"# TYPE {full} {kind}"]
            for (n, labels), v in sorted(values.items(), key=lambda kv: kv[0]):
                if n == name:
                    try:
                        number = float(v() if callable(v) else v)
                    except Exception:  # a gauge whose source is gone is skipped, not a failed scrape
                        continue
                    lines.append(f"{full}{_labels(labels)} {_num(number)}")
            for (n, labels), h in sorted(hists.items(), key=lambda kv: kv[0]):
                if n != name:
                    continue
                counts, total, count = h.snapshot()
                running = 0
                for bound, c in zip((*h.buckets, float("inf")), counts, strict=True):
                    running += c
                    le = "+Inf" if bound == float("inf") else _num(bound)
                    lines.append(f"{full}_bucket{_labels((*labels, ('le', le)))} {running}")
                lines.append(f"{full}_sum{_labels(labels)} {_num(total)}")
                lines.append(f"{full}_count{_labels(labels)} {count}")
        return "\n".join(lines) + "\n"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(float(v))


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    esc = (str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') for _, v in labels)
    return "{" + ",".join(f'{k}="{v}"' for (k, _), v in zip(labels, esc, strict=True)) + "}"


class HealthServer:
    """Serves GET /healthz (200 when healthy, else 503; JSON body) and GET /metrics."""

    def __init__(self, host: str, port: int, metrics: Metrics, health: Callable[[], dict[str, Any]]) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    report = outer.health()
                    self._send(200 if report.get("healthy") else 503, "application/json",
                               json.dumps(report).encode())
                elif path == "/metrics":
                    self._send(200, "text/plain; version=0.0.4; charset=utf-8", outer.metrics.render().encode())
                else:
                    self._send(404, "text/plain", b"not found: try /healthz or /metrics\n")

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("http: " + fmt, *args)

        self.metrics, self.health = metrics, health
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="health", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self.server.shutdown()  # waits for serve_forever: only when it runs
        self.server.server_close()

    def close(self) -> None:
        self.stop()
