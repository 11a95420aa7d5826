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
    watch = HostWatch(interval=0.02).start()
    sum(i * i for i in range(200_000))  # some CPU time between the two readings
    time.sleep(0.3)
    host = machine(watch)["host"]
    probe = host["probe_ms"]
    assert probe["start"] > 0 and probe["end"] > 0
    # Sampled through the run by its thread, which stops with the report.
    assert probe["samples"] >= 3 and 0 < probe["p10"] <= probe["p50"] <= probe["p90"]
    assert 0 <= host["slowed_share"] <= 0.9  # the fast decile itself is never counted as slowed
    assert not watch._thread.is_alive()
    n = len(watch.samples)
    time.sleep(0.1)
    assert len(watch.samples) == n
    if cpu_jiffies() is not None:  # Linux
        assert 0 <= host["steal_pct"] <= 100
    else:
        assert host["steal_pct"] is None


def test_a_with_block_stops_the_sampler_even_on_an_error():
    try:
        with HostWatch(interval=0.01) as watch:
            time.sleep(0.05)
            raise RuntimeError("the timed work failed")
    except RuntimeError:
        pass
    assert not watch._thread.is_alive()
    assert machine(watch)["host"]["probe_ms"]["samples"] == len(watch.samples)
