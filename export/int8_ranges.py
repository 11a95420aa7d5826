"""`facegate export int8`: the manifest of an embedder's int8 twin, which the device quantises itself.

The device can rewrite and quantise a float graph on first use (prepare steps fold_batchnorm, prelu_as_max,
quantize_int8; onnx and numpy only), but it has no face images to measure activation ranges on. This command
measures them once and writes them into the twin's manifest, with the evidence for making it the default:

1. the float graph as the device prepares it for quantisation (the source's steps, PRelu as Max);
2. ranges: the 0.001 % / 99.999 % percentiles of each activation over face crops from LFW images the View-2
   pairs file does not name (the export recipes' rule; in the shared data these are View-1 images, and the
   ranges are label-free activation statistics, so the View-1 choice below reads no label twice);
3. the choice, on View 1 only: both embedders on the same detections, threshold from one View-1 file and
   accuracy on the other, both ways, pooled over the 3,200 pairs; the twin becomes the default embedder
   (manifest "default") when it loses at most `max_loss_pp` there;
4. its thresholds, calibrated on pairsDevTrain through the device pipeline (edge.eval.calibrate).
View 2 is never read here; `facegate bench pairs --model NAME --pairs pairs.txt` reports it afterwards.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from edge.embed import to_input
from edge.errors import FacegateError
from edge.eval.lfw import accuracy_at, best_threshold, embed_paths, images_named_by, pair_scores, read_pairs, tar_at_far
from edge.models.manifest import Manifest
from edge.models.registry import Registry, sha256_file
from export.bundle import ExportError, heldout_face_crops

PERCENTILE = 99.999
MAX_LOSS_PP = 0.1
VIEW1_FILES = ("pairsDevTrain.txt", "pairsDevTest.txt")


def float_steps(m: Manifest) -> list[str]:
    """The source's prepare steps with PRelu as Max and batch norms folded: the float graph int8 starts from."""
    steps = [s for s in m.prepare if s not in ("prelu_as_relu", "quantize_int8")]
    at = steps.index("dynamic_batch") if "dynamic_batch" in steps else len(steps)
    return steps[:at] + ["fold_batchnorm", "prelu_as_max"] + steps[at:]


def measure_ranges(model: Any, inputs: np.ndarray, names: Sequence[str], percentile: float = PERCENTILE,
                   bins: int = 4096) -> dict[str, list[float]]:
    """Per tensor, the (100 − p) and p percentiles of its values over all inputs, one input at a time.

    Two passes (min/max, then a histogram over them) keep memory to one input's activations.
    """
    import onnx
    import onnxruntime as ort

    probe = copy.deepcopy(model)
    present = {o.name for o in probe.graph.output}
    for n in names:
        if n not in present:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    lo = np.full(len(names), np.inf)
    hi = np.full(len(names), -np.inf)
    for x in tqdm(inputs, desc="ranges 1/2", unit="crop", file=sys.stderr, disable=None):
        for k, v in enumerate(session.run(list(names), {feed: x[None]})):
            lo[k], hi[k] = min(lo[k], float(v.min())), max(hi[k], float(v.max()))
    hist = np.zeros((len(names), bins), np.int64)
    for x in tqdm(inputs, desc="ranges 2/2", unit="crop", file=sys.stderr, disable=None):
        for k, v in enumerate(session.run(list(names), {feed: x[None]})):
            hist[k] += np.histogram(v, bins=bins, range=(lo[k], max(hi[k], lo[k] + 1e-12)))[0]
    out = {}
    for k, n in enumerate(names):
        cdf = np.cumsum(hist[k]) / max(hist[k].sum(), 1)
        edges = np.linspace(lo[k], max(hi[k], lo[k] + 1e-12), bins + 1)
        a = edges[int(np.searchsorted(cdf, (100 - percentile) / 100))]
        b = edges[min(int(np.searchsorted(cdf, percentile / 100)) + 1, bins)]
        out[n] = [float(np.float32(a)), float(np.float32(b))]
    return out


def view1_choice(reference: str, candidate: str, images: Path, registry: Registry,
                 dev_files: Sequence[Path]) -> dict[str, Any]:
    """Both embedders on View 1, both ways (threshold on one file, accuracy on the other), pooled."""
    from edge.pipeline import FacePipeline

    train, test = (read_pairs(f) for f in dev_files)
    rels = sorted({p.a for p in [*train, *test]} | {p.b for p in [*train, *test]})
    pipe = FacePipeline(registry, embedder=reference, extra_embedders=(candidate,))
    probes, no_face = embed_paths(pipe, images, rels, desc="View 1", every=True)
    out: dict[str, Any] = {"images": len(rels), "no_face": len(no_face)}
    for name in (reference, candidate):
        vectors = {rel: p[name] for rel, p in probes.items()}
        right = 0.0
        for fit, judge in ((train, test), (test, train)):
            s_fit, s_judge = pair_scores(fit, vectors), pair_scores(judge, vectors)
            t = best_threshold(s_fit, np.array([p.same for p in fit]))
            right += accuracy_at(s_judge, np.array([p.same for p in judge]), t) * len(judge)
        both = [*train, *test]
        scores, same = pair_scores(both, vectors), np.array([p.same for p in both])
        out[name] = {"view1_pooled_accuracy": round(right / len(both), 6),
                     "tar_at_far_1e-3": round(tar_at_far(scores, same, 1e-3)[0], 4)}
    out["delta_pp"] = round((out[candidate]["view1_pooled_accuracy"]
                             - out[reference]["view1_pooled_accuracy"]) * 100, 4)
    out["protocol"] = ("LFW View 1 both ways (pairsDevTrain → pairsDevTest and back), pooled over "
                       f"{len(train) + len(test)} pairs, same detections for both embedders; View 2 not used")
    return out


def build(source: str = "sface", images: Path | None = None, name: str | None = None, calib_images: int = 200,
          percentile: float = PERCENTILE, max_loss_pp: float = MAX_LOSS_PP, far: float = 1e-3, fpir: float = 0.01,
          registry: Registry | None = None, command: str = "") -> dict[str, Any]:
    """The int8 twin's manifest (a dict), measured and checked as the module docstring says."""
    from edge.eval.calibrate import calibrate
    from edge.models.int8 import WEIGHT_BITS, tensors_to_range
    from edge.models.prepare import prepare_file
    from edge.paths import data_dir

    registry = registry or Registry()
    m = registry.manifest(source)
    if m.task != "embed" or m.runtime != "onnxruntime" or m.alignment is None:
        raise ExportError(f"{source}: int8 twins are made of ONNX embedders with an alignment template")
    images = Path(images) if images else data_dir() / "lfw" / "images"
    dev_files = [images.parent / f for f in VIEW1_FILES]
    view2 = images.parent / "pairs.txt"
    for f in [*dev_files, view2]:
        if not f.is_file():
            raise FacegateError(f"{f}: missing (the int8 check needs LFW's View-1 files; View 2 is only held out)")
    name = name or f"{source}-int8"
    steps = float_steps(m)
    # prepare_file: a source that starts with a converter (dlib's .dat) is converted first
    float_graph = prepare_file(registry.verify(m), steps)
    names = tensors_to_range(float_graph)
    held_out = images_named_by([view2])
    crops, crop_paths = heldout_face_crops(images, m.alignment, calib_images, skip=held_out, seed=1,
                                           registry=registry)
    ranges = measure_ranges(float_graph, to_input(crops, m), names, percentile)

    data = m.to_dict()
    data.update(name=name, prepare=[*steps, "quantize_int8"], default=False)
    data["source"] = {**m.source, "recipe": f"int8 twin of {source}, quantised on the device (facegate export int8)"}
    data["thresholds"] = {}
    data["quantize"] = {
        "weight_bits": WEIGHT_BITS,
        "ranges": ranges,
        "provenance": {
            "float_graph": f"{source} (sha256 {m.sha256}) prepared with {steps}",
            "calibration": {"images": len(crop_paths), "percentile": percentile, "seed": 1,
                            "selection": "LFW images pairs.txt (View 2) does not name, seeded order",
                            "paths_sha256": _digest(crop_paths)},
            "date": dt.date.today().isoformat(),
            "command": command or f"facegate export int8 --source {source}",
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        staged = Registry(Path(tmp))
        (Path(tmp) / name).mkdir()
        (Path(tmp) / name / "manifest.json").write_text(json.dumps(data))
        check = view1_choice(source, name, images, staged, dev_files)
        data["quantize"]["provenance"]["view1"] = check
        # Only the twin of the embedder used where none is named may take its place: a second embedder's twin
        # (dlib-resnet-int8) is a fusion member, and two defaults would be an error.
        replaces = registry.default_embedder() in (source, name)
        data["quantize"]["provenance"]["rule"] = (
            f"default embedder when the View-1 pooled accuracy loses at most {max_loss_pp} pp against {source}"
            + ("" if replaces else f" and {source} is the default embedder (it is not: never the default)"))
        within = bool(check["delta_pp"] >= -max_loss_pp)
        data["quantize"]["provenance"]["within_loss"] = within
        data["default"] = replaces and within
        data["quantize"]["provenance"]["prepared_sha256"] = sha256_file(staged.runtime_file(staged.manifest(name)))
        entries = calibrate(name, images, dev_files[0], far, registry=staged, fpir=fpir)
    for e in entries.values():
        e["provenance"]["command"] = data["quantize"]["provenance"]["command"]
        e["provenance"].pop("model_sha256", None)
    data["thresholds"] = entries
    Manifest.from_dict(data, origin=f"int8 twin {name!r}")
    return data


def _digest(paths: Sequence[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(paths).encode()).hexdigest()
