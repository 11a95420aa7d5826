"""The device's MiniFASNet converter (no PyTorch) against PyTorch: the same tensors, the same probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from edge.embed import to_input
from edge.liveness import minifasnet_graph as graph
from edge.models import torch_pickle
from edge.models.install import install
from edge.models.manifest import Manifest
from edge.models.registry import Registry

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")

from export.nets.minifasnet import load as load_net  # noqa: E402
from export.recipes import minifasnet as recipe  # noqa: E402
from export.recipes import torch_outputs, torch_to_onnx  # noqa: E402

PARITY = 1e-5  # issue #18: max |Δ p_live| against the PyTorch export on the same crops


@pytest.fixture(scope="module")
def installed(data, tmp_path_factory):
    """Both nets installed by the device path (`models install minifasnet --file …`)."""
    model_dir = tmp_path_factory.mktemp("graph") / "models"
    files = [data / "models" / "minifasnet" / up.file for up in graph.UPSTREAM.values()]
    if not all(f.is_file() for f in files):
        pytest.skip("MiniFASNet weights not in the shared data")
    install("minifasnet", model_dir=model_dir, files=files, progress=False)
    return Registry(model_dir)


@pytest.mark.parametrize("model", list(graph.UPSTREAM))
def test_the_reader_gives_torch_load_s_tensors(data, tmp_path, model):
    """The legacy file as published, and the same state dict re-saved in PyTorch's zip layout."""
    path = data / "models" / "minifasnet" / graph.UPSTREAM[model].file
    ref = torch.load(path, map_location="cpu", weights_only=True)
    torch.save(ref, tmp_path / "zip.pth")
    for f in (path, tmp_path / "zip.pth"):
        ours = torch_pickle.load_state_dict(f, strip="")
        assert list(ours) == list(ref)
        for k, t in ref.items():
            assert ours[k].dtype == t.numpy().dtype and np.array_equal(ours[k], t.numpy()), (f, k)


@pytest.mark.parametrize("model", list(graph.UPSTREAM))
def test_stored_reference_is_what_pytorch_gives(data, model):
    """The install-time check's numbers (REFERENCE) are PyTorch's for the published weights, today."""
    net = load_net(str(data / "models" / "minifasnet" / graph.UPSTREAM[model].file), softmax=True)
    with torch.no_grad():
        p = net(torch.from_numpy(graph.synthetic_inputs())).numpy()
    np.testing.assert_allclose(p, np.asarray(graph.REFERENCE[model]), atol=1e-6)


@pytest.mark.parametrize("model", list(graph.UPSTREAM))
def test_parity_with_the_pytorch_export_on_the_same_crops(data, installed, tmp_path, model):
    """≥ 100 held-out LFW face crops and the three samples, cut as on the device; both runtimes onnxruntime."""
    up = graph.UPSTREAM[model]
    net = load_net(str(data / "models" / "minifasnet" / up.file), softmax=True)
    crops, paths = recipe.parity_crops(up.crop_scale, data / "lfw" / "images", 100, data / "liveness")
    assert len(crops) >= 103 and sum(p.startswith("liveness/") for p in paths) == 3
    x = to_input(crops, installed.manifest(model))
    reference = torch_outputs(net, x)  # PyTorch itself
    exported = tmp_path / "torch.onnx"
    with recipe.quiet():
        torch_to_onnx(net, (1, 3, 80, 80), exported, output_name="probabilities")  # today's recipe
    ours = graph.run(installed.verify(installed.manifest(model)), x)
    theirs = graph.run(exported, x)
    for other in (reference, theirs):
        r = recipe.liveness_parity(other, ours)
        assert r["max_abs_dp_live"] <= PARITY and r["verdict_mismatches"] == 0, r
    # Both bundles carry one manifest: the recipe's differs only in its recipe note.
    ours_m = installed.manifest(model)
    theirs_m = Manifest.from_dict({**recipe.manifest_for(model, "onnx-fp32", ours_m.source["weights_sha256"]),
                                   "file": ours_m.file, "sha256": ours_m.sha256})
    for key in ("name", "task", "runtime", "input", "normalisation", "output_dim", "extra", "licence", "thresholds"):
        assert getattr(ours_m, key) == getattr(theirs_m, key), key
