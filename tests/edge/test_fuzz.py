"""The cold probe, kept: property-based fuzzing of what an outsider controls — image bytes, command and claim
payloads, configuration files. Each property is "a clear refusal or a correct result, never an exception".

Example counts are bounded for CI; FACEGATE_FUZZ_EXAMPLES raises them for a longer run (the closing notes of
issue #14 ran the configuration property with 2,000).
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from edge.errors import FacegateError, ImageError  # noqa: E402
from edge.imageio import MAX_PIXELS, decode_bgr  # noqa: E402
from edge.mqtt.commands import ClaimVerifier, CommandProcessor, Refused, sign_command  # noqa: E402

SCALE = int(os.environ.get("FACEGATE_FUZZ_EXAMPLES", "0")) or None


def examples(n: int) -> int:
    return SCALE or n


BASE = settings(deadline=None, database=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])


def fuzz(n: int) -> settings:
    return settings(BASE, max_examples=examples(n))

# -- images --------------------------------------------------------------------------------------------------------


def _png(width: int, height: int, body: bytes = b"") -> bytes:
    """A PNG whose header claims width × height, with `body` as its (possibly bogus) compressed data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", body or zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 48, 3), np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


SEED_IMAGES = [_jpeg(), _png(8, 8)]


def _check_decoded(data: bytes) -> None:
    try:
        img = decode_bgr(data, "fuzz")
    except ImageError:
        return
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert img.shape[0] * img.shape[1] <= MAX_PIXELS


@fuzz(150)
@given(st.binary(max_size=4096))
def test_random_bytes_are_refused_or_decoded(data: bytes) -> None:
    _check_decoded(data)


@fuzz(150)
@given(st.sampled_from(SEED_IMAGES), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=12),
       st.integers(0, 4096))
def test_mutated_images_are_refused_or_decoded(seed: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(seed)
    for pos, value in flips:
        data[pos % len(data)] = value
    _check_decoded(bytes(data[: len(data) - cut]) if cut < len(data) else bytes(data))


@fuzz(60)
@given(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1))
def test_huge_dimensions_are_refused_from_the_header(width: int, height: int) -> None:
    data = _png(width, height)
    if width * height > MAX_PIXELS:
        with pytest.raises(ImageError):
            decode_bgr(data, "fuzz")
    else:
        _check_decoded(data)


# -- commands and claims -----------------------------------------------------------------------------------------

SECRET = b"fuzz-command-secret-0123"
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20)


class Handlers:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def reload(self) -> dict:
        self.calls.append(("reload",))
        return {}

    def enroll(self, name: str, image_jpeg: bytes, live_capture: bool) -> dict:
        assert isinstance(name, str) and isinstance(image_jpeg, bytes) and isinstance(live_capture, bool)
        self.calls.append(("enroll", name))
        return {}

    def delete(self, name: str) -> dict:
        assert isinstance(name, str)
        self.calls.append(("delete", name))
        return {}


def _payloads() -> st.SearchStrategy[bytes]:
    envelope = st.fixed_dictionaries({"signed": st.text(max_size=200) | json_values,
                                      "hmac": st.text(max_size=70) | json_values})
    signed_bodies = st.builds(
        lambda name, counter, body, device: sign_command(SECRET, "fuzzer", counter, name, body, device),
        st.sampled_from(["reload", "enroll", "delete", "claim", "other"]),
        st.integers(-5, 2**64), st.dictionaries(st.sampled_from(["name", "image", "live_capture", "identity", "x"]),
                                                json_values, max_size=3),
        st.sampled_from([None, "door1", "door2"]))
    nested = st.integers(1, 60000).map(lambda n: b"[" * n + b"]" * n)
    return (st.binary(max_size=300) | envelope.map(lambda e: json.dumps(e).encode()) | signed_bodies | nested
            | json_values.map(lambda v: json.dumps(v).encode()))


@fuzz(300)
@given(st.sampled_from(["reload", "enroll", "delete", "x", "é" * 30]), _payloads())
def test_commands_are_refused_or_run_never_raise(tmp_path_factory, name: str, payload: bytes) -> None:
    handlers = Handlers()
    forgotten: list[str] = []
    proc = CommandProcessor("door1", SECRET, tmp_path_factory.mktemp("c") / "counters.json", handlers,
                            forgotten.append)
    result = proc.handle(name, payload)
    assert result["status"] in ("ok", "refused", "error")
    json.dumps(result)  # cmd_result must be publishable
    if result["status"] == "refused":
        assert handlers.calls == [] and isinstance(result["reason"], str)


@fuzz(300)
@given(st.sampled_from(["signed", "unsigned", "off"]), _payloads())
def test_claims_are_refused_or_name_an_identity(tmp_path_factory, mode: str, payload: bytes) -> None:
    verifier = ClaimVerifier(mode, "door1", SECRET, tmp_path_factory.mktemp("c") / "claims.json")
    try:
        identity, _ = verifier.verify(payload)
    except Refused as exc:
        assert exc.reason
        return
    assert mode != "off" and isinstance(identity, str) and 0 < len(identity) <= 200
    assert not any(ord(c) < 32 for c in identity)


# -- configuration -----------------------------------------------------------------------------------------------

PATH_KEYS = {"store.path", "store.key_file", "models.model_dir", "mqtt.password_file", "mqtt.tls_ca", "mqtt.tls_cert",
             "mqtt.tls_key", "mqtt.outbox_path", "mqtt.command_secret_file", "mqtt.command_state_path",
             "mqtt.claim_secret_file", "mqtt.claim_state_path", "camera.source", "web.accounts_path",
             "web.decisions_path"}


def _defaults() -> dict[str, Any]:
    from edge.config import defaults

    out: dict[str, Any] = {"profile": "door"}
    for section, vals in defaults().items():
        if isinstance(vals, dict):
            out.update({f"{section}.{k}": v for k, v in vals.items() if k != "windows"})
    for rule in ("colin", "Colin", "nobody"):
        out[f"access.windows.{rule}"] = ["daily 00:00-24:00"]
    out["unknown.key"] = 1
    return out


DEFAULTS = _defaults()


def _keys() -> list[str]:
    return sorted(DEFAULTS)


def _typed(key: str) -> st.SearchStrategy[Any]:
    """Mostly values of the key's own type (so parsing gets past the type check and the ranges, the checks
    and the daemon are what is fuzzed), sometimes anything at all."""
    default = DEFAULTS[key]
    if isinstance(default, bool):
        own: st.SearchStrategy[Any] = st.booleans()
    elif isinstance(default, int):
        own = st.integers(-10, 10**5) | st.sampled_from([0, 1, 2, 65535, 2**31])
    elif isinstance(default, float):
        own = st.floats() | st.floats(0, 100) | st.sampled_from([0.0, 0.01, 1e-9, 1e9])
    elif isinstance(default, list):
        own = st.lists(st.sampled_from(["mon-fri 08:00-18:00", "daily 22:00-06:00", "sun 25:00-26:00", "x"]),
                       max_size=2)
    else:
        own = scalars.filter(lambda v: isinstance(v, str))
    return own | own | own | values


scalars = (st.booleans() | st.integers(-10**6, 10**6) | st.floats() | st.text(max_size=30)
           | st.sampled_from(["door", "kiosk", "signed", "unsigned", "off", "5", "3.1.1", "deny", "allow", "json",
                              "debug", "mon-fri 08:00-18:00", "daily 22:00-06:00", "Europe", "UTC", "auto", "none",
                              "sface", "sfacee", "dlib-resnet", "127.0.0.1:0", "127.0.0.1:notaport", ""]))
values = scalars | st.lists(scalars, max_size=3) | st.dictionaries(st.text(max_size=5), scalars, max_size=2)


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {}) if isinstance(node.get(p, {}), dict) else node
    node[last] = value


@pytest.fixture(scope="module")
def site(tmp_path_factory, lfw) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fuzzsite")
    (root / "frames").mkdir()
    shutil.copy(lfw / "images/Colin_Powell/Colin_Powell_0040.jpg", root / "frames" / "01.jpg")
    (root / "afile.txt").write_text("not a certificate")
    return {"root": root, "frames": root / "frames", "file": root / "afile.txt"}


def _base(site: dict[str, Path], n: int) -> dict[str, Any]:
    work = site["root"] / f"run{n}"
    work.mkdir()
    return {"profile": "kiosk",
            "camera": {"source": str(site["frames"]), "fps": 30, "frames_per_image": 3},
            "store": {"path": str(work / "s.db"), "create": True},
            "mqtt": {"enabled": False, "outbox_path": str(work / "o.db"),
                     "command_state_path": str(work / "c.json"), "claim_state_path": str(work / "cl.json")},
            "health": {"listen": "127.0.0.1:0"},
            "web": {"listen": "127.0.0.1:0", "accounts_path": str(work / "a.db"),
                    "decisions_path": str(work / "d.db")}}


def _no_nan(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_no_nan(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_no_nan(v) for v in value)
    return True


COUNTER = iter(range(10**9))
RESULTS: dict[str, int] = {"parsed": 0, "refused_by_parse": 0, "refused_by_check": 0, "started": 0}


@fuzz(15)
@given(st.lists(st.sampled_from(_keys()), min_size=1, max_size=3).flatmap(
           lambda keys: st.tuples(*[st.tuples(st.just(k), _typed(k)) for k in keys])),
       st.lists(st.tuples(st.sampled_from(sorted(PATH_KEYS)), st.sampled_from(["missing", "folder", "file"])),
                max_size=1))
def test_a_configuration_that_passes_the_check_starts(site, monkeypatch, changes, paths) -> None:
    """Mutated configurations: parse refuses with ConfigError (exit 2) or accepts no NaN; `run --check`
    reports problems without raising; a configuration it accepts starts and runs."""
    from dataclasses import asdict

    from edge.config import ConfigError, parse
    from edge.daemon import Daemon
    from edge.preflight import check

    n = next(COUNTER)
    data = _base(site, n)
    monkeypatch.chdir(site["root"] / f"run{n}")  # relative paths a mutation produces stay in the sandbox
    for key, value in changes:
        if key in PATH_KEYS:
            continue
        if key in ("health.listen", "web.listen") and isinstance(value, str) and not value.endswith(":0"):
            continue  # never bind a real port number from a fuzzer
        _set(data, key, value)
    for key, kind in paths:
        target = {"missing": site["root"] / "missing" / "x", "folder": site["root"], "file": site["file"]}[kind]
        _set(data, key, str(target))
    try:
        cfg = parse(data)
    except ConfigError as exc:
        RESULTS["refused_by_parse"] += 1
        if os.environ.get("FACEGATE_FUZZ_VERBOSE"):
            print("parse:", exc)
        return
    RESULTS["parsed"] += 1
    assert _no_nan(asdict(cfg))
    report = check(cfg)  # never raises: every problem is a line
    assert all(isinstance(p, str) and p for p in report.problems)
    if report.problems:
        RESULTS["refused_by_check"] += 1
        if os.environ.get("FACEGATE_FUZZ_VERBOSE"):
            print("check:", report.problems)
        return
    errors: list[BaseException] = []
    daemon = Daemon(cfg)

    def run() -> None:
        try:
            daemon.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(1.0)
    daemon.stop()
    thread.join(30)
    assert not thread.is_alive() and errors == []
    RESULTS["started"] += 1


def test_fuzz_summary(capsys) -> None:
    """Prints what the configuration property saw (run after it in file order)."""
    with capsys.disabled():
        print(f"\nconfiguration fuzz: {json.dumps(RESULTS)}")
    assert isinstance(FacegateError, type)
