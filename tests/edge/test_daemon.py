"""The daemon end to end: real models, real LFW photos played as a camera, a real SQLite store, a real
mosquitto (tests/mqtt_broker.py), the real HTTP endpoints, and SIGTERM to a real process."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.config import ConfigError, parse
from edge.daemon import Daemon
from edge.demo_daemon import running
from edge.liveness.base import LivenessResult
from edge.models.registry import Registry
from edge.sinks.log import LogSink
from tests.http_get import get as _get
from tests.mqtt_broker import Broker, Subscriber, wait_until

REPO = Path(__file__).resolve().parents[2]


class AlwaysLive:
    """A liveness check loaded by name from the config (liveness.model = "module:Class")."""

    name = "always-live"

    def check(self, image, face) -> LivenessResult:
        return LivenessResult("live", 0.99)


def create(registry, manifest, threads) -> AlwaysLive:
    """The factory a liveness bundle's manifest names (extra.module = this module)."""
    return AlwaysLive()


@pytest.fixture(scope="module")
def clip(lfw, tmp_path_factory) -> dict[str, Path]:
    """An image folder: an enrolled person (a different photo from the enrolment one), nobody, a stranger."""
    root = lfw / "images"
    folder = tmp_path_factory.mktemp("clip")
    shutil.copy(root / "Colin_Powell/Colin_Powell_0040.jpg", folder / "01_colin.jpg")
    cv2.imwrite(str(folder / "02_empty.png"), np.full((250, 250, 3), 120, np.uint8))
    shutil.copy(root / "Aaron_Peirsol/Aaron_Peirsol_0001.jpg", folder / "03_stranger.jpg")
    return {"folder": folder, "enrol": root / "Colin_Powell/Colin_Powell_0038.jpg"}


def _config(tmp_path: Path, clip: dict[str, Path], **sections) -> dict:
    # every_frame: a folder source otherwise paces frames in real time and drops those the engine is too late
    # for, and a loaded CI machine then left an image fewer frames than a decision window needs.
    base = {"profile": "kiosk",
            "camera": {"source": str(clip["folder"]), "fps": 10, "frames_per_image": 8, "every_frame": True},
            "store": {"path": str(tmp_path / "s.db"), "create": True},
            "mqtt": {"enabled": False},
            "health": {"listen": "127.0.0.1:0"}}
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return base


def _enrol(daemon: Daemon, path: Path, name: str = "colin") -> None:
    result = daemon.enroll(name, path.read_bytes(), live_capture=False)
    assert result["ok"], result


def test_events_arrive_over_mosquitto(tmp_path, clip):
    with Broker(tmp_path / "mq") as broker, \
            Subscriber(broker, ["facegate/door1/#"]) as sub:
        cfg = parse(_config(tmp_path, clip, mqtt={"enabled": True, "port": broker.port, "device": "door1",
                                                  "discovery": False, "outbox_path": str(tmp_path / "o.db"),
                                                  "command_state_path": str(tmp_path / "c.json")}))
        daemon = Daemon(cfg)
        _enrol(daemon, clip["enrol"])
        with running(daemon) as thread:
            thread.join(60)
        events = [m.json() for m in sub.wait_count("facegate/door1/event", 2)]
        assert [(e["decision"], e["identity"]) for e in events] == [("granted", "colin"), ("unknown", None)]
        jsonschema = pytest.importorskip("jsonschema")
        schema = json.loads((REPO / "edge/mqtt/event.schema.json").read_text())
        for e in events:
            jsonschema.Draft202012Validator(schema).validate(e)
            assert e["device"] == "door1" and e["liveness"] == {"verdict": "not_checked", "score": None}
            assert e["model"] == Registry().default_embedder() and e["frames"] >= 3 and 0 < e["latency_ms"] < 1000
        prompts = [m.json()["text"] for m in sub.on("facegate/door1/prompt")]
        assert "granted" in prompts and "not recognised" in prompts
        assert wait_until(lambda: sub.on("facegate/door1/availability")
                          and sub.on("facegate/door1/availability")[-1].payload == b"offline", 5)
        assert not sub.on("facegate/door1/door/command")  # kiosk: no door commands


def test_door_profile_unlocks_with_a_liveness_check(tmp_path, clip):
    cfg = parse(_config(tmp_path, clip, profile="door", door={"unlock_s": 3},
                        liveness={"model": "tests.edge.test_daemon:AlwaysLive", "challenge": False}))
    out = tmp_path / "events.jsonl"
    daemon = Daemon(cfg, sink=LogSink("door1", "front", out))
    _enrol(daemon, clip["enrol"])
    assert daemon.liveness_mode == "always-live"
    with running(daemon) as thread:
        thread.join(60)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    doors = [(r["command"], r["duration_s"]) for r in records if r["kind"] == "door"]
    assert doors == [("LOCK", None), ("UNLOCK", 3.0)]  # a known state at start, one UNLOCK for one grant
    events = [r["event"] for r in records if r["kind"] == "event"]
    assert [e["decision"] for e in events] == ["granted", "unknown"]
    assert events[0]["liveness"] == {"verdict": "live", "score": 0.99}
    unlock = next(i for i, r in enumerate(records) if r.get("command") == "UNLOCK")
    # The door first, then its state (what the lock controller was told, until when), then the event.
    assert [r["kind"] for r in records[unlock + 1:unlock + 3]] == ["door_state", "event"]
    states = [r["state"] for r in records if r["kind"] == "door_state"]
    assert [(d["state"], d["source"]) for d in states[:2]] == [("locked", "start-up"), ("unlocked", "facegate")]
    assert states[1]["until"] > states[1]["ts"]


def test_door_profile_finds_an_installed_liveness_bundle(tmp_path, clip):
    """liveness.model = "auto": the bundle in the model directory is found, verified and loaded."""
    import hashlib

    from edge.liveness import installed, load
    from edge.models.registry import Registry

    bundle = tmp_path / "models" / "fake-live"
    bundle.mkdir(parents=True)
    (bundle / "weights.bin").write_bytes(b"not a real network")
    (bundle / "manifest.json").write_text(json.dumps({
        "name": "fake-live", "task": "liveness", "file": "weights.bin",
        "sha256": hashlib.sha256(b"not a real network").hexdigest(), "source": {"file": "weights.bin"},
        "licence": "test", "runtime": "onnxruntime", "input": {"size": [80, 80]},
        "extra": {"module": "tests.edge.test_daemon"}}))
    registry = Registry(tmp_path / "models")
    assert installed(registry) == ["fake-live"]
    assert load("fake-live", registry).name == "always-live"
    daemon = Daemon(parse(_config(tmp_path, clip, profile="door", models={"model_dir": str(tmp_path / "models")})),
                    sink=LogSink("door1", "front", tmp_path / "e.jsonl"))
    try:
        assert daemon.liveness_mode == "always-live"
    finally:
        daemon.store.close()


def test_door_profile_refuses_to_start_without_liveness(tmp_path, clip):
    with pytest.raises(ConfigError, match="no liveness model is installed"):
        Daemon(parse(_config(tmp_path, clip, profile="door")))


def test_healthz_and_metrics(tmp_path, clip):
    cfg = parse(_config(tmp_path, clip, camera={"loop": True}))
    daemon = Daemon(cfg, sink=LogSink("door1", "front", tmp_path / "e.jsonl"))
    _enrol(daemon, clip["enrol"])
    with running(daemon):
        assert wait_until(lambda: daemon.metrics.value("decisions_total", decision="unknown") >= 1, 30)
        base = f"http://127.0.0.1:{daemon.health_server.port}"
        code, body = _get(base + "/healthz")
        report = json.loads(body)
        assert code == 200 and report["healthy"] and report["identities"] == 1 and report["fps"] > 0
        code, body = _get(base + "/metrics")
        text = body.decode()
        assert code == 200
        for line in ("# TYPE facegate_fps gauge", "# TYPE facegate_stage_latency_ms histogram",
                     'facegate_decisions_total{decision="granted"} 1', 'facegate_decisions_total{decision="spoof"} 0',
                     "facegate_outbox_depth 0", "facegate_mqtt_reconnects_total 0",
                     "facegate_source_reconnects_total 0", "facegate_healthy 1", "facegate_gallery_identities 1"):
            assert line in text, line
        for stage in ("detect", "quality", "embed", "match", "decide", "frame"):
            assert f'facegate_stage_latency_ms_bucket{{stage="{stage}",le="+Inf"}}' in text
        buckets = [int(row.rsplit(" ", 1)[1]) for row in text.splitlines()
                   if row.startswith("facegate_stage_latency_ms_bucket") and 'stage="frame"' in row]
        assert buckets == sorted(buckets) and buckets[-1] > 10  # cumulative
        assert _get(base + "/other")[0] == 404


def test_unhealthy_camera_is_reported_and_fails_secure(tmp_path, clip):
    cfg = parse(_config(tmp_path, clip, camera={"source": "/dev/video97", "every_frame": False, "stale_s": 0.2,
                                                "reconnect_min_s": 0.05, "reconnect_max_s": 0.1}))
    daemon = Daemon(cfg, sink=LogSink("door1", "front", tmp_path / "e.jsonl"))
    with running(daemon):
        assert wait_until(lambda: daemon.health_server is not None, 5)
        base = f"http://127.0.0.1:{daemon.health_server.port}"
        assert wait_until(lambda: json.loads(_get(base + "/healthz")[1])["problems"], 5)
        code, body = _get(base + "/healthz")
        report = json.loads(body)
        assert code == 503 and report["healthy"] is False and report["problems"][0].startswith("camera")
        assert report["status"] == "degraded"
        assert "facegate_healthy 0" in _get(base + "/metrics")[1].decode()
        # The retained state says so too (what a dashboard or the lock controller's watchdog reads).
        assert wait_until(lambda: '"status": "degraded"' in (tmp_path / "e.jsonl").read_text(), 5)
    states = [json.loads(line)["state"] for line in (tmp_path / "e.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "state"]
    # Unknown until a first frame: "starting" with healthy null, never a premature healthy: true.
    assert (states[0]["status"], states[0]["healthy"]) == ("starting", None)
    assert states[-1] == {"status": "offline"}  # the log sink's record of the stop
    assert all(s["healthy"] is not True for s in states[:-1])


def test_command_handlers_and_reload(tmp_path, clip):
    from edge.enroll import Enroller
    from edge.store.db import Store

    daemon = Daemon(parse(_config(tmp_path, clip)), sink=LogSink("door1", "front", tmp_path / "e.jsonl"))
    try:
        _enrol(daemon, clip["enrol"])
        bad = daemon.enroll("x", b"not an image", live_capture=False)
        assert not bad["ok"] and "not a readable image" in bad["reasons"][0]
        nobody = daemon.enroll("x", b"", live_capture=True)
        assert not nobody["ok"] and "no camera frame" in nobody["reasons"][0]
        # Another process (the CLI) enrols into the same file: the daemon sees it after reload.
        with Store(tmp_path / "s.db") as other:
            enroller = Enroller(other, daemon.pipeline)
            assert enroller.commit("aaron", [enroller.judge(clip["folder"] / "03_stranger.jpg")], command="cli")
        assert daemon.engine.identities == 1
        assert daemon.reload() == {"ok": True, "identities": 2, "templates": 2}
        assert daemon.delete("aaron")["ok"] and not daemon.delete("aaron")["ok"]
        assert daemon.engine.gallery.names() == ["colin"]
    finally:
        daemon.store.close()


def test_sigterm_flushes_and_publishes_offline(tmp_path, clip):
    with Broker(tmp_path / "mq") as broker, \
            Subscriber(broker, ["facegate/door1/#"]) as sub:
        conf = _config(tmp_path, clip, camera={"loop": True},
                       mqtt={"enabled": True, "port": broker.port, "device": "door1", "discovery": False,
                             "outbox_path": str(tmp_path / "o.db"), "command_state_path": str(tmp_path / "c.json")})
        lines = []
        for section, values in conf.items():
            if isinstance(values, dict):
                lines.append(f"[{section}]")
                lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
            else:
                lines.insert(0, f"{section} = {json.dumps(values)}")
        path = tmp_path / "facegate.toml"
        path.write_text("\n".join(lines) + "\n")
        proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(path)],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, "NOTIFY_SOCKET": ""})
        try:
            assert sub.wait_count("facegate/door1/event", 1, timeout=60), proc.stderr
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, err.decode()
        assert b"facegate stopped" in err
        assert wait_until(lambda: sub.on("facegate/door1/availability")[-1].payload == b"offline", 5)
        state = [m.json() for m in sub.on("facegate/door1/state")][-1]
        assert state["outbox_depth"] == 0


def _two_embedder_head(model_dir: Path) -> None:
    """Install into `model_dir`: "sface-mirror" (SFace with the test-time flip: a second embedder whose vectors
    differ from SFace's) and "head-2e", a head over both: logit = 6·cos(sface) + 4·cos(sface-mirror) − 3."""
    import hashlib

    from edge.models.registry import Registry
    from edge.verifier import VerifierHead
    from export.bundle import write_bundle
    from export.train.verifier import head_onnx

    builtin = Registry(model_dir)
    sface = builtin.manifest("sface")
    prepared = builtin.runtime_file(sface)
    mirror = model_dir / "sface-mirror"
    mirror.mkdir(parents=True)
    shutil.copy(prepared, mirror / "model.onnx")
    m = sface.to_dict()
    m.update(name="sface-mirror", file="model.onnx", sha256=hashlib.sha256(prepared.read_bytes()).hexdigest(),
             source={"file": "model.onnx"}, prepare=[], flip_average=True)
    (mirror / "manifest.json").write_text(json.dumps(m))
    head = VerifierHead(("sface", "sface-mirror"), (128, 128),
                        {"prod": np.concatenate([np.full(128, 6.0), np.full(128, 4.0)])}, -3.0)
    tail = [[0.1, 1.5], [0.01, 2.0], [0.001, 2.5]]
    manifest = {"name": "head-2e", "task": "verify_head", "licence": "test", "input": {"size": None},
                "source": {"recipe": "test"},
                "thresholds": {"verify": {"value": 1.0, "metric": "logit"},
                               "identify": {"value": 2.0, "metric": "logit", "tail": tail}},
                "extra": {"embedders": ["sface", "sface-mirror"], "dims": [128, 128]}}
    write_bundle(model_dir, manifest, head_onnx(head, model_dir.parent / "h.onnx"), {"crops": 0})


def test_a_configured_verifier_head_scores_the_decisions(tmp_path, clip, pipeline):
    """models.verifier: enrolment stores both embedders' templates, and events carry the head's logits."""
    pytest.importorskip("onnx")
    from edge.embed import Embedder
    from edge.imageio import load_bgr
    from edge.models.registry import Registry

    model_dir = tmp_path / "models"
    _two_embedder_head(model_dir)
    # Two embedders per face: paced slower and each image shown for 3 s, so a loaded machine still sees every
    # face for n frames (at 1 s an image, a slowed CI host once decided neither face).
    cfg = parse(_config(tmp_path, clip, models={"model_dir": str(model_dir), "verifier": "head-2e"},
                        camera={"fps": 8, "frames_per_image": 24}))
    daemon = Daemon(cfg, sink=LogSink("door1", "front", tmp_path / "e.jsonl"))
    try:
        _enrol(daemon, clip["enrol"])
        assert [len(daemon.store.templates(e)) for e in ("sface", "sface-mirror")] == [1, 1]
        with running(daemon) as thread:
            thread.join(60)
    finally:
        daemon.store.close()
    # A badge claim (a new daemon on the same store): 1:1 against the claimed identity's templates of both
    # embedders, scored by the head.
    daemon = Daemon(cfg, sink=LogSink("door1", "front", tmp_path / "claim.jsonl"))
    try:
        engine = daemon.engine
        assert engine.claim("colin")
        image = load_bgr(clip["enrol"])
        face = engine.pipeline.embed_one(image)[0]
        probe = engine.pipeline.embed_all(image, face)
        r = engine.scorer.claim(probe, "colin")
        assert r.identity == "colin" and r.score == pytest.approx(6 + 4 - 3, abs=1e-3)  # the same photo
    finally:
        daemon.store.close()
    records = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    decided = [r["event"] for r in records if r["kind"] == "event"]
    assert [(e["decision"], e["identity"]) for e in decided] == [("granted", "colin"), ("unknown", None)]
    assert all(e["model"] == "head-2e" for e in decided)
    # The granted score is the head's logit for this pair, computed here from the two embedders directly.
    reg = Registry(model_dir)
    mirror = Embedder(*reg.open("sface-mirror"))
    sface = Embedder(*reg.open("sface"))  # the head's member, not the pipeline's default embedder (sface-int8)
    probe, enrolled = (load_bgr(p) for p in (clip["folder"] / "01_colin.jpg", clip["enrol"]))
    vecs = []
    for image in (probe, enrolled):
        face = pipeline.embed_one(image)[0]
        crop = pipeline.crops(image, [face])
        vecs.append((sface.embed(crop)[0], mirror.embed(crop)[0]))
    expected = 6 * float(vecs[0][0] @ vecs[1][0]) + 4 * float(vecs[0][1] @ vecs[1][1]) - 3
    assert decided[0]["score"] == pytest.approx(expected, abs=0.05)
    assert decided[0]["score"] > 1.0 and decided[0]["threshold"] >= 1.5  # logits, the head's own 1:N threshold


def test_a_deletion_by_another_process_revokes_at_once(tmp_path, clip):
    """`facegate store delete` in another process while the daemon runs: no decision names the identity from
    the next frame on (not only after a SIGHUP), and its pending events leave the outbox."""
    import threading
    import time

    folder = tmp_path / "loop"
    folder.mkdir()
    shutil.copy(clip["folder"] / "01_colin.jpg", folder / "01_colin.jpg")
    shutil.copy(clip["folder"] / "02_empty.png", folder / "02_empty.png")
    cfg = parse(_config(tmp_path, clip, camera={"source": str(folder), "loop": True, "fps": 30,
                                                "frames_per_image": 10},
                        decision={"cooldown_s": 0, "track_ttl_s": 0.1}))  # each loop is a new walk-up
    seen: list[tuple[float, str, str | None]] = []
    lock = threading.Lock()

    def record(d, event) -> None:
        with lock:
            seen.append((time.monotonic(), d.decision, d.identity))

    daemon = Daemon(cfg, sink=LogSink("door1", "front", tmp_path / "e.jsonl"), on_decision=record)
    _enrol(daemon, clip["enrol"])
    forgotten: list[str] = []
    daemon.engine.on_forget = forgotten.append
    with running(daemon):
        assert wait_until(lambda: any(i == "colin" for _, _, i in seen), 60)
        done = subprocess.run([sys.executable, "-m", "edge.cli", "store", "delete", "colin", "--store",
                               str(tmp_path / "s.db")], capture_output=True, text=True, timeout=60)
        deleted_at = time.monotonic()
        assert done.returncode == 0, done.stderr
        # More walk-ups are decided, the first of them within a second of the deletion.
        assert wait_until(lambda: len([t for t, _, _ in seen if t > deleted_at]) >= 3, 60)
    after = [(round(t - deleted_at, 3), d, i) for t, d, i in seen if t > deleted_at]
    assert after[0][0] < 1.0
    assert all((d, i) == ("unknown", None) for _, d, i in after), after
    assert forgotten == ["colin"]


def test_an_image_bomb_on_the_command_path_is_refused_before_decoding(tmp_path, clip):
    """A 12000×12000 PNG of a few hundred KB sent as a signed enrolment: refused from its header."""
    import io
    import resource

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (12000, 12000)).save(buf, format="PNG", optimize=True)
    assert len(buf.getvalue()) < 1_000_000
    daemon = Daemon(parse(_config(tmp_path, clip)), sink=LogSink("door1", "front", tmp_path / "e.jsonl"))
    try:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result = daemon.enroll("bomb", buf.getvalue(), live_capture=False)
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    finally:
        daemon.close()
    assert not result["ok"] and "exceeds the limit" in result["reasons"][0]
    assert grown_mb < 100  # decoding it would take 144 MB as grey, 432 MB as BGR


def test_an_access_rule_that_misses_an_identity_by_case_stops_the_start(tmp_path, clip, capsys):
    """`Colin = []` meant to deny `colin` would silently not apply: refused at start and by run --check."""
    from edge.cli import main

    assert main(["enroll", "--store", str(tmp_path / "s.db"), "colin", str(clip["enrol"])]) == 0
    cfg = _config(tmp_path, clip, access={"windows": {"Colin": [], "nobody_yet": []}})
    with pytest.raises(ConfigError, match=r"access\.windows\.Colin: .*'colin'"):
        Daemon(parse(cfg), sink=LogSink("door1", "front", tmp_path / "e.jsonl"))
    toml = tmp_path / "f.toml"
    toml.write_text(f"""profile = "kiosk"
[camera]
source = "{clip['folder']}"
[store]
path = "{tmp_path / 's.db'}"
[mqtt]
enabled = false
[health]
listen = "127.0.0.1:0"
[access.windows]
Colin = []
nobody_yet = []
""")
    capsys.readouterr()
    assert main(["run", "--config", str(toml), "--check"]) == 2
    out = capsys.readouterr().out
    assert "problem: access.windows.Colin" in out and "warning: access.windows.nobody_yet" in out


def test_a_taken_health_port_is_a_config_error_before_anything_is_published(tmp_path, clip):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = parse(_config(tmp_path, clip, health={"listen": f"127.0.0.1:{port}"}))
        out = tmp_path / "e.jsonl"
        with pytest.raises(ConfigError, match=r"health\.listen"):
            Daemon(cfg, sink=LogSink("door1", "front", out))
    assert not out.exists()


def test_a_store_enrolled_with_another_embedder_is_a_check_problem(tmp_path, clip, capsys):
    """Templates are kept per embedder: a store enrolled with fp32 "sface" recognises nobody under the int8
    default, so `run --check` says so and names the switches; pinning models.embedder = "sface" passes."""
    from edge.cli import main

    assert main(["enroll", "--model", "sface", "--store", str(tmp_path / "s.db"), "colin", str(clip["enrol"])]) == 0
    base = (f'profile = "kiosk"\n[camera]\nsource = "{clip["folder"]}"\n[store]\npath = "{tmp_path / "s.db"}"\n'
            f'[mqtt]\nenabled = false\n[health]\nlisten = "127.0.0.1:0"\n')
    toml = tmp_path / "f.toml"
    toml.write_text(base)
    capsys.readouterr()
    assert main(["run", "--config", str(toml), "--check"]) == 2
    out = capsys.readouterr().out
    assert "problem: models.embedder" in out and "none under 'sface-int8'" in out and "reembed" in out
    toml.write_text(base + '[models]\nembedder = "sface"\n')
    assert main(["run", "--config", str(toml), "--check"]) == 0


def test_a_store_damaged_under_the_daemon_is_a_store_fault_logged_once(tmp_path, clip, caplog):
    """The store file overwritten while the daemon runs: labelled "store" (not "models") from the next frame,
    no decision from then on (fail secure), one log line for the fault and no traceback."""
    import logging
    import threading
    import time

    folder = tmp_path / "loop"
    folder.mkdir()
    shutil.copy(clip["folder"] / "01_colin.jpg", folder / "01_colin.jpg")
    shutil.copy(clip["folder"] / "02_empty.png", folder / "02_empty.png")
    cfg = parse(_config(tmp_path, clip, camera={"source": str(folder), "loop": True, "fps": 30,
                                                "frames_per_image": 10},
                        decision={"cooldown_s": 0, "track_ttl_s": 0.1}))
    seen: list[tuple[float, str]] = []
    lock = threading.Lock()

    def record(d, event) -> None:
        with lock:
            seen.append((time.monotonic(), d.decision))

    out = tmp_path / "e.jsonl"
    daemon = Daemon(cfg, sink=LogSink("door1", "front", out), on_decision=record)
    _enrol(daemon, clip["enrol"])
    caplog.set_level(logging.INFO)
    with running(daemon):
        assert wait_until(lambda: any(d == "granted" for _, d in seen), 60)
        (tmp_path / "s.db").write_bytes(np.random.default_rng(0).bytes(64 * 1024))  # overwritten in place
        damaged_at = time.monotonic()
        assert wait_until(lambda: any(p.startswith("store:") for p in daemon.problems()), 5)
        faulted_at = time.monotonic()
        frames = daemon.capture.stats.delivered
        assert wait_until(lambda: daemon.capture.stats.delivered > frames + 30, 30)  # a second of frames more
        problems = daemon.problems()
        report = daemon.health()
    assert faulted_at - damaged_at < 1.0
    assert [p for p in problems if p.startswith("store:")] and not [p for p in problems if p.startswith("models")]
    assert "overwritten or damaged" in problems[0] and report["healthy"] is False
    assert not [t for t, _ in seen if t > faulted_at]  # nothing decided on a store that cannot be followed
    faults = [r for r in caplog.records if "store fault" in r.getMessage()]
    assert len(faults) == 1 and faults[0].levelno == logging.ERROR
    assert not [r for r in caplog.records if r.exc_info]  # no traceback, let alone one per frame
    states = [json.loads(line)["state"] for line in out.read_text().splitlines() if '"kind": "state"' in line]
    assert any(s.get("status") == "degraded" and s["problems"][0].startswith("store:") for s in states)


def test_a_face_the_gate_refuses_is_counted_logged_and_told_what_to_do(tmp_path, lfw, caplog):
    """A face at yaw −47° never reaches a decision: /metrics counts it under head_turned, a rate-limited debug
    line says why, and the prompt says "face the camera" instead of "look at the camera"."""
    import logging

    folder = tmp_path / "turned"
    folder.mkdir()
    shutil.copy(lfw / "images/Margaret_Caruso/Margaret_Caruso_0001.jpg", folder / "01.jpg")
    out = tmp_path / "e.jsonl"
    cfg = parse(_config(tmp_path, {"folder": folder}, camera={"frames_per_image": 30}))
    daemon = Daemon(cfg, sink=LogSink("door1", "front", out))
    caplog.set_level(logging.DEBUG, logger="facegate.engine")
    with running(daemon) as thread:
        thread.join(60)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert not [r for r in records if r["kind"] == "event"]
    prompts = [r["text"] for r in records if r["kind"] == "prompt"]
    assert prompts == ["face the camera"]
    turned = daemon.metrics.value("quality_rejections_total", reason="head_turned")
    assert turned >= 10 and daemon.metrics.value("quality_rejections_total", reason="too_small") == 0
    text = daemon.metrics.render()
    assert f'facegate_quality_rejections_total{{reason="head_turned"}} {int(turned)}' in text
    lines = [r.getMessage() for r in caplog.records if r.name == "facegate.engine" and r.levelno == logging.DEBUG
             and "face not used" in r.getMessage()]
    assert lines and "head turned: yaw -47°" in lines[0]
    assert len(lines) <= 2  # one per reason per 10 s, not one per frame
