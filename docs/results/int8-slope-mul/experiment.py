"""sface-int8's PReLU slopes as an integer Mul instead of a 1×1 depthwise QLinearConv: measured, not shipped.

The shipped graph computes PReLU(x) = max(x, a·x) with a·x a 1×1 depthwise convolution (int8.md § 2). An
elementwise op should be cheaper than a convolution, so each slope Conv is replaced by a QDQ Mul with a uint8
constant (one scale per layer), which onnxruntime fuses into QLinearMul: `bcast` multiplies by the (1, C, 1, 1)
slopes, `full` by the slopes broadcast to the activation's shape beforehand (no broadcasting at run time).
Cosine to the shipped graph on aligned LFW crops (photos pairs.txt does not name), CPU ms per crop on one
thread, the three graphs interleaved in rotating order. Run from the repository root:
FACEGATE_DATA=../shared python docs/results/int8-slope-mul/experiment.py
"""

import json
import os
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from edge.bench.host import probe_ms
from edge.eval.lfw import images_named_by
from edge.imageio import load_bgr
from edge.pipeline import FacePipeline
from edge.vision.detect import select_face


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def slope_inputs_shapes(model: onnx.ModelProto, x: np.ndarray) -> dict[str, tuple[int, ...]]:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    slopes = [n for n in probe.graph.node if n.op_type == "Conv" and n.output[0].endswith("_slope")]
    for n in slopes:
        probe.graph.output.append(helper.make_tensor_value_info(n.input[0], onnx.TensorProto.FLOAT, None))
    s = session(probe)
    got = s.run(None, {s.get_inputs()[0].name: x})
    return {o.name: v.shape for o, v in zip(s.get_outputs(), got, strict=True)}


def slopes_as_mul(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]] | None) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    nodes, added = [], []
    for n in g.node:
        if not (n.op_type == "Conv" and n.output[0].endswith("_slope")):
            nodes.append(n)
            continue
        base = n.output[0]
        a = (inits[base + "__w_q"].astype(np.float64).reshape(-1)
             * inits[base + "__w_scale"].astype(np.float64).reshape(-1))
        lo, hi = min(a.min(), 0.0), max(a.max(), 0.0)
        scale = (hi - lo) / 255.0
        zero = int(np.clip(round(-lo / scale), 0, 255))
        q = np.clip(np.round(a / scale) + zero, 0, 255).astype(np.uint8).reshape(1, -1, 1, 1)
        if shapes is not None:
            q = np.broadcast_to(q, shapes[n.input[0]]).copy()
        names = [base + "__a_q", base + "__a_scale", base + "__a_zero"]
        added += [numpy_helper.from_array(q, names[0]), numpy_helper.from_array(np.array(scale, np.float32), names[1]),
                  numpy_helper.from_array(np.array(zero, np.uint8), names[2])]
        nodes += [helper.make_node("DequantizeLinear", names, [base + "__a"], name=base + "__a_DQ"),
                  helper.make_node("Mul", [n.input[0], base + "__a"], [base], name=base + "__mul")]
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(added)
    used = {i for node in g.node for i in node.input}
    kept = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    return out


def main() -> None:
    lfw = Path(os.environ.get("FACEGATE_DATA", "../shared")) / "lfw"
    pipe = FacePipeline(embedder="sface-int8")
    m = pipe.registry.manifest("sface-int8")
    shipped = onnx.load(str(pipe.registry.runtime_file(m)))
    held = images_named_by([lfw / "pairs.txt"])
    photos = sorted(p for p in (lfw / "images").rglob("*.jpg") if f"{p.parent.name}/{p.name}" not in held)
    rng = np.random.default_rng(2)
    crops = []
    for p in (photos[i] for i in rng.choice(len(photos), 120, replace=False)):
        image = load_bgr(p)
        faces = pipe.detect(image)
        if faces:
            crops.append(pipe.crops(image, [select_face(faces, image.shape, "largest")])[0])
    name = session(shipped).get_inputs()[0].name
    blobs = [c.transpose(2, 0, 1)[None].astype(np.float32) for c in crops]
    graphs = {"shipped": shipped, "bcast": slopes_as_mul(shipped, None),
              "full": slopes_as_mul(shipped, slope_inputs_shapes(shipped, blobs[0]))}
    sessions = {k: session(v) for k, v in graphs.items()}
    emb = {k: np.stack([s.run(None, {name: b})[0].ravel() for b in blobs]) for k, s in sessions.items()}
    emb = {k: v / np.linalg.norm(v, axis=1, keepdims=True) for k, v in emb.items()}
    # Interleaved in rotating order, 10 crops a sample: this VM's speed moves in spells of seconds, so the
    # medians of many short samples compare better than a few long ones.
    keys = list(sessions)
    times: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(90):
        for k in keys[r % 3:] + keys[:r % 3]:
            t = time.process_time()
            for b in blobs[:10]:
                sessions[k].run(None, {name: b})
            times[k].append((time.process_time() - t) / 10 * 1e3)
    print(json.dumps({
        "crops": len(blobs),
        "cpu_ms_per_crop_p10_median": {k: [round(float(np.percentile(v, q)), 2) for q in (10, 50)]
                                       for k, v in times.items()},
        "host_probe_ms_end": probe_ms(),
        "cosine_to_shipped_min_mean": {k: [round(float((emb[k] * emb["shipped"]).sum(1).min()), 4),
                                           round(float((emb[k] * emb["shipped"]).sum(1).mean()), 4)]
                                       for k in graphs if k != "shipped"},
        "file_mb": {k: round(v.ByteSize() / 1e6, 2) for k, v in graphs.items()},
    }, indent=1))


if __name__ == "__main__":
    main()
