"""The wild development set (edge/eval/wild.py, `facegate data wild`) and the face-choice rule on two-face
images, with real LFW portraits and the real detector."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edge.errors import FacegateError
from edge.eval import wild
from edge.vision.detect import Face, select_face


def _face(cx: float, cy: float, size: float, score: float = 0.9) -> Face:
    h = size / 2
    return Face(box=np.array([cx - h, cy - h, cx + h, cy + h]), landmarks=np.zeros((5, 2)), score=score)


def test_best_rule_weighs_size_position_and_confidence():
    shape = (480, 640, 3)
    subject, bystander = _face(200, 240, 90), _face(320, 240, 50)  # a small face nearer the centre
    assert select_face([subject, bystander], shape, "central") is bystander
    assert select_face([subject, bystander], shape, "best") is subject
    subject, bystander = _face(330, 250, 80), _face(80, 60, 100)  # a larger face in a corner
    assert select_face([subject, bystander], shape, "largest") is bystander
    assert select_face([subject, bystander], shape, "best") is subject
    # A false box: as large and as central as the face, but the detector hardly believes it.
    face, false_box = _face(300, 240, 60, 0.92), _face(340, 240, 64, 0.35)
    assert select_face([face, false_box], shape, "best") is face
    assert select_face([false_box, face], shape, "largest") is false_box


def _two_faces(lfw, subject: tuple, bystander: tuple) -> np.ndarray:
    """A 640×480 scene: a bystander (another person) behind the subject, each (face px, centre x, centre y)."""
    from edge.imageio import load_bgr

    canvas = np.full((480, 640, 3), 100, np.uint8)
    for rel, (px, x, y) in (("Abdullah_Gul/Abdullah_Gul_0001.jpg", bystander),
                            ("Aaron_Eckhart/Aaron_Eckhart_0001.jpg", subject)):
        patch, mask, anchor = wild.head_patch(load_bgr(lfw / "images" / rel), px, 0.0)
        wild.paste(canvas, patch, mask, (x, y), anchor)
    return canvas


@pytest.mark.parametrize(("subject", "bystander", "wrong"), [
    ((110, 200, 260), (60, 330, 230), "central"),  # bystander small but nearer the centre
    ((90, 330, 250), (120, 90, 90), "largest"),  # bystander larger, in a corner
])
def test_best_rule_picks_the_subject_on_a_two_face_photo(lfw, pipeline, subject, bystander, wrong):
    image = _two_faces(lfw, subject, bystander)
    faces = pipeline.detect(image)
    assert len(faces) == 2

    def is_subject(f: Face) -> bool:
        return wild.chose_subject({"face_centre": subject[1:], "face_px": subject[0]}, f.box)

    assert sum(is_subject(f) for f in faces) == 1
    assert is_subject(select_face(faces, image.shape, "best"))
    assert not is_subject(select_face(faces, image.shape, wrong))


def test_scene_is_deterministic_and_records_the_subject(lfw):
    pool = sorted(str(p.relative_to(lfw / "images")) for p in (lfw / "images").glob("Ab*/*_0001.jpg"))
    rel = pool[0]
    a, info = wild.scene(rel, 7, lfw / "images", pool, wild.WildParams())
    b, _ = wild.scene(rel, 7, lfw / "images", pool, wild.WildParams())
    c, _ = wild.scene(rel, 8, lfw / "images", pool, wild.WildParams())
    assert a == b and a != c
    assert 24 <= info["face_px"] <= 80 and abs(info["tilt_deg"]) <= 30
    w, h = info["scene"]
    assert 480 <= max(w, h) <= 960
    x, y = info["face_centre"]
    assert 0.2 * w <= x <= 0.8 * w and 0.2 * h <= y <= 0.8 * h


def test_build_writes_a_set_bench_pairs_reads(lfw, tmp_path, pipeline):
    from edge.eval import pairs

    out = tmp_path / "wild"
    r = wild.build(lfw / "images", out, seed=3, limit=3)
    assert r["images"] == len(list((out / "images").glob("*/*.jpg"))) > 0
    assert (out / "pairsDevTrain.txt").read_text().splitlines()[0] == "3"
    manifest = json.loads((out / wild.MANIFEST).read_text())
    assert set(manifest["truth"]) == {str(p.relative_to(out / "images")) for p in (out / "images").glob("*/*")}
    # Same seed, same files, whatever else was built before.
    again = wild.build(lfw / "images", tmp_path / "again", seed=3, limit=3)
    assert again["images"] == r["images"]
    for f in (out / "images").glob("*/*.jpg"):
        assert f.read_bytes() == (tmp_path / "again" / "images" / f.relative_to(out / "images")).read_bytes()
    # An existing set is not overwritten without force, and nothing half-built is left beside it.
    with pytest.raises(FacegateError, match="already exists"):
        wild.build(lfw / "images", out, seed=4, limit=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "wild"]
    # The pairs benchmark runs on it unchanged and says how often it chose the subject.
    result = pairs.run(out / "images", out / "pairsDevTest.txt", pipeline, policy="best")
    assert result["pairs"] == 6 and result["folds"] == 6  # a View-1 file: interleaved folds (here all 6 pairs)
    assert 0.0 <= result["subject_chosen"] <= 1.0 and "several_faces" in result


def test_view2_is_refused(lfw, tmp_path):
    with pytest.raises(FacegateError, match="View 2"):
        wild.build(lfw / "images", tmp_path / "w", pairs_files=[lfw / "pairs.txt"])
    assert not (tmp_path / "w").exists()


def test_missing_image_is_an_error_not_a_half_set(lfw, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(lfw / "images" / "Aaron_Eckhart", images / "Aaron_Eckhart")
    pairs = tmp_path / "pairsDevTrain.txt"
    pairs.write_text("1\nAaron_Eckhart\t1\t2\nAaron_Eckhart\t1\tAbdullah_Gul\t1\n")
    with pytest.raises(FacegateError, match="missing"):
        wild.build(images, tmp_path / "w", pairs_files=[pairs])
    assert not (tmp_path / "w").exists()


def test_cli_data_wild(lfw, tmp_path, capsys):
    from edge.cli import main

    out = tmp_path / "w"
    assert main(["data", "wild", "--images", str(lfw / "images"), "--out", str(out), "--seed", "1", "--limit", "2",
                 "--sheet", str(tmp_path / "sheet.png"), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["seed"] == 1 and r["pairs"] == {"pairsDevTrain.txt": 4, "pairsDevTest.txt": 4}
    assert (tmp_path / "sheet.png").stat().st_size > 1000
    assert main(["data", "wild", "--images", str(lfw / "images"), "--out", str(out), "--seed", "1"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["data", "wild", "--images", str(lfw / "images"), "--pairs", str(lfw / "pairs.txt"),
                 "--out", str(tmp_path / "v2")]) == 2
    assert "View 2" in capsys.readouterr().err
