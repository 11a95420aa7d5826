"""Training data for the face trainers: folder-per-person sets, cut by the device's own detector and alignment.

Every face is found once (YuNet, the same face-choice policy as the benchmarks) and its five landmarks are
cached; aligned crops and backbone embeddings are derived from those landmarks and cached too, so the same
photo is decoded and detected once per cache, not once per epoch or per experiment. Caches are `.npz` files
in a cache folder (default `<state dir>/cache/train`), keyed by the images folder, the detector and the
model's sha256, so a changed model or data set never reads a stale cache.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge.atomic import atomic_write_bytes
from edge.embed import Embedder
from edge.errors import FacegateError, ImageError, NoFaceError
from edge.imageio import image_files, load_bgr
from edge.models.manifest import AlignmentTemplate
from edge.models.registry import Registry
from edge.paths import state_dir
from edge.vision.align import align
from edge.vision.detect import make_detector, select_face


def default_cache_dir() -> Path:
    return state_dir() / "cache" / "train"


def list_people(images: Path, min_images: int = 1, exclude: set[str] | frozenset[str] = frozenset()
                ) -> list[tuple[str, list[str]]]:
    """(identity, sorted relative image paths) per sub-folder of `images`, skipping the `exclude` identities."""
    root = Path(images)
    if not root.is_dir():
        raise FacegateError(f"{root}: not a directory")
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in exclude):
        rels = [f"{d.name}/{f.name}" for f in image_files(d, recursive=False)]
        if len(rels) >= min_images:
            out.append((d.name, rels))
    if not out:
        raise FacegateError(f"{root}: no person folders with ≥ {min_images} image(s)")
    return out


def identity_of(rel: str) -> str:
    return rel.split("/")[0]


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _load_rows(path: Path, field: str) -> dict[str, np.ndarray]:
    """A cache file's rows as {relative path: row of `field`} (empty when the cache does not exist yet)."""
    if not path.is_file():
        return {}
    with np.load(path) as z:
        return dict(zip(z["rels"].tolist(), z[field], strict=True))


def _save_rows(path: Path, field: str, known: dict[str, np.ndarray], empty: np.ndarray, **extra: np.ndarray) -> None:
    """Write {relative path: row} back as a cache file (sorted rows; `empty` shapes a cache with none)."""
    rows = sorted(known)
    _save_npz(path, rels=np.array(rows, dtype=str), **{field: np.stack([known[r] for r in rows]) if rows else empty},
              **extra)


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())  # a killed run never leaves a truncated cache behind


# -- landmarks -----------------------------------------------------------------------------------------------------
def landmarks(images: Path, rels: list[str], cache_dir: Path | None = None, registry: Registry | None = None,
              detector: str = "yunet", policy: str = "central", desc: str = "detecting") -> dict[str, np.ndarray]:
    """Five landmarks (5, 2) of the chosen face per image; images with no face are left out.

    Cached per (images folder, detector file, policy); only images not yet in the cache are decoded.
    """
    registry = registry or Registry()
    root = Path(images).resolve()
    m = registry.manifest(detector)
    path = Path(cache_dir or default_cache_dir()) / f"landmarks-{detector}-{_key(str(root), m.sha256, policy)}.npz"
    known = _load_rows(path, "points")
    no_face: set[str] = set()
    if path.is_file():
        with np.load(path) as z:
            no_face = set(z["no_face"].tolist())
    todo = [r for r in dict.fromkeys(rels) if r not in known and r not in no_face]
    if todo:
        det = make_detector(registry, detector, threads=1)
        for rel in tqdm(todo, desc=desc, unit="img", file=sys.stderr, disable=None):
            try:
                image = load_bgr(root / rel)
                face = select_face(det.detect(image), image.shape, policy)
            except (NoFaceError, ImageError):
                no_face.add(rel)
                continue
            known[rel] = np.asarray(face.landmarks, np.float32).reshape(5, 2)
        _save_rows(path, "points", known, np.zeros((0, 5, 2), np.float32), no_face=np.array(sorted(no_face), dtype=str))
    return {r: known[r] for r in rels if r in known}


# -- aligned crops -------------------------------------------------------------------------------------------------
def scaled_template(template: AlignmentTemplate, size: tuple[int, int]) -> AlignmentTemplate:
    sx, sy = size[0] / template.size[0], size[1] / template.size[1]
    return AlignmentTemplate(size=size, points=tuple((x * sx, y * sy) for x, y in template.points))


def aligned_crops(images: Path, rels: list[str], size: tuple[int, int], template: str = "sface",
                  cache_dir: Path | None = None, registry: Registry | None = None, policy: str = "central"
                  ) -> tuple[np.ndarray, list[str]]:
    """BGR uint8 crops (N, H, W, 3) aligned like the device aligns for `template`, scaled to `size` (W, H).

    Returns the crops of the images where a face was found, and their relative paths (in `rels` order).
    """
    registry = registry or Registry()
    root = Path(images).resolve()
    cache = Path(cache_dir or default_cache_dir())
    base = registry.manifest(template).alignment
    if base is None:
        raise FacegateError(f"{template}: has no alignment template")
    tpl = scaled_template(base, size)
    det_sha = registry.manifest("yunet").sha256
    path = cache / f"crops-{template}-{size[0]}x{size[1]}-{_key(str(root), det_sha, policy, repr(tpl))}.npz"
    known = _load_rows(path, "crops")
    todo = [r for r in dict.fromkeys(rels) if r not in known]
    if todo:
        points = landmarks(root, todo, cache, registry, policy=policy)
        for rel in tqdm([r for r in todo if r in points], desc="aligning", unit="img", file=sys.stderr,
                        disable=None):
            known[rel] = align(load_bgr(root / rel), points[rel], tpl)
        _save_rows(path, "crops", known, np.zeros((0, size[1], size[0], 3), np.uint8))
    kept = [r for r in rels if r in known]
    crops = np.stack([known[r] for r in kept]) if kept else np.zeros((0, size[1], size[0], 3), np.uint8)
    return crops, kept


# -- backbone embeddings -------------------------------------------------------------------------------------------
def embeddings(images: Path, rels: list[str], embedder: str, cache_dir: Path | None = None,
               registry: Registry | None = None, policy: str = "central", batch: int = 32) -> dict[str, np.ndarray]:
    """The embedder's unit vector per image, exactly as the device computes it (its own alignment template).

    Cached per (images folder, detector, embedder file, policy). Images with no face are left out.
    """
    registry = registry or Registry()
    root = Path(images).resolve()
    cache = Path(cache_dir or default_cache_dir())
    m = registry.manifest(embedder)
    det_sha = registry.manifest("yunet").sha256
    flip = ("flip_average",) if m.flip_average else ()  # the same file used differently: another cache
    path = cache / f"emb-{embedder}-{_key(str(root), det_sha, m.sha256, policy, *flip)}.npz"
    known = _load_rows(path, "vectors")
    todo = [r for r in dict.fromkeys(rels) if r not in known]
    if todo:
        points = landmarks(root, todo, cache, registry, policy=policy)
        emb = Embedder(*registry.open(embedder, threads=1))
        assert m.alignment is not None
        found = [r for r in todo if r in points]
        for start in tqdm(range(0, len(found), batch), desc=f"embedding ({embedder})", unit="batch",
                          file=sys.stderr, disable=None):
            chunk = found[start:start + batch]
            crops = np.stack([align(load_bgr(root / r), points[r], m.alignment) for r in chunk])
            known.update(zip(chunk, emb.embed(crops), strict=True))
        dim = m.output_dim or (len(next(iter(known.values()))) if known else 0)
        _save_rows(path, "vectors", known, np.zeros((0, dim), np.float32))
    return {r: known[r] for r in rels if r in known}


# -- batches -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Labelled:
    """Samples with integer identity labels (row i of the data belongs to identity labels[i])."""

    labels: np.ndarray  # (N,) int
    names: list[str]  # identity name per label value

    @classmethod
    def from_rels(cls, rels: list[str]) -> Labelled:
        names = sorted({identity_of(r) for r in rels})
        index = {n: k for k, n in enumerate(names)}
        return cls(np.array([index[identity_of(r)] for r in rels], np.int64), names)


def pk_batches(labels: np.ndarray, p: int, k: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """One epoch of P identities × K samples batches (row indices), each identity used once per epoch.

    Only identities with at least two samples can supply a positive, so only those are drawn; one with fewer
    than K samples is drawn with repetition (augmentation makes the repeats differ).
    """
    by_id: dict[int, np.ndarray] = {}
    for lab in np.unique(labels):
        rows = np.flatnonzero(labels == lab)
        if len(rows) >= 2:
            by_id[int(lab)] = rows
    ids = np.array(sorted(by_id))
    if len(ids) < 2:
        raise FacegateError("triplet batches need at least two identities with two or more samples each")
    p = min(p, len(ids))
    order = rng.permutation(ids)
    for start in range(0, len(order) - p + 1, p):
        batch = []
        for lab in order[start:start + p]:
            rows = by_id[int(lab)]
            batch.append(rng.choice(rows, size=k, replace=len(rows) < k))
        yield np.concatenate(batch)


# -- augmentation --------------------------------------------------------------------------------------------------
def augment(crops: np.ndarray, rng: np.random.Generator, shift: int = 4, flip: bool = True,
            brightness: float = 0.2, contrast: float = 0.2) -> np.ndarray:
    """Random mirror, translation (edge-replicated), brightness and contrast; uint8 in, float32 (0–255) out.

    Mild on purpose: the crops are already aligned, so large geometric changes would teach the net a
    variability the device never shows it.
    """
    x = crops.astype(np.float32)
    n, h, w, _ = x.shape
    if flip:
        mirror = rng.random(n) < 0.5
        x[mirror] = x[mirror, :, ::-1]
    if shift:
        padded = np.pad(x, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="edge")
        dy = rng.integers(0, 2 * shift + 1, n)
        dx = rng.integers(0, 2 * shift + 1, n)
        x = np.stack([padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    gain = 1.0 + rng.uniform(-contrast, contrast, (n, 1, 1, 1)).astype(np.float32)
    offset = rng.uniform(-brightness, brightness, (n, 1, 1, 1)).astype(np.float32) * 255.0
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return np.clip((x - mean) * gain + mean + offset, 0.0, 255.0)
