"""The LiteRT backend: loads .tflite files, runs fixed-batch files on any batch, opens through the registry."""

import json
import shutil

import numpy as np
import pytest

from edge.errors import ModelError
from edge.models.registry import Registry, sha256_file
from edge.runtime import open_runtime

pytest.importorskip("ai_edge_litert")

STYLE = "models/magenta/style_predict_quantized_256.tflite"  # int8 weights, float I/O, batch 1, no signature


@pytest.fixture(scope="module")
def style_file(data):
    path = data / STYLE
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


def _style_images(data, n):
    import cv2

    from edge.imageio import load_bgr

    paths = sorted((data / "style").glob("*.jpg"))[:n]
    return np.stack([cv2.resize(load_bgr(p)[:, :, ::-1], (256, 256)) for p in paths]).astype(np.float32) / 255


def test_runs_a_real_file_and_splits_a_batch(data, style_file):
    rt = open_runtime("litert", style_file, threads=1)
    assert rt.input_names == ["style_image"] and len(rt.output_names) == 1
    x = _style_images(data, 3)
    batch = rt.run({"style_image": x})[0]
    assert batch.shape == (3, 1, 1, 100) and batch.dtype == np.float32
    single = [rt.run({"style_image": x[i:i + 1]})[0][0] for i in range(3)]
    np.testing.assert_allclose(batch, np.stack(single), rtol=0, atol=1e-6)
    assert not np.allclose(batch[0], batch[1])  # different paintings, different style vectors


def test_registry_chooses_litert_from_the_manifest(tmp_path, data, style_file):
    bundle = tmp_path / "style-predict"
    bundle.mkdir()
    shutil.copy(style_file, bundle / "model.tflite")
    manifest = {"name": "style-predict", "task": "stylize", "file": "model.tflite",
                "sha256": sha256_file(bundle / "model.tflite"), "source": {"file": "model.tflite"},
                "licence": "Apache-2.0", "runtime": "litert",
                "input": {"size": [256, 256], "layout": "NHWC", "colour": "RGB"}}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    runtime, m = Registry(tmp_path).open("style-predict")
    assert type(runtime).__name__ == "LiteRtRuntime" and m.runtime == "litert"
    out = runtime.run({runtime.input_names[0]: _style_images(data, 1)})[0]
    assert out.shape == (1, 1, 1, 100) and np.isfinite(out).all()


def test_unreadable_file_is_a_model_error(tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer" * 100)
    with pytest.raises(ModelError, match=r"bad\.tflite"):
        open_runtime("litert", bad)


def test_unknown_runtime_names_the_known_ones(tmp_path):
    with pytest.raises(ModelError, match="onnxruntime, litert"):
        open_runtime("tensorrt", tmp_path / "x")
