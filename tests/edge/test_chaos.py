"""Chaos (slow): the daemon as a real process at a door, its broker frozen (SIGSTOP) and restarted, the daemon
itself killed with SIGKILL and restarted — no event lost, none duplicated (after the documented deduplication
on event_id), and no UNLOCK arriving after its valid_until."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.mqtt_broker import HOST, Broker, wait_until

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


class Recorder:
    """A persistent-session subscriber (it keeps its queue across broker restarts), recording arrival times."""

    def __init__(self, broker: Broker) -> None:
        self.events: list[dict[str, Any]] = []
        self.doors: list[tuple[dt.datetime, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="chaos-recorder", clean_session=False)
        self.client.on_connect = lambda c, *_: c.subscribe([("facegate/door1/event", 1),
                                                           ("facegate/door1/door/command", 1)])
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect(HOST, broker.port)
        self.client.loop_start()
        assert self._subscribed.wait(5)

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        now = dt.datetime.now(dt.UTC)
        doc = json.loads(message.payload)
        with self._lock:
            if message.topic.endswith("event"):
                self.events.append(doc)
            else:
                self.doors.append((now, doc))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _daemon(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(config)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_broker_freeze_and_restart_and_daemon_kill_lose_nothing_and_unlock_nothing_late(tmp_path: Path,
                                                                                        lfw: Path) -> None:
    import shutil

    import numpy as np
    from PIL import Image

    from edge.cli import main

    frames = tmp_path / "frames"
    frames.mkdir()
    shutil.copy(lfw / "images/Colin_Powell/Colin_Powell_0040.jpg", frames / "01_colin.jpg")
    Image.fromarray(np.full((250, 250, 3), 120, np.uint8)).save(frames / "02_empty.png")
    store = tmp_path / "s.db"
    assert main(["enroll", "--store", str(store), "colin", str(lfw / "images/Colin_Powell/Colin_Powell_0038.jpg")]) == 0
    broker = Broker(tmp_path / "broker")
    config = tmp_path / "facegate.toml"
    config.write_text(f"""
profile = "door"
[camera]
source = "{frames}"
fps = 15
frames_per_image = 8
loop = true
[store]
path = "{store}"
[liveness]
model = "tests.edge.test_daemon:AlwaysLive"
challenge = false
[decision]
cooldown_s = 0
track_ttl_s = 0.2
[door]
max_delay_ms = 500
[mqtt]
port = {broker.port}
device = "door1"
discovery = false
claims = "off"
reconnect_min_s = 0.1
reconnect_max_s = 0.5
outbox_path = "{tmp_path / 'outbox.db'}"
command_state_path = "{tmp_path / 'c.json'}"
[health]
enabled = false
""")
    with broker:
        rec = Recorder(broker)
        proc = _daemon(config)
        try:
            assert wait_until(lambda: len(rec.events) >= 3, 60), proc.stderr
            # 1. The broker hangs for 4 s: the daemon keeps deciding; its UNLOCKs are dropped, not queued.
            assert broker.proc is not None
            broker.proc.send_signal(signal.SIGSTOP)
            time.sleep(4)
            broker.proc.send_signal(signal.SIGCONT)
            n = len(rec.events)
            assert wait_until(lambda: len(rec.events) >= n + 3, 60)
            # 2. The daemon is killed outright and started again: its outbox survives.
            proc.kill()
            proc.wait(10)
            proc = _daemon(config)
            n = len(rec.events)
            assert wait_until(lambda: len(rec.events) >= n + 3, 60)
            # 3. The broker restarts (its persistence keeps the recorder's queue).
            broker.restart()
            n = len(rec.events)
            assert wait_until(lambda: len(rec.events) >= n + 3, 60)
        finally:
            proc.send_signal(signal.SIGTERM)  # a clean stop flushes the outbox
            proc.wait(30)
            time.sleep(1.0)
            rec.close()
    from edge.mqtt.outbox import Outbox

    with_outbox = Outbox(tmp_path / "outbox.db", "door1")
    try:
        left, last = with_outbox.depth, with_outbox.last_seq
    finally:
        with_outbox.close()
    assert left == 0
    by_id: dict[str, dict[str, Any]] = {}
    for e in rec.events:
        by_id.setdefault(e["event_id"], e)
    seqs = sorted(e["seq"] for e in by_id.values())
    assert seqs == list(range(1, last + 1)), "an event is missing or two events share a seq"
    raw_duplicates = len(rec.events) - len(by_id)
    unlocks = [(arrived, doc) for arrived, doc in rec.doors if doc["command"] == "UNLOCK"]
    late = [(arrived.isoformat(), doc["valid_until"]) for arrived, doc in unlocks
            if arrived > dt.datetime.fromisoformat(doc["valid_until"]) + dt.timedelta(milliseconds=100)]
    assert unlocks and late == []
    print(f"\nchaos: {len(by_id)} events (seq 1..{last}), {raw_duplicates} redelivered copies, "
          f"{len(unlocks)} UNLOCKs, none late")
