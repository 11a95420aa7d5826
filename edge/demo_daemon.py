"""`facegate demo`: the whole daemon end to end on a machine with no camera and no broker.

Kiosk profile. Grace Hopper (matplotlib's sample photo) is enrolled through the daemon's own enrol command;
a short video is written with cv2.VideoWriter — a rotated, rescaled Hopper walking up, an empty doorway,
then Eileen Collins (scikit-image's `astronaut`, not enrolled) — and played as the camera. Events travel
through a real MQTT broker (a reachable one on localhost:1883, else an embedded amqtt broker, else a private
mosquitto) to a subscriber that prints each decision as it arrives. Needs the [demo] extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.errors import FacegateError
from edge.mqtt.broker import free_port

DEMO_DEVICE = "facegate-demo"
CLIP_FPS = 15.0


# -- brokers ----------------------------------------------------------------------------------------------------
@dataclass
class Broker:
    host: str
    port: int
    kind: str  # "reachable", "amqtt" or "mosquitto"
    stop: Callable[[], None]


def reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def start_mosquitto(port: int) -> Broker | None:
    """A private mosquitto on a loopback port (None when the binary is not installed): the same harness the
    tests use (edge/mqtt/broker.py)."""
    from edge.mqtt.broker import Mosquitto, mosquitto_binary

    if mosquitto_binary() is None:
        return None
    workdir = Path(tempfile.mkdtemp(prefix="facegate-mosquitto-"))
    broker = Mosquitto(workdir, port=port, persistence=False)
    try:
        broker.start()
    except FacegateError:
        shutil.rmtree(workdir, ignore_errors=True)
        return None

    def stop() -> None:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    return Broker("127.0.0.1", port, "mosquitto", stop)


def start_amqtt(port: int) -> Broker | None:
    """An embedded amqtt broker in a thread of this process (None when amqtt is not installed)."""
    try:
        from amqtt.broker import Broker as AmqttBroker
    except ImportError:
        return None
    config = {"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
              "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}}
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, Any] = {}

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            holder["broker"] = AmqttBroker(config, loop=loop)
            loop.run_until_complete(holder["broker"].start())
        except Exception as exc:  # reported below as "no broker"
            holder["error"] = exc
            started.set()
            return
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, name="amqtt", daemon=True)
    thread.start()
    started.wait(10)
    if "error" in holder or "broker" not in holder:
        return None

    def stop() -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(holder["broker"].shutdown(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)

    return Broker("127.0.0.1", port, "amqtt", stop)


def broker_for_demo(prefer_existing: bool = True,
                    order: tuple[str, ...] = ("amqtt", "mosquitto")) -> Broker:
    """A broker to talk to: one already listening on localhost:1883, else a private one started here."""
    if prefer_existing and reachable("127.0.0.1", 1883):
        return Broker("127.0.0.1", 1883, "reachable", lambda: None)
    starters = {"amqtt": start_amqtt, "mosquitto": start_mosquitto}
    for kind in order:
        broker = starters[kind](free_port())
        if broker is not None:
            return broker
    raise FacegateError("no MQTT broker: none listens on localhost:1883, and neither amqtt "
                        "(pip install 'facegate[demo]') nor mosquitto (apt install mosquitto) is installed")


# -- the subscriber ---------------------------------------------------------------------------------------------
class Subscriber:
    """A paho client that collects (receipt time, event) for every message on the event topic."""

    def __init__(self, host: str, port: int, topic: str, on_event: Callable[[dict[str, Any]], None] | None = None):
        import paho.mqtt.client as mqtt

        self.events: list[tuple[float, dict[str, Any]]] = []
        self._on_event = on_event
        self._ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"facegate-sub-{free_port()}")
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self._ready.set()
        self.client.on_message = self._message
        self.client.connect(host, port)
        self.client.loop_start()
        if not self._ready.wait(10):
            raise FacegateError(f"cannot subscribe to {topic} on {host}:{port}")

    def _message(self, _client: Any, _userdata: Any, message: Any) -> None:
        t = time.monotonic()
        try:
            event = json.loads(message.payload)
        except ValueError:
            return
        self.events.append((t, event))
        if self._on_event is not None:
            self._on_event(event)

    def wait_for(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while len(self.events) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return len(self.events) >= count

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def running(daemon: Any) -> Iterator[threading.Thread]:
    """Run `daemon` in a thread for the block; stop it and wait at the end."""
    thread = threading.Thread(target=daemon.run, name="daemon", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        daemon.stop()
        thread.join(30)


# -- the clip ---------------------------------------------------------------------------------------------------
def _place(face: np.ndarray, size: tuple[int, int], scale: float, dx: int) -> np.ndarray:
    """`face` scaled to `scale` of the frame height, centred (shifted by dx) on a grey frame."""
    w, h = size
    canvas = np.full((h, w, 3), 90, np.uint8)
    fh = int(h * scale)
    fw = int(face.shape[1] * fh / face.shape[0])
    img = cv2.resize(face, (fw, fh), interpolation=cv2.INTER_AREA)
    x0, y0 = (w - fw) // 2 + dx, (h - fh) // 2
    xa, xb = max(0, x0), min(w, x0 + fw)
    canvas[y0:y0 + fh, xa:xb] = img[:, xa - x0:xb - x0]
    return canvas


def write_clip(path: Path, visitors: list[np.ndarray], seconds_each: float = 1.5, gap_s: float = 0.6,
               size: tuple[int, int] = (640, 480)) -> Path:
    """An MJPEG video: each visitor walks up (growing, drifting) for `seconds_each`, then an empty doorway."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), CLIP_FPS, size)
    if not writer.isOpened():
        raise FacegateError(f"cannot write a video to {path} (OpenCV without a video writer?)")
    empty = np.full((size[1], size[0], 3), 90, np.uint8)
    try:
        for face in visitors:
            n = int(seconds_each * CLIP_FPS)
            for i in range(n):
                writer.write(_place(face, size, 0.7 + 0.15 * i / n, int(12 * np.sin(i / 4))))
            for _ in range(int(gap_s * CLIP_FPS)):
                writer.write(empty)
    finally:
        writer.release()
    return path


def write_frames(folder: Path, visitors: list[np.ndarray]) -> Path:
    """An image-folder camera: each visitor's frame, then an empty doorway of the same size."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, face in enumerate(visitors):
        cv2.imwrite(str(folder / f"{2 * i:02d}.png"), face)
        cv2.imwrite(str(folder / f"{2 * i + 1:02d}.png"), np.full_like(face, 90))
    return folder


# -- the demo ---------------------------------------------------------------------------------------------------
def _shared() -> Path:
    import os

    return Path(os.environ.get("FACEGATE_DATA") or Path.cwd().parent / "shared")


def _door_setup(work: Path) -> tuple[dict[str, Any], list[np.ndarray], np.ndarray, str]:
    """The door profile's extra parts: MiniFASNet installed from the shared copies (as an air-gapped site would,
    with --file), a live visitor and a printed photo of a face."""
    from edge.imageio import load_bgr
    from edge.models.install import install

    shared = _shared()
    weights = shared / "models" / "minifasnet"
    files = [weights / "2.7_80x80_MiniFASNetV2.pth", weights / "4_0_0_80x80_MiniFASNetV1SE.pth"]
    samples = [shared / "liveness" / "image_T1.jpg", shared / "liveness" / "image_F1.jpg"]
    missing = [str(f) for f in [*files, *samples] if not f.is_file()]
    if missing:
        raise FacegateError("the door demo needs the MiniFASNet weights and the liveness samples (set "
                            f"$FACEGATE_DATA to the shared data folder; missing: {', '.join(missing)}). With the "
                            "weights at hand: facegate models install minifasnet --file V2.pth --file V1SE.pth")
    install("minifasnet", model_dir=work / "models", progress=False, files=files)
    # The samples as the camera took them (640×480, their own background): the passive check looks at a wide
    # crop around the face, so a face pasted on a grey canvas would not be a fair live frame.
    live, printed = (load_bgr(p) for p in samples)
    # A recorded clip cannot turn its head when asked: the challenge is off, the passive check and the temporal
    # rule decide (a real door keeps liveness.challenge = true).
    extra = {"profile": "door", "models": {"model_dir": str(work / "models")},
             "liveness": {"challenge": False}, "door": {"unlock_s": 3}}
    return extra, [live, printed], live, "visitor (the live sample image_T1.jpg); then a printed photo (image_F1.jpg)"


def run(as_json: bool = False, profile: str = "kiosk") -> int:
    from edge import config
    from edge.daemon import Daemon, setup_logging
    from edge.demo import sample_faces

    setup_logging("text", "warning")
    broker = broker_for_demo()
    try:
        with tempfile.TemporaryDirectory(prefix="facegate-demo-") as tmp:
            work = Path(tmp)
            if profile == "door":
                extra, visitors, enrol_image, who = _door_setup(work)
                name, expected = "visitor", ("granted", "spoof")
            else:
                faces = sample_faces()
                extra, visitors, enrol_image = {}, [faces["hopper_rotated"], faces["astronaut"]], faces["hopper"]
                who = "grace_hopper (matplotlib's grace_hopper.jpg); astronaut (scikit-image) is not enrolled"
                name, expected = "grace_hopper", ("granted", "unknown")
            if profile == "door":
                clip = write_frames(work / "door", visitors)
                camera = {"source": str(clip), "fps": CLIP_FPS, "frames_per_image": int(1.5 * CLIP_FPS)}
            else:
                clip = write_clip(work / "walk-up.avi", visitors)
                camera = {"source": str(clip), "fps": CLIP_FPS}
            cfg = config.parse({
                "profile": "kiosk",
                "camera": camera,
                "store": {"path": str(work / "demo.db"), "create": True},
                # amqtt, the fallback broker, speaks MQTT 3.1.1 only.
                "mqtt": {"host": broker.host, "port": broker.port, "device": DEMO_DEVICE, "discovery": False,
                         "protocol": "3.1.1" if broker.kind == "amqtt" else "5", "claims": "off",
                         "outbox_path": str(work / "outbox.db"), "command_state_path": str(work / "counters.json")},
                "health": {"enabled": False},
                **extra,
            }, origin="demo")
            print(f"broker: {broker.kind} on {broker.host}:{broker.port}; camera: {clip.name} "
                  f"({CLIP_FPS:g} fps); profile {cfg.profile}")

            def show(event: dict[str, Any]) -> None:
                if as_json:
                    print(json.dumps(event), flush=True)
                    return
                who = event.get("identity") or "—"
                print(f"  {event['decision']:<8} {who:<14} score {event['score']}  threshold {event['threshold']}  "
                      f"liveness {event['liveness']['verdict']}  {event['frames']} frames  "
                      f"{event['latency_ms']} ms", flush=True)

            daemon = Daemon(cfg)
            _, buf = cv2.imencode(".jpg", enrol_image)
            enrolled = daemon.enroll(name, buf.tobytes(), live_capture=False)
            if not enrolled.get("ok"):
                raise FacegateError(f"demo enrolment failed: {enrolled}")
            print(f"enrolled {who}" + (f"; liveness {daemon.liveness_mode}" if profile == "door" else ""))
            sub = Subscriber(broker.host, broker.port, f"facegate/{DEMO_DEVICE}/event", show)
            print(f"decisions received on facegate/{DEMO_DEVICE}/event:")
            announced: list[str] = []
            daemon.on_decision = lambda d, _e: announced.append(d.decision)
            try:
                with running(daemon) as thread:
                    thread.join(60)  # the clip ends the run
                sub.wait_for(len(announced), 10)
            finally:
                sub.close()
    finally:
        broker.stop()
    kinds = [e["decision"] for _, e in sub.events]
    good = all(k in kinds for k in expected)
    print(f"{len(kinds)} decision(s): {', '.join(kinds) or 'none'} — "
          + (f"as expected (one {expected[0]}, one {expected[1]})" if good else
             f"expected a {expected[0]} and a {expected[1]}"))
    return 0 if good else 1
