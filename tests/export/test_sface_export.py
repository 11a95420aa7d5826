"""SFace export: every variant against the prepared graph, then run through the device pipeline."""

import json

import numpy as np
import pytest

from edge.imageio import load_bgr
from edge.models.registry import Registry
from edge.pipeline import FacePipeline

torch = pytest.importorskip("torch")
# torch's exporter warns about its own pytree internals on every export: not ours to act on.
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")
pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

VARIANTS = {"sface-int8": "onnxruntime", "sface-fp16": "onnxruntime", "sface-tflite": "litert",
            "sface-tflite-int8": "litert", "sface-tflite-fp16": "litert"}


def export_cli(argv: list[str]) -> int:
    """`facegate export …` as the CLI runs it, with this module's commands registered."""
    from export import cli

    with pytest.MonkeyPatch.context() as mp:
        if "export.commands" not in cli.COMMAND_MODULES:
            mp.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "export.commands"))
        return cli.main(argv)


@pytest.fixture(scope="module")
def bundles(lfw, tmp_path_factory):
    """All five variants; 50 calibration crops, 100 parity crops, LFW int8 check on two View-2 folds."""
    out = tmp_path_factory.mktemp("sface-bundles")
    rc = export_cli(["export", "sface", "--out", str(out), "--images", str(lfw / "images"),
                     "--pairs", str(lfw / "pairs.txt"), "--lfw-folds", "2",
                     "--calib-images", "50", "--parity-images", "100"])
    return out, rc


def test_the_net_reproduces_the_onnx_graph(lfw):
    from edge.embed import Embedder, to_input
    from export.bundle import embedding_parity, heldout_face_crops
    from export.nets.sface import load

    reg = Registry()
    m = reg.manifest("sface")
    crops, _ = heldout_face_crops(lfw / "images", m.alignment, 8, registry=reg)
    with torch.no_grad():
        ours = load(reg.verify(m))(torch.from_numpy(to_input(crops, m))).numpy()
    p = embedding_parity(Embedder(*reg.open("sface")).embed(crops), ours)
    assert p["min_cosine"] > 0.999999 and p["max_abs_diff"] < 1e-5


@pytest.mark.slow
def test_every_variant_meets_its_parity_targets(bundles):
    out, rc = bundles
    assert rc == 0
    for name, runtime in VARIANTS.items():
        parity = json.loads((out / name / "parity.json").read_text())
        assert parity["passed"], parity["summary"]
        assert parity["crops"] >= 100
        m = Registry(out).manifest(name)
        assert m.runtime == runtime and m.prepare == () and m.output_dim == 128
        assert m.alignment == Registry().manifest("sface").alignment
        assert m.threshold("verify").provenance["inherited_from"] == "sface"
    tflite = json.loads((out / "sface-tflite" / "parity.json").read_text())
    assert tflite["min_cosine"] >= 0.9999
    for name in ("sface-int8", "sface-tflite-int8"):
        lfw_row = json.loads((out / name / "parity.json").read_text())["lfw"]
        assert lfw_row["pairs"] == 1200 and abs(lfw_row["delta_pp"]) <= 0.15


@pytest.mark.slow
def test_calibration_is_held_out_from_the_pairs_and_the_parity_crops(bundles, lfw):
    from edge.eval.lfw import images_named_by

    out, _ = bundles
    view2 = images_named_by([lfw / "pairs.txt"])
    for name in ("sface-int8", "sface-tflite-int8"):
        parity = json.loads((out / name / "parity.json").read_text())
        calib = set(parity["calibration_paths"])
        assert len(calib) == parity["calibration_images"] == 50
        assert not calib & view2 and not calib & set(parity["crop_images"])


@pytest.mark.slow
def test_variants_run_through_the_device_pipeline(bundles, lfw):
    out, _ = bundles
    pipe = FacePipeline(Registry(out), embedder="sface", extra_embedders=tuple(VARIANTS))
    assert type(pipe.embedders[3].runtime).__name__ == "LiteRtRuntime"
    for rel in ("Aaron_Peirsol/Aaron_Peirsol_0001.jpg", "Serena_Williams/Serena_Williams_0001.jpg"):
        image = load_bgr(lfw / "images" / rel)
        face = pipe.detect(image)[0]
        embs = pipe.embed_all(image, face)
        for name in VARIANTS:
            cos = float(np.dot(embs["sface"], embs[name]))
            assert cos > (0.98 if "int8" in name else 0.999), (name, rel, cos)


@pytest.mark.slow
def test_speed_bench_times_a_tflite_variant(bundles, lfw):
    from edge.bench import speed

    out, _ = bundles
    result = speed.run(lfw / "images", limit=4, model="sface-tflite-int8", peers=False, registry=Registry(out))
    assert result["model"] == "sface-tflite-int8" and result["ours_ms"] > 0 and result["no_face"]["ours"] == 0


@pytest.mark.slow
def test_torch_recipe_exports_a_module_with_its_weights(lfw, tmp_path):
    from export.nets.sface import from_registry

    weights = tmp_path / "sface-retrained.pt"
    torch.save(from_registry().state_dict(), weights)
    out = tmp_path / "bundles"
    rc = export_cli(["export", "torch", "--module", "export.nets.sface:from_registry", "--weights", str(weights),
                     "--name", "sface-retrained", "--task", "embed", "--input-size", "112", "112",
                     "--colour", "RGB", "--variants", "onnx-fp32,tflite-fp32", "--out", str(out),
                     "--images", str(lfw / "images"), "--calib-images", "4", "--parity-images", "100"])
    assert rc == 0
    for name in ("sface-retrained", "sface-retrained-tflite"):
        parity = json.loads((out / name / "parity.json").read_text())
        assert parity["passed"] and parity["min_cosine"] >= 0.9999, parity["summary"]
        m = Registry(out).manifest(name)
        assert m.task == "embed" and m.alignment == Registry().manifest("sface").alignment
        assert m.source["module"] == "export.nets.sface:from_registry" and "weights_sha256" in m.source
