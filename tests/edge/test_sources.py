"""Frame sources and the capture thread: image folders, video files, newest frame only, corrupt frames,
reconnection with back-off.

Timing is asserted on the frames' own capture times and counts, never on the test's wall clock: a loaded
machine delays the test thread and the capture thread independently. Every capture is stopped even when an
assertion fails, so no capture thread logs into a closed stream after its test."""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.config import CameraConfig, ConfigError
from edge.sources import Capture, CvSource, FolderSource, open_source


def _image(i: int) -> np.ndarray:
    img = np.full((120, 160, 3), 30 + 20 * i, np.uint8)
    cv2.putText(img, str(i), (50, 80), cv2.FONT_HERSHEY_SIMPLEX, 2, (255, 255, 255), 3)
    return img


@contextmanager
def capturing(source, **kw) -> Iterator[tuple[Capture, list]]:
    """A started Capture and the list of every frame it produced (in the capture thread, so none is missed
    however slow the consumer); stopped on exit, whatever happened."""
    produced: list = []
    cap = Capture(source, on_frame=produced.append, **kw).start()
    try:
        yield cap, produced
    finally:
        cap.stop()


def _drain(cap: Capture, slow_s: float = 0.0) -> list:
    frames = []
    while not cap.done:
        f = cap.get(timeout=2.0)
        if f is not None:
            frames.append(f)
            time.sleep(slow_s)
    return frames


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"img{i}.jpg"), _image(i))
    (tmp_path / "img1b.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "notes.txt").write_text("ignored")
    return tmp_path


def test_image_folder_shows_each_image_n_frames_and_skips_corrupt_ones(folder):
    with capturing(FolderSource(folder, fps=200, frames_per_image=4)) as (cap, produced):
        frames = _drain(cap)
    assert cap.stats.corrupt == 1 and cap.stats.produced == 12
    # Every frame the source produced, in order: each image 4 times, the corrupt one skipped as a whole.
    assert [Path(f.origin).name for f in produced] == [n for n in ("img0.jpg", "img1.jpg", "img2.jpg")
                                                       for _ in range(4)]
    assert [f.index for f in produced] == list(range(1, 13))
    assert cap.stats.delivered == len(frames) and cap.stats.delivered + cap.stats.dropped == cap.stats.produced
    ts = [f.t_capture for f in produced]
    assert ts == sorted(ts)


def test_folder_is_paced_at_the_frame_rate(folder):
    """The pacer never bursts: each frame's target time is at least one period after the previous one's, and a
    frame is never captured before its target. Only the first frame's lateness is unknown, and the pacer absorbs
    at most one period of it, so 15 frames at 50 fps span at least 12 periods by their own time stamps."""
    with capturing(FolderSource(folder, fps=50, frames_per_image=5)) as (cap, produced):
        _drain(cap)
    assert len(produced) == 15
    span = produced[-1].t_capture - produced[0].t_capture
    assert span >= (15 - 3) / 50


def test_newest_frame_only_no_backlog(folder):
    """A consumer slower than the source gets the newest frame each time; the ones in between are dropped."""
    with capturing(FolderSource(folder, fps=100, frames_per_image=20)) as (cap, _):
        frames = _drain(cap, slow_s=0.08)
    assert cap.stats.produced == 60
    gaps = np.diff([f.index for f in frames])
    assert gaps.max() > 1 and cap.stats.dropped > 20
    assert cap.stats.delivered + cap.stats.dropped == cap.stats.produced
    # Each frame handed out was the newest when taken: at most one frame period old.
    assert len(frames) < 30


def test_every_frame_replays_a_folder_without_dropping_for_a_slow_consumer(folder):
    """The same slow consumer as above, with camera.every_frame: the capture waits for it, so every frame the
    folder shows is handed out, in order, and none is dropped."""
    with capturing(FolderSource(folder, fps=100, frames_per_image=20), every_frame=True) as (cap, produced):
        frames = _drain(cap, slow_s=0.02)
    assert cap.stats.produced == 60 and cap.stats.dropped == 0 and cap.stats.delivered == 60
    assert [f.index for f in frames] == list(range(1, 61))
    assert [f.index for f in produced] == list(range(1, 61))


def test_every_frame_is_refused_for_a_live_source():
    with pytest.raises(ConfigError, match=r"camera\.every_frame"):
        Capture(FlakySource(), every_frame=True)


def _video(path: Path, n: int = 10, corrupt: int | None = None) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    for i in range(n):
        w.write(_image(i))
    w.release()
    if corrupt is not None:  # overwrite one frame's JPEG data inside the AVI with zeros
        data = bytearray(path.read_bytes())
        starts = [i for i in range(len(data) - 2) if data[i] == 0xFF and data[i + 1] == 0xD8 and data[i + 2] == 0xFF]
        a, b = starts[corrupt], starts[corrupt + 1]
        data[a:b - 8] = bytes(b - 8 - a)
        path.write_bytes(bytes(data))
    return path


def test_video_file_plays_every_frame(tmp_path):
    with capturing(CvSource(str(_video(tmp_path / "v.avi")), "file", fps=200)) as (cap, _):
        frames = _drain(cap)
    assert cap.stats.produced == 10 and cap.stats.corrupt == 0 and cap.finished
    assert frames[0].image.shape == (120, 160, 3)


def test_video_file_corrupt_frame_is_skipped_and_counted(tmp_path):
    with capturing(CvSource(str(_video(tmp_path / "v.avi", corrupt=5)), "file", fps=200)) as (cap, _):
        frames = _drain(cap)
    assert cap.stats.corrupt == 1 and cap.stats.produced == 9
    # The frame after the corrupt one is there: the file went on.
    assert abs(float(frames[-1].image.mean()) - float(_image(9).mean())) < 3


class FlakySource:
    """A source that fails to open twice, delivers 5 frames, is lost, then delivers again after reopening."""

    name = "flaky"
    live = True

    def __init__(self) -> None:
        self.opens: list[float] = []
        self.sent = 0

    def open(self) -> None:
        self.opens.append(time.monotonic())
        if len(self.opens) <= 2:
            raise OSError("device busy")

    def read(self):
        self.sent += 1
        if self.sent == 6:
            return None  # lost
        time.sleep(0.005)
        return _image(self.sent % 5), self.name

    def close(self) -> None:
        pass


def test_lost_source_reconnects_with_exponential_backoff():
    src = FlakySource()
    with capturing(src, reconnect_min_s=0.05, reconnect_max_s=1.0) as (cap, _):
        deadline = time.monotonic() + 5
        while cap.stats.produced < 8 and time.monotonic() < deadline:
            cap.get(timeout=0.5)
    # Every attempt after the first counts, failed or not: two retries before it opened, one after the loss.
    assert cap.stats.produced >= 8 and cap.stats.reconnects == 3
    gaps = np.diff(src.opens)
    assert gaps[0] >= 0.045 and gaps[1] >= 0.095  # 0.05 s, then doubled
    assert gaps[2] >= 0.045  # after a loss the back-off starts again from the minimum


def test_a_source_that_cannot_be_opened_is_unhealthy_not_fatal():
    """A camera (or RTSP stream) that keeps failing is unhealthy, retried for ever, and every retry is counted
    (facegate_source_reconnects_total), so a dashboard sees it failing rather than a flat zero."""
    with capturing(CvSource("/dev/video97", "device"), reconnect_min_s=0.05, reconnect_max_s=0.1) as (cap, _):
        assert wait_until(lambda: cap.stats.reconnects >= 3, 5)
        assert not cap.connected and cap.last_error and not cap.finished


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def test_open_source_reads_the_spec(tmp_path, folder):
    video = _video(tmp_path / "v.avi")
    kinds = {"0": "device", "/dev/video2": "device", "rtsp://cam.local/stream": "stream",
             "http://cam.local/mjpg": "stream", str(video): "file"}
    for spec, kind in kinds.items():
        src = open_source(CameraConfig(source=spec))
        assert isinstance(src, CvSource) and src.kind == kind, spec
    assert isinstance(open_source(CameraConfig(source=str(folder))), FolderSource)
    with pytest.raises(ConfigError, match=r"camera\.source"):
        open_source(CameraConfig(source=str(tmp_path / "nothing-here")))
    with pytest.raises(ConfigError, match=r"camera\.fps"):
        open_source(CameraConfig(source=str(folder), fps=0))
