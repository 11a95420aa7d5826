"""MiniFASNet: the PyTorch definitions against the published weights, and the ONNX / TFLite bundles against them."""

import json

import numpy as np
import pytest

from edge.embed import to_input
from edge.imageio import load_bgr
from edge.models.registry import Registry
from edge.vision.detect import make_detector, select_face

torch = pytest.importorskip("torch")
# torch's exporter warns about its own pytree internals on every export: not ours to act on.
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")

from export.recipes.minifasnet import MODELS, scaled_box_crop  # noqa: E402

SAMPLES = {"image_T1.jpg": True, "image_F1.jpg": False, "image_F2.jpg": False}  # live?


def export_cli(argv: list[str]) -> int:
    """`facegate export …` as the CLI runs it, with this module's commands registered."""
    from export import cli

    with pytest.MonkeyPatch.context() as mp:
        if "export.commands" not in cli.COMMAND_MODULES:
            mp.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "export.commands"))
        return cli.main(argv)


def _sample_faces(data):
    detector = make_detector(Registry(), "yunet")
    for name, live in SAMPLES.items():
        image = load_bgr(data / "liveness" / name)
        yield name, live, image, select_face(detector.detect(image), image.shape, "largest")


@pytest.fixture(scope="module")
def bundles(data, tmp_path_factory):
    pytest.importorskip("litert_torch")
    out = tmp_path_factory.mktemp("minifasnet-bundles")
    rc = export_cli(["export", "minifasnet", "--out", str(out), "--images", str(data / "lfw" / "images"),
                     "--weights-dir", str(data / "models" / "minifasnet"), "--samples", str(data / "liveness"),
                     "--parity-images", "100"])
    return out, rc


def test_nets_reproduce_the_published_verdicts_on_the_samples(data):
    from export.nets.minifasnet import load

    for model, up in MODELS.items():
        net = load(str(data / "models" / "minifasnet" / up.file), softmax=True)
        for name, live, image, face in _sample_faces(data):
            crop = scaled_box_crop(image, face.box, up.crop_scale)
            with torch.no_grad():
                p = net(torch.from_numpy(crop.transpose(2, 0, 1)[None].astype(np.float32)))[0].numpy()
            assert (p.argmax() == 1) == live, f"{model} on {name}: {p}"


def test_scaled_box_crop_keeps_the_box_inside_the_image(data):
    image = load_bgr(data / "liveness" / "image_T1.jpg")  # 480 wide, 640 high
    corner = np.array([5.0, 5.0, 105.0, 125.0])
    crop = scaled_box_crop(image, corner, 2.7)
    assert image.shape[:2] == (640, 480) and crop.shape == (80, 80, 3)
    # Shifted, not padded: the corner crop equals the image's own top-left 270×324 region, resized.
    import cv2

    np.testing.assert_array_equal(crop, cv2.resize(image[0:325, 0:271], (80, 80)))
    # 4× a 400-pixel box does not fit 480 pixels: the scale shrinks to 479/400 and the crop spans the width.
    huge = scaled_box_crop(image, np.array([40.0, 50.0, 440.0, 450.0]), 4.0)
    np.testing.assert_array_equal(huge, cv2.resize(image[10:490, 0:480], (80, 80)))


@pytest.mark.slow
def test_bundles_match_the_state_dicts(bundles):
    out, rc = bundles
    assert rc == 0
    for model, up in MODELS.items():
        for name in (model, f"{model}-tflite"):
            parity = json.loads((out / name / "parity.json").read_text())
            assert parity["passed"], parity["summary"]
            assert parity["crops"] >= 100 and parity["max_abs_dp_live"] <= 1e-3
            assert parity["verdict_mismatches"] == 0
            m = Registry(out).manifest(name)
            assert m.task == "liveness" and m.input.size == (80, 80) and m.input.colour == "BGR"
            assert m.input.layout == "NCHW" and m.normalisation.std == (1.0, 1.0, 1.0)
            assert m.extra["crop_scale"] == up.crop_scale and m.extra["live_index"] == 1
            assert m.runtime == ("litert" if name.endswith("tflite") else "onnxruntime")


@pytest.mark.slow
def test_onnx_and_tflite_give_the_same_verdicts_through_the_device_runtime(bundles, data):
    out, _ = bundles
    registry = Registry(out)
    for model in MODELS:
        probs = {}
        for name in (model, f"{model}-tflite"):
            runtime, m = registry.open(name)
            crops = np.stack([scaled_box_crop(img, face.box, m.extra["crop_scale"])
                              for _, _, img, face in _sample_faces(data)])
            probs[name] = runtime.run({runtime.input_names[0]: to_input(crops, m)})[0]
        onnx_p, tfl_p = probs[model], probs[f"{model}-tflite"]
        assert np.abs(onnx_p[:, 1] - tfl_p[:, 1]).max() <= 1e-3
        assert list(onnx_p.argmax(1) == 1) == list(SAMPLES.values()) == list(tfl_p.argmax(1) == 1)
