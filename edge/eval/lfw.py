"""The LFW pairs protocol: pairs files, folder-per-person trees, fold-wise accuracy, TAR at FAR.

pairs.txt (View 2) starts with "10\t300": ten folds, each 300 matched then 300 mismatched pairs.
pairsDevTrain.txt / pairsDevTest.txt (View 1) start with one count N: N matched then N mismatched pairs.
Rows are "Name i j" (same person) or "Name1 i Name2 j" (different people).
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from edge.errors import FacegateError, ImageError, NoFaceError
from edge.imageio import load_bgr
from edge.match.base import accept_all
from edge.vision.detect import Face, select_face


@dataclass(frozen=True)
class Pair:
    a: str  # relative image path, "Name/Name_0001.jpg"
    b: str
    same: bool
    fold: int


def image_rel(name: str, index: int) -> str:
    return f"{name}/{name}_{index:04d}.jpg"


def read_pairs(path: Path) -> list[Pair]:
    try:
        lines = [ln.split() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    except OSError as exc:
        raise FacegateError(f"{path}: cannot read pairs file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise FacegateError(f"{path}: not a pairs file (not text)") from None
    if not lines:
        raise FacegateError(f"{path}: empty pairs file")
    head = lines[0]
    try:
        folds, per_class = (int(head[0]), int(head[1])) if len(head) == 2 else (1, int(head[0]))
    except ValueError:
        raise FacegateError(f"{path}: first line must be 'FOLDS N' or 'N'") from None
    rows = lines[1:]
    if len(rows) != folds * 2 * per_class:
        raise FacegateError(f"{path}: header promises {folds * 2 * per_class} pairs, found {len(rows)}")
    pairs = []
    for k, row in enumerate(rows):
        fold = k // (2 * per_class)
        if len(row) not in (3, 4):
            raise FacegateError(f"{path}: line {k + 2} has {len(row)} fields; expected 3 or 4")
        numbers = [row[1], row[2]] if len(row) == 3 else [row[1], row[3]]
        if not all(n.isascii() and n.isdigit() and int(n) >= 1 for n in numbers):
            raise FacegateError(f"{path}: line {k + 2}: image numbers must be whole numbers from 1, not "
                                f"{' '.join(n[:20] for n in numbers)!r}")
        if len(row) == 3:
            pairs.append(Pair(image_rel(row[0], int(row[1])), image_rel(row[0], int(row[2])), True, fold))
        else:
            pairs.append(Pair(image_rel(row[0], int(row[1])), image_rel(row[2], int(row[3])), False, fold))
    return pairs



# LFW View 2 (pairs.txt, md5 from the LFW site): the test set. Nothing is calibrated, fitted or tuned on it.
VIEW2_MD5 = "9f1ba174e4e1c508ff7cdf10ac338a7d"


def refuse_test_set(pairs_file: Path, purpose: str = "calibrate") -> None:
    """A calibration or fit must never see the test set: refuse LFW View 2 by content (any name, any copy)."""
    import hashlib

    try:
        digest = hashlib.md5(Path(pairs_file).read_bytes(), usedforsecurity=False).hexdigest()
    except OSError as exc:
        raise FacegateError(f"{pairs_file}: cannot read pairs file ({exc.strerror})") from None
    if digest == VIEW2_MD5:
        raise FacegateError(f"{pairs_file} is LFW View 2, the test set: {purpose} on View 1 (pairsDevTrain.txt) "
                            "and keep View 2 for reporting")


def images_named_by(pairs_files: Iterable[Path]) -> set[str]:
    """The relative image paths (Name/Name_NNNN.jpg) LFW-format pairs files name: a test set's images, to be
    kept out of calibration, fitting and sampling."""
    return {r for f in pairs_files for p in read_pairs(Path(f)) for r in (p.a, p.b)}


def pair_identities(pairs: Iterable[Pair]) -> set[str]:
    """The identities (image folders) a list of pairs names."""
    return {r.split("/")[0] for p in pairs for r in (p.a, p.b)}

def embed_paths(pipeline, root: Path, rels: list[str], policy: str = "best", desc: str = "embedding",
                every: bool = False, cache: bool = False, chosen: dict[str, tuple[Face, int]] | None = None,
                ) -> tuple[dict[str, Any], list[str]]:
    """Embed each image once; returns (embeddings by relative path, paths with no usable face).

    With `every`, each value is a probe, {embedder: vector} for every embedder the pipeline carries (the face
    is detected once, each embedder aligns it with its own template; what a Scorer takes); otherwise the
    primary embedder's vector. With `cache`, results are kept in the state directory, keyed by the models'
    sha256, the face policy and the image folder, so a second benchmark over the same images embeds only what
    it has not seen (an evaluation convenience; the device never reads it). `chosen`, when given,
    receives each fresh image's chosen face and how many were found (never from the cache).
    """
    primary = pipeline.embedder.manifest.name
    store = _ProbeCache(pipeline, root, policy) if cache else None
    embeddings: dict[str, Any] = {}
    no_face: list[str] = []
    todo = rels
    if store is not None:
        embeddings, no_face, todo = store.lookup(rels)
    fresh: dict[str, Any] = {}
    fresh_none: list[str] = []
    for rel in tqdm(todo, desc=desc, unit="img", file=sys.stderr, disable=None):
        try:
            image = load_bgr(Path(root) / rel)
            faces = pipeline.detect(image)
            face = select_face(faces, image.shape, policy)
        except (NoFaceError, ImageError):
            fresh_none.append(rel)
            continue
        if chosen is not None:
            chosen[rel] = (face, len(faces))
        fresh[rel] = pipeline.embed(image, [face], None if (every or store is not None) else [primary])[0]
    if store is not None and (fresh or fresh_none):
        store.save(fresh, fresh_none)
    embeddings.update(fresh)
    no_face += fresh_none
    if not every:
        embeddings = {r: p[primary] for r, p in embeddings.items()}
    return embeddings, no_face


def identities_of_files(images: Path, names: Iterable[str], what: str, error: type[Exception] = FacegateError
                        ) -> tuple[set[str], list[str]]:
    """Identities of the pairs files `names` (as a manifest's provenance names them, found beside `images`) and
    the paths read: what a benchmark must leave out because `what` was fitted on them."""
    out: set[str] = set()
    used = []
    for name in dict.fromkeys(names):
        path = Path(images).parent / name
        if not path.is_file():
            raise error(f"{what} on {name}, not found beside {images}: cannot keep its identities out of the "
                        "benchmark")
        out |= pair_identities(read_pairs(path))
        used.append(str(path))
    return out, used


class _ProbeCache:
    """Probes of one image folder under one pipeline (detector + embedders, by sha256) and face policy."""

    def __init__(self, pipeline, root: Path, policy: str) -> None:
        import hashlib

        from edge.paths import state_dir

        parts = [pipeline.detector.manifest.sha256, policy, str(Path(root).resolve()),
                 str(getattr(pipeline.detector, "min_face_px", "")), getattr(pipeline, "rescue_mode", "")]
        parts += [f"{e.manifest.name}:{e.manifest.sha256}:{e.manifest.flip_average}" for e in pipeline.embedders]
        key = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
        self.path = state_dir() / "cache" / f"probes-{key}.npz"
        self.names = [e.manifest.name for e in pipeline.embedders]

    def _load(self) -> tuple[dict[str, Any], set[str]]:
        if not self.path.is_file():
            return {}, set()
        try:
            with np.load(self.path, allow_pickle=False) as z:
                rels = [str(r) for r in z["rels"]]
                vectors = {n: z[f"v_{n}"] for n in self.names}
                none = {str(r) for r in z["no_face"]}
        except (OSError, KeyError, ValueError):
            return {}, set()  # a damaged cache is recomputed
        return {r: {n: vectors[n][i] for n in self.names} for i, r in enumerate(rels)}, none

    def lookup(self, rels: list[str]) -> tuple[dict[str, Any], list[str], list[str]]:
        have, none = self._load()
        hit = {r: have[r] for r in rels if r in have}
        missed = [r for r in rels if r not in have and r not in none]
        return hit, [r for r in rels if r in none], missed

    def save(self, fresh: dict[str, Any], fresh_none: list[str]) -> None:
        from edge.atomic import atomic_write_bytes

        have, none = self._load()
        have.update(fresh)
        none |= set(fresh_none)
        rels = sorted(have)
        buf = io.BytesIO()
        np.savez(buf, rels=np.array(rels), no_face=np.array(sorted(none)),
                 **{f"v_{n}": np.stack([have[r][n] for r in rels]) if rels else np.zeros((0, 1), np.float32)
                    for n in self.names})
        atomic_write_bytes(self.path, buf.getvalue())


def pair_scores(pairs: list[Pair], embeddings: dict[str, np.ndarray]) -> np.ndarray:
    """Cosine score per pair; NaN where either image had no face (such a pair is scored as wrong)."""
    out = np.full(len(pairs), np.nan)
    for k, p in enumerate(pairs):
        ea, eb = embeddings.get(p.a), embeddings.get(p.b)
        if ea is not None and eb is not None:
            out[k] = float(np.dot(ea, eb))
    return out


def accuracy_at(scores: np.ndarray, same: np.ndarray, threshold: float) -> float:
    """Fraction right when 'same' means score ≥ threshold; unscored (NaN) pairs are always wrong."""
    with np.errstate(invalid="ignore"):
        predicted = accept_all(scores, threshold)
    right = (predicted == same) & ~np.isnan(scores)
    return float(right.mean()) if len(scores) else 0.0


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """The threshold maximising accuracy, taken midway between adjacent distinct scores."""
    s = np.unique(scores[~np.isnan(scores)])
    if s.size == 0:
        return 0.0
    candidates = np.concatenate([[s[0] - 1e-6], (s[:-1] + s[1:]) / 2, [s[-1] + 1e-6]])
    # Vectorised over candidates: genuine pairs at or above, impostors below.
    g = np.sort(scores[same & ~np.isnan(scores)])
    im = np.sort(scores[~same & ~np.isnan(scores)])
    right = (len(g) - np.searchsorted(g, candidates, side="left")) + np.searchsorted(im, candidates, side="left")
    return float(candidates[int(np.argmax(right))])


def cross_validate(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> tuple[list[float], list[float]]:
    """LFW View 2: for each fold, the threshold chosen on the other folds, accuracy on this one."""
    accs, thresholds = [], []
    for f in np.unique(folds):
        train, test = folds != f, folds == f
        t = best_threshold(scores[train], same[train])
        thresholds.append(t)
        accs.append(accuracy_at(scores[test], same[test], t))
    return accs, thresholds


def threshold_at_far(impostor: np.ndarray, far: float) -> float:
    """The lowest threshold whose false-accept rate on these impostor scores is ≤ far (NaN = rejected)."""
    s = np.sort(impostor[~np.isnan(impostor)])[::-1]
    allowed = int(np.floor(far * len(impostor)))
    if allowed >= len(s):
        return float(s[-1]) if len(s) else 0.0
    # Accepting iff score ≥ t: put t just above the (allowed+1)-th highest impostor score.
    return float(np.nextafter(s[allowed], np.inf))


def tar_at_far(scores: np.ndarray, same: np.ndarray, far: float) -> tuple[float, float]:
    """(TAR, threshold) at the given FAR from pooled scores; unscored genuine pairs count as rejected."""
    t = threshold_at_far(scores[~same], far)
    g = scores[same]
    with np.errstate(invalid="ignore"):
        tar = float((g >= t).sum() / len(g)) if len(g) else 0.0
    return tar, t
