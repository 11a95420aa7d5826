"""Frame sources (V4L2 device, RTSP/HTTP stream, video file, image folder) and the capture thread.

The capture thread reads its source as fast as the source delivers and keeps only the newest frame: the
decision loop always works on the present, never on a backlog, and a frame it was too slow for is counted
as dropped. A file or folder may instead be replayed frame by frame (camera.every_frame): the capture waits
for the decision loop, so a recording gives the same frames to decide on however slow the host. A lost
device or stream is reopened with exponential backoff; a frame that fails to decode is skipped and counted.
Files and folders are paced at the configured rate, as a camera would deliver them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

import cv2
import numpy as np

from edge.config import CameraConfig, ConfigError
from edge.errors import ImageError
from edge.imageio import image_files, load_bgr

log = logging.getLogger(__name__)

STREAM_SCHEMES = {"rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt"}
# A file that fails this many reads in a row is treated as ended rather than retried for ever.
MAX_CORRUPT_RUN = 25


class CorruptFrame(Exception):
    """One frame could not be decoded; the source itself is still usable."""


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # BGR uint8 (H, W, 3); never written to after capture
    index: int  # 1-based count of frames the capture has produced
    t_capture: float  # time.monotonic() when the frame was read: the start of every latency
    origin: str  # the image path for folders, else the source's name


class Source(Protocol):
    name: str
    live: bool  # a device or stream: reconnect when lost; otherwise the end of a file is the end

    def open(self) -> None: ...

    def read(self) -> tuple[np.ndarray, str] | None:  # (frame, origin); None at the end or on loss
        ...

    def close(self) -> None: ...


class _Pacer:
    """Sleeps until the next frame time of a fixed rate; never bursts to catch up after a stall."""

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / fps if fps > 0 else 0.0
        self._next: float | None = None

    def wait(self) -> None:
        if not self.period:
            return
        now = time.monotonic()
        if self._next is None or self._next < now - self.period:
            self._next = now
        if self._next > now:
            time.sleep(self._next - now)
        self._next += self.period


class FolderSource:
    """Each image of a folder (recursively, in name order) shown for `frames_per_image` frames at `fps`."""

    live = False

    def __init__(self, root: Path, fps: float, frames_per_image: int, loop: bool = False) -> None:
        if fps <= 0:
            raise ConfigError("camera.fps: an image folder needs a frame rate above 0")
        self.root = Path(root)
        self.name = str(root)
        self.fps, self.frames_per_image, self.loop = fps, frames_per_image, loop
        self.files: list[Path] = []
        self._i = self._shown = 0
        self._image: np.ndarray | None = None
        self._pacer = _Pacer(fps)

    def open(self) -> None:
        self.files = image_files(self.root)
        if not self.files:
            raise OSError(f"{self.root}: no images")
        self._i, self._shown, self._image = 0, 0, None

    def read(self) -> tuple[np.ndarray, str] | None:
        if self._image is None or self._shown >= self.frames_per_image:
            if self._image is not None:
                self._i += 1
            if self._i >= len(self.files):
                if not self.loop:
                    return None
                self._i = 0
            path = self.files[self._i]
            self._shown = 0
            try:
                self._image = load_bgr(path)
            except ImageError as exc:
                self._image = None
                self._i += 1  # this image is skipped as a whole, counted once
                raise CorruptFrame(str(exc)) from None
        self._pacer.wait()
        self._shown += 1
        return self._image, str(self.files[self._i])

    def close(self) -> None:
        self._image = None


class CvSource:
    """A V4L2 device, a network stream or a video file, through cv2.VideoCapture."""

    def __init__(self, target: int | str, kind: str, fps: float = 0.0, loop: bool = False,
                 width: int = 0, height: int = 0) -> None:
        self.target, self.kind = target, kind
        self.name = f"/dev/video{target}" if isinstance(target, int) else str(target)
        self.live = kind != "file"
        self.loop = loop
        self.width, self.height = width, height
        self._fps = fps
        self._cap: cv2.VideoCapture | None = None
        self._pacer = _Pacer(0)
        self._corrupt_run = 0

    def open(self) -> None:
        api = cv2.CAP_V4L2 if self.kind == "device" else cv2.CAP_FFMPEG
        cap = cv2.VideoCapture(self.target, api)
        if not cap.isOpened():
            cap.release()
            raise OSError(f"{self.name}: cannot open")
        if self.kind == "device":
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the driver's own queue would otherwise delay every frame
            if self.width and self.height:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        if self.kind == "file":
            rate = self._fps or cap.get(cv2.CAP_PROP_FPS) or 25.0
            self._pacer = _Pacer(rate)
        self._cap = cap
        self._corrupt_run = 0

    def read(self) -> tuple[np.ndarray, str] | None:
        cap = self._cap
        if cap is None:
            return None
        self._pacer.wait()
        ok, image = cap.read()
        if ok and image is not None and image.size and image.dtype == np.uint8:
            self._corrupt_run = 0
            if image.ndim == 2:
                image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
            elif image.shape[2] == 4:
                image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
            return image, self.name
        if self.kind == "file":
            # A failed read before the last frame is a frame that did not decode; the file goes on after it.
            pos, count = cap.get(cv2.CAP_PROP_POS_FRAMES), cap.get(cv2.CAP_PROP_FRAME_COUNT)
            if count > 0 and pos < count - 1 and self._corrupt_run < MAX_CORRUPT_RUN:
                self._corrupt_run += 1
                raise CorruptFrame(f"{self.name}: frame {int(pos) + 1} did not decode")
            if self.loop:
                cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                self._corrupt_run = 0
                return self.read()
            return None
        if ok:  # a device or stream delivered something that is not an image
            raise CorruptFrame(f"{self.name}: malformed frame")
        return None  # lost: the capture thread reconnects

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def open_source(cfg: CameraConfig) -> Source:
    """The source `camera.source` names (see CameraConfig)."""
    spec = cfg.source.strip()
    if spec.isdigit():
        return CvSource(int(spec), "device", width=cfg.width, height=cfg.height)
    if spec.startswith("/dev/"):
        return CvSource(spec, "device", width=cfg.width, height=cfg.height)
    if urlparse(spec).scheme.lower() in STREAM_SCHEMES:
        return CvSource(spec, "stream")
    p = Path(spec).expanduser()
    if p.is_dir():
        return FolderSource(p, cfg.fps, cfg.frames_per_image, cfg.loop)
    if p.is_file():
        return CvSource(str(p), "file", fps=cfg.fps, loop=cfg.loop)
    raise ConfigError(f"camera.source: {spec!r} is not a device index, /dev path, stream URL, file or folder")


@dataclass
class CaptureStats:
    produced: int = 0  # frames read from the source
    delivered: int = 0  # frames handed to the consumer
    dropped: int = 0  # frames replaced by a newer one before the consumer took them
    corrupt: int = 0  # frames that did not decode (skipped)
    reconnects: int = 0  # attempts to reopen the source after a failed open or a loss, successful or not


class Capture:
    """Runs a source in its own thread and holds only its newest frame."""

    def __init__(self, source: Source, reconnect_min_s: float = 0.5, reconnect_max_s: float = 30.0,
                 on_frame: Callable[[Frame], None] | None = None, every_frame: bool = False) -> None:
        if every_frame and source.live:
            # A camera or stream does not wait: holding its frames back would only build a backlog.
            raise ConfigError("camera.every_frame: only for a video file or an image folder, not a live source")
        self.source = source
        self.every_frame = every_frame
        self.reconnect_min_s, self.reconnect_max_s = reconnect_min_s, reconnect_max_s
        self.stats = CaptureStats()
        self.connected = False
        self.finished = False  # a file or folder has ended (not looping)
        self.last_frame_t: float | None = None
        self.last_error: str | None = None
        self._on_frame = on_frame
        self._slot: Frame | None = None
        self._newest: Frame | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)

    def start(self) -> Capture:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def get(self, timeout: float = 1.0) -> Frame | None:
        """The newest frame not yet handed out, waiting up to `timeout`; None if there is none (yet)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._slot is None and not self.finished and not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            frame, self._slot = self._slot, None
            if frame is not None:
                self.stats.delivered += 1
                self._cond.notify_all()  # an every-frame capture waits for the slot to empty
            return frame

    def newest(self) -> Frame | None:
        """The most recent frame read, whether or not it was handed out (for enrolment from the camera)."""
        return self._newest

    @property
    def done(self) -> bool:
        """The source ended and its last frame has been handed out."""
        with self._cond:
            return self.finished and self._slot is None

    def _publish(self, image: np.ndarray, origin: str) -> None:
        if self.every_frame:
            with self._cond:  # wait until the consumer has taken the previous frame: nothing is dropped
                while self._slot is not None and not self._stop.is_set():
                    self._cond.wait(0.5)
        now = time.monotonic()
        with self._cond:
            self.stats.produced += 1
            if self._slot is not None:
                self.stats.dropped += 1
            frame = Frame(image, self.stats.produced, now, origin)
            self._slot = self._newest = frame
            self.last_frame_t = now
            self._cond.notify_all()
        if self._on_frame is not None:
            self._on_frame(frame)

    def _run(self) -> None:
        backoff = self.reconnect_min_s
        opened = first = tried = False
        while not self._stop.is_set():
            if not opened:
                if tried:
                    # Every retry counts, failed or not: a stream that keeps failing shows as a rising counter.
                    self.stats.reconnects += 1
                tried = True
                try:
                    self.source.open()
                except (OSError, cv2.error) as exc:
                    self.connected, self.last_error = False, str(exc)
                    if not self.source.live:
                        log.error("frame source %s cannot be opened: %s", self.source.name, exc)
                        break
                    log.warning("frame source %s: %s; retrying in %.1f s", self.source.name, exc, backoff)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self.reconnect_max_s)
                    continue
                if first:
                    log.info("frame source %s reopened", self.source.name)
                opened = first = True
                self.connected, self.last_error = True, None
            try:
                got = self.source.read()
            except CorruptFrame as exc:
                self.stats.corrupt += 1
                log.warning("skipped a corrupt frame: %s", exc)
                continue
            except (OSError, cv2.error) as exc:
                got, self.last_error = None, str(exc)
            if got is None:
                self.source.close()
                opened = self.connected = False
                if not self.source.live:
                    break
                log.warning("frame source %s lost; reconnecting in %.1f s", self.source.name, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.reconnect_max_s)
                continue
            backoff = self.reconnect_min_s
            self._publish(*got)
        if opened:
            self.source.close()
        self.connected = False
        with self._cond:
            self.finished = True
            self._cond.notify_all()
