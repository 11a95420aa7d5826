"""Training content: portraits from folders, the benchmark's held-out identities, and multi-scale crops."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from edge.imageio import image_files
from edge.paths import data_dir
from export.style import StyleError

# Held-out LFW portraits (their identities are left out of every training set), as paths relative to the
# LFW images folder: the export's parity images and the benchmark's contents.
BENCH_PORTRAITS = (
    "Angelina_Jolie/Angelina_Jolie_0001.jpg", "Colin_Powell/Colin_Powell_0038.jpg",
    "Serena_Williams/Serena_Williams_0001.jpg", "Nelson_Mandela/Nelson_Mandela_0001.jpg",
    "Oprah_Winfrey/Oprah_Winfrey_0001.jpg",
)


def default_portraits(root: Path | None = None) -> list[Path]:
    base = Path(root) if root else data_dir() / "lfw" / "images"
    return [base / rel for rel in BENCH_PORTRAITS]


def held_out_removed(paths: Sequence[Path]) -> list[Path]:
    """`paths` without the benchmark's held-out identities (LFW's <Name>/<Name>_NNNN.jpg, or flat copies)."""
    held = {rel.split("/")[0] for rel in BENCH_PORTRAITS}
    return [p for p in paths if p.parent.name not in held and re.sub(r"_\d+$", "", p.stem) not in held]


def list_images(folders: Sequence[str | Path]) -> list[Path]:
    found: list[Path] = []
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            raise StyleError(f"{root}: content folder not found")
        found += image_files(root)
    return found


def _square(path: Path, size: int) -> np.ndarray:
    """Shorter side resized to `size`, centre crop: (3, size, size) uint8."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        scale = size / min(w, h)
        im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8).transpose(2, 0, 1)


def load_content_set(paths: Sequence[Path], size: int, workers: int = 8) -> torch.Tensor:
    """Every content image decoded once into one (N, 3, size, size) uint8 tensor: a few thousand portraits at
    256² fit in under 1 GB, and sampling batches from memory keeps the accelerator busy without a loader."""
    if not paths:
        raise StyleError("no content images found")
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # PIL releases the GIL while decoding
        arrays = list(pool.map(lambda p: _square(p, size), paths))
    return torch.from_numpy(np.stack(arrays))


def zoom_crop(x: torch.Tensor, size: int, zoom: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
    """The batch zoomed by one factor drawn log-uniformly from `zoom` (never below size²), then one random
    size × size crop per image."""
    lo, hi = math.log(zoom[0]), math.log(zoom[1])
    factor = math.exp(lo + (hi - lo) * float(torch.rand((), generator=gen)))
    side = max(size, round(x.shape[-1] * factor))
    if side != x.shape[-1]:
        x = nn.functional.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    offsets = torch.randint(side - size + 1, (len(x), 2), generator=gen).tolist()
    return torch.stack([img[:, y:y + size, c:c + size] for img, (y, c) in zip(x, offsets, strict=True)])
