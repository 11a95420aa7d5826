"""Occlusion sensitivity of a match score (Zeiler & Fergus, 2014): occlude a patch, re-embed, record the drop.

A face is held as its source image and five landmarks (`FaceView`), so every embedder aligns it with its own
template, exactly as the recognition path does. Patches are placed on a grid over the *display* crop (the
first embedder's aligned crop); for another embedder the same patch is carried into its crop through the two
alignments (its crop ← source image ← display crop), so a fused score sees one occluder, not two.

The score is the best, over the reference's rows (a photo, or an identity's templates), of the mean over
embedders of the cosine; with one embedder that is the cosine the device decides on. The mean of the
cosines is explain's own definition of a fused score until the project has a library one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edge.embed import Embedder
from edge.errors import FacegateError
from edge.models.manifest import AlignmentTemplate
from edge.vision.align import align, similarity_transform

GREY = 128.0  # the grey occluder: mid-grey in 0–255 pixels, before any normalisation of the model's
FILLS = ("grey", "blur")
# The default, chosen on 50 View-1 genuine pairs of pairsDevTrain disjoint from both bench sets: strongest cell
# of both maps inside the central box 0.90 (blur) vs 0.86 (grey), top three 0.76 vs 0.70
# (docs/results/explain-bench.md, "The blur occluder").
DEFAULT_FILL = "blur"
# The blur occluder: the patch shows the same crop under a Gaussian blur of this σ, in patches. A grey square
# removes the region but also paints a new edge and a new colour into it (on dark hair or at the face's border
# that change alone moves the embedding); a blurred patch keeps the region's colour and coarse shape and removes
# only its detail, so a drop measures how much the model relies on what is *drawn* there.
BLUR_SIGMA_PATCHES = 0.5


@dataclass(frozen=True)
class FaceView:
    """One face: the source image (BGR) and its five landmarks in it."""

    image: np.ndarray
    landmarks: np.ndarray

    def crop(self, template: AlignmentTemplate) -> np.ndarray:
        return align(self.image, self.landmarks, template)

    def to(self, template: AlignmentTemplate) -> np.ndarray:
        """3×3 map: source image → the template's crop."""
        return np.vstack([similarity_transform(self.landmarks, np.asarray(template.points)), [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class Grid:
    """Patch positions (top-left corners) over a crop of `size` (height, width)."""

    size: tuple[int, int]
    patch: int
    stride: int

    def __post_init__(self) -> None:
        if not 1 <= self.patch <= min(self.size):
            raise FacegateError(f"patch {self.patch} must be between 1 and the crop side {min(self.size)}")
        if self.stride < 1:
            raise FacegateError(f"stride must be ≥ 1, not {self.stride}")

    def _axis(self, n: int) -> np.ndarray:
        starts = list(range(0, n - self.patch + 1, self.stride))
        if starts[-1] != n - self.patch:  # the last patch sits on the border, so every pixel is covered
            starts.append(n - self.patch)
        return np.asarray(starts)

    @property
    def ys(self) -> np.ndarray:
        return self._axis(self.size[0])

    @property
    def xs(self) -> np.ndarray:
        return self._axis(self.size[1])

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.ys), len(self.xs)

    def cells(self) -> list[tuple[int, int]]:
        return [(i, j) for i in range(self.shape[0]) for j in range(self.shape[1])]

    def centre(self, i: int, j: int) -> tuple[float, float]:
        """(x, y) of cell (i, j)'s patch centre, in crop pixels."""
        return float(self.xs[j] + self.patch / 2), float(self.ys[i] + self.patch / 2)

    def mask(self, cells: Iterable[tuple[int, int]]) -> np.ndarray:
        """(H, W) float32, 1 under the patches of `cells`."""
        m = np.zeros(self.size, np.float32)
        ys, xs = self.ys, self.xs
        for i, j in cells:
            m[ys[i]:ys[i] + self.patch, xs[j]:xs[j] + self.patch] = 1.0
        return m

    def to_dict(self) -> dict[str, Any]:
        return {"crop_size": list(self.size), "patch": self.patch, "stride": self.stride,
                "ys": self.ys.tolist(), "xs": self.xs.tolist()}


@dataclass
class OcclusionMap:
    grid: Grid
    score: float  # the unoccluded score
    drops: np.ndarray  # (ny, nx): score − score with that cell's patch occluded; > 0 where the region supports it
    ms: float  # time to compute it
    fill: str = DEFAULT_FILL  # what the patch showed: the face blurred, or grey

    def top_cells(self, k: int) -> list[tuple[int, int]]:
        """The k cells whose occlusion lowers the score most, strongest first."""
        order = np.argsort(-self.drops, axis=None, kind="stable")[:k]
        return [(int(i), int(j)) for i, j in zip(*np.unravel_index(order, self.drops.shape), strict=True)]

    def pixels(self) -> np.ndarray:
        """(H, W) drop per pixel: the mean over the patches that cover it (the picture's heat)."""
        total = np.zeros(self.grid.size, np.float64)
        count = np.zeros(self.grid.size, np.float64)
        p = self.grid.patch
        for (i, j), d in np.ndenumerate(self.drops):
            y, x = self.grid.ys[i], self.grid.xs[j]
            total[y:y + p, x:x + p] += d
            count[y:y + p, x:x + p] += 1
        return (total / np.maximum(count, 1)).astype(np.float32)

    def to_dict(self, k: int = 3) -> dict[str, Any]:
        return {"score": round(self.score, 6), **self.grid.to_dict(), "fill": self.fill,
                "drops": np.round(self.drops, 5).tolist(),
                "top_cells": [{"cell": [i, j], "centre_xy": list(self.grid.centre(i, j)),
                               "drop": round(float(self.drops[i, j]), 5)} for i, j in self.top_cells(k)],
                "ms": round(self.ms, 1)}


def mean_cosine(probe: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> np.ndarray:
    """(N,) scores: for each probe row, the best over reference rows of the mean over embedders of the cosine.

    `probe` {embedder: (N, D)}, `reference` {embedder: (T, D)}; rows of a reference's embedders come from the
    same photo (enrolment stores them in the same order).
    """
    per = [probe[e] @ reference[e].T for e in reference]  # each (N, T)
    return np.mean(per, axis=0).max(axis=1)


class Occluder:
    """Scores a face against a fixed reference with any set of patches occluded (blurred or grey), in batches."""

    def __init__(self, view: FaceView, embedders: list[Embedder], reference: dict[str, np.ndarray],
                 fill: str = DEFAULT_FILL, patch: int = 16, batch: int = 64,
                 score: Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], np.ndarray] = mean_cosine) -> None:
        self.embedders = embedders
        self.reference = reference
        self.score = score  # (probe rows, reference rows) -> (N,): the explained decision's own score
        if fill not in FILLS:
            raise FacegateError(f"fill must be one of {', '.join(FILLS)}, not {fill!r}")
        self.fill = fill
        self.batch = max(1, int(batch))
        display = embedders[0].manifest.alignment
        assert display is not None, "an embedder manifest must carry an alignment template"
        self.display = display
        self.size = (display.size[1], display.size[0])
        Grid(self.size, patch, 1)  # the patch's bounds, checked before a blur is sized by it
        to_display = view.to(display)
        self._crops, self._maps, self._fills = [], [], []
        for e in embedders:
            tpl = e.manifest.alignment
            assert tpl is not None
            crop = view.crop(tpl).astype(np.float32)
            self._crops.append(crop)
            # what shows under a patch, in this embedder's crop: grey, or the crop blurred (σ in display pixels,
            # carried to this crop's scale so every member sees the same occluder)
            if fill == "grey":
                self._fills.append(np.float32(GREY))
            else:
                sigma = BLUR_SIGMA_PATCHES * patch * tpl.size[0] / display.size[0]
                self._fills.append(cv2.GaussianBlur(crop, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT))
            # display crop → this embedder's crop; None where they are the same frame (no warp needed)
            m = (view.to(tpl) @ np.linalg.inv(to_display))[:2]
            same = tpl.size == display.size and np.allclose(m, [[1, 0, 0], [0, 1, 0]], atol=1e-6)
            self._maps.append(None if same else m)

    @property
    def crop(self) -> np.ndarray:
        """The display crop (BGR uint8)."""
        return self._crops[0].astype(np.uint8)

    def scores(self, masks: np.ndarray) -> np.ndarray:
        """(N,) scores with each (H, W) display-frame mask's pixels occluded; an all-zero mask scores the face."""
        out = []
        for k in range(0, len(masks), self.batch):
            chunk = masks[k:k + self.batch]
            probe = {}
            for e, crop, m, fill in zip(self.embedders, self._crops, self._maps, self._fills, strict=True):
                if m is None:
                    mm = chunk
                else:
                    w, h = e.manifest.alignment.size  # type: ignore[union-attr]
                    mm = np.stack([cv2.warpAffine(x, m, (w, h), flags=cv2.INTER_LINEAR) for x in chunk])
                mm = mm[..., None]
                occluded = crop[None] * (1.0 - mm) + fill * mm
                probe[e.manifest.name] = e.embed(np.clip(occluded + 0.5, 0, 255).astype(np.uint8))
            out.append(self.score(probe, self.reference))
        return np.concatenate(out) if out else np.zeros(0)

    def base_score(self) -> float:
        return float(self.scores(np.zeros((1, *self.size), np.float32))[0])

    def map(self, patch: int, stride: int, progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None
            ) -> OcclusionMap:
        t = time.perf_counter()
        grid = Grid(self.size, patch, stride)
        cells = grid.cells()
        base = self.base_score()
        chunks = [cells[k:k + self.batch] for k in range(0, len(cells), self.batch)]
        scores = [self.scores(np.stack([grid.mask([c]) for c in chunk]))
                  for chunk in (progress(chunks) if progress else chunks)]
        drops = (base - np.concatenate(scores)).reshape(grid.shape)
        return OcclusionMap(grid, base, drops.astype(np.float32), (time.perf_counter() - t) * 1e3, self.fill)


# The central region's margin, in eye distances. 0.25 (the whole eye, not just its centre) was declared first
# and measured on LFW pairsDevTest: the strongest cell was often the brow band just above it. 0.5 takes in
# the brows; it was chosen after that run and confirmed on pairsDevTrain (docs/results/explain-bench.md).
CENTRAL_MARGIN = 0.5


def central_box(template: AlignmentTemplate, margin: float = CENTRAL_MARGIN) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1): the box around the template's eyes, nose and mouth corners, widened on every side by
    `margin` × the distance between the eyes."""
    pts = np.asarray(template.points, np.float64)
    pad = margin * float(np.linalg.norm(pts[1] - pts[0]))
    x0, y0 = pts.min(axis=0) - pad
    x1, y1 = pts.max(axis=0) + pad
    return float(x0), float(y0), float(x1), float(y1)


def inside(point: tuple[float, float], box: tuple[float, float, float, float]) -> bool:
    x, y = point
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]
