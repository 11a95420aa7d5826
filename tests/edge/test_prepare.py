"""Model preparation: each step on toy graphs, and prepared vs original parity on real face crops."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge.embed import l2_normalise, to_input
from edge.models.prepare import _dequantize, drop_dangling_inputs, prelu_as_relu, prepare
from edge.models.registry import Registry


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_dequantize_blocked_per_axis_and_per_tensor():
    x = np.array([[0, 2, 4, 6, 8]], np.int8)
    scale = np.array([[0.5, 2.0, 10.0]], np.float32)  # blocks of 2 along axis 1 (last block partial)
    zero = np.array([[0, 1, 2]], np.int8)
    np.testing.assert_allclose(_dequantize(x, scale, zero, axis=1, block=2), [[0.0, 1.0, 6.0, 10.0, 60.0]])
    np.testing.assert_allclose(_dequantize(x, np.array(0.5, np.float32), None, axis=1, block=9),
                               [[0, 1, 2, 3, 4]])  # per-tensor despite a block_size attribute
    x2 = np.array([[1, 2], [3, 4]], np.int8)
    np.testing.assert_allclose(_dequantize(x2, np.array([1.0, 10.0], np.float32), None, axis=0, block=0),
                               [[1, 2], [30, 40]])


def test_prelu_rewrite_is_exact_for_any_slope():
    slopes = np.array([-0.8, 0.0, 0.25, 1.1], np.float32).reshape(4, 1, 1)
    graph = helper.make_graph(
        [helper.make_node("PRelu", ["x", "a"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 3, 3])],
        [numpy_helper.from_array(slopes, "a")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(0).normal(size=(1, 4, 3, 3)).astype(np.float32)
    expected = np.where(x >= 0, x, slopes * x)
    rewritten = prelu_as_relu(onnx.ModelProto.FromString(model.SerializeToString()))
    assert "PRelu" not in {n.op_type for n in rewritten.graph.node}
    np.testing.assert_allclose(_session(rewritten).run(None, {"x": x})[0], expected, atol=1e-6)


def test_unknown_step_is_refused():
    from edge.errors import ModelError

    with pytest.raises(ModelError, match="unknown preparation step"):
        prepare(onnx.ModelProto(), ["make_it_fast"])


@pytest.fixture(scope="module")
def face_crops(lfw, pipeline) -> np.ndarray:
    """120 aligned crops from real LFW faces, through the device's own detect + align code."""
    from edge.imageio import load_bgr
    from edge.vision.detect import select_face

    paths = sorted((lfw / "images").glob("*/*_0001.jpg"))[::40][:120]
    crops = []
    for p in paths:
        img = load_bgr(p)
        faces = pipeline.detect(img)
        if faces:
            crops.append(pipeline.crops(img, [select_face(faces, img.shape, "central")])[0])
    assert len(crops) >= 100
    return np.stack(crops)


def test_sface_prepared_matches_original(face_crops):
    """Prepared SFace vs the shipped file run with only its dangling inputs dropped: cosine ≥ 0.9999."""
    reg = Registry()
    m = reg.manifest("sface")
    original = _session(drop_dangling_inputs(onnx.load(str(reg.verify(m)))))
    prepared = ort.InferenceSession(str(reg.runtime_file(m)), providers=["CPUExecutionProvider"])
    x = to_input(face_crops, m)
    ref = np.concatenate([original.run(None, {"data": x[i:i + 1]})[0] for i in range(len(x))])
    out = prepared.run(None, {prepared.get_inputs()[0].name: x})[0]  # one batch: dynamic batch works too
    cos = (l2_normalise(ref) * l2_normalise(out)).sum(1)
    assert cos.min() >= 0.9999


def test_yunet_prepared_accepts_any_stride_multiple():
    reg = Registry()
    sess = ort.InferenceSession(str(reg.runtime_file(reg.manifest("yunet"))), providers=["CPUExecutionProvider"])
    for h, w in ((256, 256), (480, 640), (96, 160)):
        outs = sess.run(None, {"input": np.zeros((1, 3, h, w), np.float32)})
        assert outs[0].shape == (1, (h // 8) * (w // 8), 1)
