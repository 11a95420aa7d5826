"""`facegate bench fleet` end to end with small numbers (the 20-door / 10,000-identity run is a command a
person runs; docs/fleet.md has its figures): real hub and door processes over bridged mosquitto brokers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge.store.db import Store
from tests.fleet_harness import embedder

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.bench
def test_bench_fleet_small(tmp_path):
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed (apt-get install -y mosquitto)")
    keep = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "edge.cli", "bench", "fleet", "--doors", "3", "--gallery", "200",
                           "--sites", "2", "--changes", "3", "--offline-changes", "60", "--keep", str(keep),
                           "--json"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    assert (r["doors"], r["gallery"], r["sites"], r["brokers"]) == (3, 200, 2, 3)
    for kind in ("upsert", "revoke"):
        assert r[kind]["samples"] == 3 * 3 and r[kind]["missing"] == 0 and r[kind]["p99_ms"] > 0
    assert r["catch_up"]["converged"] and r["catch_up"]["changes"] == 60
    assert r["hashes_equal"] and r["mismatched"] == []
    # The hash is not the only evidence: every door's store holds the hub's people, the revoked ones erased.
    # 200 seeded + 3 upserts - 3 revocations + 30 enrolled - 30 deleted while door01 was away.
    with Store(keep / "hub" / "people.db", create=False) as hub:
        expected = {i.name for i in hub.identities()}
    assert len(expected) == 200 and "person-000000" not in expected and "new-upsert-0000" in expected
    for device in ("door01", "door02", "door03"):
        with Store(keep / device / "door.db", create=False) as door:
            assert {name for name, _, _ in door.templates(embedder())} == expected, device
