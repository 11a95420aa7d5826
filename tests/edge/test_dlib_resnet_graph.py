"""dlib-resnet on the device: the built-in manifest names the package's .dat, the registry converts it to ONNX on
first use without PyTorch or dlib, and the graph gives dlib's own descriptors (prerequisite of issue #16)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from edge.errors import ModelError
from edge.imageio import load_bgr
from edge.models import dlib_resnet_graph as graph
from edge.models import prepare
from edge.models.dlib_dat import load_net
from edge.models.registry import Registry, sha256_file
from tests.conftest import REPO

NAME = "dlib-resnet"
# Runs `facegate ARGS…` in a fresh interpreter where PyTorch, the export tool chain and dlib cannot be imported
# (as on a device installed with `pip install '.[dlib-resnet]'`); fails if anything imported them anyway.
# FACEGATE_TEST_HIDE names more top-level packages to hide (a device without face-recognition-models).
NO_TORCH_NO_DLIB = """
import importlib.abc, os, sys

HIDDEN = {"torch", "torchvision", "torchao", "litert_torch", "ai_edge_quantizer", "dlib", "_dlib_pybind11",
          *filter(None, os.environ.get("FACEGATE_TEST_HIDE", "").split(","))}

class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ImportError(f"{name} is not installed on this device")
        return None

sys.meta_path.insert(0, Hide())
from edge.cli import main
rc = main(sys.argv[1:])
assert not [m for m in sys.modules if m.split(".")[0] in HIDDEN], "a hidden package was imported"
sys.exit(rc)
"""


def facegate_on_device(args: list[str], state: Path, pythonpath: tuple[Path, ...] = (),
                       hide: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (*pythonpath, REPO))),
           "FACEGATE_STATE_DIR": str(state), "FACEGATE_TEST_HIDE": hide}
    return subprocess.run([sys.executable, "-c", NO_TORCH_NO_DLIB, *args], env=env, cwd=state, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def dat() -> Path:
    pytest.importorskip("face_recognition_models")  # find_spec only: its __init__ is never run here
    reg = Registry()
    return reg.verify(reg.manifest(NAME))


@pytest.fixture(scope="module")
def net(dat: Path):
    return load_net(dat)


@pytest.fixture(scope="module")
def model(net) -> onnx.ModelProto:
    return graph.build_graph(net)


# -- the manifest -----------------------------------------------------------------------------------------------
def test_builtin_manifest_carries_what_the_export_wrote(dat: Path, net) -> None:
    m = Registry().manifest(NAME)
    assert m.source["package"] == "face_recognition_models" and m.sha256 == sha256_file(dat)
    assert m.prepare == ("dlib_dat_to_onnx",) and m.runtime == "onnxruntime" and m.licence == "CC0-1.0"
    assert (m.task, m.output_dim, m.input.size, m.input.colour, m.input.layout) == ("embed", 128, (150, 150),
                                                                                    "RGB", "NCHW")
    # dlib's input layer: (x − the .dat's own channel means) / 256.
    assert m.normalisation.mean == graph.input_mean(net) and m.normalisation.std == (256.0,) * 3
    assert m.flip_average and "View 1" in m.extra["flip_average"]["chosen_on"]
    assert m.alignment is not None and m.alignment.size == (150, 150)
    assert m.extra["alignment_fit"]["faces"] == 1000
    for key in ("verify", "identify"):
        prov = m.threshold(key).provenance
        assert prov["pairs_file"] == "pairsDevTrain.txt" and "calibrate embedder --model dlib-resnet" in prov["command"]
    assert 0.9 < m.threshold("identify").value < m.threshold("verify").value < 1.0
    assert m.threshold("identify").tail


# -- the graph --------------------------------------------------------------------------------------------------
def test_graph_holds_plain_operators_with_a_batch_axis(model: onnx.ModelProto, net) -> None:
    ops = {n.op_type for n in model.graph.node}
    assert ops == {"Conv", "Relu", "MaxPool", "AveragePool", "Pad", "Add", "ReduceMean", "Flatten", "Gemm"}
    assert sum(n.op_type == "Conv" for n in model.graph.node) == 29  # each affine folded into its convolution
    # The zero-fills of dlib's add_prev: 3 channel doublings, plus the 3×3 → 4×4 and 1×1 → 2×2 main paths.
    assert sum(n.op_type == "Pad" for n in model.graph.node) == 5
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, out.name) == ("input", "output")
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch", 3, 150, 150]
    x = graph.normalise(graph.synthetic_chips(3), graph.input_mean(net))
    one_by_one = np.concatenate([graph.run(model, x[i:i + 1]) for i in range(3)])
    np.testing.assert_allclose(graph.run(model, x), one_by_one, atol=1e-6)


def test_self_check_against_dlibs_stored_descriptors(model: onnx.ModelProto, net) -> None:
    report = graph.self_check(model, net)
    assert report["passed"] and report["chips"] == 3
    assert report["max_abs_diff"] < 1e-5 and report["min_cosine"] > 0.999999


def test_self_check_can_fail(net, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong conversion is refused: here one convolution's weights are perturbed by 1 %."""
    layer = next(la for la in net.layers if la.kind == "con")
    monkeypatch.setitem(layer.params, "weight", layer.params["weight"] * np.float32(1.01))
    assert not graph.self_check(graph.build_graph(net), net)["passed"]
    monkeypatch.setattr(graph, "load_net", lambda _path: net)
    with pytest.raises(ModelError, match="differs from dlib's descriptors"):
        graph.convert(Path("dlib.dat"))


def test_other_networks_and_files_are_refused(net, tmp_path: Path) -> None:
    import copy

    other = copy.copy(net)
    other.layers = net.layers[:10] + net.layers[12:]  # one relu and one mark fewer
    with pytest.raises(ModelError, match="not dlib's face-recognition ResNet: layer 10"):
        graph.build_graph(other)
    bad = tmp_path / "bad.dat"
    bad.write_bytes(b"\x01\x01\x01\x0dloss_metric_2" + b"\x00" * 64)
    with pytest.raises(ModelError, match="not a dlib network file"):
        graph.convert(bad)


def test_converter_must_come_first_and_its_version_keys_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelError, match="must come first"):
        prepare.prepare(onnx.ModelProto(), ["dlib_dat_to_onnx"])
    key = prepare.steps_key(["dlib_dat_to_onnx"])
    monkeypatch.setattr(graph, "VERSION", graph.VERSION + "-changed")
    assert prepare.steps_key(["dlib_dat_to_onnx"]) != key
    # The repairs' keys are what they were before converters existed: no rebuild of cached SFace/YuNet graphs.
    import hashlib

    steps = ["drop_dangling_inputs", "dynamic_batch"]
    assert prepare.steps_key(steps) == hashlib.sha256(",".join(steps).encode()).hexdigest()[:8]


def test_registry_prepares_once_and_rebuilds_a_damaged_cache(dat: Path, tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    m = reg.manifest(NAME)
    path = reg.runtime_file(m)
    assert path.parent == tmp_path / "prepared" and path.suffix == ".onnx"
    assert path.with_suffix(".sha256").read_text().strip() == sha256_file(path)
    good = path.read_bytes()
    mtime = path.stat().st_mtime_ns
    assert reg.runtime_file(m) == path and path.stat().st_mtime_ns == mtime  # cached, not rebuilt
    path.write_bytes(good[:1000])
    assert reg.runtime_file(m).read_bytes() == good  # deterministic: the same bytes again


# -- the device, without PyTorch or dlib ------------------------------------------------------------------------
def test_device_embeds_and_compares_without_torch_or_dlib(dat: Path, lfw: Path, tmp_path: Path) -> None:
    colin = lfw / "images" / "Colin_Powell"
    r = facegate_on_device(["embed", str(colin / "Colin_Powell_0040.jpg"), "--model", NAME, "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    v = np.asarray(out["embedding"])
    assert out["model"] == NAME and v.shape == (128,) and abs(np.linalg.norm(v) - 1) < 1e-4
    assert list((tmp_path / "models" / "prepared").glob("dlib-resnet-*.onnx"))  # converted into the state dir
    # The manifest's thresholds decide: the same man in two photos, then two different people.
    same = facegate_on_device(["compare", str(colin / "Colin_Powell_0038.jpg"), str(colin / "Colin_Powell_0040.jpg"),
                               "--model", NAME, "--json"], tmp_path)
    assert same.returncode == 0, same.stderr
    assert json.loads(same.stdout)["same_person"] is True
    other = lfw / "images" / "George_W_Bush" / "George_W_Bush_0007.jpg"
    diff = facegate_on_device(["compare", str(colin / "Colin_Powell_0038.jpg"), str(other), "--model", NAME,
                               "--json"], tmp_path)
    assert diff.returncode == 1, diff.stderr
    assert json.loads(diff.stdout)["threshold"] == Registry().manifest(NAME).threshold("verify").value


def _fake_package(root: Path, dat: Path | None) -> Path:
    """A `face_recognition_models` package under root holding `dat` (or nothing) as the model file."""
    pkg = root / "face_recognition_models"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('the registry must not import this package')\n")
    if dat is not None:
        shutil.copyfile(dat, pkg / "models" / dat.name)
    return pkg / "models" / (dat.name if dat else "missing.dat")


def test_a_corrupted_package_file_is_refused_by_hash(dat: Path, lfw: Path, tmp_path: Path) -> None:
    fake = _fake_package(tmp_path / "site", dat)
    with open(fake, "r+b") as f:
        f.seek(1_000_000)  # inside a weight tensor: the file still parses, only the hash can tell
        f.write(b"\xde\xad\xbe\xef")
    state = tmp_path / "state"
    state.mkdir()
    image = str(lfw / "images" / "Colin_Powell" / "Colin_Powell_0038.jpg")
    r = facegate_on_device(["embed", image, "--model", NAME], state, pythonpath=(tmp_path / "site",))
    assert r.returncode == 2
    assert r.stderr.startswith("facegate: error: model 'dlib-resnet': file ") and "Traceback" not in r.stderr
    assert str(fake) in r.stderr and Registry().manifest(NAME).sha256 in r.stderr
    assert not list(state.glob("models/prepared/dlib-resnet-*"))  # nothing converted from the altered file
    r = facegate_on_device(["models", "verify", NAME], state, pythonpath=(tmp_path / "site",))
    assert r.returncode == 2 and r.stdout.startswith("FAIL dlib-resnet: ") and "has sha256" in r.stdout


def test_a_missing_package_or_file_is_named(dat: Path, lfw: Path, tmp_path: Path) -> None:
    image = str(lfw / "images" / "Colin_Powell" / "Colin_Powell_0038.jpg")
    r = facegate_on_device(["embed", image, "--model", NAME], tmp_path, hide="face_recognition_models")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "package 'face_recognition_models' is not installed (pip install face-recognition-models==0.3.0)" in r.stderr
    _fake_package(tmp_path / "site", None)
    r = facegate_on_device(["embed", image, "--model", NAME], tmp_path, pythonpath=(tmp_path / "site",))
    assert r.returncode == 2 and "is missing (expected sha256 55533b28" in r.stderr
    # The default embedder does not need the package at all, and a device without it passes `models verify`
    # (dlib-resnet is optional, so skipped) unless dlib-resnet is asked for by name.
    r = facegate_on_device(["embed", image, "--json"], tmp_path, hide="face_recognition_models")
    assert r.returncode == 0, r.stderr
    r = facegate_on_device(["models", "verify", "--json"], tmp_path, hide="face_recognition_models")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert "not installed" in rows[NAME]["skipped"] and rows["sface"]["ok"] and "skipped" not in rows["sface"]
    r = facegate_on_device(["models", "verify", NAME], tmp_path, hide="face_recognition_models")
    assert r.returncode == 2 and r.stdout.startswith("FAIL dlib-resnet: model 'dlib-resnet': its package")


# -- against dlib itself (dev extra) ----------------------------------------------------------------------------
def test_reference_descriptors_are_dlibs_own(dat: Path) -> None:
    dlib = pytest.importorskip("dlib")
    encoder = dlib.face_recognition_model_v1(str(dat))
    ours = np.asarray(graph.REFERENCE, np.float64)
    theirs = np.stack([np.asarray(encoder.compute_face_descriptor(c)) for c in graph.synthetic_chips(len(ours))])
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


@pytest.mark.slow
def test_graph_matches_dlib_on_its_own_chips(dat: Path, model: onnx.ModelProto, net, lfw: Path) -> None:
    """100 LFW faces found by dlib (HOG + 5-point shape predictor), cut by dlib.get_face_chip, described by dlib
    and by the graph built without dlib."""
    dlib = pytest.importorskip("dlib")
    shape_file = dat.with_name("shape_predictor_5_face_landmarks.dat")
    hog, shape = dlib.get_frontal_face_detector(), dlib.shape_predictor(str(shape_file))
    encoder = dlib.face_recognition_model_v1(str(dat))
    people = sorted(p for p in (lfw / "images").iterdir() if p.is_dir())
    chips, theirs = [], []
    for person in people[::40]:
        rgb = np.ascontiguousarray(load_bgr(sorted(person.glob("*.jpg"))[0])[:, :, ::-1])
        rects = hog(rgb, 0)
        if len(rects) != 1:
            continue
        chip = np.asarray(dlib.get_face_chip(rgb, shape(rgb, rects[0]), 150, 0.25))
        chips.append(chip)
        theirs.append(np.asarray(encoder.compute_face_descriptor(chip)))
        if len(chips) == 100:
            break
    assert len(chips) == 100
    ours = graph.run(model, graph.normalise(np.stack(chips), graph.input_mean(net)))
    theirs_arr = np.stack(theirs)
    cos = (ours * theirs_arr).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs_arr, axis=1))
    assert cos.min() >= 0.99999
    assert np.abs(ours - theirs_arr).max() < 1e-4  # the unnormalised descriptors too, as dlib compares them
