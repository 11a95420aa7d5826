"""`facegate demo`, both profiles, as a new user runs it: the daemon end to end with a real broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.cli import main


def test_kiosk_demo_grants_the_enrolled_and_not_the_stranger(capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("skimage")
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "granted  grace_hopper" in out and "unknown" in out


def test_door_demo_grants_the_live_visitor_and_refuses_the_print(data: Path, capsys: pytest.CaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEGATE_DATA", str(data))
    assert main(["demo", "--profile", "door"]) == 0
    out = capsys.readouterr().out
    assert "granted  visitor" in out and "liveness live" in out
    assert "spoof" in out and "liveness spoof" in out


def test_door_demo_without_the_weights_names_the_install_command(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEGATE_DATA", str(tmp_path))
    assert main(["demo", "--profile", "door"]) == 2
    assert "facegate models install minifasnet" in capsys.readouterr().err
