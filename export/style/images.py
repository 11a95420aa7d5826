"""Image files ↔ RGB tensors in [0, 1], PSNR, and the contents × styles grid."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from export.nets.style_net import STRIDE
from export.style import StyleError


def load_image(path: Path, longer: int | None = None, size: tuple[int, int] | None = None) -> torch.Tensor:
    """RGB (1, 3, H, W) in [0, 1]; resized to `size` (w, h) or so its longer side is `longer`."""
    p = Path(path)
    if not p.is_file():
        raise StyleError(f"{p}: no such image")
    with Image.open(p) as im:
        im = im.convert("RGB")
        if size is not None:
            im = im.resize(size, Image.Resampling.BICUBIC)
        elif longer is not None:
            w, h = im.size
            scale = longer / max(w, h)
            im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
        arr = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()


def save_image(x: torch.Tensor, path: Path) -> None:
    arr = (x.detach()[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def fit_stride(x: torch.Tensor, stride: int = STRIDE) -> torch.Tensor:
    """Crop H and W down to multiples of `stride` (the style net's two downsamplings need it)."""
    h, w = x.shape[-2:]
    return x[..., : h - h % stride, : w - w % stride]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two images in [0, 1]; identical images report 150 dB (JSON has no infinity)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return 150.0 if mse <= 1e-15 else min(150.0, 10.0 * math.log10(1.0 / mse))


def save_grid(rows: list[list[np.ndarray]], header: list[np.ndarray], path: Path, cell: int = 192) -> None:
    """Contents down the side, styles across; the first row shows the paintings, the first column the photos."""
    def tile(a: np.ndarray) -> Image.Image:
        return Image.fromarray((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)).resize((cell, cell))

    cols = max(len(r) for r in rows)
    sheet = Image.new("RGB", (cols * cell, (len(rows) + 1) * cell), "white")
    for j, a in enumerate(header):
        sheet.paste(tile(a), ((j + 1) * cell, 0))
    for i, r in enumerate(rows):
        for j, a in enumerate(r):
            sheet.paste(tile(a), (j * cell, (i + 1) * cell))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
