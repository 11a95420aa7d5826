"""The dlib serialisation reader: primitives on hand-made bytes, a small hand-made network, the real .dat."""

from __future__ import annotations

import importlib.util
import math
import struct
from pathlib import Path

import numpy as np
import pytest

from edge.models.dlib_dat import DlibFormatError, Reader, bn_as_affine, load_net, read_net


# -- a minimal encoder for building test streams (dlib's rules, as documented in edge/models/dlib_dat.py) ----------
def enc_int(v: int) -> bytes:
    mag = abs(v)
    body = mag.to_bytes(max(1, (mag.bit_length() + 7) // 8), "little")
    return bytes([len(body) | (0x80 if v < 0 else 0)]) + body


def enc_float(v: float) -> bytes:
    num, den = float(v).as_integer_ratio()  # exact: v = num / den, den a power of two
    exponent = -(den.bit_length() - 1)
    while num and num % 256 == 0:  # like dlib, keep the mantissa short by moving zero bytes into the exponent
        num //= 256
        exponent += 8
    return enc_int(num) + enc_int(exponent)


def enc_str(s: str) -> bytes:
    return enc_int(len(s)) + s.encode()


def enc_bool(b: bool) -> bytes:
    return b"1" if b else b"0"


def enc_tensor(a: np.ndarray | None, shape: tuple[int, int, int, int] = (0, 0, 0, 0)) -> bytes:
    if a is not None:
        shape = tuple(a.shape) + (1,) * (4 - a.ndim)  # type: ignore[assignment]
    data = b"" if a is None else np.asarray(a, "<f4").tobytes()
    return enc_int(2) + b"".join(enc_int(d) for d in shape) + data


def enc_alias(shape: tuple[int, int, int, int]) -> bytes:
    return enc_int(1) + b"".join(enc_int(d) for d in shape)


def trailer(with_input: bool = False) -> bytes:
    empty = enc_tensor(None)
    tail = b"000" + empty + empty
    return tail + (empty + enc_int(1) if with_input else empty)


# -- primitives -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("raw", "value"), [
    (b"\x01\x00", 0), (b"\x01\x02", 2), (b"\x01\xff", 255), (b"\x02\x00\x01", 256),
    (b"\x81\x05", -5), (b"\x81\x1c", -28), (b"\x04\x78\x56\x34\x12", 0x12345678),
])
def test_int(raw: bytes, value: int) -> None:
    r = Reader(raw)
    assert r.int() == value
    assert r.pos == len(raw)
    assert enc_int(value) == raw


def test_int_rejects_bad_control_byte_and_truncation() -> None:
    with pytest.raises(DlibFormatError, match="control byte"):
        Reader(b"\x00").int()
    with pytest.raises(DlibFormatError, match="control byte"):
        Reader(b"\x03\x00\x00\x00").int(max_bytes=2)
    with pytest.raises(DlibFormatError, match="end of data"):
        Reader(b"\x04\x01\x02").int()
    with pytest.raises(DlibFormatError, match="negative"):
        Reader(b"\x81\x01").uint()


def test_float_from_the_real_file_header() -> None:
    # loss_metric_2's margin and distance threshold as dlib wrote them: 0x0ad7a3·2^-28 and 0x99999a·2^-24.
    r = Reader(b"\x03\x0a\xd7\xa3\x81\x1c\x03\x9a\x99\x99\x81\x18")
    assert r.float32() == pytest.approx(0.04, rel=1e-7)
    assert r.float32() == np.float32(0.6)


@pytest.mark.parametrize("value", [0.0, 1.0, -2.5, 122.782, 1e-30, 3.0e38])
def test_float_round_trip(value: float) -> None:
    assert Reader(enc_float(value)).float() == value


def test_float_special_values() -> None:
    assert Reader(enc_int(0) + enc_int(32000)).float() == math.inf
    assert Reader(enc_int(0) + enc_int(32001)).float() == -math.inf
    assert math.isnan(Reader(enc_int(0) + enc_int(32002)).float())


def test_string_bool_tensor_alias() -> None:
    values = np.arange(6, dtype=np.float32).reshape(2, 3, 1, 1) - 2.5
    raw = enc_str("relu_2") + b"10" + enc_tensor(values) + enc_alias((1, 32, 1, 1))
    r = Reader(raw)
    assert r.string() == "relu_2"
    assert (r.bool(), r.bool()) == (True, False)
    t = r.tensor()
    assert t.shape == (2, 3, 1, 1) and t.dtype == np.float32
    np.testing.assert_array_equal(t, values)
    assert r.alias_tensor() == (1, 32, 1, 1)
    assert r.pos == len(raw)


def test_tensor_rejects_other_versions_and_short_data() -> None:
    with pytest.raises(DlibFormatError, match="tensor version 1"):
        Reader(enc_int(1) + enc_int(0) * 4).tensor()
    with pytest.raises(DlibFormatError, match="end of data"):
        Reader(enc_int(2) + b"".join(enc_int(d) for d in (1, 1, 1, 4)) + b"\x00" * 8).tensor()
    with pytest.raises(DlibFormatError, match="bool"):
        Reader(b"x").bool()


# -- a hand-made network ----------------------------------------------------------------------------------------------
def con_details(w: np.ndarray, b: np.ndarray, stride: int, pad: int) -> bytes:
    n, k, nr, nc = w.shape
    params = np.concatenate([w.ravel(), b.ravel()]).reshape(-1, 1, 1, 1)
    return (enc_str("con_5") + enc_tensor(params) + enc_int(n) + enc_int(nr) + enc_int(nc) + enc_int(stride)
            + enc_int(stride) + enc_int(pad) + enc_int(pad) + enc_alias((n, k, nr, nc)) + enc_alias((1, n, 1, 1))
            + enc_float(1) + enc_float(1) + enc_float(1) + enc_float(0) + enc_bool(True))


def bn_details(gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float) -> bytes:
    c = len(gamma)
    params = np.concatenate([gamma, beta]).reshape(1, -1, 1, 1)
    return (enc_str("bn_con2") + enc_tensor(params) + enc_alias((1, c, 1, 1)) + enc_alias((1, c, 1, 1))
            + enc_tensor(None) + enc_tensor(None) + enc_tensor(mean.reshape(1, c, 1, 1))
            + enc_tensor(var.reshape(1, c, 1, 1)) + enc_int(7) + enc_int(100)
            + enc_float(1) + enc_float(1) + enc_float(1) + enc_float(0) + enc_float(eps))


def fc_details(w: np.ndarray) -> bytes:
    n_in, n_out = w.shape
    return (enc_str("fc_2") + enc_int(n_out) + enc_int(n_in) + enc_tensor(w.reshape(-1, 1, 1, 1))
            + enc_alias((n_in, n_out, 1, 1)) + enc_alias((0, 0, 0, 0)) + enc_int(1)
            + enc_float(1) + enc_float(1) + enc_float(1) + enc_float(0))


def tiny_net() -> tuple[bytes, dict[str, np.ndarray]]:
    """loss_metric<fc_no_bias<2, avg_pool_everything<relu<add_prev1<bn_con<tag1<con<3,3,3,1,1,
    input_rgb_image_sized<4>>>>>>>>>, as dlib would serialise it."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    gamma, beta = np.float32([1, 2, 3]), np.float32([0.5, -0.5, 0])
    mean, var = np.float32([0.1, 0.2, 0.3]), np.float32([1, 4, 9])
    fc = rng.standard_normal((3, 2)).astype(np.float32)
    data = (enc_int(1) + enc_str("loss_metric_2") + enc_float(0.04) + enc_float(0.6)
            # chain, outermost first: fc, avg_pool, relu, add_prev, bn (add_layers, 2), tag (1), con+input (3)
            + enc_int(2) * 5 + enc_int(1) + enc_int(3)
            + enc_str("input_rgb_image_sized") + enc_float(122.782) + enc_float(117.001) + enc_float(104.298)
            + enc_int(4) + enc_int(4)
            + con_details(w, b, 1, 1) + trailer(with_input=True)
            + bn_details(gamma, beta, mean, var, 1e-5) + trailer()
            + enc_str("add_prev_") + trailer()
            + enc_str("relu_2") + enc_bool(False) + trailer()
            + enc_str("avg_pool_2") + b"".join(enc_int(v) for v in (0, 0, 1, 1, 0, 0)) + trailer()
            + fc_details(fc) + trailer())
    return data, {"w": w, "b": b, "gamma": gamma, "beta": beta, "mean": mean, "var": var, "fc": fc}


def test_reads_a_hand_made_network() -> None:
    data, want = tiny_net()
    net = read_net(data)
    assert net.loss.params["margin"] == pytest.approx(0.04) and net.loss.params["dist_thresh"] == pytest.approx(0.6)
    assert net.input.params["avg"] == pytest.approx((122.782, 117.001, 104.298))
    assert (net.input.params["nr"], net.input.params["nc"]) == (4, 4)
    assert [la.kind for la in net.layers] == ["con", "mark", "bn_con", "add_prev", "relu", "avg_pool", "fc"]
    con = net.layers[0].params
    np.testing.assert_array_equal(con["weight"], want["w"])
    np.testing.assert_array_equal(con["bias"], want["b"])
    assert (con["stride_y"], con["padding_x"], con["use_bias"], con["use_relu"]) == (1, 1, True, False)
    bn = net.layers[2].params
    scale, shift = bn_as_affine(bn)
    np.testing.assert_allclose(scale, want["gamma"] / np.sqrt(want["var"] + 1e-5), rtol=1e-6)
    np.testing.assert_allclose(shift, want["beta"] - scale * want["mean"], rtol=1e-6)
    assert bn["num_updates"] == 7 and bn["window"] == 100
    assert net.layers[5].params["nr"] == 0  # avg_pool_everything
    fc = net.layers[6].params
    np.testing.assert_array_equal(fc["weight"], want["fc"])
    assert fc["bias"] is None and not fc["use_bias"]
    assert [la.kind for la in net.compute_layers()] == ["con", "bn_con", "add_prev", "relu", "avg_pool", "fc"]


def test_rejects_damaged_networks() -> None:
    data, _ = tiny_net()
    with pytest.raises(DlibFormatError, match="trailing"):
        read_net(data + b"\x00")
    with pytest.raises(DlibFormatError):
        read_net(data[:-40])
    with pytest.raises(DlibFormatError, match="unsupported layer 'add_prex_'"):
        read_net(data.replace(b"add_prev_", b"add_prex_"))
    with pytest.raises(DlibFormatError, match="loss layer"):
        read_net(b"\x01\x02" + data[2:])


# -- the real file ----------------------------------------------------------------------------------------------------
def dat_path() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("face-recognition-models is not installed (dev extra)")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "dlib_face_recognition_resnet_model_v1.dat"


def test_reads_dlibs_face_recognition_model() -> None:
    net = load_net(dat_path())
    assert net.loss.version == "loss_metric_2"
    assert net.loss.params["dist_thresh"] == np.float32(0.6)
    assert net.input.version == "input_rgb_image_sized"
    assert net.input.params["avg"] == (np.float32(122.782), np.float32(117.001), np.float32(104.298))
    kinds = [la.kind for la in net.layers]
    assert kinds.count("con") == 29 and kinds.count("affine") == 29 and kinds.count("add_prev") == 14
    assert kinds.count("mark") == 14 + 2 * 4  # a tag per block, plus tag2 + skip1 per down-sampling block
    convs = [la.params for la in net.layers if la.kind == "con"]
    assert convs[0]["weight"].shape == (32, 3, 7, 7) and (convs[0]["stride_y"], convs[0]["padding_y"]) == (2, 0)
    weights = sum(p["weight"].size + p["bias"].size for p in convs)
    # 3·32·49 + 32 (stem), then per 3×3 conv cin·cout·9 + cout: the whole ResNet, read to the last byte.
    assert weights == 5_574_720
    fc = net.layers[-1].params
    assert fc["weight"].shape == (256, 128) and fc["bias"] is None
    assert np.isfinite(fc["weight"]).all() and struct.calcsize("<f") == 4
