"""On-device stylisation: a trained style net (ONNX or TFLite bundle) or Magenta's arbitrary-style models.

Both kinds of network run on tiles. A bundle's TFLite graph has a fixed input size, and an ONNX one is
given the same tiles so the two runtimes compute the same thing; big images would otherwise also need
big activations. Tiles overlap and are blended with weights that ramp linearly across the overlap, so
neither a tile's border pixels (where reflection padding is a guess) nor the small differences between
tiles' instance-normalisation statistics show as a seam.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from edge.errors import FacegateError, ModelError
from edge.imageio import load_bgr
from edge.magenta import FILES, INSTALL_HINT, PREDICT, VARIANTS, installed_files, transfer_name
from edge.models.manifest import Manifest
from edge.models.registry import Registry
from edge.runtime import Runtime, open_runtime

# An image function on float32 RGB (H, W, 3) arrays in [0, 1], returning the same shape.
TileFn = Callable[[np.ndarray], np.ndarray]

DEFAULT_OVERLAP = 64
MAGENTA_PREDICT = FILES[PREDICT].file
MAGENTA_TRANSFER = {v: FILES[transfer_name(v)].file for v in VARIANTS}


# -- tiling -----------------------------------------------------------------------------------------------------
def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` pixels covering [0, length), neighbours overlapping ≥ `overlap`."""
    if length <= tile:
        return [0]
    if not 0 <= overlap < tile:
        raise FacegateError(f"overlap {overlap} must be in [0, tile size {tile})")
    n = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (n - 1)) for i in range(n)] if n > 1 else [0]


def _ramp(length: int, overlap: int) -> np.ndarray:
    """1 in a tile's middle, falling linearly to ~0 over `overlap` pixels at each end."""
    w = np.ones(length, np.float32)
    if overlap > 0:
        edge = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
        n = min(overlap, length)
        w[:n] = np.minimum(w[:n], edge[:n])
        w[length - n:] = np.minimum(w[length - n:], edge[:n][::-1])
    return w


MIN_TILE = 16  # px: the smallest tile side a network is given (see tiled)


def tiled(image: np.ndarray, fn: TileFn, tile: int, overlap: int = DEFAULT_OVERLAP, fixed: bool = True,
          stride: int = 1) -> np.ndarray:
    """Apply `fn` to overlapping tile×tile windows of an (H, W, 3) image and blend them.

    A side shorter than the tile is reflection-padded up to it when the network's size is `fixed`, else
    only up to a multiple of `stride`; the padding is cut off the result. Image borders get full weight
    (no neighbour to blend with); interior overlaps are cross-faded.
    """
    h, w = image.shape[:2]
    # A network's own reflection padding (the style nets' first 9×9 convolution pads 4) needs more pixels than
    # it pads: a 4-pixel side failed inside onnxruntime. Short sides are padded up to MIN_TILE at least.
    th = tile if (fixed or h > tile) else max(-(-h // stride) * stride, -(-MIN_TILE // stride) * stride)
    tw = tile if (fixed or w > tile) else max(-(-w // stride) * stride, -(-MIN_TILE // stride) * stride)
    ph, pw = max(0, th - h), max(0, tw - w)
    padded = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="reflect") if (ph or pw) else image
    ys, xs = tile_starts(padded.shape[0], th, overlap), tile_starts(padded.shape[1], tw, overlap)
    out = np.zeros(padded.shape, np.float32)
    weight = np.zeros(padded.shape[:2], np.float32)
    for y in ys:
        wy = _ramp(th, overlap if len(ys) > 1 else 0)
        if y == 0:
            wy[: th // 2] = 1.0  # the image's own edge: nothing to blend with
        if y == ys[-1]:
            wy[th // 2:] = 1.0
        for x in xs:
            wx = _ramp(tw, overlap if len(xs) > 1 else 0)
            if x == 0:
                wx[: tw // 2] = 1.0
            if x == xs[-1]:
                wx[tw // 2:] = 1.0
            result = fn(np.ascontiguousarray(padded[y:y + th, x:x + tw]))
            if result.shape[:2] != (th, tw):
                raise ModelError(f"the network returned {result.shape[:2]} for a {(th, tw)} tile")
            wt = np.outer(wy, wx)
            out[y:y + th, x:x + tw] += result * wt[..., None]
            weight[y:y + th, x:x + tw] += wt
    return (out / weight[..., None])[:h, :w]


# -- trained style nets (bundles) -------------------------------------------------------------------------------
def bundle_name(style: str, runtime: str = "onnxruntime") -> str:
    """Registry name of a style's bundle: style-<style> (ONNX) or style-<style>-litert (TFLite)."""
    return f"style-{style}" if runtime == "onnxruntime" else f"style-{style}-litert"


@dataclass
class StyleNetRunner:
    """A trained style net: RGB [0, 1] tiles in, stylised tiles out, through the bundle's runtime."""

    runtime: Runtime
    manifest: Manifest

    @property
    def tile(self) -> int:
        size = self.manifest.input.size
        return int(size[0]) if size else int(self.manifest.extra.get("tile", 512))

    @property
    def fixed(self) -> bool:
        return self.manifest.input.size is not None

    def run_tile(self, rgb: np.ndarray) -> np.ndarray:
        m = self.manifest
        x = rgb.astype(np.float32) * 255.0  # manifests normalise 0–255 pixels
        x = (x - np.asarray(m.normalisation.mean, np.float32)) / np.asarray(m.normalisation.std, np.float32)
        if m.input.colour == "BGR":
            x = x[..., ::-1]
        x = x.transpose(2, 0, 1)[None] if m.input.layout == "NCHW" else x[None]
        y = self.runtime.run({self.runtime.input_names[0]: np.ascontiguousarray(x, np.float32)})[0][0]
        y = y.transpose(1, 2, 0) if m.input.layout == "NCHW" else y
        if m.input.colour == "BGR":
            y = y[..., ::-1]
        return np.clip(y, 0.0, 1.0)

    def __call__(self, rgb: np.ndarray, overlap: int | None = None) -> np.ndarray:
        ov = int(self.manifest.extra.get("overlap", DEFAULT_OVERLAP)) if overlap is None else overlap
        return tiled(rgb, self.run_tile, self.tile, ov, fixed=self.fixed, stride=self.manifest.input.stride)


def open_style_net(style: str, runtime: str = "onnxruntime", registry: Registry | None = None,
                   threads: int = 1) -> StyleNetRunner:
    reg = registry or Registry()
    name = style if style.startswith("style-") else bundle_name(style, runtime)
    if name not in reg.names():
        # Name the styles there are: the registry's own message would list every model of every task.
        hint = "" if runtime == "onnxruntime" else " (LiteRT bundles come from `facegate style export`)"
        raise ModelError(f"no {runtime} style {style!r}{hint}; installed styles: "
                         f"{', '.join(installed_styles(reg)) or 'none'}")
    m = reg.manifest(name)
    if m.task != "stylize":
        raise ModelError(f"model {name!r} is a {m.task!r} model, not a style net")
    return StyleNetRunner(open_runtime(m.runtime, reg.runtime_file(m), threads=threads), m)


def installed_styles(registry: Registry | None = None) -> list[str]:
    reg = registry or Registry()
    out = []
    for name in reg.names():
        m = reg.manifest(name)
        if m.task == "stylize" and m.runtime == "onnxruntime":
            out.append(str(m.extra.get("style", name.removeprefix("style-"))))
    return sorted(out)


# -- Magenta arbitrary style ------------------------------------------------------------------------------------
def magenta_dir() -> Path | None:
    """$FACEGATE_MAGENTA_DIR when set: a folder holding the upstream files under their own names."""
    env = os.environ.get("FACEGATE_MAGENTA_DIR")
    return Path(env) if env else None


class MagentaStylizer:
    """Ghiasi et al.'s arbitrary style transfer as Magenta's TFLite pair: a style predictor (256² painting →
    100-d bottleneck) and a transformer (384² content + bottleneck → stylised 384²).

    The files are the installed bundles (`facegate models install magenta`, hash-checked), or those in
    `folder` / $FACEGATE_MAGENTA_DIR under their upstream names.
    """

    def __init__(self, folder: Path | None = None, variant: str = "f16", threads: int = 1,
                 registry: Registry | None = None) -> None:
        transfer_name(variant)  # refuses an unknown variant
        folder = Path(folder) if folder else magenta_dir()
        if folder is None:
            paths = list(installed_files(variant, registry))
        else:
            paths = [folder / MAGENTA_PREDICT, folder / MAGENTA_TRANSFER[variant]]
            for p in paths:
                if not p.is_file():
                    raise ModelError(f"{p}: Magenta model not found; " + INSTALL_HINT)
        self.predictor = open_runtime("litert", paths[0], threads=threads)
        self.transfer = open_runtime("litert", paths[1], threads=threads)
        self.tile = 384
        self._content = next(n for n in self.transfer.input_names if "content" in n)
        self._bottleneck = next(n for n in self.transfer.input_names if n != self._content)

    def bottleneck(self, painting: np.ndarray) -> np.ndarray:
        """Style vector of an RGB [0, 1] painting: centre square, 256²."""
        h, w = painting.shape[:2]
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        square = resize(painting[top:top + s, left:left + s], (256, 256))
        return self.predictor.run({self.predictor.input_names[0]: square[None].astype(np.float32)})[0]

    def __call__(self, rgb: np.ndarray, bottleneck: np.ndarray, overlap: int = DEFAULT_OVERLAP) -> np.ndarray:
        def run(tile: np.ndarray) -> np.ndarray:
            feeds = {self._content: tile[None].astype(np.float32), self._bottleneck: bottleneck}
            return np.clip(self.transfer.run(feeds)[0][0], 0.0, 1.0)

        return tiled(rgb, run, self.tile, overlap, fixed=True)


# -- images -----------------------------------------------------------------------------------------------------
def load_rgb(path: Path) -> np.ndarray:
    """An image file as float32 RGB (H, W, 3) in [0, 1] (EXIF-upright, size-limited: edge.imageio)."""
    return load_bgr(path)[:, :, ::-1].astype(np.float32) / 255.0


def resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (width, height) with bicubic filtering."""
    im = Image.fromarray(to_uint8(rgb))
    return np.asarray(im.resize(size, Image.Resampling.BICUBIC), np.float32) / 255.0


def fit_longer(rgb: np.ndarray, longer: int | None) -> np.ndarray:
    if not longer:
        return rgb
    h, w = rgb.shape[:2]
    scale = longer / max(h, w)
    return resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))))


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_rgb(rgb: np.ndarray, path: Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        Image.fromarray(to_uint8(rgb)).save(path)
    except (ValueError, OSError) as exc:
        raise FacegateError(f"{path}: cannot write the image ({exc})") from None


def stylize_file(content: Path, out: Path, style: str | None = None, style_image: Path | None = None,
                 size: int | None = None, runtime: str = "onnxruntime", threads: int = 1,
                 overlap: int | None = None, magenta: Path | None = None, variant: str = "f16",
                 registry: Registry | None = None) -> dict[str, object]:
    """Stylise one image file with a trained style (`style`) or any painting (`style_image`, Magenta)."""
    if (style is None) == (style_image is None):
        raise FacegateError("give either a style name or a style image")
    rgb = fit_longer(load_rgb(content), size)
    if style is not None:
        runner = open_style_net(style, runtime, registry=registry, threads=threads)
        result = runner(rgb, overlap)
        model = runner.manifest.name
        tile = runner.tile
    else:
        assert style_image is not None
        magenta_net = MagentaStylizer(magenta, variant=variant, threads=threads, registry=registry)
        result = magenta_net(rgb, magenta_net.bottleneck(load_rgb(style_image)),
                             DEFAULT_OVERLAP if overlap is None else overlap)
        model = f"magenta-{variant}"
        tile = magenta_net.tile
    save_rgb(result, out)
    return {"content": str(content), "out": str(out), "model": model, "width": int(rgb.shape[1]),
            "height": int(rgb.shape[0]), "tile": tile}
