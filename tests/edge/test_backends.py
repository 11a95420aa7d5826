"""Backends are one file each: a new detector is a module plus a manifest, a new event sink a module plus a
configuration entry. Both are shown here with test backends that the real pipeline and daemon then use."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.config import parse
from edge.daemon import Daemon
from edge.demo_daemon import running
from edge.models.registry import Registry
from edge.pipeline import FacePipeline
from edge.vision.detect import Detector, Face, make_detector

# -- a detector: this module's `create`, named by a manifest's extra.module -------------------------------------


class CentreDetector:
    """Reports one face in the middle of every image, wrapping YuNet's landmarks when it finds any (so the
    embedder gets a real face), else a fixed box: enough to prove the pipeline runs whatever the manifest names."""

    def __init__(self, inner: Detector, min_face_px: float) -> None:
        self.inner, self.min_face_px, self.calls = inner, min_face_px, 0

    def detect(self, image: np.ndarray) -> list[Face]:
        self.calls += 1
        return self.inner.detect(image)[:1]


def create(runtime: Any, manifest: Any, min_face_px: float) -> CentreDetector:
    return CentreDetector(make_detector(Registry(), "yunet", min_face_px=min_face_px), min_face_px)


def _install_detector(model_dir: Path) -> None:
    """A manifest named "centre" whose file is YuNet's (any runtime-loadable file would do) and whose code is
    this module."""
    yunet = Registry(model_dir).manifest("yunet")
    src = Registry(model_dir).verify(yunet)
    bundle = model_dir / "centre"
    bundle.mkdir(parents=True)
    shutil.copy(src, bundle / "model.onnx")
    m = yunet.to_dict()
    m.update(name="centre", file="model.onnx", sha256=hashlib.sha256(src.read_bytes()).hexdigest(),
             source={"file": "model.onnx"}, prepare=[], extra={**yunet.extra, "module": __name__})
    (bundle / "manifest.json").write_text(json.dumps(m))


def test_a_detector_is_a_module_plus_a_manifest(tmp_path: Path, lfw: Path) -> None:
    from edge.imageio import load_bgr

    _install_detector(tmp_path / "models")
    pipe = FacePipeline(Registry(tmp_path / "models"), detector="centre")
    assert isinstance(pipe.detector, CentreDetector)
    _, probe = pipe.probe(load_bgr(lfw / "images/Colin_Powell/Colin_Powell_0038.jpg"))
    assert pipe.detector.calls == 1 and probe[pipe.embedder.manifest.name].shape == (128,)


def test_a_model_that_is_not_a_detector_is_refused(tmp_path: Path) -> None:
    from edge.errors import ModelError

    with pytest.raises(ModelError, match="not a face detector"):
        make_detector(Registry(tmp_path), "sface")


# -- an event sink: this module's `sink`, named by events.sink ------------------------------------------------

RECORDED: list[dict[str, Any]] = []


class ListSink:
    """Keeps what the daemon publishes in a list."""

    connected, outbox_depth, dropped, reconnects = True, 0, 0, 0

    def __init__(self) -> None:
        self.seq = 0

    def start(self) -> None: ...

    def stop(self, flush_timeout: float = 5.0) -> None: ...

    def close(self) -> None: ...

    def publish_event(self, event: dict[str, Any]) -> dict[str, Any]:
        self.seq += 1
        RECORDED.append({**event, "seq": self.seq})
        return RECORDED[-1]

    def publish_state(self, state: dict[str, Any]) -> None: ...

    def publish_prompt(self, text: str) -> None: ...

    def publish_door(self, command: str, duration_s: float | None = None, decided_at: float | None = None,
                     source: str = "facegate") -> bool:
        return True

    def publish_door_state(self, state: dict[str, Any]) -> None: ...

    def publish_face_unlock(self, enabled: bool) -> None: ...

    def publish_face_present(self, present: bool) -> None: ...

    def on_claim(self, callback: Any) -> None: ...

    def on_connected(self, callback: Any) -> None: ...

    def on_door_request(self, callback: Any) -> None: ...

    def on_face_unlock(self, callback: Any) -> None: ...

    def forget_identity(self, name: str) -> None: ...


def sink(cfg: Any, handlers: Any = None, clock_synced: Any = None) -> ListSink:
    return ListSink()


def test_an_event_sink_is_a_module_plus_a_config_entry(tmp_path: Path, lfw: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    shutil.copy(lfw / "images/Aaron_Peirsol/Aaron_Peirsol_0001.jpg", folder / "01.jpg")
    cfg = parse({"profile": "kiosk",
                 "camera": {"source": str(folder), "fps": 10, "frames_per_image": 10, "every_frame": True},
                 "store": {"path": str(tmp_path / "s.db"), "create": True}, "health": {"enabled": False},
                 "events": {"sink": f"{__name__}:sink"}})
    RECORDED.clear()
    daemon = Daemon(cfg)
    assert isinstance(daemon.sink, ListSink)
    with running(daemon) as thread:
        thread.join(60)
    assert [(e["decision"], e["seq"]) for e in RECORDED] == [("unknown", 1)]


def test_a_sink_that_is_not_one_is_a_config_error(tmp_path: Path) -> None:
    from edge.config import ConfigError
    from edge.sinks import make_sink

    for spec in ("nope", "json:dumps", "tests.edge.test_backends:missing"):
        with pytest.raises(ConfigError, match=r"events\.sink"):
            make_sink(parse({"events": {"sink": spec}}))
