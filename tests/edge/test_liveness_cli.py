"""`facegate liveness IMG` and `facegate bench liveness` (images and --clips), end to end on real models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.cli import main
from tests.edge.test_liveness_passive import build_models


@pytest.fixture
def state(data, tmp_path_factory, monkeypatch) -> Path:
    """A state directory whose model directory holds the MiniFASNet bundles (what `models install` makes)."""
    root = tmp_path_factory.getbasetemp() / "liveness"
    build_models(root, data)
    monkeypatch.setenv("FACEGATE_STATE_DIR", str(root))
    return root


def test_liveness_command(state, data, tmp_path, capsys):
    assert main(["liveness", str(data / "liveness" / "image_T1.jpg"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["live"] is True and out["score"] > out["threshold"] == 0.5 and out["model"] == "minifasnet"
    for name in ("image_F1.jpg", "image_F2.jpg"):
        assert main(["liveness", str(data / "liveness" / name), "--json"]) == 1
        out = json.loads(capsys.readouterr().out)
        assert out["live"] is False and out["score"] <= out["threshold"]
    assert main(["liveness", str(data / "liveness" / "image_T1.jpg")]) == 0
    assert capsys.readouterr().out.startswith("live: score ")
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 128, np.uint8))
    assert main(["liveness", str(blank)]) == 2  # no face
    assert "no face" in capsys.readouterr().err
    assert main(["liveness", str(tmp_path / "missing.jpg")]) == 2


def test_bench_liveness_images(state, data, tmp_path, capsys):
    live, spoof = tmp_path / "live", tmp_path / "spoof"
    live.mkdir()
    spoof.mkdir()
    shutil.copy(data / "liveness" / "image_T1.jpg", live)
    cv2.imwrite(str(live / "blank.png"), np.full((200, 200, 3), 128, np.uint8))
    for name in ("image_F1.jpg", "image_F2.jpg"):
        shutil.copy(data / "liveness" / name, spoof)
    assert main(["bench", "liveness", "--live", str(live), "--spoof", str(spoof), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["apcer"], r["bpcer"], r["acer"]) == (0.0, 0.0, 0.0)
    assert r["no_face"] == {"live": 1, "spoof": 0} and r["threshold"] == 0.5
    assert {row["image"]: row["live"] for row in r["images"]["spoof"]} == {"image_F1.jpg": False, "image_F2.jpg": False}
    assert main(["bench", "liveness", "--live", str(live), "--spoof", str(spoof)]) == 0
    assert "APCER 0.00 %" in capsys.readouterr().out


def _write(folder: Path, frames: list[np.ndarray]) -> None:
    folder.mkdir(parents=True)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:03d}.png"), frame)


def test_bench_liveness_clips(state, data, tmp_path, capsys):
    """Synthetic clips through tracking, the temporal rule and the challenge: heads pass, pictures do not."""
    from edge.liveness import simulate
    from edge.models.registry import Registry
    from edge.vision.detect import make_detector, select_face

    image = cv2.imread(str(data / "liveness" / "image_T1.jpg"))
    face = select_face(make_detector(Registry(), "yunet").detect(image), image.shape)
    for direction in ("left", "right"):
        turn = simulate.relief_clip(image, face.box, face.landmarks[2], frames=24, max_yaw_deg=40,
                                    direction=direction, seed=1)
        _write(tmp_path / "live" / f"turn_{direction}", [image, *turn, *turn[::-1], image, image])
    _write(tmp_path / "spoof" / "photo", simulate.replay_clip(image, frames=30, seed=2))
    _write(tmp_path / "spoof" / "screen", simulate.replay_clip(image, frames=30, seed=3, moire=True))
    args = ["bench", "liveness", "--clips", "--live", str(tmp_path / "live"), "--spoof", str(tmp_path / "spoof")]
    assert main([*args, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    verdicts = {c["clip"]: (c["verdict"], c["reason"]) for label in ("live", "spoof") for c in r["clips"][label]}
    assert (r["apcer"], r["bpcer"]) == (0.0, 0.0), verdicts
    assert all(c["challenge"]["state"] == "passed" for c in r["clips"]["live"])
    assert verdicts["photo"][0] == "spoof" and "flat picture" in verdicts["photo"][1]  # the planar-motion check
    assert verdicts["screen"][0] == "spoof"  # (the passive nets see this screen's sub-pixel grid themselves)
    assert r["tracking_ms_median"] is not None
    # Without the challenge the photo of a live face reads live: the passive check alone cannot tell.
    assert main([*args, "--no-challenge", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["clips"]["spoof"][0]["verdict"] == "live"
