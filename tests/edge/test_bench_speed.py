"""`facegate bench speed`: per-stage report, both peers in the same run, synthetic door frames, fused cost."""

import json

import cv2
import numpy as np
import pytest

from edge.bench.frames import door_frame, door_frames, parse_size
from edge.cli import main
from edge.errors import ImageError
from edge.imageio import sample_images


def _bench(capsys, *argv) -> dict:
    code = main(["bench", "speed", *map(str, argv), "--json"])
    out = capsys.readouterr().out
    assert code == 0
    return json.loads(out)


def test_frame_sizes_are_parsed_and_bounded():
    assert parse_size("640x480") == (640, 480) and parse_size("1280X720") == (1280, 720)
    for bad in ("640", "axb", "10x10", "100000x480"):
        with pytest.raises(ImageError):
            parse_size(bad)


def test_door_frame_puts_the_portrait_at_a_door_cameras_scale():
    portrait = np.full((250, 250, 3), 200, np.uint8)
    background = np.zeros((250, 250, 3), np.uint8)
    frame = door_frame(portrait, background, (640, 480), np.random.default_rng(0))
    assert frame.shape == (480, 640, 3)
    bright = np.argwhere(frame.mean(axis=2) > 150)
    side = bright.max(axis=0) - bright.min(axis=0) + 1
    # The pasted photo is (face share 0.45) → face 10–30 % of 480 px: the photo 107–320 px on a side.
    assert 100 <= side[0] <= 330 and abs(side[0] - side[1]) <= 2


def test_door_frames_are_jpeg_and_deterministic(lfw):
    paths = sample_images(lfw / "images", 3)
    a, b = door_frames(paths, (320, 240), seed=3), door_frames(paths, (320, 240), seed=3)
    assert a == b and len(a) == 3
    assert cv2.imdecode(np.frombuffer(a[0], np.uint8), cv2.IMREAD_COLOR).shape == (240, 320, 3)


@pytest.mark.bench
def test_frames_mode_reports_every_stage_and_the_detector_policy(capsys, lfw):
    data = _bench(capsys, "--images", lfw / "images", "--limit", 3, "--frames", "640x480", "--no-peers")
    assert data["workload"] == {"kind": "door frames", "size": "640x480", "images": 3}
    stages = data["stages_ms"]
    assert stages["decode"] > 0 and stages["detect"] > 0
    assert data["model"] == "sface-int8" and stages["embed"]["sface-int8"] > 0 and stages["align"]["sface-int8"] > 0
    policy = data["detector_policy"]
    assert policy["input"].startswith("320x240") and policy["native_input"] == "640x480"
    assert policy["frames_with_a_face"] == {"policy": 3, "native": 3}
    assert data["ours_ms"] >= stages["detect"] and data["ratios"] == {"naive": None, "face_recognition": None}
    assert data["machine"]["cores"] >= 1 and data["machine"]["host"]["probe_ms"]["start"] > 0
    # Door frames are frames: the rescue (photos by default) spares them; its cost on empty frames is reported.
    rescue = data["rescue"]
    assert rescue["mode"] == "photos" and rescue["steps"] == {}
    empty = rescue["empty_frames"]
    assert empty["frames"] == 3 and empty["frame_size"] == [640, 480]
    assert empty["with_rescue_ms"] > empty["first_pass_ms"] > 0 and empty["first_pass_frames_with_a_face"] == 0


@pytest.mark.bench
def test_fusion_adds_the_second_embedders_cost_and_its_ratios(capsys, lfw):
    pytest.importorskip("dlib", reason="the face_recognition peer needs dlib-bin (dev extra)")
    data = _bench(capsys, "--images", lfw / "images", "--limit", 3, "--fusion-embedders", "sface")
    assert data["fusion"] == ["sface-int8", "sface"]
    assert data["ours_fused_ms"] > data["ours_ms"] > 0
    assert set(data["ratios"]) >= {"naive", "naive_fused", "face_recognition", "face_recognition_fused"}
    assert data["ratios"]["naive_fused"] < data["ratios"]["naive"]
    assert data["naive_ms"] > 0 and set(data["no_face"]) == {"ours", "naive", "face_recognition"}


def test_threads_reach_every_onnxruntime_session(capsys, lfw):
    """--threads is the intra-op thread count of our sessions (and the naive peer's), reported in the JSON."""
    from edge.bench import speed

    data = _bench(capsys, "--images", lfw / "images", "--limit", 2, "--no-peers", "--threads", 2)
    assert data["threads"] == 2
    seen = []
    real = speed.FacePipeline

    def spy(*args, **kwargs):
        seen.append(kwargs.get("threads"))
        return real(*args, **kwargs)

    speed.FacePipeline = spy
    try:
        speed.run(lfw / "images", limit=1, peers=False, threads=3)
    finally:
        speed.FacePipeline = real
    assert seen == [3]


def test_unreadable_files_in_the_folder_are_skipped_and_counted(tmp_path, lfw):
    """An empty .jpg and a PNG whose header promises 10^10 pixels: OpenCV returns None for one and raises for
    the other; the bench times the rest and says how many it skipped."""
    import shutil
    import struct
    import zlib

    from edge.bench import speed

    shutil.copy(lfw / "images/Colin_Powell/Colin_Powell_0038.jpg", tmp_path / "a.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0))
    body = chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")
    (tmp_path / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + header + body)
    result = speed.run(tmp_path, limit=10, peers=False)
    assert (result["images"], result["undecodable"]) == (1, 2)
