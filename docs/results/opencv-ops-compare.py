"""Which OpenCV calls the planar-motion check and its simulator use give different results in 4.x and 5.x?

    python3 docs/results/opencv-ops-compare.py OUT.npz      # once per OpenCV version (e.g. two venvs)
    python3 docs/results/opencv-ops-compare.py A.npz B.npz  # compare

Each call runs on the same inputs (the T1 sample, a fixed random generator). The second image of the LK call
is loaded from the first run's side file (OUT.npz.lk-input.npy; copy it beside the second OUT), so that a warp
difference does not leak into it.
"""

import os
import sys

import cv2
import numpy as np


def run(out: str) -> None:
    rng = np.random.default_rng(0)
    img = cv2.imread(os.path.join(os.environ.get("FACEGATE_DATA", "../shared"), "liveness", "image_T1.jpg"))
    res: dict[str, np.ndarray] = {"imread": img}
    res["resize_cubic"] = cv2.resize(rng.integers(40, 200, (40, 30, 3), dtype=np.uint8), (480, 640),
                                     interpolation=cv2.INTER_CUBIC)
    h = np.array([[0.9, 0.05, 20], [-0.03, 0.85, 30], [1e-4, -5e-5, 1.0]])
    res["warpPerspective_linear"] = cv2.warpPerspective(img, h, (480, 640), flags=cv2.INTER_LINEAR)
    res["warpPerspective_nearest"] = cv2.warpPerspective(np.full((640, 480), 255, np.uint8), h, (480, 640),
                                                         flags=cv2.INTER_NEAREST)
    g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    a = np.float32([[1, 0.02, 3.3], [-0.02, 1, 1.7]])
    res["warpAffine_linear"] = cv2.warpAffine(g, a, (480, 640))
    res["gaussian_blur"] = cv2.GaussianBlur(g.astype(np.float32), (0, 0), 2.5)
    pts = cv2.goodFeaturesToTrack(g, 120, 0.01, 6.0, blockSize=5)
    res["goodFeaturesToTrack"] = pts
    try:  # the same second image in both runs
        g2 = np.load(out + ".lk-input.npy")
    except FileNotFoundError:
        g2 = res["warpAffine_linear"]
    p1, st, _ = cv2.calcOpticalFlowPyrLK(g, g2, pts, None, winSize=(21, 21), maxLevel=3)
    res["calcOpticalFlowPyrLK"], res["lk_status"] = p1, st
    s = rng.uniform(0, 400, (100, 2)).astype(np.float32)
    n = cv2.perspectiveTransform(s.reshape(-1, 1, 2), h).reshape(-1, 2) + rng.normal(0, 1, (100, 2)).astype(np.float32)
    n[:30] += rng.normal(0, 10, (30, 2)).astype(np.float32)
    hom, mask = cv2.findHomography(s, n, cv2.RANSAC, 3.0, maxIters=2000, confidence=0.999)
    res["findHomography"], res["ransac_inliers"] = hom, mask
    np.savez(out, **res)
    np.save(out + ".lk-input.npy", g2)


def compare(a: str, b: str) -> None:
    x, y = np.load(a), np.load(b)
    for k in x.files:
        d = np.abs(x[k].astype(float) - y[k].astype(float))
        print(f"{k:26s} max |diff| {d.max():.3g}   differing {np.mean(d > 0):.2%}")


if __name__ == "__main__":
    run(sys.argv[1]) if len(sys.argv) == 2 else compare(sys.argv[1], sys.argv[2])
