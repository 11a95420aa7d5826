"""Receptive-field arithmetic on toy ONNX graphs: by hand, and against what onnxruntime actually computes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge.errors import ModelError
from edge.explain.receptive import Field, feature_maps, receptive_fields
from edge.explain.units import tap
from edge.runtime.onnx import OnnxRuntime

SIDE = 16


def _conv(name: str, inp: str, cin: int, cout: int, k: int, rng: np.random.Generator, **attrs) -> tuple:
    # Positive weights: a brighter input pixel raises every unit that sees it, so "sees" can be measured.
    w = numpy_helper.from_array(rng.uniform(0.5, 1.0, (cout, cin, k, k)).astype(np.float32), f"{name}_w")
    return helper.make_node("Conv", [inp, f"{name}_w"], [name], name=name, kernel_shape=[k, k], **attrs), w


def _model(nodes: list, inits: list, outputs: list[str], side: int = SIDE) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "toy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, side, side])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["n", "c", "h", "w"]) for o in outputs], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def residual() -> onnx.ModelProto:
    """conv 3×3 → relu → maxpool 2/2 → { conv 3×3 stride 2 pad 1 ; conv 1×1 stride 2 } → add."""
    rng = np.random.default_rng(0)
    c1, w1 = _conv("c1", "x", 1, 2, 3, rng, pads=[1, 1, 1, 1])
    relu = helper.make_node("Relu", ["c1"], ["r1"])
    pool = helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2])
    c2, w2 = _conv("c2", "p1", 2, 2, 3, rng, pads=[1, 1, 1, 1], strides=[2, 2])
    c3, w3 = _conv("c3", "p1", 2, 2, 1, rng, strides=[2, 2])
    add = helper.make_node("Add", ["c2", "c3"], ["y"])
    return _model([c1, relu, pool, c2, c3, add], [w1, w2, w3], ["y"])


@pytest.fixture
def dilated() -> onnx.ModelProto:
    """conv 3×3 dilation 2 pad 2 → average pool 3/2 pad 1 ceil_mode → conv 3×3 stride 2 SAME_UPPER."""
    rng = np.random.default_rng(1)
    c1, w1 = _conv("c1", "x", 1, 2, 3, rng, pads=[2, 2, 2, 2], dilations=[2, 2])
    pool = helper.make_node("AveragePool", ["c1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                            ceil_mode=1)
    c2, w2 = _conv("c2", "p1", 2, 2, 3, rng, strides=[2, 2], auto_pad="SAME_UPPER")
    return _model([c1, pool, c2], [w1, w2], ["c2"])


@pytest.fixture
def padded() -> onnx.ModelProto:
    """conv 3×3 stride 2 → Pad (one channel, one row on top, one column on the right) → conv 3×3, on 17×17
    (so the strided conv reaches the last pixel and every field is exact)."""
    rng = np.random.default_rng(4)
    c1, w1 = _conv("c1", "x", 1, 2, 3, rng, strides=[2, 2])
    pads = numpy_helper.from_array(np.array([0, 1, 1, 0, 0, 0, 0, 1], np.int64), "pads")
    pad = helper.make_node("Pad", ["c1", "pads"], ["p1"], name="pad")
    c2, w2 = _conv("c2", "p1", 3, 2, 3, rng)
    return _model([c1, pad, c2], [w1, pads, w2], ["c2"], side=17)


def test_fields_by_hand(residual: onnx.ModelProto, dilated: onnx.ModelProto, padded: onnx.ModelProto) -> None:
    f = receptive_fields(residual, (SIDE, SIDE))
    assert f["c1"] == Field((3, 3), (1, 1), (-1, -1), (16, 16))
    assert f["r1"] == f["c1"]  # point-wise
    assert f["p1"] == Field((4, 4), (2, 2), (-1, -1), (8, 8))
    assert f["c2"] == Field((8, 8), (4, 4), (-3, -3), (4, 4))
    assert f["c3"] == Field((4, 4), (4, 4), (-1, -1), (4, 4))
    assert f["y"] == Field((8, 8), (4, 4), (-3, -3), (4, 4))  # the union of both branches
    assert f["y"].box(1, 2) == (1, 5, 9, 13)
    g = receptive_fields(dilated, (SIDE, SIDE))
    assert g["c1"] == Field((5, 5), (1, 1), (-2, -2), (16, 16))  # k_eff = 2·(3 − 1) + 1
    assert g["p1"] == Field((7, 7), (2, 2), (-3, -3), (9, 9))  # ceil((16 + 2 − 3) / 2) + 1
    # SAME_UPPER on 9 with stride 2: 5 outputs need (5 − 1)·2 + 3 − 9 = 2 pixels of padding, one each side
    assert g["c2"] == Field((11, 11), (4, 4), (-5, -5), (5, 5))
    h = receptive_fields(padded, (17, 17))
    assert h["c1"] == Field((3, 3), (2, 2), (0, 0), (8, 8))
    assert h["p1"] == Field((3, 3), (2, 2), (-2, 0), (9, 9))  # a row on top: the origin moves up one jump
    assert h["c2"] == Field((7, 7), (2, 2), (-2, 0), (7, 7))
    # The maps worth showing: what a window op reads (the image itself excluded).
    assert feature_maps(residual, f) == ["r1", "p1"]


@pytest.mark.parametrize("graph", ["residual", "dilated", "padded"])
def test_fields_match_what_the_graph_computes(graph: str, request: pytest.FixtureRequest) -> None:
    """Brighten one input pixel at a time: exactly the units whose field holds it change (without dilation's
    holes), and onnxruntime's map sizes are the computed ones."""
    model = request.getfixturevalue(graph)
    side = model.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    fields = receptive_fields(model, (side, side))
    names = [n for n in fields if n != "x"]
    rt = OnnxRuntime(tap(model, names).SerializeToString())
    base_x = np.random.default_rng(2).uniform(0, 1, (1, 1, side, side)).astype(np.float32)
    base = rt.run({"x": base_x})
    for name, out in zip(names, base, strict=True):
        assert out.shape[2:] == fields[name].shape, name
    for py in range(side):
        for px in range(side):
            x = base_x.copy()
            x[0, 0, py, px] += 100.0
            for name, before, after in zip(names, base, rt.run({"x": x}), strict=True):
                f = fields[name]
                changed = np.abs(after - before).max(axis=(0, 1)) > 1e-3
                boxes = np.zeros(f.shape, bool)
                for i in range(f.shape[0]):
                    for j in range(f.shape[1]):
                        y0, x0, y1, x1 = f.box(i, j)
                        boxes[i, j] = y0 <= py < y1 and x0 <= px < x1
                assert not (changed & ~boxes).any(), f"{name}: a unit sees ({py}, {px}) outside its field"
                # Dense kernels: the field is exact, not just an upper bound (except for dilation's holes and a
                # Pad's own border units, constants that see nothing).
                if graph != "dilated" and name != "p1":
                    assert (changed == boxes).all(), f"{name}: field larger than what the unit sees"


def test_an_op_it_cannot_follow_is_refused() -> None:
    rng = np.random.default_rng(3)
    c1, w1 = _conv("c1", "x", 1, 1, 3, rng, pads=[1, 1, 1, 1])
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    up = helper.make_node("Resize", ["c1", "", "scales"], ["up"], name="upsample")
    model = _model([c1, up], [w1, scales], ["up"])
    with pytest.raises(ModelError, match="Resize node 'upsample'"):
        receptive_fields(model, (SIDE, SIDE))


def test_tap_refuses_an_unknown_tensor(residual: onnx.ModelProto) -> None:
    from edge.errors import FacegateError

    with pytest.raises(FacegateError, match="no tensor named nope"):
        tap(residual, ["nope"])
