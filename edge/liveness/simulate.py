"""Synthetic clips for the liveness tests and `facegate bench liveness --clips`: a regression aid only.

- `replay_clip`: a replayed photo. The live image is treated as a flat print or screen held in front of the
  camera: a sequence of planar homographies (the plane tilting and turning, moving and scaling as a hand
  would move it), with brightness drifting from frame to frame, sensor noise, and optionally a halftone
  screen (a print) or an RGB sub-pixel grid that aliases into moiré when resampled (a screen).
- `two_planes_clip`: the image cut down its middle, the halves turning and sliding by different amounts (two
  pieces of a torn print; non-planar by construction).
- `relief_clip`: the image draped over a face-shaped relief (a head-sized ellipsoid and a nose) that turns
  about the vertical axis: a textured 3-D surface rotating, the parallax a real head produces.

These clips check that the code keeps doing what it was built to do: the planar-motion check refuses the
replay clips and passes the non-planar ones, the challenge reads the relief's turn from the five-point yaw.
They are not evidence of accuracy against real attacks: real prints bend, real screens glare, real heads
move their eyes and mouths, and none of that is here.
"""

from __future__ import annotations

import cv2
import numpy as np

FOCAL = 1.2  # focal length in image widths (a ~45° horizontal field of view, a door camera's order)


def _plane_homography(w: int, h: int, yaw: float, pitch: float, roll: float, tx: float, ty: float,
                      scale: float) -> np.ndarray:
    """Image pixels of a flat picture → pixels of a camera viewing it turned by (yaw, pitch, roll) degrees."""
    f = FOCAL * w
    k = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]])
    a, b, c = np.radians([pitch, yaw, roll])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    r = rz @ ry @ rx
    # Picture pixel (u, v) → plane point ((u - w/2) s, (v - h/2) s, 0), the plane's centre at depth f.
    to_plane = np.array([[scale, 0, -scale * w / 2], [0, scale, -scale * h / 2], [0, 0, 1]])
    rt = np.column_stack([r[:, 0], r[:, 1], np.array([tx * w, ty * h, f])])
    hom = k @ rt @ to_plane
    return hom / hom[2, 2]


def halftone(image: np.ndarray, cell: int = 4) -> np.ndarray:
    """A print's halftone: each channel a dot screen at its own angle (dot size follows the ink amount)."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty_like(image)
    for ch, angle in enumerate((15.0, 75.0, 45.0)):
        t = np.radians(angle)
        u = (xx * np.cos(t) + yy * np.sin(t)) * (2 * np.pi / cell)
        v = (-xx * np.sin(t) + yy * np.cos(t)) * (2 * np.pi / cell)
        screen = (np.cos(u) * np.cos(v) + 1) * 127.5  # 0–255 threshold pattern
        out[..., ch] = np.where(image[..., ch].astype(np.float32) > screen, 255, 0).astype(np.uint8)
    # The eye (and the camera) sees the dots slightly blurred.
    return cv2.GaussianBlur(out, (3, 3), 0.8)


def subpixel_grid(image: np.ndarray) -> np.ndarray:
    """A screen's RGB stripes: each pixel split into three coloured columns, the gaps between rows dark."""
    big = cv2.resize(image, (image.shape[1] * 3, image.shape[0] * 3), interpolation=cv2.INTER_NEAREST)
    mask = np.zeros_like(big, dtype=np.float32)
    for ch in range(3):
        mask[:, 2 - ch::3, ch] = 1.0  # BGR: blue is channel 0, drawn in the rightmost column
    mask[2::3, :, :] *= 0.35  # the dark line between pixel rows
    return np.clip(big.astype(np.float32) * mask * 1.6, 0, 255).astype(np.uint8)


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A static, textured scene behind the picture (so the picture's edges and motion are visible)."""
    small = rng.integers(40, 200, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    return cv2.GaussianBlur(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), (0, 0), 3)


def replay_clip(image: np.ndarray, frames: int = 30, seed: int = 0, tilt_deg: float = 25.0,
                print_halftone: bool = False, moire: bool = False, brightness: float = 0.2,
                noise: float = 2.0, picture_scale: float = 0.85) -> list[np.ndarray]:
    """The live image as a photo or screen moved in front of the camera: `frames` BGR frames, image-sized."""
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    picture = image
    if print_halftone:
        picture = halftone(picture)
    if moire:
        # The grid is finer than the camera's pixels; the lens blurs it a little before the sensor samples
        # it, and what survives aliases into moiré.
        picture = cv2.GaussianBlur(subpixel_grid(picture), (0, 0), 1.0)
    ph, pw = picture.shape[:2]
    # The picture is drawn in output pixels: its own pixels map onto a w-wide plane, scaled.
    fit = np.diag([w / pw, h / ph, 1.0])
    back = _background(h, w, rng)
    phase = rng.uniform(0, 2 * np.pi, 6)
    sign = rng.choice([-1.0, 1.0])
    out = []
    for i in range(frames):
        s = i / max(frames - 1, 1)
        yaw = sign * tilt_deg * np.sin(np.pi * s)  # the turn an attacker fakes, from and back to frontal
        pitch = 0.3 * tilt_deg * np.sin(2 * np.pi * s + phase[1])
        roll = 5.0 * np.sin(2 * np.pi * s + phase[2])
        tx, ty = 0.04 * np.sin(2 * np.pi * s + phase[3]), 0.03 * np.sin(2 * np.pi * s + phase[4])
        scale = picture_scale * (1 + 0.08 * np.sin(2 * np.pi * s + phase[5]))
        hom = _plane_homography(w, h, yaw, pitch, roll, tx, ty, scale) @ fit
        frame = cv2.warpPerspective(picture, hom, (w, h), flags=cv2.INTER_LINEAR)
        cover = cv2.warpPerspective(np.full((ph, pw), 255, np.uint8), hom, (w, h), flags=cv2.INTER_NEAREST)
        frame = np.where(cover[..., None] > 0, frame, back)
        gain = 1 + brightness * np.sin(2 * np.pi * s * 1.5 + phase[0])
        frame = frame.astype(np.float32) * gain + rng.normal(0, noise, frame.shape)
        out.append(np.clip(frame, 0, 255).astype(np.uint8))
    return out


def two_planes_clip(image: np.ndarray, frames: int = 30, fold_x: float | None = None, max_deg: float = 25.0,
                    seed: int = 0, noise: float = 2.0) -> list[np.ndarray]:
    """The image cut at column `fold_x` (default: its middle): the halves turn and slide by different amounts."""
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    fx = w / 2 if fold_x is None else float(fold_x)
    left = np.zeros((h, w), np.uint8)
    left[:, : round(fx)] = 255
    out = []
    for i in range(frames):
        s = i / max(frames - 1, 1)
        # Two pieces of a torn print, moved apart: the left one turns and slides, the right one drops and nears.
        h1 = _plane_homography(w, h, max_deg * s, 0, 0, 0.04 * s, 0, 1.0)
        h2 = _plane_homography(w, h, 0.0, 0, 0, 0.0, 0.08 * s, 1.0 + 0.1 * s)
        a = cv2.warpPerspective(image, h1, (w, h))
        b = cv2.warpPerspective(image, h2, (w, h))
        m = cv2.warpPerspective(left, h1, (w, h)) > 0
        frame = np.where(m[..., None], a, b).astype(np.float32) + rng.normal(0, noise, image.shape)
        out.append(np.clip(frame, 0, 255).astype(np.uint8))
    return out


def relief_depth(shape: tuple[int, ...], box: np.ndarray, nose: np.ndarray) -> np.ndarray:
    """A face-shaped height field (pixels of depth toward the camera): a head ellipsoid and a nose."""
    h, w = shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    bw, bh = x2 - x1, y2 - y1
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a, b = 0.62 * bw, 0.75 * bh
    head = 0.55 * bw * np.sqrt(np.clip(1 - ((xx - cx) / a) ** 2 - ((yy - cy) / b) ** 2, 0, None))
    sigma = 0.09 * bw
    nose_bump = 0.22 * bw * np.exp(-((xx - nose[0]) ** 2 + (yy - nose[1]) ** 2) / (2 * sigma ** 2))
    return (head + nose_bump).astype(np.float32)


def render_relief(image: np.ndarray, depth: np.ndarray, yaw_deg: float, axis_x: float) -> np.ndarray:
    """The textured relief seen (orthographically) after turning by `yaw_deg` about a vertical axis at
    column `axis_x`; positive turns bring the nose to the image's right (the person's own left)."""
    h, w = image.shape[:2]
    t = np.radians(yaw_deg)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # Forward: x' = axis + (x - axis) cos t + z(x, y) sin t. Solved for x by fixed-point iteration
    # (it converges for the moderate angles a head turn needs; self-occlusion is ignored).
    src = xx.copy()
    for _ in range(12):
        z = cv2.remap(depth, src, yy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        src = (axis_x + (xx - axis_x - z * np.sin(t)) / np.cos(t)).astype(np.float32)
    return cv2.remap(image, src, yy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def relief_clip(image: np.ndarray, box: np.ndarray, nose: np.ndarray, frames: int = 30, max_yaw_deg: float = 30.0,
                direction: str = "left", seed: int = 0, noise: float = 2.0) -> list[np.ndarray]:
    """A head-like textured surface turning from frontal to `max_yaw_deg` toward the person's `direction`."""
    if direction not in ("left", "right"):
        raise ValueError("direction must be 'left' or 'right'")
    rng = np.random.default_rng(seed)
    depth = relief_depth(image.shape, box, nose)
    sign = 1.0 if direction == "left" else -1.0
    axis_x = (float(box[0]) + float(box[2])) / 2
    out = []
    for i in range(frames):
        yaw = sign * max_yaw_deg * i / max(frames - 1, 1)
        frame = render_relief(image, depth, yaw, axis_x).astype(np.float32) + rng.normal(0, noise, image.shape)
        out.append(np.clip(frame, 0, 255).astype(np.uint8))
    return out
