"""Reading images safely: size limit before decoding, EXIF orientation, any colour mode → BGR uint8."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edge.errors import ImageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

# 50 megapixels: larger than any camera frame or phone photo we expect, far below a decompression bomb.
MAX_PIXELS = 50_000_000


def load_bgr(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an image file to a BGR uint8 array (H, W, 3), upright as its EXIF says."""
    p = Path(path)
    if not p.is_file():
        raise ImageError(f"{p}: a folder, not an image file" if p.is_dir() else f"{p}: no such file")
    if p.stat().st_size == 0:
        raise ImageError(f"{p}: empty file")
    return _decode(p, str(p), max_pixels)


def decode_bgr(data: bytes, origin: str = "image", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """`load_bgr` for bytes received over the network (an MQTT enrolment, an upload): the same pixel limit,
    checked on the header before a single pixel is decoded, so a small file of huge dimensions (a 420 KB PNG
    of 12000×12000) is refused instead of taking gigabytes."""
    if not data:
        raise ImageError(f"{origin}: empty image")
    return _decode(io.BytesIO(data), origin, max_pixels)


def _decode(source: Path | io.BytesIO, p: str, max_pixels: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                # Image.open reads only the header, so the pixel limit is enforced before decoding.
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageError(f"{p}: {w}×{h} pixels exceeds the limit of {max_pixels} pixels")
                im = ImageOps.exif_transpose(im)
                im = _to_rgb(im)
                rgb = np.asarray(im, dtype=np.uint8)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # Pillow's own guard, in open()
        raise ImageError(f"{p}: exceeds the limit of {max_pixels} pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{p}: not a readable image ({exc.__class__.__name__})") from None
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Composite transparent pixels onto white, as a viewer would show them.
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode == "I;16" or im.mode == "I":
        arr = np.asarray(im, dtype=np.float64)
        arr = (255.0 * arr / max(arr.max(), 1.0)).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    return im.convert("RGB")


def is_image_file(path: Path) -> bool:
    """A file whose suffix names an image format we read (the contents are checked when decoded)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def image_files(root: Path, recursive: bool = True) -> list[Path]:
    """Image files under `root` (or directly in it), sorted by path."""
    root = Path(root)
    return sorted(p for p in (root.rglob("*") if recursive else root.iterdir()) if is_image_file(p))


def sample_images(root: Path, limit: int | None = None, names: set[str] | None = None,
                  exclude: set[str] | frozenset[str] = frozenset()) -> list[Path]:
    """Images under `root` (only those whose relative POSIX path is in `names`, when given, and not in
    `exclude`), thinned evenly to at most `limit` — a deterministic sample for benchmarks and calibration."""
    root = Path(root)
    if not root.is_dir():
        raise ImageError(f"{root}: not a directory")
    files = image_files(root)
    if names is not None or exclude:
        rel = {p: p.relative_to(root).as_posix() for p in files}
        files = [p for p in files if (names is None or rel[p] in names) and rel[p] not in exclude]
    if not files:
        raise ImageError(f"{root}: no images found")
    if limit is not None and len(files) > limit:
        files = [files[i] for i in np.linspace(0, len(files) - 1, limit).astype(int)]
    return files
