"""How fast the machine itself was while a bench ran: a fixed workload timed before and after, and the share of
CPU time a hypervisor took (steal).

On a shared virtual machine the same command can read 1.5–2× slower from one hour to the next at the same load
average (docs/results/int8.md § 12): the host, not the code, moved. A bench JSON carries this record so that a
reader can tell a slow run from a slow machine, and compares only runs whose probes agree.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

# A fixed single-threaded workload (elementwise numpy: never spread over threads), 3–4 ms on a quiet 2.4 GHz core.
_PROBE = np.linspace(0.0, 1.0, 1 << 18, dtype=np.float32)


def probe_ms(repeats: int = 5) -> float:
    """Median milliseconds of the fixed workload (sin + multiply-add over 256 Ki floats, 4 times)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(4):
            np.sin(_PROBE * 3.0 + 0.5)
        times.append((time.perf_counter() - t) * 1e3)
    return round(float(np.median(times)), 2)


def cpu_jiffies(stat: Path = Path("/proc/stat")) -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs since boot, from Linux's /proc/stat; None elsewhere."""
    try:
        first = stat.read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if not first or first[0] != "cpu":
        return None
    values = [int(v) for v in first[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice: guest time is already inside user/nice.
    total = sum(values[:8])
    return (values[7] if len(values) > 7 else 0), total


class HostWatch:
    """`start()` before the timed work, `report()` after: {"probe_ms": {"start", "end"}, "steal_pct"}."""

    def __init__(self) -> None:
        self.start_probe: float | None = None
        self.start_jiffies: tuple[int, int] | None = None

    def start(self) -> HostWatch:
        self.start_probe = probe_ms()
        self.start_jiffies = cpu_jiffies()
        return self

    def report(self) -> dict[str, Any]:
        end = cpu_jiffies()
        steal = None
        if self.start_jiffies is not None and end is not None and end[1] > self.start_jiffies[1]:
            steal = round(100.0 * (end[0] - self.start_jiffies[0]) / (end[1] - self.start_jiffies[1]), 2)
        return {"probe_ms": {"start": self.start_probe, "end": probe_ms()}, "steal_pct": steal}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(watch: HostWatch | None = None) -> dict[str, Any]:
    """What a bench JSON says of the machine: CPU, cores, load, and (with a started watch) the host's speed."""
    out: dict[str, Any] = {"cpu": cpu_name(), "cores": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)}
    if watch is not None:
        out["host"] = watch.report()
    return out
