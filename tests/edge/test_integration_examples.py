"""deploy/INTEGRATION.md's signing examples, run exactly as written there (the Python one with this
interpreter, the shell one with bash, openssl and mosquitto_pub/sub) against a real daemon and a real mosquitto,
with a secret made as the page says (`openssl rand -hex 32`, used as text)."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.config import parse
from edge.daemon import Daemon
from edge.demo_daemon import running
from edge.mqtt.commands import sign_command
from tests.mqtt_broker import Broker, Subscriber, publish

PAGE = Path(__file__).resolve().parents[2] / "deploy" / "INTEGRATION.md"


def example(language: str, first_line: str) -> str:
    """The fenced ```language block of the page whose first line is `first_line`."""
    for block in re.findall(rf"^```{language}\n(.*?)^```$", PAGE.read_text(), flags=re.M | re.S):
        if block.startswith(first_line):
            return block
    raise AssertionError(f"INTEGRATION.md has no ```{language} block starting {first_line!r}")


@pytest.fixture
def door(tmp_path: Path):
    """A kiosk daemon with a command secret on a real broker; yields (broker, env for the examples)."""
    secret = tmp_path / "command-secret"
    secret.write_text(secrets.token_hex(32) + "\n")  # what `openssl rand -hex 32 > FILE` writes
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "empty.png"), np.full((120, 160, 3), 120, np.uint8))
    with Broker(tmp_path / "broker") as broker:
        cfg = parse({"profile": "kiosk", "camera": {"source": str(frames), "fps": 5, "loop": True},
                     "store": {"path": str(tmp_path / "s.db"), "create": True}, "health": {"enabled": False},
                     "mqtt": {"port": broker.port, "device": "door1", "discovery": False,
                              "command_secret_file": str(secret), "outbox_path": str(tmp_path / "o.db"),
                              "command_state_path": str(tmp_path / "c.json")}})
        daemon = Daemon(cfg)
        with running(daemon):
            assert daemon.sink.wait_connected(10)
            yield broker, {**os.environ, "MQTT_HOST": "127.0.0.1", "MQTT_PORT": str(broker.port),
                           "FACEGATE_DEVICE": "door1", "SECRET_FILE": str(secret)}, secret


def test_the_python_signing_example_gets_ok(door, tmp_path: Path) -> None:
    _, env, _ = door
    script = tmp_path / "facegate-sign.py"
    script.write_text(example("python", "# facegate-sign.py"))
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr + done.stdout
    result = json.loads(done.stdout)
    assert (result["command"], result["status"], result["accepted"]) == ("reload", "ok", True)
    assert result["result"]["identities"] == 0


def test_the_openssl_signing_example_gets_ok(door, tmp_path: Path) -> None:
    for tool in ("openssl", "mosquitto_pub", "mosquitto_sub", "bash"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (the shell example needs it)")
    _, env, _ = door
    script = tmp_path / "facegate-sign.sh"
    script.write_text(example("sh", "# facegate-sign.sh"))
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr + done.stdout
    result = json.loads(done.stdout)
    assert (result["command"], result["sender"], result["status"]) == ("reload", "console-sh", "ok")


def test_a_signed_delete_of_an_unknown_name_answers_an_error(door) -> None:
    broker, _, secret = door
    key = secret.read_text().strip().encode()  # the text, as the page says, not the hex-decoded bytes
    with Subscriber(broker, ["facegate/door1/cmd_result"]) as results:
        publish(broker, "facegate/door1/cmd/delete", sign_command(key, "console", 1, "delete", {"name": "nobody"},
                                                                  device="door1"))
        publish(broker, "facegate/door1/cmd/reload",
                sign_command(bytes.fromhex(key.decode()), "console", 2, "reload", {}, device="door1"))
        got = [m.json() for m in results.wait_count("facegate/door1/cmd_result", 2)]
    assert (got[0]["accepted"], got[0]["status"]) == (True, "error")
    assert got[0]["detail"] == "unknown identity 'nobody'"
    # A console that hex-decodes the secret (as the store key would be) signs with other bytes: refused.
    assert (got[1]["status"], got[1]["reason"]) == ("refused", "bad_signature")
