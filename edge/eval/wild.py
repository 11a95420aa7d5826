"""A wild development set built from LFW View 1: small, turned, crowded, blurred, dark, compressed faces.

LFW portraits are easy: one large upright face in the middle of a 250×250 image. New users' photos are not,
and the pipeline loses pairs on them (issue #16). Each View-1 image becomes one scene:

- a background of corner patches of other View-1 images (texture without faces), 480–960 px on its longer
  side, landscape or portrait;
- the image's own head (a feathered ellipse around LFW's central face) scaled so the face is 24–80 px wide
  (log-uniform), tilted ±30°, and in a share of scenes also turned by 90°, 180° or 270° (a lying head, a
  sideways camera); its centre anywhere in the middle 60 % of the scene;
- in half of the scenes a second person (another identity of View 1) pasted behind it as a distractor, 0.5–1.2
  times the subject's size, anywhere it does not cover the subject's face;
- blur, low light with sensor noise, and JPEG compression (quality 30–90).

The subject is modelled as what a photo is of: in front, usually larger and nearer the centre than a
bystander, but not always (a bystander is larger in 2 of 7 distractor scenes and nearer the centre in about
a third). Those are the generator's assumptions, written down because face-choice rules are measured on them.

Everything is drawn from `numpy.random.default_rng((seed, crc32(image path)))`, so an image's scene depends only
on the seed and its path: the same seed gives the same files, whatever `limit` or order. The set keeps LFW's
layout (images/Name/Name_NNNN.jpg) and copies the View-1 pairs files, so `facegate bench pairs` runs on it
unchanged; wild.json records the parameters and, per image, where the subject's face is (for face-choice
accuracy). View 2 (pairs.txt) is the test set and is refused here: tune on this set, report View 2 apart.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from edge.atomic import atomic_write_bytes, replace_dir
from edge.errors import FacegateError
from edge.eval.lfw import read_pairs
from edge.imageio import load_bgr

# LFW's 250×250 portraits are centred on the face by construction; YuNet's box on them is 93 px wide (median
# over 100 images, 85–103 for 90 %), centred at (125, 127). Sizes below are face widths on that scale.
LFW_FACE_WIDTH = 93.0
LFW_FACE_CENTRE = (125.0, 127.0)
# The head cut from a portrait, in face widths around the face centre: hair above, chin and neck below.
HEAD_HALF_WIDTH, HEAD_UP, HEAD_DOWN = 0.95, 1.15, 0.95
MANIFEST = "wild.json"


@dataclass(frozen=True)
class WildParams:
    face_px: tuple[float, float] = (24.0, 80.0)  # subject's face width in the scene, log-uniform
    scene_px: tuple[int, int] = (480, 960)  # the scene's longer side, uniform; aspect 4:3 or 3:4
    centre_span: float = 0.6  # the subject's face centre lies in the middle 60 % of each side
    tilt_deg: float = 30.0  # in-plane tilt, uniform in ±tilt
    quarter_share: float = 0.2  # scenes whose subject is also turned by 90°, 180° or 270°
    distractor_share: float = 0.5
    distractor_size: tuple[float, float] = (0.5, 1.2)  # relative to the subject's face, uniform
    distractor_tilt_deg: float = 20.0
    blur_share: float = 0.3
    blur_sigma: tuple[float, float] = (0.6, 1.6)  # Gaussian, scene pixels
    dark_share: float = 0.3
    dark_gain: tuple[float, float] = (0.2, 0.5)  # brightness multiplied by this …
    dark_noise: tuple[float, float] = (2.0, 6.0)  # … then Gaussian noise of this σ (grey levels)
    jpeg_quality: tuple[int, int] = (30, 90)
    background_cells: int = 4  # background grid: this many cells along the longer side


def view1_only(pairs_files: list[Path]) -> None:
    """Refuse a View-2 pairs file (ten folds): the wild set is a tuning set and must not see the test."""
    for f in pairs_files:
        try:
            head = Path(f).read_text().split("\n", 1)[0].split()
        except OSError as exc:
            raise FacegateError(f"{f}: cannot read pairs file ({exc.strerror})") from None
        if len(head) == 2:
            raise FacegateError(f"{f}: a {head[0]}-fold pairs file is LFW View 2, the test set; the wild set is "
                                "for tuning and is built from View 1 only (pairsDevTrain.txt, pairsDevTest.txt)")


def default_pairs(images: Path) -> list[Path]:
    """View 1's two pairs files, looked for beside the images folder."""
    found = [Path(images).parent / n for n in ("pairsDevTrain.txt", "pairsDevTest.txt")]
    found = [f for f in found if f.is_file()]
    if not found:
        raise FacegateError(f"no View-1 pairs files (pairsDevTrain.txt, pairsDevTest.txt) beside {images}; "
                            "name them with --pairs")
    return found


def image_rng(seed: int, rel: str) -> np.random.Generator:
    return np.random.default_rng((int(seed), zlib.crc32(rel.encode())))


def head_patch(portrait: np.ndarray, face_px: float,
               angle_deg: float) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """The portrait's head scaled to a face `face_px` wide and turned by `angle_deg` (counter-clockwise, as
    OpenCV's rotation); returns (BGR patch, alpha in [0, 1], face centre in patch pixels)."""
    h, w = portrait.shape[:2]
    unit = LFW_FACE_WIDTH * w / 250.0  # the face width of this portrait (LFW's are all 250 px)
    fx, fy = LFW_FACE_CENTRE[0] * w / 250.0, LFW_FACE_CENTRE[1] * h / 250.0
    x0, x1 = max(0, round(fx - HEAD_HALF_WIDTH * unit)), min(w, round(fx + HEAD_HALF_WIDTH * unit))
    y0, y1 = max(0, round(fy - HEAD_UP * unit)), min(h, round(fy + HEAD_DOWN * unit))
    head = portrait[y0:y1, x0:x1]
    s = face_px / unit
    size = (max(2, round(head.shape[1] * s)), max(2, round(head.shape[0] * s)))
    head = cv2.resize(head, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    # A feathered ellipse: the head without the portrait's square edges, so the detector sees no frame.
    hh, hw = head.shape[:2]
    yy, xx = np.mgrid[0:hh, 0:hw].astype(np.float32)
    r = np.sqrt(((xx + 0.5 - hw / 2) / (hw / 2)) ** 2 + ((yy + 0.5 - hh / 2) / (hh / 2)) ** 2)
    alpha = np.clip((1.0 - r) / 0.15, 0.0, 1.0).astype(np.float32)
    centre = ((fx - x0) * s, (fy - y0) * s)
    # Turn about the patch centre onto a canvas large enough to hold every corner.
    rad = math.radians(angle_deg)
    cw = math.ceil(abs(hw * math.cos(rad)) + abs(hh * math.sin(rad))) + 2
    ch = math.ceil(abs(hw * math.sin(rad)) + abs(hh * math.cos(rad))) + 2
    m = cv2.getRotationMatrix2D((hw / 2, hh / 2), angle_deg, 1.0)
    m[:, 2] += (cw / 2 - hw / 2, ch / 2 - hh / 2)
    patch = cv2.warpAffine(head, m, (cw, ch), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    mask = cv2.warpAffine(alpha, m, (cw, ch), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    c = m @ np.array([centre[0], centre[1], 1.0])
    return patch, mask, (float(c[0]), float(c[1]))


def paste(scene: np.ndarray, patch: np.ndarray, mask: np.ndarray, at: tuple[float, float],
          anchor: tuple[float, float]) -> None:
    """Alpha-blend `patch` into `scene` (in place) so its point `anchor` lands on `at`; clipped at the edges."""
    ox, oy = round(at[0] - anchor[0]), round(at[1] - anchor[1])
    ph, pw = patch.shape[:2]
    sh, sw = scene.shape[:2]
    x0, y0, x1, y1 = max(0, ox), max(0, oy), min(sw, ox + pw), min(sh, oy + ph)
    if x0 >= x1 or y0 >= y1:
        return
    a = mask[y0 - oy:y1 - oy, x0 - ox:x1 - ox, None]
    region = scene[y0:y1, x0:x1].astype(np.float32)
    region = region * (1 - a) + patch[y0 - oy:y1 - oy, x0 - ox:x1 - ox].astype(np.float32) * a
    scene[y0:y1, x0:x1] = np.clip(region + 0.5, 0, 255).astype(np.uint8)


def background(rng: np.random.Generator, size: tuple[int, int], pool: list[str], root: Path,
               cells: int) -> np.ndarray:
    """A width×height scene of corner patches of random portraits (their corners rarely hold a face), blurred
    so the seams do not read as edges. Built at the patches' own size and enlarged (blurring the full-size
    scene would cost ten times more)."""
    w, h = size
    k = 48  # a patch: the outer fifth of a 250-px portrait
    cols, rows = -(-cells * w // max(w, h)), -(-cells * h // max(w, h))
    small = np.zeros((rows * k, cols * k, 3), np.uint8)
    for r in range(rows):
        for c in range(cols):
            img = load_bgr(root / pool[int(rng.integers(len(pool)))])
            y = 0 if rng.random() < 0.5 else img.shape[0] - k
            x = 0 if rng.random() < 0.5 else img.shape[1] - k
            small[r * k:(r + 1) * k, c * k:(c + 1) * k] = img[y:y + k, x:x + k]
    small = cv2.GaussianBlur(small, (0, 0), k / 12)
    cell = max(w, h) / cells  # enlarged so each patch is one cell; the grid is cut to the scene
    big = cv2.resize(small, (round(cols * cell), round(rows * cell)), interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(big[:h, :w])


def scene(rel: str, seed: int, root: Path, pool: list[str], p: WildParams) -> tuple[bytes, dict[str, Any]]:
    """One wild scene for the portrait `rel`: (JPEG bytes, what was done, with the subject's face position)."""
    rng = image_rng(seed, rel)
    longer = int(rng.integers(p.scene_px[0], p.scene_px[1] + 1))
    shorter = round(longer * 3 / 4)
    w, h = (longer, shorter) if rng.random() < 0.5 else (shorter, longer)
    canvas = background(rng, (w, h), pool, root, p.background_cells)

    face = float(math.exp(rng.uniform(math.log(p.face_px[0]), math.log(p.face_px[1]))))
    tilt = float(rng.uniform(-p.tilt_deg, p.tilt_deg))
    quarter = int(rng.integers(1, 4)) * 90 if rng.random() < p.quarter_share else 0
    lo, hi = (1 - p.centre_span) / 2, (1 + p.centre_span) / 2
    centre = (float(rng.uniform(lo, hi) * w), float(rng.uniform(lo, hi) * h))
    info: dict[str, Any] = {"scene": [w, h], "face_px": round(face, 1), "tilt_deg": round(tilt, 1),
                            "quarter_deg": quarter, "face_centre": [round(centre[0], 1), round(centre[1], 1)]}

    if rng.random() < p.distractor_share:
        name = rel.split("/")[0]
        others = [q for q in pool if not q.startswith(name + "/")]
        other = others[int(rng.integers(len(others)))]
        d_face = face * float(rng.uniform(*p.distractor_size))
        d_tilt = float(rng.uniform(-p.distractor_tilt_deg, p.distractor_tilt_deg))
        for _ in range(50):  # a place that leaves the subject's face uncovered
            d_centre = (float(rng.uniform(0.1, 0.9) * w), float(rng.uniform(0.1, 0.9) * h))
            if math.dist(d_centre, centre) > 0.9 * (face + d_face):
                break
        else:
            d_centre = None
        if d_centre is not None:
            patch, mask, anchor = head_patch(load_bgr(root / other), d_face, d_tilt)
            paste(canvas, patch, mask, d_centre, anchor)
            info["distractor"] = {"image": other, "face_px": round(d_face, 1),
                                  "face_centre": [round(d_centre[0], 1), round(d_centre[1], 1)]}

    patch, mask, anchor = head_patch(load_bgr(root / rel), face, tilt + quarter)
    paste(canvas, patch, mask, centre, anchor)  # the subject stands in front

    if rng.random() < p.blur_share:
        sigma = float(rng.uniform(*p.blur_sigma))
        canvas = cv2.GaussianBlur(canvas, (0, 0), sigma)
        info["blur_sigma"] = round(sigma, 2)
    if rng.random() < p.dark_share:
        gain, noise = float(rng.uniform(*p.dark_gain)), float(rng.uniform(*p.dark_noise))
        dark = canvas.astype(np.float32) * gain + rng.normal(0.0, noise, canvas.shape).astype(np.float32)
        canvas = np.clip(dark + 0.5, 0, 255).astype(np.uint8)
        info["dark"] = {"gain": round(gain, 2), "noise": round(noise, 1)}
    quality = int(rng.integers(p.jpeg_quality[0], p.jpeg_quality[1] + 1))
    info["jpeg_quality"] = quality
    ok, data = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise FacegateError(f"{rel}: JPEG encoding failed")
    return data.tobytes(), info


def build(images: Path, out: Path, seed: int = 0, pairs_files: list[Path] | None = None,
          limit: int | None = None, force: bool = False, params: WildParams | None = None) -> dict[str, Any]:
    """Write the wild set for the View-1 pairs files under `out` (images/, the pairs files, wild.json).

    It is built in a temporary folder beside `out` and renamed into place whole, so an interrupted run leaves
    no half set behind; an existing `out` is replaced only with `force`. `limit` keeps the first N pairs of
    each file (a quick look; the scenes of the images kept are the same as in the full set).
    """
    images, out = Path(images), Path(out)
    p = params or WildParams()
    if not images.is_dir():
        raise FacegateError(f"{images}: not a directory")
    pairs_files = [Path(f) for f in (pairs_files or default_pairs(images))]
    view1_only(pairs_files)
    if out.exists() and not force:
        raise FacegateError(f"{out}: already exists (use --force to replace it)")
    pairs_by_file = {f: read_pairs(f) for f in pairs_files}
    pool = sorted({r for ps in pairs_by_file.values() for q in ps for r in (q.a, q.b)})
    missing = [r for r in pool if not (images / r).is_file()]
    if missing:
        raise FacegateError(f"{len(missing)} image(s) named by the pairs files are missing under {images}, "
                            f"e.g. {missing[0]}")
    chosen = pairs_by_file
    if limit is not None:
        chosen = {f: _first_pairs(ps, limit) for f, ps in pairs_by_file.items()}
    rels = sorted({r for ps in chosen.values() for q in ps for r in (q.a, q.b)})

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        truth: dict[str, Any] = {}
        for rel in tqdm(rels, desc="wild scenes", unit="img", file=sys.stderr, disable=None):
            data, info = scene(rel, seed, images, pool, p)
            target = tmp / "images" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            truth[rel] = info
        for f, ps in chosen.items():
            (tmp / f.name).write_text(_pairs_text(ps) if limit is not None else f.read_text())
        summary = {"seed": seed, "source": str(images), "pairs_files": [f.name for f in pairs_files],
                   "limit": limit, "images": len(rels), "pairs": {f.name: len(ps) for f, ps in chosen.items()},
                   "params": asdict(p), "lfw_face_width": LFW_FACE_WIDTH,
                   "with_distractor": sum("distractor" in t for t in truth.values()),
                   "quarter_turned": sum(t["quarter_deg"] != 0 for t in truth.values()),
                   "under_40px": sum(t["face_px"] < 40 for t in truth.values())}
        atomic_write_bytes(tmp / MANIFEST, json.dumps({**summary, "truth": truth}, indent=1).encode())
        replace_dir(tmp, out, out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**summary, "out": str(out)}


def _first_pairs(pairs: list, n: int) -> list:
    """The first n matched and the first n mismatched pairs (View 1 lists all matched pairs first)."""
    same = [q for q in pairs if q.same][:n]
    diff = [q for q in pairs if not q.same][:n]
    return same + diff


def _pairs_text(pairs: list) -> str:
    """View-1 format: one count, then the matched pairs, then as many mismatched ones."""
    same = [q for q in pairs if q.same]
    lines = [str(len(same))]
    for q in pairs:
        (na, ia), (nb, ib) = (_split(q.a), _split(q.b))
        lines.append(f"{na}\t{ia}\t{ib}" if q.same else f"{na}\t{ia}\t{nb}\t{ib}")
    return "\n".join(lines) + "\n"


def _split(rel: str) -> tuple[str, int]:
    name, file = rel.split("/")
    return name, int(Path(file).stem.rsplit("_", 1)[1])


def load_truth(images: Path) -> dict[str, Any] | None:
    """The subject positions of a wild set whose images folder this is (wild.json beside it), else None."""
    f = Path(images).parent / MANIFEST
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())["truth"]
    except (OSError, ValueError, KeyError):
        raise FacegateError(f"{f}: not a wild-set manifest") from None


def chose_subject(truth: dict[str, Any], box: np.ndarray) -> bool:
    """Whether a chosen face box is the subject's: its centre within half a face width of the subject's."""
    cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
    tx, ty = truth["face_centre"]
    return math.dist((cx, cy), (tx, ty)) <= 0.5 * truth["face_px"]


def contact_sheet(out: Path, sheet: Path, count: int = 12, columns: int = 4, cell: int = 320) -> Path:
    """A PNG of the first `count` scenes of a wild set (by path), each fitted into a `cell`-px square, with the
    subject's face ringed in green and a distractor's in red: what the set looks like, for the docs."""
    truth = load_truth(Path(out) / "images")
    if truth is None:
        raise FacegateError(f"{out}: not a wild set (no {MANIFEST})")
    rows = -(-min(count, len(truth)) // columns)
    canvas = np.full((rows * cell, columns * cell, 3), 255, np.uint8)
    for k, rel in enumerate(sorted(truth)[:count]):
        img = load_bgr(Path(out) / "images" / rel)
        s = cell / max(img.shape[:2])
        small = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
        t = truth[rel]
        marks = [(t, (0, 200, 0))] + ([(t["distractor"], (0, 0, 230))] if "distractor" in t else [])
        for m, colour in marks:
            x, y = m["face_centre"]
            cv2.circle(small, (round(x * s), round(y * s)), max(3, round(0.8 * m["face_px"] * s)), colour, 1,
                       cv2.LINE_AA)
        r, c = divmod(k, columns)
        canvas[r * cell:r * cell + small.shape[0], c * cell:c * cell + small.shape[1]] = small
    ok, data = cv2.imencode(".png", canvas)
    if not ok:
        raise FacegateError(f"{sheet}: PNG encoding failed")
    atomic_write_bytes(Path(sheet), data.tobytes())
    return Path(sheet)
