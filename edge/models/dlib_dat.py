"""A reader for networks stored by dlib's `serialize()` (e.g. `dlib_face_recognition_resnet_model_v1.dat`).

Written from dlib's documented serialisation rules, not from any converter:

- integers: one control byte (low nibble = number of payload bytes, 0x80 = negative) and then the magnitude,
  least significant byte first;
- floating point: a (int64 mantissa, int16 exponent) pair of such integers, value = mantissa · 2^exponent, with
  exponents 32000/32001/32002 meaning +inf/−inf/NaN;
- strings: an integer length and the bytes; bools: the ASCII characters '0' / '1';
- tensors: version 2, four int64 dimensions (n, k, rows, cols), then raw little-endian float32 values;
  alias tensors (shapes into a parameter tensor): version 1 and the four dimensions.

A network is a loss layer (version, loss details, subnetwork). Each `add_layer` writes its version, then its
whole subnetwork, then its own details and bookkeeping, so the file begins with a chain of version numbers
(outermost first), then the input layer, then every layer's details innermost first. Tag and skip layers write
only a version (1) and their subnetwork: the file says where they are but not their ids, which come from the
network definition (see edge/models/dlib_resnet_graph.py).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# float_details exponents that encode the special values (dlib/float_details.h).
_INF, _NINF, _NAN = 32000, 32001, 32002

INPUT_NAMES = ("input_rgb_image_sized", "input_rgb_image")
# The layer versions this reader decodes (every version current dlib still reads), and their kinds.
LAYER_KINDS = {"con_4": "con", "con_5": "con", "con_6": "con", "bn_con2": "bn_con", "bn_fc2": "bn_fc",
               "affine_": "affine", "affine_2": "affine", "relu_": "relu", "relu_2": "relu", "add_prev_": "add_prev",
               "max_pool_2": "max_pool", "avg_pool_2": "avg_pool", "fc_2": "fc", "fc_3": "fc"}
LAYER_NAMES = tuple(LAYER_KINDS)


class DlibFormatError(ValueError):
    """The bytes are not a dlib-serialised object of the kind expected (with the offset where it failed)."""


@dataclass
class Layer:
    """One layer as stored: `kind` is the serialised name without its version suffix (e.g. "con", "bn_con")."""

    kind: str
    version: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class DlibNet:
    loss: Layer
    input: Layer
    # Every layer from the input upwards, including "mark" entries for tag/skip layers (ids not stored).
    layers: list[Layer]

    def compute_layers(self) -> list[Layer]:
        return [la for la in self.layers if la.kind != "mark"]


class Reader:
    """Sequential decoder of dlib's primitive encodings over a byte buffer."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = memoryview(data)
        self.pos = pos

    def _fail(self, what: str) -> DlibFormatError:
        return DlibFormatError(f"{what} at byte {self.pos}")

    def _take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise self._fail(f"unexpected end of data reading {n} byte(s)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self, max_bytes: int = 8) -> int:
        start = self.pos
        ctrl = self._take(1)[0]
        size = ctrl & 0x0F
        if size == 0 or size > max_bytes or ctrl & 0x70:
            self.pos = start
            raise self._fail(f"bad integer control byte 0x{ctrl:02x}")
        value = int.from_bytes(self._take(size), "little")
        return -value if ctrl & 0x80 else value

    def uint(self, max_bytes: int = 8) -> int:
        start = self.pos
        value = self.int(max_bytes)
        if value < 0:
            self.pos = start
            raise self._fail("negative value for an unsigned integer")
        return value

    def float(self) -> float:
        mantissa = self.int(8)
        exponent = self.int(2)
        if exponent == _INF:
            return math.inf
        if exponent == _NINF:
            return -math.inf
        if exponent == _NAN:
            return math.nan
        return math.ldexp(mantissa, exponent)

    def float32(self) -> float:
        """A value dlib held as `float`: rounded to single precision as dlib's own loader does."""
        return struct.unpack("<f", struct.pack("<f", self.float()))[0]

    def bool(self) -> bool:
        ch = bytes(self._take(1))
        if ch not in (b"0", b"1"):
            self.pos -= 1
            raise self._fail(f"bad bool byte {ch!r}")
        return ch == b"1"

    def string(self, max_len: int = 1 << 20) -> str:
        n = self.uint()
        if n > max_len:
            raise self._fail(f"string of {n} bytes")
        return bytes(self._take(n)).decode("latin-1")

    def peek_string(self, max_len: int = 64) -> str | None:
        """The string at the current position if there plausibly is one (position unchanged)."""
        start = self.pos
        try:
            s = self.string(max_len)
        except DlibFormatError:
            return None
        finally:
            self.pos = start
        return s if s.isprintable() and s else None

    def tensor(self) -> np.ndarray:
        version = self.int()
        if version != 2:
            raise self._fail(f"tensor version {version} (only 2 is defined)")
        shape = tuple(self.int() for _ in range(4))
        if any(d < 0 for d in shape):
            raise self._fail(f"negative tensor shape {shape}")
        count = int(np.prod(shape))
        raw = self._take(4 * count)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def alias_tensor(self) -> tuple[int, int, int, int]:
        version = self.int()
        if version != 1:
            raise self._fail(f"alias_tensor version {version} (only 1 is defined)")
        return tuple(self.int() for _ in range(4))  # type: ignore[return-value]


# -- layer details ---------------------------------------------------------------------------------------
def _multipliers(r: Reader) -> dict[str, float]:
    return {k: r.float() for k in ("lr_mult", "wd_mult", "bias_lr_mult", "bias_wd_mult")}


def _con(r: Reader, version: str) -> dict[str, Any]:
    p: dict[str, Any] = {"params": r.tensor(), "num_filters": r.int(), "nr": r.int(), "nc": r.int(),
                         "stride_y": r.int(), "stride_x": r.int(), "padding_y": r.int(), "padding_x": r.int(),
                         "filters_shape": r.alias_tensor(), "biases_shape": r.alias_tensor()}
    p.update(_multipliers(r))
    p["use_bias"] = r.bool() if version in ("con_5", "con_6") else True
    p["use_relu"] = r.bool() if version == "con_6" else False
    flat = p["params"].reshape(-1)
    n_w = int(np.prod(p["filters_shape"]))
    p["weight"] = flat[:n_w].reshape(p["filters_shape"])
    n_b = int(np.prod(p["biases_shape"]))
    p["bias"] = flat[n_w:n_w + n_b].copy() if p["use_bias"] and flat.size >= n_w + n_b else None
    return p


def _gamma_beta(r: Reader) -> dict[str, Any]:
    params = r.tensor().reshape(-1)
    g, b = r.alias_tensor(), r.alias_tensor()
    n = int(np.prod(g))
    if params.size != n + int(np.prod(b)):
        raise r._fail(f"parameter tensor of {params.size} values for gamma {g} and beta {b}")
    return {"gamma": params[:n].copy(), "beta": params[n:].copy(), "gamma_shape": g}


def _bn(r: Reader, version: str) -> dict[str, Any]:
    p = _gamma_beta(r)
    p.update(means=r.tensor(), invstds=r.tensor(), running_means=r.tensor().reshape(-1),
             running_variances=r.tensor().reshape(-1), num_updates=r.uint(), window=r.uint())
    p.update(_multipliers(r))
    p["eps"] = r.float()
    return p


def _affine(r: Reader, version: str) -> dict[str, Any]:
    p = _gamma_beta(r)
    p["mode"] = r.int()  # dlib's layer_mode: 0 = CONV_MODE (per channel), 1 = FC_MODE (per element)
    p["disabled"] = r.bool() if version == "affine_2" else False
    return p


def _relu(r: Reader, version: str) -> dict[str, Any]:
    return {"disabled": r.bool() if version == "relu_2" else False}


def _pool(r: Reader, version: str) -> dict[str, Any]:
    return {k: r.int() for k in ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")}


def _fc(r: Reader, version: str) -> dict[str, Any]:
    p: dict[str, Any] = {"num_outputs": r.uint(), "num_inputs": r.uint(), "params": r.tensor(),
                         "weights_shape": r.alias_tensor(), "biases_shape": r.alias_tensor(),
                         "bias_mode": r.int()}  # 0 = FC_HAS_BIAS, 1 = FC_NO_BIAS
    p.update(_multipliers(r))
    p["use_bias"] = (r.bool() if version == "fc_3" else True) and p["bias_mode"] == 0
    flat = p["params"].reshape(-1)
    n_w = int(np.prod(p["weights_shape"]))
    # dlib multiplies (samples × inputs) by a (num_inputs × num_outputs) weight matrix.
    p["weight"] = flat[:n_w].reshape(p["num_inputs"], p["num_outputs"])
    p["bias"] = flat[n_w:n_w + p["num_outputs"]].copy() if p["use_bias"] else None
    return p


_DETAILS = {"con": _con, "bn_con": _bn, "bn_fc": _bn, "affine": _affine, "relu": _relu, "add_prev": lambda r, v: {},
            "max_pool": _pool, "avg_pool": _pool, "fc": _fc}


def read_layer(r: Reader) -> Layer:
    """One layer's details: its name-and-version string, then its own fields."""
    start = r.pos
    version = r.string(64)
    kind = LAYER_KINDS.get(version)
    if kind is None:
        raise DlibFormatError(f"unsupported layer {version!r} at byte {start}")
    return Layer(kind, version, _DETAILS[kind](r, version))


def read_input(r: Reader) -> Layer:
    version = r.string(64)
    if version not in INPUT_NAMES:
        raise r._fail(f"unsupported input layer {version!r}")
    p: dict[str, Any] = {"avg": (r.float32(), r.float32(), r.float32())}  # red, green, blue
    if version == "input_rgb_image_sized":
        p["nr"], p["nc"] = r.uint(), r.uint()
    return Layer("input", version, p)


def read_loss(r: Reader) -> Layer:
    version = r.string(64)
    if version == "loss_metric_":
        return Layer("loss_metric", version, {"margin": 0.1, "dist_thresh": 0.75})  # dlib's old fixed values
    if version == "loss_metric_2":
        return Layer("loss_metric", version, {"margin": r.float32(), "dist_thresh": r.float32()})
    raise r._fail(f"unsupported loss layer {version!r}")


def _trailer(r: Reader, version: int, with_input: bool) -> None:
    """add_layer's bookkeeping after its details: three flags and scratch tensors (empty in saved models)."""
    for _ in range(3):  # setup called, gradient stale, output/gradient disabled
        r.bool()
    r.tensor()  # x_grad
    r.tensor()  # cached_output
    if with_input:
        r.tensor()  # grad_final
        if version >= 3:
            r.uint()  # sample_expansion_factor
    elif version >= 2:
        r.tensor()  # params_grad


def read_net(data: bytes) -> DlibNet:
    """Decode a network saved by dlib (loss layer on top) into its layers, input first."""
    r = Reader(data)
    if (v := r.int()) != 1:
        raise r._fail(f"loss layer version {v} (only 1 is defined)")
    loss = read_loss(r)
    chain: list[int] = []
    while True:
        name = r.peek_string()
        if name in INPUT_NAMES:
            break
        v = r.int()
        if not 1 <= v <= 3:
            raise r._fail(f"layer version {v} in the layer chain")
        chain.append(v)
        if len(chain) > 100_000:
            raise r._fail("layer chain without an input layer")
    if not chain:
        raise r._fail("no layers between the loss and the input layer")
    inp = read_input(r)
    layers: list[Layer] = []
    innermost = chain.pop()
    # The innermost wrapper is an add_layer (version 2 or 3, followed by its details) or a tag layer (1 or 2,
    # followed by a cached-output tensor); version 2 is told apart by what follows.
    nxt = r.peek_string()
    if innermost == 3 or (innermost == 2 and nxt in LAYER_NAMES):
        layers.append(read_layer(r))
        _trailer(r, innermost, with_input=True)
    else:
        layers.append(Layer("mark", "tag"))
        r.tensor()
        r.tensor()
        r.bool()
        if innermost >= 2:
            r.uint()
    # Version 2 = add_layer with details; version 1 = tag or skip layer, nothing after its subnetwork. (dlib's
    # pre-2016 add_layer version 1 cannot be told apart from a tag layer and is not supported.)
    for v in reversed(chain):
        if v == 1:
            layers.append(Layer("mark", "tag_or_skip"))
        elif v == 2:
            layers.append(read_layer(r))
            _trailer(r, v, with_input=False)
        else:
            raise r._fail(f"layer version {v} above the input")
    if r.pos != len(r.data):
        raise r._fail(f"{len(r.data) - r.pos} trailing byte(s)")
    return DlibNet(loss=loss, input=inp, layers=layers)


def load_net(path: Path) -> DlibNet:
    return read_net(Path(path).read_bytes())


def bn_as_affine(p: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Frozen batch-norm → (scale, shift), exactly as dlib's affine_(bn_) constructor folds it."""
    scale = (p["gamma"] / np.sqrt(p["running_variances"] + np.float32(p["eps"]))).astype(np.float32)
    shift = (p["beta"] - scale * p["running_means"]).astype(np.float32)
    return scale, shift
