import numpy as np
import pytest

from edge.models.manifest import AlignmentTemplate
from edge.vision.align import align, similarity_transform

ARCFACE = AlignmentTemplate(size=(112, 112), points=(
    (38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655), (70.7299, 92.2041)))


def test_pure_translation():
    src = np.array([[0, 0], [10, 0], [5, 5], [0, 10], [10, 10]], float)
    m = similarity_transform(src, src + np.array([3.0, -2.0]))
    np.testing.assert_allclose(m, [[1, 0, 3], [0, 1, -2]], atol=1e-9)


def test_rotation_90_scale_2_by_hand():
    # x' = 2·(−y) + 1, y' = 2·x + 4: rotation by +90°, scale 2, translation (1, 4).
    src = np.array([[0, 0], [1, 0], [0, 1], [2, 3]], float)
    dst = np.stack([-2 * src[:, 1] + 1, 2 * src[:, 0] + 4], axis=1)
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(m, [[0, -2, 1], [2, 0, 4]], atol=1e-9)


def test_least_squares_excludes_reflection():
    src = np.array([[0, 0], [4, 0], [1, 2], [0, 5], [3, 6]], float)
    mirrored = src * [-1, 1]  # a reflection: a similarity cannot produce it
    m = similarity_transform(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0


def test_recovers_known_transform_from_noisy_points():
    rng = np.random.default_rng(0)
    angle, scale, t = 0.3, 0.7, np.array([20.0, -5.0])
    r = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = rng.uniform(0, 200, (5, 2))
    dst = src @ r.T + t
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(m[:, :2], r, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], t, atol=1e-9)


def test_rejects_mismatched_points():
    with pytest.raises(ValueError):
        similarity_transform(np.zeros((5, 2)), np.zeros((4, 2)))


def test_align_puts_landmarks_on_template():
    # Draw five bright dots at landmark positions in a big image; after alignment they sit on the template.
    img = np.zeros((400, 300, 3), np.uint8)
    lm = np.array([[100, 150], [180, 140], [145, 195], [110, 240], [175, 232]], float)
    for x, y in lm:
        img[int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2] = 255
    crop = align(img, lm, ARCFACE)
    assert crop.shape == (112, 112, 3)
    m = similarity_transform(lm, np.array(ARCFACE.points))
    for x, y in lm @ m[:, :2].T + m[:, 2]:
        window = crop[round(y) - 2:round(y) + 3, round(x) - 2:round(x) + 3]
        assert window.max() > 100


def _umeyama_svd(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Umeyama's SVD route (reflection excluded), the reference the closed form must reproduce."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    sign = np.diag([1.0, -1.0 if np.linalg.det(u) * np.linalg.det(vt) < 0 else 1.0])
    rot = u @ sign @ vt
    scale = (sig * np.diag(sign)).sum() / ((s ** 2).sum() / len(src))
    return np.hstack([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]])


def test_closed_form_equals_the_svd_route():
    rng = np.random.default_rng(1)
    for i in range(300):
        n = int(rng.integers(2, 69))  # five landmarks, dlib's 68, and the two-point minimum
        src = rng.uniform(-50, 250, (n, 2))
        dst = rng.uniform(0, 112, (n, 2)) if i % 3 == 0 else src * [-1 if i % 3 == 1 else 1, 1] * 0.4 \
            + rng.normal(0, 3, (n, 2))  # unrelated points, mirrored ones, and a noisy similarity
        np.testing.assert_allclose(similarity_transform(src, dst), _umeyama_svd(src, dst), atol=1e-9, rtol=1e-9)
    same = np.ones((5, 2))  # degenerate: all source points equal → identity plus shift, as before
    np.testing.assert_allclose(similarity_transform(same, same + 2), [[1, 0, 2], [0, 1, 2]])
