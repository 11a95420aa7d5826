"""Setting the live threshold from bona fide faces: the quantile rule, the stored provenance, and its lifetime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.errors import FacegateError
from edge.liveness.calibrate import calibrate, live_threshold
from edge.liveness.minifasnet import FUSED_NAME, LIVE_THRESHOLD, open_passive, write_fused
from edge.models.registry import Registry
from tests.edge.test_liveness_passive import build_models


def test_threshold_refuses_exactly_the_target_share():
    scores = np.array([0.9, 0.1, 0.5, 0.7, 0.3, 0.95, 0.2, 0.8, 0.6, 0.4])
    t = live_threshold(scores, 0.2)  # 2 of 10 may be refused: 0.1 and 0.2
    assert t == pytest.approx(0.25)
    assert (scores <= t).sum() == 2
    assert live_threshold(scores, 0.25) == pytest.approx(0.25)  # floor(2.5) = 2
    assert live_threshold(scores, 0.0) < 0.1  # refuse none
    with pytest.raises(FacegateError):
        live_threshold(scores, 1.0)
    with pytest.raises(FacegateError):
        live_threshold(np.array([]), 0.05)


@pytest.fixture(scope="module")
def model_copy(data, tmp_path_factory) -> Path:
    built = build_models(tmp_path_factory.getbasetemp() / "liveness", data)
    copy = tmp_path_factory.mktemp("calibrated") / "models"
    shutil.copytree(built, copy)
    return copy


def test_calibration_writes_the_threshold_with_provenance(data, model_copy):
    lfw = data / "lfw"
    registry = Registry(model_copy)
    r = calibrate(lfw / "images", registry, bpcer=0.05, exclude=[lfw / "pairs.txt"], limit=120, command="test")
    p = r["provenance"]
    assert r["written"] and p["faces"] + p["no_face"] == p["images"] == 120
    assert p["bpcer_measured"] <= 0.05 and p["excluded_images"] > 7000
    assert p["excluded_pairs"][0]["file"] == "pairs.txt" and len(p["excluded_pairs"][0]["sha256"]) == 64
    # None of the calibration images is one View 2 names.
    from edge.eval.lfw import images_named_by

    view2 = images_named_by([lfw / "pairs.txt"])
    assert len(r["images"]) == 120 and not any(row["image"] in view2 for row in r["images"])
    check = open_passive(Registry(model_copy), FUSED_NAME)
    assert check.threshold == r["threshold"] >= check.certain_spoof
    manifest = json.loads((model_copy / FUSED_NAME / "manifest.json").read_text())
    assert manifest["thresholds"]["live"]["provenance"]["target_bpcer"] == 0.05

    # Rewriting the fusion with the same members keeps the calibration …
    write_fused(model_copy, prefer_tflite=False)
    assert open_passive(Registry(model_copy), FUSED_NAME).threshold == r["threshold"]
    # … a changed member voids it (back to the a-priori rule).
    live = manifest["thresholds"]["live"]
    live["provenance"]["members_sha256"] = {k: "0" * 64 for k in live["provenance"]["members_sha256"]}
    (model_copy / FUSED_NAME / "manifest.json").write_text(json.dumps(manifest))
    write_fused(model_copy, prefer_tflite=False)
    assert open_passive(Registry(model_copy), FUSED_NAME).threshold == LIVE_THRESHOLD


def test_calibration_refuses_too_few_faces_and_keeps_the_manifest(data, model_copy, tmp_path):
    before = (model_copy / FUSED_NAME / "manifest.json").read_bytes()
    folder = tmp_path / "few"
    folder.mkdir()
    shutil.copy(data / "liveness" / "image_T1.jpg", folder / "a.jpg")
    with pytest.raises(FacegateError, match="at least 100"):
        calibrate(folder, Registry(model_copy))
    with pytest.raises(FacegateError, match="not a directory"):
        calibrate(tmp_path / "missing", Registry(model_copy))
    assert (model_copy / FUSED_NAME / "manifest.json").read_bytes() == before
