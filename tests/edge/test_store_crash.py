"""Crash safety: a process enrolling and deleting is SIGKILLed at random moments; the store must always
reopen intact, with every identity holding all of its templates or none."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.store.db import Store

REPO = Path(__file__).resolve().parents[2]
KEY = bytes(range(1, 33))
TEMPLATES = 3

CHILD = f"""
import os, sys
import numpy as np
from edge.store.db import Store, TemplateIn
path, run, key = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3]) if sys.argv[3] != "-" else None
rng = np.random.default_rng(int(run))
store = Store(path, key=key, keep_crops=True)
print("ready", flush=True)
i = 0
while True:
    ts = [TemplateIn(v / np.linalg.norm(v), "sface", "00", {{"i": i}}, crop=rng.bytes(5000))
          for v in rng.standard_normal(({TEMPLATES}, 128)).astype(np.float32)]
    store.enroll(f"r{{run}}-{{i}}", ts, "crash test")
    if i % 4 == 3:
        store.delete(f"r{{run}}-{{i - 2}}", "crash test")
    i += 1
"""


def check(path: Path, key: bytes | None) -> int:
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    with Store(path, key=key) as store:  # opens (and recovers the WAL) without complaint
        people = store.identities()
        for ident in people:
            assert ident.templates == {"sface": TEMPLATES}, ident  # all of them: none is "not listed"
            assert ident.crops == TEMPLATES
        audit = store.audit()
        enrolled = {a["name"] for a in audit if a["action"] == "enroll"}
        removed = {a["name"] for a in audit if a["action"] == "delete"}
        names = {i.name for i in people}
        assert names == enrolled - removed  # the audit log commits with the change it records
        assert len(store.templates("sface")) == TEMPLATES * len(people)
        return len(enrolled)


@pytest.mark.slow
def test_sigkill_during_enrolment_never_leaves_half_an_identity(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    stores = [(tmp_path / "plain.db", None), (tmp_path / "encrypted.db", KEY)]
    rnd = random.Random(11)
    started = time.monotonic()
    for run in range(50):
        path, key = stores[run % 2]
        child = subprocess.Popen([sys.executable, str(script), str(path), str(run), key.hex() if key else "-"],
                                 stdout=subprocess.PIPE, env=env, cwd=tmp_path)
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(rnd.uniform(0.0, 0.25))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
        assert child.returncode == -signal.SIGKILL
        check(path, key)
    assert sum(check(p, k) for p, k in stores) > 100  # the kills did land among real writes
    assert time.monotonic() - started < 90
