import numpy as np
import pytest

from edge.errors import ManyFacesError, NoFaceError
from edge.vision.detect import Face, detection_scale, select_face
from edge.vision.yunet import decode, nms


def _raw(h: int, w: int) -> dict[str, np.ndarray]:
    out = {}
    for s in (8, 16, 32):
        n = (h // s) * (w // s)
        out[f"cls_{s}"] = np.zeros((1, n, 1), np.float32)
        out[f"obj_{s}"] = np.zeros((1, n, 1), np.float32)
        out[f"bbox_{s}"] = np.zeros((1, n, 4), np.float32)
        out[f"kps_{s}"] = np.zeros((1, n, 10), np.float32)
    return out


def test_decode_one_anchor_by_hand():
    raw = _raw(64, 64)
    # stride 16 → 4 columns; cell (row 2, col 3) is index 11.
    raw["cls_16"][0, 11, 0] = 0.81
    raw["obj_16"][0, 11, 0] = 1.0
    raw["bbox_16"][0, 11] = [0.5, 0.25, np.log(2.0), np.log(3.0)]
    raw["kps_16"][0, 11] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    boxes, kps, scores = decode(raw, (64, 64), (8, 16, 32), 0.5)
    assert scores.tolist() == pytest.approx([0.9])  # sqrt(0.81 · 1.0)
    # centre ((3 + 0.5)·16, (2 + 0.25)·16) = (56, 36); size (2·16, 3·16) = (32, 48)
    np.testing.assert_allclose(boxes[0], [40, 12, 72, 60], atol=1e-4)
    np.testing.assert_allclose(kps[0, 0], [(3 + 0.1) * 16, (2 + 0.2) * 16], atol=1e-4)
    np.testing.assert_allclose(kps[0, 4], [(3 + 0.9) * 16, (2 + 1.0) * 16], atol=1e-4)


def test_decode_threshold_and_clipping():
    raw = _raw(32, 32)
    raw["cls_8"][0, 0, 0] = 1.5  # out-of-range probabilities are clipped to [0, 1]
    raw["obj_8"][0, 0, 0] = 0.25
    _, _, scores = decode(raw, (32, 32), (8, 16, 32), 0.6)
    assert scores.size == 0
    _, _, scores = decode(raw, (32, 32), (8, 16, 32), 0.5)
    assert scores.tolist() == pytest.approx([0.5])


def test_nms_keeps_best_of_overlapping():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], float)
    scores = np.array([0.8, 0.9, 0.7])
    assert nms(boxes, scores, 0.3, 10).tolist() == [1, 2]


def test_detection_scale_rule():
    assert detection_scale(250, 250, 40, 20, 320) == 1.0  # never enlarges
    assert detection_scale(4000, 3000, 40, 20, 320) == pytest.approx(0.5)  # 40 px faces kept at 20 px
    assert detection_scale(500, 400, 80, 20, 320) == pytest.approx(320 / 500)  # floor on the longer side


def _face(x: float, y: float, size: float) -> Face:
    return Face(box=np.array([x, y, x + size, y + size]), landmarks=np.zeros((5, 2)), score=0.9)


def test_selection_policies():
    faces = [_face(0, 0, 80), _face(90, 90, 40)]
    assert select_face(faces, (220, 220, 3), "largest") is faces[0]
    assert select_face(faces, (220, 220, 3), "central") is faces[1]
    with pytest.raises(ManyFacesError):
        select_face(faces, (220, 220, 3), "single")
    with pytest.raises(NoFaceError):
        select_face([], (10, 10, 3), "largest")


def test_matches_opencv_yunet_on_real_images(lfw, pipeline):
    """Our decode of the prepared graph agrees with OpenCV's own YuNet implementation on the shipped file."""
    import cv2

    from edge.imageio import load_bgr

    det_path = pipeline.registry.verify(pipeline.detector.manifest)
    ref = cv2.FaceDetectorYN.create(str(det_path), "", (250, 250), 0.6, 0.3, 5000)
    images = sorted((lfw / "images").glob("B*/*_0001.jpg"))[:15]
    compared = 0
    for path in images:
        img = load_bgr(path)
        ours = sorted(pipeline.detect(img), key=lambda f: f.box[0])
        _, rows = ref.detect(img)
        min_px = pipeline.detector.min_face_px  # we drop faces below the configured size; compare like for like
        rows = [] if rows is None else sorted((r for r in rows if max(r[2], r[3]) >= min_px), key=lambda r: r[0])
        assert len(ours) == len(rows), path
        for f, r in zip(ours, rows, strict=True):
            np.testing.assert_allclose(f.box[:2], r[:2], atol=0.05)
            np.testing.assert_allclose(f.landmarks.ravel(), r[4:14], atol=0.05)
            assert f.score == pytest.approx(r[14], abs=1e-3)
            compared += 1
    assert compared >= 15


def test_small_face_in_large_photo_is_found(lfw, pipeline):
    """A 250-px LFW portrait pasted into a 4000×3000 canvas: detection runs scaled, the face is still found."""
    from edge.imageio import load_bgr

    img = load_bgr(lfw / "images" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg")
    canvas = np.full((3000, 4000, 3), 127, np.uint8)
    canvas[2000:2250, 3000:3250] = img
    faces = pipeline.detect(canvas)
    assert len(faces) >= 1
    cx = (faces[0].box[0] + faces[0].box[2]) / 2
    assert 3000 < cx < 3250
