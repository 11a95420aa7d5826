"""sd_notify over a real unix datagram socket standing in for systemd's $NOTIFY_SOCKET, and the daemon's
READY / WATCHDOG / STOPPING sequence around a SIGTERM."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.sdnotify import Notifier, watchdog_interval

REPO = Path(__file__).resolve().parents[2]


def _listener(address: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + address[1:] if address.startswith("@") else address)
    s.settimeout(0.2)
    return s


def _received(s: socket.socket, until: str, timeout: float) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got.append(s.recv(4096).decode())
        except TimeoutError:
            continue
        if any(until in g for g in got):
            break
    return got


@pytest.mark.parametrize("abstract", [False, True])
def test_notifier_sends_datagrams(tmp_path, abstract):
    address = f"@facegate-test-{os.getpid()}" if abstract else str(tmp_path / "notify")
    with _listener(address) as s:
        n = Notifier(address)
        assert n.enabled
        assert n.ready("3 identities") and n.watchdog() and n.stopping()
        assert _received(s, "STOPPING", 2) == ["READY=1\nSTATUS=3 identities", "WATCHDOG=1", "STOPPING=1"]
        n.close()


def test_without_notify_socket_nothing_happens(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled and not n.ready() and not n.watchdog()


def test_a_vanished_socket_is_not_an_error(tmp_path):
    assert not Notifier(str(tmp_path / "gone")).ready()


def test_watchdog_interval(monkeypatch):
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    assert watchdog_interval() == 10.0  # ping at half the timeout
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_interval() is None  # meant for another process
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 10.0


def test_daemon_ready_watchdog_sigterm_stopping(tmp_path, lfw):
    folder = tmp_path / "clip"
    folder.mkdir()
    shutil.copy(lfw / "images/Aaron_Peirsol/Aaron_Peirsol_0001.jpg", folder / "a.jpg")
    cv2.imwrite(str(folder / "b.png"), np.full((240, 320, 3), 100, np.uint8))
    config = tmp_path / "facegate.toml"
    config.write_text(f'profile = "kiosk"\n[camera]\nsource = "{folder}"\nfps = 15\nloop = true\n'
                      f'[store]\npath = "{tmp_path / "s.db"}"\ncreate = true\n[mqtt]\nenabled = false\n'
                      f'[health]\nenabled = false\n[log]\nformat = "json"\n')
    address = f"@facegate-daemon-test-{os.getpid()}"
    with _listener(address) as s:
        proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(config)], cwd=REPO,
                                env={**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "300000"},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            got = _received(s, "READY=1", 60)
            assert any(g.startswith("READY=1") for g in got), proc.stderr
            got += _received(s, "never", 1.0)
            assert sum(g == "WATCHDOG=1" for g in got) >= 3  # every 0.15 s
            proc.send_signal(signal.SIGTERM)
            got += _received(s, "STOPPING=1", 15)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err.decode()
    assert any(g.startswith("STOPPING=1") for g in got)
    last = err.decode().strip().splitlines()[-1]
    assert '"msg": "facegate stopped"' in last  # log.format = "json": one object per line
