"""Pictures for explain, with OpenCV only (the device has no plotting library): heat maps over aligned crops,
and grids of image patches. Every function returns a BGR uint8 array; `png` encodes one."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from edge.errors import FacegateError

FONT = cv2.FONT_HERSHEY_SIMPLEX
INK = (30, 30, 30)
PAPER = (255, 255, 255)
PANEL_SIDE = 320  # aligned crops are scaled up to about this many pixels


def png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise FacegateError("cannot encode the picture as PNG")
    return buf.tobytes()


def _ascii(s: str) -> str:
    # Hershey fonts are ASCII: replace what the messages may carry beyond it.
    s = s.replace("≥", ">=").replace("≤", "<=").replace("×", "x").replace("—", "-").replace("–", "-")
    return s.encode("ascii", "replace").decode()


def text_width(s: str, scale: float = 0.5, bold: bool = False) -> int:
    return cv2.getTextSize(_ascii(s), FONT, scale, 2 if bold else 1)[0][0]


def text(img: np.ndarray, s: str, x: int, y: int, scale: float = 0.5, colour: tuple[int, int, int] = INK,
         bold: bool = False) -> None:
    cv2.putText(img, _ascii(s), (x, y), FONT, scale, colour, 2 if bold else 1, cv2.LINE_AA)


def heat_colours(values: np.ndarray, vmax: float) -> np.ndarray:
    """(H, W) values → BGR colours, 0 (and below) dark, vmax bright (the 'inferno' map)."""
    scaled = np.clip(values / max(vmax, 1e-9), 0.0, 1.0)
    return cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)


def overlay(crop: np.ndarray, heat: np.ndarray | None, vmax: float, scale: int) -> np.ndarray:
    """The crop scaled up `scale` times with the heat blended over it, more opaque where it is stronger so the
    face stays visible where occlusion changes nothing (without heat: the crop alone, faded)."""
    h, w = crop.shape[:2]
    big = cv2.resize(crop, (w * scale, h * scale), interpolation=cv2.INTER_CUBIC)
    if heat is None:
        return cv2.addWeighted(big, 0.6, np.full_like(big, 255), 0.4, 0)
    colours = cv2.resize(heat_colours(heat, vmax), (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
    strength = np.clip(cv2.resize(heat, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST) / max(vmax, 1e-9),
                       0.0, 1.0)[..., None]
    alpha = 0.2 + 0.6 * strength
    return (big * (1.0 - alpha) + colours * alpha).astype(np.uint8)


def colour_bar(width: int, height: int = 12) -> np.ndarray:
    ramp = np.tile(np.linspace(0, 1, width, dtype=np.float32), (height, 1))
    return heat_colours(ramp, 1.0)


def rectangle(img: np.ndarray, box: Sequence[float], scale: float, colour: tuple[int, int, int],
              thickness: int = 1) -> None:
    x0, y0, x1, y1 = (round(v * scale) for v in box)
    cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), colour, thickness, cv2.LINE_AA)


def patch_grid(rows: Sequence[tuple[str, Sequence[np.ndarray]]], cell: int, title: Sequence[str] = (),
               label_width: int = 90, gap: int = 3) -> np.ndarray:
    """One row per (label, patches): each patch scaled to cell × cell (pixel-sharp when scaled up a lot)."""
    cols = max((len(p) for _, p in rows), default=0)
    head = 10 + 20 * len(title)
    h = head + len(rows) * (cell + gap) + gap
    w = max(label_width + cols * (cell + gap) + gap,
            max((text_width(line, 0.5, k == 0) + 12 for k, line in enumerate(title)), default=0))
    canvas = np.full((h, w, 3), PAPER, np.uint8)
    for k, line in enumerate(title):
        text(canvas, line, 6, 20 + 20 * k, 0.5, bold=k == 0)
    for r, (label, patches) in enumerate(rows):
        y = head + gap + r * (cell + gap)
        text(canvas, label, 6, y + cell // 2 + 5, 0.45)
        for c, p in enumerate(patches):
            x = label_width + gap + c * (cell + gap)
            side = max(p.shape[:2])
            interp = (cv2.INTER_NEAREST if cell >= 3 * side else cv2.INTER_AREA if cell < side
                      else cv2.INTER_LINEAR)
            canvas[y:y + cell, x:x + cell] = cv2.resize(p, (cell, cell), interpolation=interp)
    return canvas
