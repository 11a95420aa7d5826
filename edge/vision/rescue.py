"""The rescue pass: detection that does not give up when the first pass finds no face it is sure of.

The first pass (the detector's `detect`) runs at the reduced detection size, with the configured size floor
(`models.min_face_px`) and the manifest's score threshold. On photos from the wild it misses tiny faces (under
the floor, or shrunk below what the detector sees), faces tilted so far that the reduced image loses them, and
lying heads or sideways photos — which it often "finds" anyway: YuNet reports a face in most LFW portraits
turned by 90°, 180° or 270°, at scores up to about 0.88, with landmarks drawn as if the face were upright, so
the aligned crop is wrong (cosine ≈ 0 to the upright one). Upright portraits score at least 0.90.

So the rescue runs when the first pass finds no face, or none scoring at least the manifest's `sure_score`
(0.9 for YuNet). It looks again, in order:

1. `full`: when the first pass found nothing, the image at its own resolution, down to the size the detector
   finds reliably (the manifest's `min_face_px`, 20 px for YuNet) instead of the configured floor. A face
   found there that the detector is sure of is the answer.
2. `rotated`: the image turned by 90°, 180° and 270° at full resolution. Of the upright faces (the first
   pass's, else step 1's) and the three turns', the orientation whose best face scores highest wins, so an
   upright face that merely scored low stays (`kept`), and a false box in one turn does not hide the face in
   another.
3. `low_score`: no orientation has a face at the usual threshold: the same orientations' faces down to the
   manifest's `rescue_score_threshold`, the best orientation again.
4. `enlarged`: still nothing: the four orientations once more with the image enlarged twice (bicubic), down to
   the same low threshold. Faces a little over the detector's smallest size, tilted and in the dark are read
   only at twice their size (the wild set's last misses, docs/wild.md).

Steps 1 and 3 share one detector run per orientation (a face's score does not depend on the threshold, and
non-maximum suppression drops a face only for a higher-scoring one), so a rescue costs at most four
full-resolution runs when it finds a face, four more on an image enlarged twice (about 16 times the pixels)
when it finds none, and nothing when the first pass finds a face it is sure of. Faces found in a turned
image are mapped back to the image's own coordinates, landmarks included, so alignment is unchanged: the
similarity transform to the template turns the face upright.

When it runs is the configuration's `models.rescue`: "photos" (single images: the CLI, enrolment, benchmarks;
the default), "always" (camera frames too: a door sees mostly empty frames, each would pay for four runs), or
"off".
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from edge.vision.detect import Detector, Face, FullResolution

RESCUE_MODES = ("off", "photos", "always")
STEPS = ("kept", "full", "rotated", "low_score", "enlarged")
ENLARGE = 2.0  # the last look's scale


def unrotate(points: np.ndarray, k: int, width: int, height: int) -> np.ndarray:
    """(…, 2) points of `np.rot90(image, k)` → the same points in `image` (width × height), in continuous pixel
    coordinates (a pixel's centre at +0.5)."""
    x, y = points[..., 0], points[..., 1]
    k %= 4
    if k == 0:
        return points.copy()
    if k == 1:  # turned counter-clockwise: rotated (x, y) was (W - y, x)
        out = (width - y, x)
    elif k == 2:
        out = (width - x, height - y)
    else:  # clockwise: rotated (x, y) was (y, H - x)
        out = (y, height - x)
    return np.stack(out, axis=-1)


def unrotate_face(face: Face, k: int, width: int, height: int) -> Face:
    """A face found in `np.rot90(image, k)`, in `image`'s coordinates (width × height)."""
    x1, y1, x2, y2 = face.box
    corners = unrotate(np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float64), k, width, height)
    box = np.concatenate([corners.min(0), corners.max(0)]).astype(np.float32)
    return Face(box=box, landmarks=unrotate(np.asarray(face.landmarks, np.float64), k, width, height)
                .astype(np.float32), score=face.score)


def decide(first: list[Face], look: Callable[[int], list[Face]], usual: float, sure: float,
           full: bool, enlarged: Callable[[int], list[Face]] | None = None) -> tuple[list[Face], str | None]:
    """The rescue's choice (module docstring) given the first pass's faces and `look(k)`: the faces of the
    image turned k quarter turns, in the image's coordinates, best first, down to the rescue's low threshold;
    `enlarged(k)` the same on the image enlarged (the last step, skipped when None). Returns (faces, step),
    ([], None) when nothing is found. Kept apart from the detector so the steps can be replayed on cached looks
    when tuning."""
    if first:
        upright = first
    else:
        upright = look(0) if full else []  # without full resolution, upright again would repeat the first pass
        found = [f for f in upright if f.score >= usual]
        if found and found[0].score >= sure:
            return found, "full"
    views = [upright] + [look(k) for k in (1, 2, 3)]
    best = _best_view([[f for f in v if f.score >= usual] for v in views])
    if best:
        upright_won = any(best[0] is f for f in upright)
        return best, ("kept" if first else "full") if upright_won else "rotated"
    best = _best_view(views)
    if best:
        return best, "low_score"
    best = _best_view([enlarged(k) for k in range(4)]) if enlarged is not None else []
    return (best, "enlarged") if best else ([], None)


def _best_view(views: list[list[Face]]) -> list[Face]:
    """The faces of the orientation whose best face scores highest."""
    views = [sorted(v, key=lambda f: -f.score) for v in views if v]
    return max(views, key=lambda v: v[0].score) if views else []


class Rescue:
    """The rescue pass over one detector (module docstring)."""

    def __init__(self, detector: Detector) -> None:
        self.detector = detector
        self.full = isinstance(detector, FullResolution)
        det: FullResolution | None = detector if self.full else None  # type: ignore[assignment]
        self.usual = det.score_threshold if det else 0.0
        self.low = min(det.rescue_score_threshold, self.usual) if det else 0.0
        # Without a score scale it knows, the rescue trusts any face the first pass finds.
        self.sure = det.sure_score if det else 0.0
        self.floor = min(det.detector_min_px, detector.min_face_px) if det else detector.min_face_px

    def needed(self, first: list[Face]) -> bool:
        """Whether the first pass's faces call for the rescue: none, or none the detector is sure of."""
        return not first or max(f.score for f in first) < self.sure

    def look(self, image: np.ndarray, k: int, scale: float = 1.0) -> list[Face]:
        """Faces in the image turned k quarter turns (and enlarged by `scale`), in the image's own coordinates,
        best first: at full resolution down to the low score and the detector's reliable size when it offers
        that, else its ordinary pass."""
        if scale != 1.0:
            h, w = image.shape[:2]
            big = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_CUBIC)
            return [_scaled(f, 1.0 / scale) for f in self.look(big, k)]
        turned = np.ascontiguousarray(np.rot90(image, k)) if k else image
        if self.full:
            det: FullResolution = self.detector  # type: ignore[assignment]
            faces = [f for f in det.detect_full(turned, self.low) if max(f.width, f.height) >= self.floor]
        else:
            faces = self.detector.detect(turned)
        h, w = image.shape[:2]
        return [unrotate_face(f, k, w, h) for f in faces] if k else faces

    def run(self, image: np.ndarray, first: list[Face]) -> tuple[list[Face], str | None]:
        """(faces, the step that chose them) after a first pass that found `first`; ([], None) if none."""
        return decide(first, lambda k: self.look(image, k), self.usual, self.sure, self.full,
                      (lambda k: self.look(image, k, ENLARGE)) if self.full else None)


def _scaled(face: Face, s: float) -> Face:
    """A face found in an image resized by 1/s, in the image's own coordinates."""
    return Face(box=(face.box * s).astype(np.float32), landmarks=(face.landmarks * s).astype(np.float32),
                score=face.score)
