"""`facegate bench daemon` on a few LFW people: decisions reach a real broker, and the per-frame times add up."""

import shutil

import pytest

from edge.bench import daemon as bench


@pytest.fixture(scope="module")
def people(lfw, tmp_path_factory):
    """Two people with two photos each (enrolled by their first) and one with a single photo (a stranger)."""
    if not shutil.which("mosquitto"):
        pytest.skip("mosquitto is not installed (.ci/run installs it)")
    root = tmp_path_factory.mktemp("people")
    for name, count in (("Aaron_Peirsol", 2), ("Abdullah_Gul", 2), ("AJ_Cook", 1)):
        (root / name).mkdir()
        for src in sorted((lfw / "images" / name).glob("*.jpg"))[:count]:
            (root / name / src.name).symlink_to(src)
    return root


def test_bench_daemon_reports_latency_and_per_frame_costs(people):
    r = bench.run(people, fps=15, frames_per_image=4, limit=10)
    assert r["enrolled"] == 2 and r["images"] == 3
    assert r["decisions"] >= 2 and r["frames_corrupt"] == 0
    assert 0 < r["p50_ms"] <= r["p99_ms"]
    frames = r["frame_ms"]
    # Every frame the engine took is timed once, and sorted by the faces it held.
    assert 0 < frames["all"]["frames"] <= r["frames"]
    assert sum(v["frames"] for v in frames["by_faces"].values()) == frames["all"]["frames"]
    assert set(frames["by_faces"]) <= {"0", "1", "2+"} and frames["by_faces"]["1"]["frames"] > 0
    assert frames["all"]["p50"] <= frames["all"]["p99"] <= frames["all"]["max"]
    # The default configuration's threads (0 = auto) resolve to one for a single embedder.
    assert r["threads"] == {"models": 1, "members_side_by_side": False}
    host = r["machine"]["host"]  # the machine's own speed before and after, so a slow host shows as one
    assert host["probe_ms"]["start"] > 0 and host["probe_ms"]["end"] > 0
    assert host["steal_pct"] is None or 0 <= host["steal_pct"] <= 100
