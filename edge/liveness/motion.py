"""The planar-motion check: does the face region move as one plane (a photo, a screen) or not (a head)?

Corners are found in the face box (cv2.goodFeaturesToTrack), kept only where the tracker's own window sees
gradients in two directions (`well_conditioned`: a point on an edge slides along it), followed frame to frame
with pyramidal Lucas–Kanade (cv2.calcOpticalFlowPyrLK, kept only when tracking back lands where it started), and a
homography is fitted with RANSAC between the points where they started and where they are now
(cv2.findHomography). Every view of a plane is a homography of every other view, so a photo or a screen,
however it is tilted, bent by perspective or moved, leaves almost every point within a pixel or two of the fit.
The points of a turning head do not: the nose, the cheeks and the ears sit at different depths, and rotation
moves them by different amounts (parallax).

Each frame, judged from where the points began to where they are now (thresholds relative to the face width):
- planar (True): ≥ `PLANAR_SHARE` of the points within `TOLERANCE` of the homography, the best affine fit
  foreshortened by ≥ `MIN_TILT` (the plane turned in depth) and ≥ `PLANAR_MOTION` of movement;
- not planar (False): fewer than `PLANAR_SHARE` within the tolerance, after ≥ `MIN_MOTION` of movement;
- None otherwise — in particular a plane that only moved sideways or nearer, which a head does too.
The limits come from geometry (LK errs by a fraction of a pixel; a 20° turn moves the nose tip about 0.07 face
widths off any plane through the cheeks; a plane turned by θ is foreshortened by 1 − cos θ), adjusted on
synthetic development clips; docs/liveness.md gives the figures and which faces and seeds the tests keep apart.

Limits (it answers only "rigid plane or not"): a bent or folded print, a photo with the face cut out in front
of a real background, or a screen replaying a video of a turning head all move non-planarly and pass this
check. It is one signal among the passive nets and the challenge, not a detector of attacks by itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

# Geometry-derived settings (see the module docstring); all relative to the face width so that they hold at
# any distance from the camera.
TOLERANCE = 0.02  # RANSAC reprojection threshold: 2 % of the face width (3 px on a 150 px face)
MIN_TOLERANCE_PX = 1.0  # LK is not better than this on small faces
MIN_MOTION = 0.06  # displacement (90th percentile) before "not planar": 6 % of the face width, 3× the tolerance
PLANAR_MOTION = 0.1  # … and before "planar": at small motions anything is nearly a homography
PLANAR_SHARE = 0.85  # ≥ 85 % of the points on one homography: planar
MIN_TILT = 0.05  # planar needs the plane to have turned: 1 - cos 18° of foreshortening
MIN_POINTS = 12  # fewer tracked points: no verdict
MAX_POINTS = 120
# Smaller / larger eigenvalue of the gradients' structure tensor over the tracking window, below which a point
# lies on an edge: Lucas–Kanade then recovers only the motion across the edge, and the point lags along it
# frame after frame (the aperture problem) — on a turning photo, far off the plane's homography.
MIN_CONDITION = 0.1
CANDIDATES = 3  # corners asked for per point kept, so that the conditioning filter still leaves MAX_POINTS
FB_TOLERANCE = 0.004  # forward–backward tracking error that drops a point, in face widths (≥ 0.5 px)
WINDOW = (21, 21)
LCN_SIGMA = 4.0
PRE_BLUR = 2.5
ROI_MARGIN = 0.75  # the tracking region: the first face box grown by this much of its size on each side
INNER = 0.1  # the box shrunk by this much on each side: less background behind a real head


@dataclass(frozen=True)
class PlanarFit:
    points: int  # points tracked from the first frame to this one
    motion: float  # their displacement (90th percentile), in face widths
    inliers: float  # share within the tolerance of the best homography
    residual: float  # median reprojection error of all points under it, in face widths
    tilt: float  # foreshortening of the best affine fit: 1 - its smaller / larger stretch (0: none)
    planar: bool | None  # True: a plane that turned; False: not one plane; None: cannot say yet

    def to_dict(self) -> dict[str, object]:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def grey(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def contrast_normalised(grey_image: np.ndarray) -> np.ndarray:
    """Local contrast normalisation (subtract the local mean, divide by the local spread).

    Lucas–Kanade assumes each point keeps its brightness; a camera's auto-exposure, a screen's backlight and
    a print turned toward a lamp all change it from frame to frame. After this, a gain or offset that varies
    slowly across the image leaves the pattern the tracker follows unchanged.
    """
    # A light blur first: a screen's pixel grid aliases into moiré that does not move with the picture, and
    # the finest detail is where it lives.
    g = cv2.GaussianBlur(grey_image.astype(np.float32), (0, 0), PRE_BLUR)
    d = g - cv2.GaussianBlur(g, (0, 0), LCN_SIGMA)
    spread = np.sqrt(cv2.GaussianBlur(d * d, (0, 0), LCN_SIGMA)) + 4.0
    return cv2.convertScaleAbs(d / spread, alpha=40.0, beta=128.0)


def face_points(grey_image: np.ndarray, box: np.ndarray, max_points: int = MAX_POINTS) -> np.ndarray:
    """Good corners inside the face box's inner part, (N, 2) float32."""
    h, w = grey_image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    dx, dy = (x2 - x1) * INNER, (y2 - y1) * INNER
    mask = np.zeros((h, w), np.uint8)
    cv2.rectangle(mask, (max(0, int(x1 + dx)), max(0, int(y1 + dy))),
                  (min(w - 1, int(x2 - dx)), min(h - 1, int(y2 - dy))), 255, -1)
    # minDistance scales with the face so points spread over nose, cheeks and brow alike.
    spacing = max(3.0, (x2 - x1) / 30.0)
    pts = cv2.goodFeaturesToTrack(grey_image, max_points, 0.01, spacing, mask=mask, blockSize=5)
    return np.zeros((0, 2), np.float32) if pts is None else pts.reshape(-1, 2).astype(np.float32)


def well_conditioned(image: np.ndarray, points: np.ndarray, window: int = WINDOW[0],
                     min_condition: float = MIN_CONDITION) -> np.ndarray:
    """Which `points` (N, 2, pixel coordinates of `image`) the tracker can follow in both directions: a bool mask.

    The test is the one Lucas–Kanade's own equations pass or fail: the 2×2 matrix of summed gradient products
    over the tracking window must not be close to singular relative to its size (smaller / larger eigenvalue
    ≥ `min_condition`). goodFeaturesToTrack ranks by the smaller eigenvalue over a small block alone, which
    lets a strong edge through — the hairline or the jaw against the background — and on such a point the
    tracker slides along the edge as the picture turns.
    """
    if not len(points):
        return np.zeros(0, bool)
    h, w = image.shape[:2]
    # Only the part of the image the points' windows cover (the structure tensor of the whole region would
    # cost more than a frame of tracking).
    half = window // 2 + 2
    x0 = max(0, int(points[:, 0].min()) - half)
    y0 = max(0, int(points[:, 1].min()) - half)
    x1 = min(w, int(points[:, 0].max()) + half + 1)
    y1 = min(h, int(points[:, 1].max()) + half + 1)
    eig = cv2.cornerEigenValsAndVecs(image[y0:y1, x0:x1], window, 3)
    xi = np.clip(np.rint(points[:, 0]).astype(int) - x0, 0, x1 - x0 - 1)
    yi = np.clip(np.rint(points[:, 1]).astype(int) - y0, 0, y1 - y0 - 1)
    l1, l2 = eig[yi, xi, 0], eig[yi, xi, 1]  # OpenCV does not order the two
    large = np.maximum(l1, l2)
    return (large > 0) & (np.minimum(l1, l2) >= min_condition * large)


def planar_fit(start: np.ndarray, now: np.ndarray, face_width: float, tolerance: float = TOLERANCE,
               min_motion: float = MIN_MOTION, planar_share: float = PLANAR_SHARE, min_tilt: float = MIN_TILT,
               planar_motion: float = PLANAR_MOTION) -> PlanarFit:
    """Fit one homography start → now: did the points move as one plane that turned (True), not as one plane
    (False), or is it too early to say (None: too few points, too little motion, or a plane that only
    moved sideways or nearer, which a head does too)?"""
    n = len(start)
    width = max(float(face_width), 1.0)
    if n < MIN_POINTS:
        return PlanarFit(n, 0.0, 0.0, 0.0, 0.0, None)
    # The larger displacements: a turn about the face's own axis hardly moves its middle.
    motion = float(np.percentile(np.linalg.norm(now - start, axis=1), 90)) / width
    tilt = foreshortening(start, now)
    tol_px = max(MIN_TOLERANCE_PX, tolerance * width)
    h, _ = cv2.findHomography(start, now, cv2.RANSAC, tol_px, maxIters=2000, confidence=0.999)
    if h is None:  # degenerate (collinear points): nothing a plane explains
        return PlanarFit(n, motion, 0.0, 1.0, tilt, None if motion < min_motion else False)
    proj = cv2.perspectiveTransform(start.reshape(-1, 1, 2), h).reshape(-1, 2)
    err = np.linalg.norm(proj - now, axis=1)
    inliers = float(np.mean(err <= tol_px))
    residual = float(np.median(err)) / width
    planar: bool | None = None
    if motion >= min_motion:
        if inliers < planar_share:
            planar = False  # parallax: not one plane
        elif tilt >= min_tilt and motion >= planar_motion:
            planar = True  # one plane, and it turned: a picture tilted in front of the camera
        # else: one plane that only moved or scaled — a head does that too, so no verdict
    return PlanarFit(n, motion, inliers, residual, tilt, planar)


def foreshortening(start: np.ndarray, now: np.ndarray) -> float:
    """1 - (smaller / larger) singular value of the linear part of the affine map start → now.

    A picture turned by θ about an axis in its plane is compressed by cos θ across that axis (0.05 at 18°);
    moving it sideways, nearer or rolling it compresses nothing.
    """
    a = start - start.mean(0)
    b = now - now.mean(0)
    lin, *_ = np.linalg.lstsq(a, b, rcond=None)
    sv = np.linalg.svd(lin, compute_uv=False)
    return float(1.0 - sv[1] / sv[0]) if sv[0] > 0 else 0.0


class PointTracker:
    """Points of one face followed from a first frame; `fit()` compares where they are with where they began.

    Work happens in a fixed region around the first face box (the face may move within it), so the cost does
    not grow with the camera's resolution.
    """

    def __init__(self, first: np.ndarray, box: np.ndarray) -> None:
        g = grey(first)
        h, w = g.shape[:2]
        x1, y1, x2, y2 = (float(v) for v in box)
        mx, my = (x2 - x1) * ROI_MARGIN, (y2 - y1) * ROI_MARGIN
        self.roi = (max(0, int(x1 - mx)), max(0, int(y1 - my)), min(w, int(x2 + mx) + 1), min(h, int(y2 + my) + 1))
        self.offset = np.array(self.roi[:2], np.float32)
        self.width = x2 - x1
        self.prev = self._prepare(g)
        # Conditioning is judged on the image the tracker follows (blurred, contrast-normalised), not the raw one.
        candidates = face_points(g, box, MAX_POINTS * CANDIDATES)
        keep = well_conditioned(self.prev, candidates - self.offset)
        self.start = candidates[keep][:MAX_POINTS]  # goodFeaturesToTrack returns the strongest first
        self.now = self.start.copy()
        self.lost = 0

    def _prepare(self, g: np.ndarray) -> np.ndarray:
        x0, y0, x1, y1 = self.roi
        return contrast_normalised(g[y0:y1, x0:x1])

    @property
    def alive(self) -> int:
        return len(self.now)

    def update(self, image: np.ndarray, box: np.ndarray | None = None) -> int:
        """Follow the points into `image`; returns how many are still tracked."""
        if box is not None:
            self.width = float(box[2] - box[0])
        cur = self._prepare(grey(image))
        if len(self.now):
            p0 = (self.now - self.offset).reshape(-1, 1, 2)
            p1, st1, _ = cv2.calcOpticalFlowPyrLK(self.prev, cur, p0, None, winSize=WINDOW, maxLevel=3)
            back, st2, _ = cv2.calcOpticalFlowPyrLK(cur, self.prev, p1, None, winSize=WINDOW, maxLevel=3)
            # Forward–backward consistency: a point that does not track back to itself was lost or occluded.
            fb = np.linalg.norm(back.reshape(-1, 2) - p0.reshape(-1, 2), axis=1)
            keep = (st1.reshape(-1) == 1) & (st2.reshape(-1) == 1) & (fb < max(0.5, FB_TOLERANCE * self.width))
            self.lost += int((~keep).sum())
            self.start, self.now = self.start[keep], p1.reshape(-1, 2)[keep] + self.offset
        self.prev = cur
        return self.alive

    def fit(self) -> PlanarFit:
        return planar_fit(self.start, self.now, self.width)


def assess_clip(frames: list[np.ndarray], box: np.ndarray, boxes: list[np.ndarray] | None = None) -> PlanarFit:
    """Track the face region of `frames[0]` (box) through the clip and judge it as the challenge does.

    The first frame at which the region is a turned plane decides (planar); otherwise the non-planar fit of
    largest motion; otherwise the last fit (no verdict). `boxes`, when given, update the face width per frame.
    """
    tracker = PointTracker(frames[0], box)
    best: PlanarFit | None = None
    fit = tracker.fit()
    for i, frame in enumerate(frames[1:], start=1):
        tracker.update(frame, None if boxes is None else boxes[i])
        fit = tracker.fit()
        if fit.planar is True:
            return fit
        if fit.planar is False and (best is None or fit.motion > best.motion):
            best = fit
    return best if best is not None else fit
