"""The rescue pass (edge/vision/rescue.py): turned and tiny faces found through the real pipeline, landmarks
mapped back exactly, nothing spent when the first pass is sure, camera frames spared unless configured."""

from __future__ import annotations

import numpy as np
import pytest

from edge.vision.detect import Face
from edge.vision.rescue import Rescue, decide, unrotate


@pytest.mark.parametrize("k", [1, 2, 3])
def test_unrotate_maps_a_pixel_of_the_turned_image_back(k):
    img = np.zeros((30, 50), np.uint8)
    img[7, 41] = 255  # (x 41, y 7)
    turned = np.rot90(img, k)
    y, x = np.argwhere(turned == 255)[0]
    back = unrotate(np.array([[x + 0.5, y + 0.5]]), k, width=50, height=30)  # pixel centres
    np.testing.assert_allclose(back[0], [41.5, 7.5])


def _f(score: float, x: float = 0.0) -> Face:
    return Face(box=np.array([x, 0, x + 50, 50], np.float32), landmarks=np.zeros((5, 2), np.float32), score=score)


def test_decide_steps_in_order():
    views = {0: [_f(0.95)], 1: [_f(0.97)], 2: [], 3: []}
    # Nothing in the first pass, a sure face at full resolution: taken without turning the image.
    looked: list[int] = []

    def look(k: int) -> list[Face]:
        looked.append(k)
        return views[k]

    faces, step = decide([], look, usual=0.6, sure=0.9, full=True)
    assert step == "full" and faces == [views[0][0]] and looked == [0]
    # An unsure upright face (a turned face misread): the turns are checked and the better one wins.
    faces, step = decide([_f(0.7)], lambda k: views[k] if k else [], usual=0.6, sure=0.9, full=True)
    assert step == "rotated" and faces[0] is views[1][0]
    # An unsure upright face no turn beats is kept.
    first = [_f(0.8)]
    faces, step = decide(first, lambda k: [] if k else first, usual=0.6, sure=0.9, full=True)
    assert step == "kept" and faces[0] is first[0]
    # Only faces under the usual threshold anywhere: the best orientation's, as the last resort.
    low = {0: [_f(0.35)], 1: [_f(0.45)], 2: [], 3: []}
    faces, step = decide([], lambda k: low[k], usual=0.6, sure=0.9, full=True)
    assert step == "low_score" and faces[0] is low[1][0]
    assert decide([], lambda k: [], usual=0.6, sure=0.9, full=True) == ([], None)
    # Nothing at all at the image's size: the enlarged image's best orientation, the last resort.
    big = {0: [], 1: [], 2: [_f(0.7)], 3: [_f(0.4)]}
    faces, step = decide([], lambda k: [], usual=0.6, sure=0.9, full=True, enlarged=lambda k: big[k])
    assert step == "enlarged" and faces[0] is big[2][0]
    assert decide([], lambda k: [], usual=0.6, sure=0.9, full=True, enlarged=lambda k: []) == ([], None)


class CountingDetector:
    """A detector offering full resolution that counts what the rescue asks of it."""

    min_face_px = 40.0
    score_threshold = 0.6
    sure_score = 0.9
    rescue_score_threshold = 0.3
    detector_min_px = 20.0

    def __init__(self, first: list[Face]) -> None:
        self.first, self.full_calls = first, 0

    def detect(self, image: np.ndarray) -> list[Face]:
        return self.first

    def detect_full(self, image: np.ndarray, score_threshold: float) -> list[Face]:
        self.full_calls += 1
        return []


def test_rescue_costs_nothing_when_the_first_pass_is_sure():
    det = CountingDetector([_f(0.93)])
    rescue = Rescue(det)
    assert not rescue.needed(det.detect(np.zeros((8, 8, 3), np.uint8)))
    det = CountingDetector([])
    rescue = Rescue(det)
    assert rescue.needed([]) and rescue.needed([_f(0.7)])
    assert rescue.run(np.zeros((64, 48, 3), np.uint8), []) == ([], None)
    # Upright at full resolution, three turns, then the four orientations enlarged twice: no more.
    assert det.full_calls == 8


@pytest.fixture(scope="module")
def portrait(lfw):
    from edge.imageio import load_bgr

    return load_bgr(lfw / "images" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg")


@pytest.fixture(scope="module")
def pipelines():
    from edge.pipeline import FacePipeline

    return {mode: FacePipeline(rescue=mode) for mode in ("off", "photos", "always")}


@pytest.mark.parametrize("k", [1, 2, 3])
def test_turned_face_is_rescued_with_its_landmarks_mapped_back(portrait, pipelines, k):
    upright = pipelines["off"].detect(portrait)[0]
    reference = pipelines["off"].embed_faces(portrait, [upright])[0]
    turned = np.ascontiguousarray(np.rot90(portrait, k))
    # Without the rescue the turned face is missed, or "found" with landmarks drawn upright (a wrong crop).
    plain = pipelines["off"].detect(turned)
    if plain:
        assert float(pipelines["off"].embed_faces(turned, plain[:1])[0] @ reference) < 0.5
    pipe = pipelines["photos"]
    before = pipe.rescued.copy()
    faces = pipe.detect(turned)
    assert faces and sum((pipe.rescued - before).values()) == 1
    assert (pipe.rescued - before)["rotated"] == 1
    # The landmarks are where the upright face's landmarks went when the image was turned (YuNet's own
    # jitter is a pixel or two) …
    h, w = turned.shape[:2]
    expected = unrotate(upright.landmarks.astype(np.float64), 4 - k, w, h)
    np.testing.assert_allclose(faces[0].landmarks, expected, atol=4.0)
    # … so alignment turns the face upright and the embedding is the upright face's.
    assert float(pipe.embed_faces(turned, faces[:1])[0] @ reference) > 0.9


def _scene(portrait: np.ndarray, face_px: float, centre: tuple[float, float], angle: float = 0.0) -> np.ndarray:
    from edge.eval.wild import head_patch, paste

    canvas = np.full((480, 640, 3), 110, np.uint8)
    patch, mask, anchor = head_patch(portrait, face_px, angle)
    paste(canvas, patch, mask, centre, anchor)
    return canvas


def test_tiny_face_is_rescued_at_full_resolution(portrait, pipelines):
    scene = _scene(portrait, 28, (400, 200))
    assert pipelines["off"].detect(scene) == []  # under the 40-px floor, and 14 px at the reduced size
    pipe = pipelines["photos"]
    before = pipe.rescued.copy()
    faces = pipe.detect(scene)
    assert (pipe.rescued - before) == {"full": 1}
    cx, cy = (faces[0].box[0] + faces[0].box[2]) / 2, (faces[0].box[1] + faces[0].box[3]) / 2
    assert abs(cx - 400) < 8 and abs(cy - 200) < 8
    assert 20 <= faces[0].width <= 40


def test_face_under_the_detectors_size_is_found_enlarged(portrait, pipelines):
    scene = _scene(portrait, 14, (400, 200))  # under YuNet's 20 px even at full resolution
    pipe = pipelines["photos"]
    before = pipe.rescued.copy()
    faces = pipe.detect(scene)
    assert (pipe.rescued - before) == {"enlarged": 1}
    cx, cy = (faces[0].box[0] + faces[0].box[2]) / 2, (faces[0].box[1] + faces[0].box[3]) / 2
    assert abs(cx - 400) < 6 and abs(cy - 200) < 6  # mapped back to the image's own coordinates
    assert 10 <= faces[0].width <= 20


def test_frames_are_spared_unless_configured(portrait, pipelines):
    scene = _scene(portrait, 28, (400, 200))
    assert pipelines["photos"].detect(scene, frame=True) == []  # a door's frame: no rescue by default
    assert len(pipelines["always"].detect(scene, frame=True)) == 1
    assert pipelines["off"].detect(scene) == []


def test_sure_upright_face_costs_no_rescue(portrait, pipelines):
    pipe = pipelines["photos"]
    before = pipe.rescued.copy()
    assert pipe.detect(portrait)[0].score >= pipe.rescue.sure
    assert pipe.rescued == before


def test_bad_rescue_mode_is_refused():
    from edge.pipeline import FacePipeline

    with pytest.raises(ValueError, match="rescue"):
        FacePipeline(rescue="sometimes")
