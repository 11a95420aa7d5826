"""The host record of the bench JSONs: a fixed workload's time and the hypervisor's steal share."""

import time

from edge.bench.host import HostWatch, cpu_jiffies, machine, probe_ms


def test_probe_times_a_fixed_workload():
    assert 0 < probe_ms(repeats=3) < 10_000


def test_steal_share_from_proc_stat(tmp_path):
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  100 0 50 800 10 0 0 40 0 0\ncpu0 50 0 25 400 5 0 0 20 0 0\n")
    assert cpu_jiffies(stat) == (40, 1000)
    stat.write_text("intr 1 2 3\n")
    assert cpu_jiffies(stat) is None
    assert cpu_jiffies(tmp_path / "missing") is None


def test_watch_reports_both_probes_and_a_bounded_steal_share():
    watch = HostWatch().start()
    sum(i * i for i in range(200_000))  # some CPU time between the two readings
    time.sleep(0.05)
    host = machine(watch)["host"]
    assert host["probe_ms"]["start"] > 0 and host["probe_ms"]["end"] > 0
    if cpu_jiffies() is not None:  # Linux
        assert 0 <= host["steal_pct"] <= 100
    else:
        assert host["steal_pct"] is None
