"""Bundles: layout, validation, atomic writes, parity figures, held-out crops and the LFW helper."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.embed import Embedder
from edge.errors import ModelError
from edge.eval.lfw import images_named_by
from edge.models.registry import Registry, sha256_file
from export.bundle import (
    ExportError,
    check_targets,
    embedding_parity,
    heldout_face_crops,
    lfw_parity,
    stage_model,
    write_bundle,
)


def _sface_copy(name: str = "sface-copy") -> tuple[dict, Path]:
    """The prepared SFace graph with its manifest under a new name: a real model to bundle."""
    reg = Registry()
    m = reg.manifest("sface")
    data = m.to_dict()
    data.update(name=name, prepare=[])
    return data, reg.runtime_file(m)


def test_write_bundle_lays_out_a_registry_bundle(tmp_path, capsys):
    manifest, model = _sface_copy()
    out = write_bundle(tmp_path, manifest, model, {"reference": "sface", "crops": 3, "min_cosine": 1.0})
    assert out == tmp_path / "sface-copy"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx", "parity.json"]
    written = json.loads((out / "manifest.json").read_text())
    assert written["file"] == "model.onnx" and written["source"]["file"] == "model.onnx"
    assert "package" not in written["source"] and "upstream" in written["source"]  # provenance kept
    assert written["sha256"] == sha256_file(out / "model.onnx") and written["runtime"] == "onnxruntime"
    parity = json.loads((out / "parity.json").read_text())
    assert parity["name"] == "sface-copy" and parity["summary"].startswith("sface-copy: parity vs sface")
    assert parity["summary"] in capsys.readouterr().out
    assert not (tmp_path / ".staging").exists()
    runtime, m = Registry(tmp_path).open("sface-copy")
    assert m.output_dim == 128 and runtime.input_names


def test_failed_write_leaves_no_half_bundle_and_keeps_the_old_one(tmp_path):
    manifest, model = _sface_copy()
    write_bundle(tmp_path, manifest, model, {"crops": 1})
    before = (tmp_path / "sface-copy" / "manifest.json").read_text()
    with pytest.raises(ModelError, match="task"):
        write_bundle(tmp_path, {**manifest, "task": "nonsense"}, model, {"crops": 1})
    with pytest.raises(ExportError, match="missing"):
        write_bundle(tmp_path, manifest, tmp_path / "absent.onnx", {"crops": 1})
    with pytest.raises(ModelError):
        write_bundle(tmp_path, {**manifest, "name": "other", "input": {"layout": "HWCN"}}, model, {})
    assert (tmp_path / "sface-copy" / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sface-copy"]  # no 'other', no staging leftovers


def test_embedding_parity_figures():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(10, 128))
    same = embedding_parity(a, a.copy())
    assert same["min_cosine"] == pytest.approx(1.0) and same["max_abs_diff"] == 0 and same["crops"] == 10
    b = a.copy()
    b[3] = -b[3]
    b[5, 0] += 0.5
    p = embedding_parity(a, b)
    assert p["min_cosine"] == pytest.approx(-1.0) and p["max_abs_diff"] == pytest.approx(2 * np.abs(a[3]).max())
    with pytest.raises(ExportError):
        embedding_parity(a, a[:5])


def test_check_targets_reads_min_as_lower_bound_and_others_as_magnitude():
    parity = {"min_cosine": 0.99995, "max_abs_dp_live": 2e-4, "lfw": {"delta_pp": -0.2}}
    ok = check_targets(parity, {"min_cosine": 0.9999, "max_abs_dp_live": 1e-3})
    assert ok["passed"] and ok["failed"] == []
    bad = check_targets(parity, {"min_cosine": 0.99999, "lfw.delta_pp": 0.15, "absent": 1.0})
    assert not bad["passed"] and bad["failed"] == ["min_cosine", "lfw.delta_pp", "absent"]


def test_heldout_crops_skip_their_images_and_repeat_with_the_seed(lfw):
    template = Registry().manifest("sface").alignment
    images = lfw / "images"
    crops, paths = heldout_face_crops(images, template, 6, seed=3)
    assert crops.shape == (6, 112, 112, 3) and crops.dtype == np.uint8 and len(set(paths)) == 6
    again, again_paths = heldout_face_crops(images, template, 6, seed=3)
    assert again_paths == paths and np.array_equal(again, crops)
    _, other_paths = heldout_face_crops(images, template, 6, seed=3, skip=set(paths))
    assert not set(other_paths) & set(paths)
    view2 = images_named_by([lfw / "pairs.txt"])
    _, calib = heldout_face_crops(images, template, 6, skip=view2, seed=1)
    assert not set(calib) & view2


def test_lfw_parity_of_an_identical_copy_is_zero(lfw, tmp_path):
    """A staged copy of SFace scores every pair as SFace does: same accuracy, Δ 0, through the protocol."""
    rows = (lfw / "pairs.txt").read_text().splitlines()[1:]
    same, diff = rows[:300], rows[300:600]
    small = tmp_path / "pairs2.txt"  # two folds of 12 + 12 pairs, in the View-2 layout
    small.write_text("\n".join(["2\t12", *same[:12], *diff[:12], *same[12:24], *diff[12:24]]) + "\n")
    manifest, model = _sface_copy()
    stage_model(tmp_path / "models", manifest, model)
    registry = Registry(tmp_path / "models")
    result = lfw_parity("sface", ["sface-copy"], lfw / "images", small, registry=registry)["sface-copy"]
    assert result["pairs"] == 48 and result["folds"] == 2 and result["delta_pp"] == 0
    assert 0.9 <= result["accuracy"] == result["accuracy_reference"] <= 1.0
    crops, _ = heldout_face_crops(lfw / "images", registry.manifest("sface").alignment, 4, registry=registry)
    a = Embedder(*registry.open("sface")).embed(crops)
    b = Embedder(*registry.open("sface-copy")).embed(crops)
    assert embedding_parity(a, b)["max_abs_diff"] < 1e-6


def test_bundle_folder_can_be_copied_as_it_is(tmp_path):
    manifest, model = _sface_copy("sface-moved")
    out = write_bundle(tmp_path / "built", manifest, model, {"crops": 0})
    shutil.copytree(out, tmp_path / "models" / out.name)
    assert Registry(tmp_path / "models").verify(Registry(tmp_path / "models").manifest("sface-moved"))
