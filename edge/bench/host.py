"""How fast the machine itself was while a bench ran: a fixed workload timed through the run, and the share of
CPU time a hypervisor took (steal).

On a shared virtual machine the same command can read 1.5–2× slower from one hour to the next at the same load
average (docs/results/int8.md § 12): the host, not the code, moved. A bench JSON carries this record so that a
reader can tell a slow run from a slow machine, and compares only runs whose probes agree.
"""

from __future__ import annotations

import os
import platform
import threading
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
    """`start()` before the timed work (or `with HostWatch() as watch:` around it), `report()` after.

    The host's slow spells come and go within seconds (a probe timed at the start and the end of a run that
    was slowed throughout read normal), so a background thread times the probe once a `interval` seconds for
    the whole run (≈ 3 ms a second: 0.3 % of one core). Measured here: the probe's time follows SFace's own
    (correlation 0.96 over 298 windows of 20 runs), the steal share less closely (0.52).
    """

    SLOW = 1.25  # a sample this many times the run's fast decile counts as slowed

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.start_jiffies: tuple[int, int] | None = None
        self.end_jiffies: tuple[int, int] | None = None
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> HostWatch:
        self.samples = [probe_ms()]  # the first sample is the start's, the last (taken by stop) the end's
        self.start_jiffies = cpu_jiffies()
        self._thread = threading.Thread(target=self._sample, name="host-probe", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(probe_ms(repeats=1))

    def stop(self) -> None:
        """End the sampling (idempotent); `report()` does it too, a `with` block does it on any exit."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.end_jiffies is None:
            self.end_jiffies = cpu_jiffies()
            self.samples.append(probe_ms())

    def __enter__(self) -> HostWatch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def report(self) -> dict[str, Any]:
        self.stop()
        end = self.end_jiffies
        steal = None
        if self.start_jiffies is not None and end is not None and end[1] > self.start_jiffies[1]:
            steal = round(100.0 * (end[0] - self.start_jiffies[0]) / (end[1] - self.start_jiffies[1]), 2)
        probe: dict[str, Any] = {"start": None, "end": None, "samples": len(self.samples)}
        slowed = None
        if self.samples:
            q = np.percentile(self.samples, [10, 50, 90])
            probe.update(start=self.samples[0], end=self.samples[-1], p10=round(float(q[0]), 2),
                         p50=round(float(q[1]), 2), p90=round(float(q[2]), 2))
            slowed = round(float(np.mean(np.asarray(self.samples) > self.SLOW * q[0])), 3)
        return {"probe_ms": probe, "slowed_share": slowed, "steal_pct": steal}


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
