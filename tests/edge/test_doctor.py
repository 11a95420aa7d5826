"""`facegate doctor` on a healthy kiosk (a real broker, an image-folder camera, a store with someone in it), and
with each fault the acceptance names: a missing model, a wrong store key, a dead broker."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from edge.cli import main
from tests.mqtt_broker import Broker, free_port


@pytest.fixture
def site(tmp_path: Path, lfw: Path):
    frames = tmp_path / "frames"
    frames.mkdir()
    shutil.copy(lfw / "images/Colin_Powell/Colin_Powell_0040.jpg", frames / "01.jpg")
    key = tmp_path / "secrets" / "store.key"
    key.parent.mkdir()
    key.write_text(os.urandom(32).hex())
    key.chmod(0o600)
    store = tmp_path / "data" / "s.db"
    assert main(["enroll", "--model", "sface", "--store", str(store), "--key-file", str(key), "colin",
                 str(lfw / "images/Colin_Powell/Colin_Powell_0038.jpg")]) == 0
    with Broker(tmp_path / "broker") as broker:
        yield {"tmp": tmp_path, "frames": frames, "key": key, "store": store, "broker": broker}


def _config(site, **over: str) -> Path:
    values = {"embedder": '"sface"', "key_file": f'"{site["key"]}"', "port": str(site["broker"].port)}
    values.update(over)
    path = site["tmp"] / "facegate.toml"
    path.write_text(f"""profile = "kiosk"
[camera]
source = "{site['frames']}"
[models]
embedder = {values['embedder']}
[store]
path = "{site['store']}"
key_file = {values['key_file']}
[mqtt]
port = {values['port']}
device = "door1"
outbox_path = "{site['tmp'] / 'o.db'}"
[health]
listen = "127.0.0.1:0"
""")
    return path


def _run(capsys, config: Path) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(["doctor", "--config", str(config), "--json"])
    return code, json.loads(capsys.readouterr().out)


def _status(report: dict) -> dict[str, str]:
    return {c["name"]: c["status"] for c in report["checks"]}


def test_a_healthy_device_is_ready(site, capsys) -> None:
    code, report = _run(capsys, _config(site))
    status = _status(report)
    assert code == 0 and report["ok"], report
    assert status["broker"] == status["camera"] == status["store"] == status["model sface"] == "ok"


@pytest.mark.parametrize(("fault", "check"), [({"embedder": '"sfacee"'}, "model sfacee"),
                                              ({"key_file": '"WRONG"'}, "store"),
                                              ({"port": "DEAD"}, "broker")])
def test_each_fault_is_named(site, capsys, fault, check) -> None:
    if fault.get("key_file") == '"WRONG"':
        wrong = site["tmp"] / "secrets" / "wrong.key"
        wrong.write_text(os.urandom(32).hex())
        wrong.chmod(0o600)
        fault = {"key_file": f'"{wrong}"'}
    if fault.get("port") == "DEAD":
        fault = {"port": str(free_port())}
    code, report = _run(capsys, _config(site, **fault))
    status = _status(report)
    assert code == 1 and not report["ok"]
    assert status[check] == "fail", report
    assert next(c for c in report["checks"] if c["name"] == check)["fix"]


def test_the_default_embedder_is_checked_and_a_loosened_threshold_is_named(site, capsys, caplog) -> None:
    """models.embedder left empty (the default) means the manifests' default embedder, as the daemon resolves
    it; an override that lowers a threshold below the shipped calibration is a warning that names its file."""
    from edge.models.registry import Registry

    models = site["tmp"] / "models"
    config = _config(site, embedder='""')
    config.write_text(config.read_text().replace("[models]\n", f'[models]\nmodel_dir = "{models}"\n'))
    default = Registry(models).default_embedder()
    _, report = _run(capsys, config)  # (the store holds sface templates: preflight says so, not this test's point)
    status = _status(report)
    assert status[f"model {default}"] == "ok" and not any(c["name"] == "model " for c in report["checks"])
    assert not any(name.startswith("threshold ") for name in status)
    Registry(models).write_override(default, {"thresholds": {"verify": {
        "value": 0.05, "metric": "cosine", "provenance": {"command": "hand edit"}}}})
    _, report = _run(capsys, config)
    check = next(c for c in report["checks"] if c["name"] == f"threshold {default}.verify")
    assert check["status"] == "warn" and "below the shipped" in check["detail"]
    assert str(Registry(models).override_path(default)) in check["fix"]
    # The daemon says it at every start, whichever embedder it scores with.
    from edge.config import load
    from edge.daemon import Daemon

    config.write_text(config.read_text().replace('embedder = ""', 'embedder = "sface"'))
    Registry(models).write_override("sface", {"thresholds": {"identify": {
        "value": 0.1, "metric": "cosine", "tail": [[0.01, 0.1]], "provenance": {"command": "hand edit"}}}})
    daemon = Daemon(load(config))
    daemon.close()
    assert any("model sface: threshold identify 0.1 is below the shipped" in r.getMessage()
               and r.levelname == "WARNING" for r in caplog.records)
