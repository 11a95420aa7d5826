"""int8 made on the device: the float rewrites it starts from, the QDQ quantiser, the shipped SFace twin."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge.errors import ModelError
from edge.models.int8 import WEIGHT_BITS, activation_params, quantise_weights, quantize, tensors_to_range
from edge.models.prepare import fold_batchnorm, prelu_as_max
from edge.models.registry import Registry

RNG = np.random.default_rng(0)


def _session(model: onnx.ModelProto, optimized: str | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if optimized:
        so.optimized_model_filepath = optimized
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    return onnx.ModelProto.FromString(model.SerializeToString())


def prelu_net(slopes: np.ndarray) -> onnx.ModelProto:
    """Conv → BN → PRelu → depthwise Conv → PRelu → Conv → PRelu → Conv: SFace's pattern in small."""
    c = len(slopes)
    inits = [
        numpy_helper.from_array(RNG.normal(size=(c, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(RNG.normal(size=c).astype(np.float32), "b1"),
        numpy_helper.from_array(RNG.uniform(0.5, 2, c).astype(np.float32), "gamma"),
        numpy_helper.from_array(RNG.normal(size=c).astype(np.float32), "beta"),
        numpy_helper.from_array(RNG.normal(size=c).astype(np.float32), "mean"),
        numpy_helper.from_array(RNG.uniform(0.5, 2, c).astype(np.float32), "var"),
        numpy_helper.from_array(slopes.reshape(c, 1, 1).astype(np.float32), "a1"),
        numpy_helper.from_array(RNG.normal(size=(c, 1, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(slopes[::-1].reshape(c, 1, 1).copy().astype(np.float32), "a2"),
        numpy_helper.from_array(RNG.normal(size=(c, c, 1, 1)).astype(np.float32), "w3"),
        numpy_helper.from_array(np.full((c, 1, 1), 0.3, np.float32), "a3"),
        numpy_helper.from_array(RNG.normal(size=(4, c, 1, 1)).astype(np.float32), "w4"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["n1"]),
        helper.make_node("PRelu", ["n1", "a1"], ["p1"]),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], group=c, pads=[1, 1, 1, 1]),
        helper.make_node("PRelu", ["c2", "a2"], ["p2"]),
        helper.make_node("Conv", ["p2", "w3"], ["c3"]),
        helper.make_node("PRelu", ["c3", "a3"], ["p3"]),
        helper.make_node("Conv", ["p3", "w4"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


SLOPES = np.array([-0.8, -0.1, 0.0, 0.25, 0.9, 1.0, 1.1, 1.6], np.float32)  # a > 1 in the last two


def test_prelu_as_max_and_folded_batchnorm_are_exact():
    model = prelu_net(SLOPES)
    x = RNG.normal(size=(1, 3, 16, 16)).astype(np.float32)
    want = _session(model).run(None, {"x": x})[0]
    rewritten = prelu_as_max(fold_batchnorm(_copy(model)))
    ops = [n.op_type for n in rewritten.graph.node]
    assert "PRelu" not in ops and "BatchNormalization" not in ops and ops.count("Max") == 3
    np.testing.assert_allclose(_session(rewritten).run(None, {"x": x})[0], want, rtol=1e-4, atol=1e-4)


def test_slopes_above_one_are_negated_into_the_neighbouring_convs():
    model = prelu_net(SLOPES)
    rewritten = prelu_as_max(fold_batchnorm(_copy(model)))
    inits = {i.name: numpy_helper.to_array(i) for i in rewritten.graph.initializer}
    conv1 = next(n for n in rewritten.graph.node if n.op_type == "Conv" and n.output[0] == "n1")
    folded = inits[conv1.input[1]]
    original = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w1"))
    signs = np.sign(folded.reshape(8, -1)[:, 0] / original.reshape(8, -1)[:, 0])
    np.testing.assert_array_equal(signs, np.where(SLOPES > 1, -1, 1))  # gamma > 0: only the flip changes a sign


def test_prelu_without_a_foldable_producer_keeps_the_relu_form():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])
    slopes = numpy_helper.from_array(np.array([0.5, 1.5], np.float32).reshape(2, 1, 1), "a")
    model = helper.make_model(helper.make_graph([helper.make_node("PRelu", ["x", "a"], ["y"])], "g", [x], [y],
                                                [slopes]), opset_imports=[helper.make_opsetid("", 17)])
    data = RNG.normal(size=(1, 2, 4, 4)).astype(np.float32)
    rewritten = prelu_as_max(_copy(model))
    assert "Max" not in {n.op_type for n in rewritten.graph.node}
    np.testing.assert_allclose(_session(rewritten).run(None, {"x": data})[0],
                               np.where(data >= 0, data, np.array([0.5, 1.5]).reshape(2, 1, 1) * data), atol=1e-6)


def _ranges(model: onnx.ModelProto, inputs: np.ndarray) -> dict[str, list[float]]:
    names = tensors_to_range(model)
    probe = _copy(model)
    for n in names:
        probe.graph.output.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, None))
    outs = _session(probe).run(names, {"x": inputs})
    return {n: [float(v.min()), float(v.max())] for n, v in zip(names, outs, strict=True)}


def test_quantised_prelu_net_runs_on_integer_kernels_only(tmp_path):
    float_graph = prelu_as_max(fold_batchnorm(prelu_net(SLOPES)))
    x = RNG.normal(size=(1, 3, 16, 16)).astype(np.float32)
    ranges = _ranges(float_graph, x)
    q = quantize(_copy(float_graph), ranges)
    optimized = tmp_path / "opt.onnx"
    got = _session(q, str(optimized)).run(None, {"x": x})[0]
    want = _session(float_graph).run(None, {"x": x})[0]
    cos = float((got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want))
    assert cos > 0.99, cos
    ops = [n.op_type for n in onnx.load(str(optimized)).graph.node]
    # Every convolution became an integer kernel but the one writing the float graph output, every Max runs on
    # uint8; no float elementwise op is left.
    assert ops.count("Conv") == 1 and ops.count("QLinearConv") == 6 and ops.count("Max") == 3, ops
    assert not {"Mul", "Add", "Relu"} & set(ops), ops


def test_weights_stay_within_seven_bits_and_zero_is_exact():
    q, scale = quantise_weights(RNG.normal(size=(5, 3, 3, 3)).astype(np.float32), axis=0)
    assert q.dtype == np.int8 and np.abs(q).max() == 2 ** (WEIGHT_BITS - 1) - 1 == 63 and scale.shape == (5,)
    s, z = activation_params(-1.0, 3.0)
    assert 0 <= z <= 255 and abs(-z * s + 1.0) < s and activation_params(0.5, 2.0)[1] == 0  # 0 representable


def test_ranges_for_unknown_tensors_are_refused():
    with pytest.raises(ModelError, match="does not have"):
        quantize(prelu_as_max(fold_batchnorm(prelu_net(SLOPES))), {"no_such_tensor": [0.0, 1.0]})


def test_manifest_needs_ranges_for_quantize_int8_and_a_boolean_default():
    from edge.models.manifest import Manifest

    base = Registry().manifest("sface").to_dict()
    with pytest.raises(ModelError, match=r"quantize\.ranges"):
        Manifest.from_dict({**base, "prepare": ["quantize_int8"]})
    with pytest.raises(ModelError, match="default must be true or false"):
        Manifest.from_dict({**base, "default": "yes"})


def test_default_embedder_is_manifest_chosen_and_one_switch_away(tmp_path):
    reg = Registry(tmp_path)
    assert reg.default_embedder() == "sface-int8"
    assert reg.manifest("sface-int8").quantize["weight_bits"] == WEIGHT_BITS
    reg.write_override("sface-int8", {"default": False})
    assert reg.default_embedder() == "sface"
    reg.write_override("sface-int8", {"default": True})
    reg.write_override("sface", {"default": True})
    with pytest.raises(ModelError, match="several embedders"):
        reg.default_embedder()


@pytest.fixture(scope="module")
def faces(lfw):
    from edge.imageio import load_bgr
    from edge.vision.detect import make_detector, select_face

    reg = Registry()
    det = make_detector(reg, "yunet")
    out = []
    for p in sorted((lfw / "images").glob("*/*_0001.jpg"))[::97][:40]:
        img = load_bgr(p)
        out.append((img, select_face(det.detect(img), img.shape, "central")))
    return out


def test_shipped_sface_int8_is_prepared_on_first_use_and_matches_fp32(faces, tmp_path):
    from edge.embed import Embedder
    from edge.vision.align import align

    reg = Registry(tmp_path)
    fp32, int8 = Embedder(*reg.open("sface")), Embedder(*reg.open("sface-int8"))
    tpl = fp32.manifest.alignment
    crops = np.stack([align(img, f.landmarks, tpl) for img, f in faces])
    cos = (fp32.embed(crops) * int8.embed(crops)).sum(axis=1)
    assert cos.min() > 0.97 and cos.mean() > 0.99, (cos.min(), cos.mean())
    prepared = reg.runtime_file(reg.manifest("sface-int8"))
    so_path = tmp_path / "opt.onnx"
    _session(onnx.load(str(prepared)), str(so_path))
    ops = [n.op_type for n in onnx.load(str(so_path)).graph.node]
    # Integer end to end: only the input normalisation (Sub, Mul) and the final batch norms stay float.
    assert "Conv" not in ops and ops.count("QLinearConv") >= 27 and "PRelu" not in ops, ops
    assert ops.count("Mul") <= 1 and "Add" not in ops and ops.count("DequantizeLinear") <= 2, ops


def test_shipped_dlib_resnet_int8_runs_residual_blocks_on_integer_kernels(faces, tmp_path):
    """dlib's ReLU ResNet as the device quantises it: convolutions, residual additions and pools integer."""
    from edge.embed import Embedder
    from edge.vision.align import align

    reg = Registry(tmp_path)
    m = reg.manifest("dlib-resnet-int8")
    assert not m.default, "a fusion member's twin must not take the default embedder's place"
    fp32, int8 = Embedder(*reg.open("dlib-resnet")), Embedder(*reg.open("dlib-resnet-int8"))
    crops = np.stack([align(img, f.landmarks, m.alignment) for img, f in faces])
    cos = (fp32.embed(crops) * int8.embed(crops)).sum(axis=1)
    assert cos.min() > 0.99 and cos.mean() > 0.995, (cos.min(), cos.mean())
    so_path = tmp_path / "opt.onnx"
    _session(onnx.load(str(reg.runtime_file(m))), str(so_path))
    ops = [n.op_type for n in onnx.load(str(so_path)).graph.node]
    assert "Conv" not in ops and ops.count("QLinearConv") == 29, ops
    # The 14 residual additions (Add → Relu → Q fused) and the 4 shortcut pools run on uint8.
    assert "Add" not in ops and ops.count("QLinearAdd") == 14 and ops.count("QLinearAveragePool") == 4, ops
    assert "Relu" not in ops, ops


def test_fused_builtin_uses_the_int8_members():
    reg = Registry()
    fused = reg.manifest("fused")
    members = fused.extra["members"]
    assert members == ["sface-int8", "dlib-resnet-int8"], members
    for name in members:
        assert reg.manifest(name).quantize, name
