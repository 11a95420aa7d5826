"""Device-side stylisation: tiling without seams, and Magenta's arbitrary-style TFLite models (no torch)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from edge.cli.stylize import register
from edge.models.manifest import Manifest
from edge.models.registry import Registry
from edge.stylize import MagentaStylizer, fit_longer, installed_styles, load_rgb, save_rgb, tile_starts, tiled


def test_tile_starts_cover_the_image_with_the_overlap() -> None:
    for length, tile, overlap in ((1000, 384, 64), (384, 384, 64), (385, 384, 64), (2000, 512, 100)):
        starts = tile_starts(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] + tile == max(length, tile)
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:], strict=False))
    assert tile_starts(100, 384, 64) == [0]


def test_blending_weights_sum_to_one() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((301, 517, 3), dtype=np.float32)
    out = tiled(image, lambda t: t, tile=128, overlap=32)  # an identity "network" must come back unchanged
    assert np.allclose(out, image, atol=1e-6)
    small = tiled(image[:50, :70], lambda t: t, tile=128, overlap=32)  # reflection-padded up to the tile
    assert np.allclose(small, image[:50, :70], atol=1e-6)


def _column_steps(image: np.ndarray) -> np.ndarray:
    """Mean absolute difference between each pair of neighbouring columns."""
    return np.abs(np.diff(image, axis=1)).mean(axis=(0, 2))


@pytest.fixture(scope="module")
def magenta(data: Path) -> MagentaStylizer:
    folder = data / "models" / "magenta"
    if not folder.is_dir():
        pytest.skip(f"{folder} missing")
    return MagentaStylizer(folder, variant="f16")


def test_magenta_tiles_leave_no_seams(magenta: MagentaStylizer, data: Path) -> None:
    painting = load_rgb(data / "style" / "starry_night.jpg")
    vector = magenta.bottleneck(painting)
    assert vector.shape == (1, 1, 1, 100)
    image = fit_longer(load_rgb(data / "style" / "great_wave.jpg"), 800)  # 800 × 600: ≥ 2 tiles of 384
    assert image.shape[1] >= 2 * magenta.tile
    out = magenta(image, vector, overlap=64)
    assert out.shape == image.shape and out.min() >= 0 and out.max() <= 1
    assert np.abs(out - image).mean() > 0.05  # it did restyle the picture

    starts = tile_starts(image.shape[1], magenta.tile, 64)
    borders = sorted({s for s in starts[1:]} | {s + magenta.tile - 1 for s in starts[:-1]})
    steps = _column_steps(out)
    inside = float(np.median(steps))
    at_borders = [float(steps[c - 1:c + 1].max()) for c in borders]
    # No seam: the step between columns at any tile border is no larger than a typical step inside tiles
    # (10 % slack for texture), whereas pasting the tiles without blending shows clear steps there.
    assert max(at_borders) <= 1.1 * float(np.percentile(steps, 75)), (at_borders, inside)

    pasted = np.zeros_like(image)
    for x in starts:
        pasted[:, x:x + magenta.tile] = magenta(image[:, x:x + magenta.tile], vector, overlap=0)
    naive = _column_steps(pasted)
    assert max(float(naive[c - 1:c + 1].max()) for c in starts[1:]) > 1.5 * float(np.median(naive))


def test_stylize_command_with_a_style_image(data: Path, tmp_path: Path) -> None:
    folder = data / "models" / "magenta"
    if not folder.is_dir():
        pytest.skip(f"{folder} missing")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    out = tmp_path / "styled.png"
    content = data / "lfw" / "images" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg"
    args = parser.parse_args(["stylize", str(content), str(out), "--style-image", str(data / "style" / "udnie.jpg"),
                              "--size", "300", "--magenta-dir", str(folder), "--magenta-variant", "quantized"])
    assert args.func(args) == 0
    result = load_rgb(out)
    assert result.shape == (300, 300, 3)
    with pytest.raises(SystemExit):  # a style name and a style image are mutually exclusive
        parser.parse_args(["stylize", str(content), str(out), "--style", "x", "--style-image", "y.jpg"])




# -- the styles that ship with the package (trained by `facegate style train`, exported with --ship) ----------
def _shipped(registry: Registry) -> dict[str, Manifest]:
    manifests = {n: registry.manifest(n) for n in registry.names()}
    return {n: m for n, m in manifests.items() if m.task == "stylize"}


def test_shipped_styles_are_found_with_no_install_step(tmp_path: Path) -> None:
    import onnx

    reg = Registry(tmp_path / "models")  # an empty model directory: nothing installed
    shipped = _shipped(reg)
    assert len(shipped) >= 3, sorted(shipped)
    assert installed_styles(reg) == sorted(str(m.extra["style"]) for m in shipped.values())
    for name, m in shipped.items():
        path = reg.verify(m)  # the file is there and matches the manifest's sha256
        assert m.source["package"] == "edge.models" and m.licence == "Apache-2.0", name
        assert path.stat().st_size <= 2_000_000, name
        kernels = {i.data_type for i in onnx.load(str(path)).graph.initializer if len(i.dims) == 4}
        assert kernels == {onnx.TensorProto.FLOAT16}, name  # fp16 weights
        e = m.extra
        assert e["training"]["settings"]["costs"] == e["costs"] and e["training"]["iterations"] > 0, name
        assert e["parity"]["passed"] and e["parity"]["min_psnr_db_onnx_torch"] >= 40.0, name
        assert 0 < e["style_loss"]["mean_ratio"] <= 2.0, name  # measured at export on the held-out portraits


def test_stylize_command_with_a_shipped_style(tmp_path: Path) -> None:
    style = installed_styles()[0]
    yy, xx = np.mgrid[0:90, 0:130].astype(np.float32)
    photo = np.stack([xx / 130, yy / 90, 0.5 + 0.4 * np.sin(xx / 9) * np.cos(yy / 7)], axis=-1)
    save_rgb(photo, tmp_path / "photo.png")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    out = tmp_path / "styled.png"
    args = parser.parse_args(["stylize", str(tmp_path / "photo.png"), str(out), "--style", style, "--json"])
    assert args.func(args) == 0
    result = load_rgb(out)
    assert result.shape == (90, 130, 3)
    assert np.abs(result - load_rgb(tmp_path / "photo.png")).mean() > 0.05  # it did restyle the picture


def test_tiny_images_are_stylised_not_crashed(tmp_path: Path) -> None:
    """Sides shorter than the network's own reflection padding (a 4-pixel side failed inside onnxruntime)."""
    from edge.stylize import stylize_file

    rng = np.random.default_rng(0)
    for h, w in ((1, 1), (4, 4), (3, 16), (4, 40)):
        save_rgb(rng.random((h, w, 3), dtype=np.float32), tmp_path / "tiny.png")
        out = tmp_path / f"tiny_{h}x{w}.png"
        stylize_file(tmp_path / "tiny.png", out, style=installed_styles()[0])
        assert load_rgb(out).shape == (h, w, 3)


def test_an_unknown_style_names_the_installed_ones(tmp_path: Path) -> None:
    from edge.errors import ModelError
    from edge.stylize import open_style_net

    reg = Registry(tmp_path / "models")
    with pytest.raises(ModelError, match=r"installed styles: .*the_scream"):
        open_style_net("no_such_style", registry=reg)
    with pytest.raises(ModelError, match="LiteRT bundles come from `facegate style export`"):
        open_style_net("the_scream", runtime="litert", registry=reg)
