"""`facegate models install minifasnet…` with the device dependencies alone, and one liveness configuration
for the CLI and the daemon (issues #18.1, #14.9)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge.cli import main
from edge.errors import ModelError
from edge.liveness import resolve
from edge.liveness.minifasnet import FUSED_NAME, LIVE_THRESHOLD, open_passive, write_fused
from edge.models.install import install
from edge.models.registry import Registry, sha256_file
from tests.conftest import REPO
from tests.edge.test_liveness_passive import SAMPLES, weight_files

# Runs `facegate ARGS…` in a fresh interpreter where PyTorch (and the export tool chain) cannot be imported,
# as on a device installed with `pip install .` alone; fails if anything imported torch anyway.
NO_TORCH = """
import importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "torchao", "litert_torch", "ai_edge_quantizer"):
            raise ImportError(f"{name} is not installed on this device")
        return None

sys.meta_path.insert(0, NoTorch())
from edge.cli import main
rc = main(sys.argv[1:])
assert not [m for m in sys.modules if m.split(".")[0] == "torch"], "torch was imported"
sys.exit(rc)
"""


def _facegate_without_torch(args: list[str], state: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "FACEGATE_STATE_DIR": str(state)}
    return subprocess.run([sys.executable, "-c", NO_TORCH, *args], env=env, cwd=state, capture_output=True,
                          text=True, timeout=300)


def test_install_and_liveness_without_torch(data, tmp_path):
    """The issue's acceptance: install the pair from local files, then the three samples decide as published."""
    v2, v1se = weight_files(data)
    r = _facegate_without_torch(["models", "install", "minifasnet", "--file", str(v2), "--file", str(v1se),
                                 "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["installed"] == ["minifasnet-v2", "minifasnet-v1se", FUSED_NAME]
    for name, live in SAMPLES.items():
        r = _facegate_without_torch(["liveness", str(data / "liveness" / name), "--json"], tmp_path)
        assert r.returncode == (0 if live else 1), (name, r.stdout, r.stderr)
        out = json.loads(r.stdout)
        assert out["model"] == FUSED_NAME and set(out["members"]) == {"minifasnet-v2", "minifasnet-v1se"}
        assert out["live"] is live and out["threshold"] == LIVE_THRESHOLD


def test_install_file_for_each_net_and_for_the_pair(data, tmp_path, capsys):
    v2, v1se = weight_files(data)
    one = tmp_path / "one"
    assert main(["models", "install", "minifasnet-v2", "--file", str(v2), "--model-dir", str(one), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["installed"] == ["minifasnet-v2"]  # no fusion with one net
    m = Registry(one).manifest("minifasnet-v2")
    assert (m.task, m.runtime, m.input.size, m.extra["crop_scale"], m.extra["live_index"]) == (
        "liveness", "onnxruntime", (80, 80), 2.7, 1)
    assert m.source["weights_sha256"] == sha256_file(v2)
    parity = json.loads((one / "minifasnet-v2" / "parity.json").read_text())
    assert parity["passed"] and parity["max_abs_dp_live"] <= 1e-5
    # The second net completes the pair: its install writes the fused bundle too.
    assert main(["models", "install", "minifasnet-v1se", "--file", str(v1se), "--model-dir", str(one), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["installed"] == ["minifasnet-v1se", FUSED_NAME]
    assert Registry(one).manifest("minifasnet-v1se").extra["crop_scale"] == 4.0
    pair = tmp_path / "pair"
    assert main(["models", "install", "minifasnet", "--file", str(v1se), "--file", str(v2),
                 "--model-dir", str(pair)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"installed {FUSED_NAME} into {pair / FUSED_NAME}"
    # The converter is deterministic: the same files give the same bundles, whichever way they were installed.
    for name in ("minifasnet-v2", "minifasnet-v1se", FUSED_NAME):
        assert Registry(one).manifest(name).sha256 == Registry(pair).manifest(name).sha256

    # Wrong or missing files are refused before anything is installed.
    empty = tmp_path / "empty"
    assert main(["models", "install", "minifasnet-v2", "--file", str(v1se), "--model-dir", str(empty)]) == 2
    assert "not the pinned file of minifasnet-v2" in capsys.readouterr().err
    assert main(["models", "install", "minifasnet", "--file", str(v2), "--model-dir", str(empty)]) == 2
    assert "missing minifasnet-v1se (4_0_0_80x80_MiniFASNetV1SE.pth)" in capsys.readouterr().err
    assert main(["models", "install", str(tmp_path / "x"), "--file", str(v2), "--model-dir", str(empty)]) == 2
    assert "--file goes with a known name" in capsys.readouterr().err
    assert not (empty / "minifasnet-v2").exists()


@pytest.fixture
def members(data, tmp_path) -> Path:
    """The two nets installed one after the other (as the README used to say), in tmp_path/models."""
    model_dir = tmp_path / "models"
    v2, v1se = weight_files(data)
    assert install("minifasnet-v2", model_dir=model_dir, files=[v2], progress=False) == ["minifasnet-v2"]
    assert install("minifasnet-v1se", model_dir=model_dir, files=[v1se], progress=False) == [
        "minifasnet-v1se", FUSED_NAME]
    return model_dir


def _daemon_check(model_dir: Path):
    from edge.config import parse
    from edge.daemon import resolve_liveness

    return resolve_liveness(parse({"profile": "door", "models": {"model_dir": str(model_dir)}}),
                            Registry(model_dir))


def test_daemon_and_cli_run_the_same_check(members, data, monkeypatch, capsys):
    daemon = _daemon_check(members)
    cli = open_passive(Registry(members))
    assert daemon.name == cli.name == FUSED_NAME
    assert [n.manifest.name for n in daemon.nets] == [n.manifest.name for n in cli.nets] == [
        "minifasnet-v2", "minifasnet-v1se"]
    assert daemon.threshold == cli.threshold and daemon.certain_spoof == cli.certain_spoof
    # Also for an install older than the fusion: both fuse the members the same way.
    shutil.rmtree(members / FUSED_NAME)
    assert _daemon_check(members).name == open_passive(Registry(members)).name == FUSED_NAME
    assert len(_daemon_check(members).nets) == 2
    # `facegate liveness` reports that check.
    write_fused(members)
    monkeypatch.setenv("FACEGATE_STATE_DIR", str(members.parent))
    assert main(["liveness", str(data / "liveness" / "image_T1.jpg"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == FUSED_NAME


def _corrupt(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(5000)
        f.write(b"\xde\xad")


@pytest.mark.parametrize("fused", [True, False])
def test_a_corrupt_member_is_an_error_naming_it(members, data, monkeypatch, capsys, fused):
    if not fused:
        shutil.rmtree(members / FUSED_NAME)
    _corrupt(members / "minifasnet-v2" / "model.onnx")
    with pytest.raises(ModelError, match=r"'minifasnet-v2'.*sha256"):
        _daemon_check(members)
    with pytest.raises(ModelError, match=r"'minifasnet-v2'.*sha256"):
        resolve(Registry(members))
    monkeypatch.setenv("FACEGATE_STATE_DIR", str(members.parent))
    assert main(["liveness", str(data / "liveness" / "image_T1.jpg")]) == 2
    err = capsys.readouterr().err
    assert "minifasnet-v2" in err and "sha256" in err
    # A missing file is no different.
    (members / "minifasnet-v2" / "model.onnx").unlink()
    with pytest.raises(ModelError, match=r"'minifasnet-v2'.*missing"):
        _daemon_check(members)
    # Installing the other net names the broken one instead of quietly skipping the fusion.
    with pytest.raises(ModelError, match=r"fused liveness check cannot be written.*minifasnet-v2"):
        install("minifasnet-v1se", model_dir=members, files=[weight_files(data)[1]], progress=False)


def test_a_fused_bundle_from_a_workstation_is_rewritten_for_the_installed_members(members, tmp_path, capsys):
    """`facegate export minifasnet` on a machine with LiteRT writes a fusion of the TFLite members; installing
    that folder used to copy it and then fail on the missing `-tflite` bundles."""
    work = tmp_path / "bundles"
    shutil.copytree(members, work, ignore=shutil.ignore_patterns(FUSED_NAME, "prepared", ".staging"))
    for name in ("minifasnet-v2", "minifasnet-v1se"):  # stand-ins for the TFLite variants
        shutil.copytree(work / name, work / f"{name}-tflite")
        manifest = json.loads((work / f"{name}-tflite" / "manifest.json").read_text())
        (work / f"{name}-tflite" / "manifest.json").write_text(json.dumps({**manifest, "name": f"{name}-tflite"}))
    write_fused(work, prefer_tflite=True)
    assert json.loads((work / FUSED_NAME / "manifest.json").read_text())["extra"]["members"] == [
        "minifasnet-v2-tflite", "minifasnet-v1se-tflite"]
    device = tmp_path / "device"
    shutil.copytree(members, device, ignore=shutil.ignore_patterns(FUSED_NAME, "prepared"))
    assert main(["models", "install", str(work / FUSED_NAME), "--model-dir", str(device)]) == 0
    check = resolve(Registry(device))
    assert check.name == FUSED_NAME and [n.manifest.name for n in check.nets] == ["minifasnet-v2", "minifasnet-v1se"]
    capsys.readouterr()
    assert main(["models", "install", str(work / FUSED_NAME), "--model-dir", str(tmp_path / "bare")]) == 2
    assert "facegate models install minifasnet" in capsys.readouterr().err
    assert not (tmp_path / "bare" / FUSED_NAME).exists()


def _calibrated(model_dir: Path, value: float) -> None:
    from edge.liveness.calibrate import store_threshold

    registry = Registry(model_dir)
    pinned = {n: registry.manifest(n).sha256 for n in ("minifasnet-v2", "minifasnet-v1se")}
    store_threshold(registry, value, {"source": "test", "members_sha256": pinned})


def test_a_calibrated_threshold_survives_reinstalling_the_same_files(members, data, caplog):
    _calibrated(members, 0.25829)
    v2, v1se = weight_files(data)
    assert install("minifasnet", model_dir=members, files=[v2, v1se], progress=False)[-1] == FUSED_NAME
    assert resolve(Registry(members)).threshold == 0.25829
    # A member that is now a different file voids it — said out loud, back to the a-priori rule.
    manifest = json.loads((members / FUSED_NAME / "manifest.json").read_text())
    manifest["thresholds"]["live"]["provenance"]["members_sha256"]["minifasnet-v2"] = "0" * 64
    (members / FUSED_NAME / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING):
        install("minifasnet-v2", model_dir=members, files=[v2], progress=False)
    assert resolve(Registry(members)).threshold == LIVE_THRESHOLD
    assert "calibrated live threshold 0.25829 was set for other member files" in caplog.text
