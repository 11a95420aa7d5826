"""The passive check: MiniFASNetV2 + V1SE installed from the published files (no PyTorch), fused, at the fixed
threshold."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.errors import ModelError
from edge.liveness import installed, load
from edge.liveness.minifasnet import FUSED_NAME, LIVE_THRESHOLD, crop_face, open_passive, write_fused
from edge.models.registry import Registry
from edge.vision.detect import Detector, make_detector, select_face

SAMPLES = {"image_T1.jpg": True, "image_F1.jpg": False, "image_F2.jpg": False}  # live, print, screen replay


def weight_files(data: Path) -> list[Path]:
    """The published MiniFASNet state dicts in the shared data (skips the test without them)."""
    from edge.liveness.minifasnet_graph import UPSTREAM

    files = [data / "models" / "minifasnet" / up.file for up in UPSTREAM.values()]
    if not all(f.is_file() for f in files):
        pytest.skip(f"MiniFASNet weights not found under {data / 'models' / 'minifasnet'}")
    return files


def build_models(root: Path, data: Path) -> Path:
    """`facegate models install minifasnet --file …` into `root/models` (once per test session): the two
    ONNX bundles and the fused one, with the device dependencies only.

    Not in the session's own model directory: other tests expect no liveness model installed there.
    """
    from edge.models.install import install

    model_dir = root / "models"
    if not (model_dir / FUSED_NAME / "manifest.json").is_file():
        names = install("minifasnet", model_dir=model_dir, files=weight_files(data), progress=False)
        assert names == ["minifasnet-v2", "minifasnet-v1se", FUSED_NAME]
    return model_dir


@pytest.fixture(scope="module")
def models(data, tmp_path_factory) -> Path:
    return build_models(tmp_path_factory.getbasetemp() / "liveness", data)


@pytest.fixture(scope="module")
def registry(models) -> Registry:
    return Registry(models)


@pytest.fixture(scope="module")
def detector(registry) -> Detector:
    return make_detector(registry, "yunet")


def _face(detector: Detector, path: Path):
    image = cv2.imread(str(path))
    return image, select_face(detector.detect(image), image.shape, "largest")


def test_samples_at_the_fixed_threshold(data, registry, detector):
    check = load(FUSED_NAME, registry)
    assert check.name == FUSED_NAME and [n.manifest.name for n in check.nets] == ["minifasnet-v2", "minifasnet-v1se"]
    threshold = registry.manifest(FUSED_NAME).thresholds["live"]
    assert threshold.value == LIVE_THRESHOLD == check.threshold
    assert "a priori" in threshold.provenance["source"] and threshold.provenance["fitted_on"].startswith("nothing")
    for name, live in SAMPLES.items():
        image, face = _face(detector, data / "liveness" / name)
        a = check.assess(image, face)
        assert a.live is live, (name, a.to_dict())
        assert check.check(image, face).verdict == ("live" if live else "spoof")
        assert a.score == pytest.approx(np.mean(list(a.members.values())))  # the fusion is the members' mean


def test_crops_are_shifted_inside_never_padded(data, detector):
    """The enlarged box is moved back into the image (the weights' training crops), not padded."""
    rng = np.random.default_rng(0)
    image = rng.integers(1, 255, (200, 300, 3), dtype=np.uint8)  # no zero pixel anywhere
    crop = crop_face(image, np.array([5.0, 10.0, 65.0, 80.0]), 2.7)
    assert crop.shifted and not crop.shrunk and crop.box[0] == 0 and crop.box[1] == 0
    assert crop.box[2] - crop.box[0] == pytest.approx(60 * 2.7, abs=1.5)
    assert crop.image.shape == (80, 80, 3) and crop.image.min() > 0  # no padding came in
    inside = crop_face(image, np.array([120.0, 80.0, 160.0, 120.0]), 2.7)
    assert not inside.adjusted
    big = crop_face(image, np.array([100.0, 20.0, 200.0, 180.0]), 4.0)  # 4× cannot fit: shrunk to the image
    assert big.shrunk and big.scale == pytest.approx(199 / 160)
    # The same crops the export recipe measured its parity on, so the device sees what was checked.
    from export.recipes.minifasnet import scaled_box_crop

    for name in SAMPLES:
        img, face = _face(detector, data / "liveness" / name)
        for scale in (2.7, 4.0):
            assert np.array_equal(crop_face(img, face.box, scale).image, scaled_box_crop(img, face.box, scale))


def test_auto_gets_the_fusion(models, registry, tmp_path):
    from edge.config import parse
    from edge.daemon import resolve_liveness

    assert FUSED_NAME in installed(registry)
    cfg = parse({"profile": "door", "models": {"model_dir": str(models)}})
    check = resolve_liveness(cfg, registry)
    assert check.name == FUSED_NAME and len(check.nets) == 2
    # A member on its own is still loadable by name.
    assert load("minifasnet-v2", registry).nets[0].scale == 2.7
    # The fusion pins its members: a member replaced behind its back is refused, not silently fused.
    copy = tmp_path / "models"
    shutil.copytree(models, copy, ignore=shutil.ignore_patterns("prepared"))
    v1se = copy / "minifasnet-v1se"
    shutil.copyfile(copy / "minifasnet-v2" / "model.onnx", v1se / "model.onnx")
    manifest = json.loads((v1se / "manifest.json").read_text())
    manifest["sha256"] = json.loads((copy / "minifasnet-v2" / "manifest.json").read_text())["sha256"]
    (v1se / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="changed since the fusion was written"):
        load(FUSED_NAME, Registry(copy))
    assert write_fused(copy, prefer_tflite=False) is not None  # rewriting it accepts the new member
    assert load(FUSED_NAME, Registry(copy)).name == FUSED_NAME


def test_lfw_view2_sample_reads_live(data, registry, tmp_path):
    """A regression sample of LFW View 2 as bona fide faces (the full run is in docs/liveness.md)."""
    from edge.bench import liveness as bench

    spoof = tmp_path / "spoof"
    spoof.mkdir()
    for name in ("image_F1.jpg", "image_F2.jpg"):
        shutil.copy(data / "liveness" / name, spoof / name)
    r = bench.run(data / "lfw" / "images", spoof, limit=120, pairs=data / "lfw" / "pairs.txt", registry=registry)
    assert r["live_images"] == 120 and r["no_face"] == {"live": 0, "spoof": 0}
    assert r["apcer"] == 0.0 and r["bpcer"] <= 0.2
    assert r["crops_adjusted"]["either"] == 1.0  # 250×250 LFW images cannot hold a 2.7× or 4× box
    assert r["threshold"] == LIVE_THRESHOLD and r["threshold_provenance"]["fitted_on"].startswith("nothing")
    assert len(r["images"]["live"]) == 120 and all("score" in row for row in r["images"]["live"])


def test_passive_timing(data, registry):
    from edge.bench.liveness import time_passive

    t = time_passive([data / "liveness" / n for n in SAMPLES], threads=1, registry=registry, repeat=5)
    assert t["faces"] == 3 and t["members"] == ["minifasnet-v2", "minifasnet-v1se"]
    assert 0 < t["passive_cpu_median_ms"] < 60  # a sanity bound: the figure itself is in docs/liveness.md


def test_open_passive_without_a_fused_bundle(models, tmp_path):
    copy = tmp_path / "models"
    shutil.copytree(models, copy, ignore=shutil.ignore_patterns("prepared", FUSED_NAME))
    check = open_passive(Registry(copy))
    assert check.name == FUSED_NAME and [n.manifest.name for n in check.nets] == ["minifasnet-v2", "minifasnet-v1se"]
    shutil.rmtree(copy / "minifasnet-v2")
    assert open_passive(Registry(copy)).name == "minifasnet-v1se"
    shutil.rmtree(copy / "minifasnet-v1se")
    with pytest.raises(ModelError, match="no liveness model is installed"):
        open_passive(Registry(copy))
