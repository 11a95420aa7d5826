"""Synthetic door frames for `facegate bench speed --frames WxH`: a portrait placed in a camera-sized frame.

A door camera sees one person at 0.5–2 m: a face 10–30 % of the frame's height, somewhere near the middle, on
a busy background. Each frame here is one LFW photo scaled so its face (about 45 % of the photo's width)
spans 10–30 % of the frame's height, pasted at a random place on a background cut from another photo of the
set (blurred, so it adds texture but no second sharp face), then JPEG-encoded (quality 90) so decoding costs
what a camera's frames cost. Deterministic for a seed; the same frames go to every pipeline.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge.errors import ImageError

FACE_SHARE = 0.45  # an LFW deep-funnelled face's width as a share of its 250-px photo
FACE_HEIGHT_RANGE = (0.10, 0.30)  # face width as a share of the frame's height
JPEG_QUALITY = 90


def parse_size(text: str) -> tuple[int, int]:
    """'640x480' → (640, 480)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ImageError(f"frame size must look like 640x480, not {text!r}") from None
    if not (64 <= w <= 7680 and 64 <= h <= 4320):
        raise ImageError(f"frame size {w}x{h} is outside 64x64 … 7680x4320")
    return w, h


def door_frame(portrait: np.ndarray, background: np.ndarray, size: tuple[int, int],
               rng: np.random.Generator) -> np.ndarray:
    """One BGR frame of `size` (width, height) with `portrait` pasted in at a door camera's face size."""
    w, h = size
    bg = cv2.GaussianBlur(cv2.resize(background, (w, h), interpolation=cv2.INTER_LINEAR), (0, 0), 6)
    face_px = rng.uniform(*FACE_HEIGHT_RANGE) * h
    scale = face_px / (FACE_SHARE * portrait.shape[1])
    pw, ph = max(8, round(portrait.shape[1] * scale)), max(8, round(portrait.shape[0] * scale))
    pw, ph = min(pw, w), min(ph, h)
    person = cv2.resize(portrait, (pw, ph), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    # Around the middle, as a door camera frames a visitor, never cut by the frame's edge.
    x = int(np.clip(rng.normal((w - pw) / 2, (w - pw) / 6 + 1), 0, w - pw))
    y = int(np.clip(rng.normal((h - ph) / 2, (h - ph) / 6 + 1), 0, h - ph))
    frame = bg.copy()
    frame[y:y + ph, x:x + pw] = person
    return frame


def door_frames(paths: list[Path], size: tuple[int, int], seed: int = 0) -> list[bytes]:
    """JPEG bytes of one door frame per photo (the photo's successor in the list is its background)."""
    from edge.imageio import load_bgr

    rng = np.random.default_rng(seed)
    photos = [load_bgr(p) for p in paths]
    out = []
    for i, photo in enumerate(photos):
        frame = door_frame(photo, photos[(i + 1) % len(photos)], size, rng)
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise ImageError("could not encode a synthetic frame")
        out.append(buf.tobytes())
    return out
