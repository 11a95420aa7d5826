"""Feed-forward style training on a CPU (a few iterations), resume, and export to ONNX + TFLite bundles."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge.models.registry import Registry  # noqa: E402
from edge.stylize import load_rgb, open_style_net  # noqa: E402
from export.nets.style_net import StyleNet, parameter_count  # noqa: E402
from export.style.bundle import export_style  # noqa: E402
from export.style.content import BENCH_PORTRAITS  # noqa: E402
from export.style.costs import CostSettings  # noqa: E402
from export.style.train import TrainSettings, load_checkpoint, load_style_net, train  # noqa: E402


def test_style_net_is_slim_and_keeps_any_stride_multiple_size() -> None:
    net = StyleNet()
    assert parameter_count(net) * 4 <= 2 * 2**20  # ≤ 2 MB of fp32 weights
    with torch.no_grad():
        y = net(torch.rand(1, 3, 36, 52))
    assert y.shape == (1, 3, 36, 52)


@pytest.fixture(scope="module")
def trained(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    weights = data / "models" / "mobilenet_v2-b0353104.pth"
    if not weights.is_file():
        pytest.skip(f"{weights} missing")
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("style_run")
    settings = TrainSettings(name="scream", style=str(data / "style" / "the_scream.jpg"),
                             content=(str(data / "lfw" / "images" / "Aaron_Eckhart"),
                                      str(data / "lfw" / "images" / "AJ_Cook")),
                             size=32, batch=2, iterations=3, log_every=1, checkpoint_every=2,
                             costs=CostSettings(style_size=64))
    summary = train(settings, out, weights=weights, progress=False, workers=1)
    assert summary["iterations"] == 3
    return out, weights


def test_training_writes_checkpoint_log_settings_and_resumes(trained: tuple[Path, Path], data: Path) -> None:
    out, weights = trained
    state = load_checkpoint(out / "scream.pt")
    assert state["iteration"] == 3 and "optimizer" in state
    rows = list(csv.DictReader((out / "scream.train_log.csv").read_text().splitlines()))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3]
    assert all(float(r["J"]) > 0 for r in rows)
    assert json.loads((out / "scream.settings.json").read_text())["name"] == "scream"
    settings = TrainSettings.from_dict(state["settings"])
    import dataclasses

    more = dataclasses.replace(settings, iterations=5)
    train(more, out, resume=True, weights=weights, progress=False, workers=1)
    rows = list(csv.DictReader((out / "scream.train_log.csv").read_text().splitlines()))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4, 5]  # appended, counting on
    _net, s, meta = load_style_net(out / "scream.pt")
    assert meta["iteration"] == 5 and s.name == "scream"


def test_export_bundles_agree_and_run_on_the_device_path(trained: tuple[Path, Path], data: Path,
                                                         tmp_path: Path) -> None:
    out, _ = trained
    portraits = [data / "lfw" / "images" / rel for rel in BENCH_PORTRAITS[:2]]
    result = export_style(out / "scream.pt", tmp_path, tile=64, overlap=16, parity_images=portraits)
    parity = result["parity"]
    assert parity["passed"] and parity["min_psnr_db_onnx_tflite"] >= 40.0, parity
    reg = Registry(tmp_path)
    assert {"style-scream", "style-scream-litert"} <= set(reg.names())
    image = load_rgb(portraits[0])[:100, :90]  # not square, not a multiple of 4, larger than a 64² tile
    outs = {}
    for runtime in ("onnxruntime", "litert"):
        runner = open_style_net("scream", runtime, registry=reg)
        outs[runtime] = runner(image)
        assert outs[runtime].shape == image.shape
    mse = float(np.mean((outs["onnxruntime"] - outs["litert"]) ** 2))
    assert 10 * np.log10(1 / max(mse, 1e-15)) >= 40.0
