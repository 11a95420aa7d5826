"""What the model's units respond to: for chosen units of chosen feature maps, the image patches (receptive-field
crops of aligned faces) that activate each most (Zeiler & Fergus, 2014, their figure 2, without the deconvnet).

Activations are read from the ONNX graph itself: a copy made in memory lists the wanted feature maps as its
outputs, and onnxruntime runs it on the device's own aligned, normalised crops — no PyTorch. Each unit keeps
its n strongest images (one patch per image: where in it the unit peaks).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from tqdm import tqdm

from edge.embed import to_input
from edge.errors import FacegateError, ImageError, ModelError, NoFaceError
from edge.explain import draw
from edge.explain.receptive import Field, feature_maps, receptive_fields
from edge.imageio import load_bgr
from edge.models.manifest import Manifest
from edge.models.registry import Registry
from edge.runtime.onnx import OnnxRuntime
from edge.vision.detect import select_face

# Default depths: the maps whose receptive field is nearest these fractions of the crop's side — edges and
# colours, parts of a face, most of a face.
DEPTHS = {"shallow": 0.1, "middle": 0.3, "deep": 0.6}


def tap(model: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """A copy of the graph whose outputs are `tensors`, in order (the embedding output is dropped, so
    onnxruntime skips the layers after the deepest one asked for)."""
    known = {o for n in model.graph.node for o in n.output}
    missing = [t for t in tensors if t not in known]
    if missing:
        raise FacegateError(f"no tensor named {', '.join(missing)} in the graph (list them with --list-layers)")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(copy).graph.value_info}
    del copy.graph.output[:]
    for t in tensors:  # with its inferred type and shape where known; onnxruntime needs neither
        copy.graph.output.append(inferred.get(t) or onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    return copy


@dataclass
class Layer:
    tensor: str
    field: Field
    depth: str = ""  # shallow / middle / deep when chosen by default


class UnitModel:
    """An embedder's ONNX graph, its feature maps and their receptive fields."""

    def __init__(self, registry: Registry, name: str, threads: int = 1) -> None:
        m = registry.manifest(name)
        if m.runtime != "onnxruntime":
            raise ModelError(f"model {name!r} runs on {m.runtime}: explain units reads ONNX graphs only")
        if m.alignment is None or m.input.size is None or m.input.layout != "NCHW":
            raise ModelError(f"model {name!r}: explain units needs a fixed-size NCHW embedder with an alignment")
        self.manifest: Manifest = m
        self.graph = onnx.load(str(registry.runtime_file(m)))
        w, h = m.input.size
        self.fields = receptive_fields(self.graph, (h, w))
        self.maps = feature_maps(self.graph, self.fields)
        self.threads = threads

    def layers(self, names: Sequence[str] = ()) -> list[Layer]:
        """The named maps, or one per default depth."""
        if names:
            bad = [n for n in names if n not in self.fields]
            if bad:
                raise FacegateError(f"not a feature map of {self.manifest.name}: {', '.join(bad)} "
                                    "(list them with --list-layers)")
            return [Layer(n, self.fields[n]) for n in names]
        side = min(self.manifest.input.size or (0, 0))
        out = []
        for depth, frac in DEPTHS.items():
            # the last of equally near maps: a block's output after its activation, not the conv inside it
            best = min(reversed(self.maps), key=lambda t: abs(self.fields[t].size[0] - frac * side))
            out.append(Layer(best, self.fields[best], depth))
        return out

    def runtime(self, layers: Sequence[Layer]) -> OnnxRuntime:
        return OnnxRuntime(tap(self.graph, [la.tensor for la in layers]).SerializeToString(), self.threads)


@dataclass
class TopK:
    """Per channel, the n largest per-image peaks: value, image index, (row, col) of the peak."""

    channels: int
    n: int
    values: np.ndarray = field(init=False)
    images: np.ndarray = field(init=False)
    where: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.values = np.full((self.channels, self.n), -np.inf, np.float32)
        self.images = np.full((self.channels, self.n), -1, np.int64)
        self.where = np.zeros((self.channels, self.n, 2), np.int64)

    def update(self, acts: np.ndarray, first_image: int) -> None:
        """acts: (B, C, H, W) activations of images first_image … first_image + B − 1."""
        b, c, h, w = acts.shape
        flat = acts.reshape(b, c, h * w)
        arg = flat.argmax(axis=2)  # (B, C)
        peak = np.take_along_axis(flat, arg[..., None], axis=2)[..., 0]
        values = np.concatenate([self.values, peak.T], axis=1)  # (C, n + B)
        images = np.concatenate([self.images, np.tile(np.arange(first_image, first_image + b), (c, 1))], axis=1)
        where = np.concatenate([self.where, np.stack([arg.T // w, arg.T % w], axis=-1)], axis=1)
        order = np.argsort(-values, axis=1, kind="stable")[:, :self.n]
        self.values = np.take_along_axis(values, order, axis=1)
        self.images = np.take_along_axis(images, order, axis=1)
        self.where = np.take_along_axis(where, order[..., None], axis=1)


@dataclass
class UnitsResult:
    model: str
    images: int
    no_face: int
    layers: list[Layer]
    tops: list[TopK]
    crops: np.ndarray  # (N, H, W, 3) the aligned crops the patches come from
    names: list[str]  # image paths, for the report
    units: list[list[int]]  # chosen channels per layer

    def patch(self, layer: int, channel: int, rank: int) -> np.ndarray:
        """The receptive-field crop of one top activation (grey where the field reaches past the crop)."""
        top, fld = self.tops[layer], self.layers[layer].field
        i, j = top.where[channel, rank]
        y0, x0, y1, x1 = fld.box(int(i), int(j))
        crop = self.crops[top.images[channel, rank]]
        h, w = crop.shape[:2]
        out = np.full((y1 - y0, x1 - x0, 3), 128, np.uint8)
        sy0, sx0, sy1, sx1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = crop[sy0:sy1, sx0:sx1]
        return out

    def grid(self, layer: int, cell: int = 64) -> np.ndarray:
        la, top = self.layers[layer], self.tops[layer]
        f = la.field
        rows = [(f"unit {c}", [self.patch(layer, c, r) for r in range(top.n) if top.images[c, r] >= 0])
                for c in self.units[layer]]
        title = [f"{self.model} {la.tensor}" + (f" ({la.depth})" if la.depth else ""),
                 f"{top.channels} units, {f.shape[0]}x{f.shape[1]} map; receptive field {f.size[0]} px, "
                 f"stride {f.jump[0]} px; top {top.n} of {self.images} faces per unit"]
        return draw.patch_grid(rows, cell, title)

    def to_dict(self) -> dict[str, Any]:
        layers = []
        for k, (la, top) in enumerate(zip(self.layers, self.tops, strict=True)):
            units = []
            for c in self.units[k]:
                units.append({"unit": c, "top": [
                    {"image": self.names[top.images[c, r]], "activation": round(float(top.values[c, r]), 4),
                     "at": [int(v) for v in top.where[c, r]],
                     "box_yxyx": list(la.field.box(*(int(v) for v in top.where[c, r])))}
                    for r in range(top.n) if top.images[c, r] >= 0]})
            layers.append({"tensor": la.tensor, "depth": la.depth, "channels": top.channels,
                           "receptive_field": la.field.to_dict(), "units": units})
        return {"model": self.model, "images": self.images, "no_face": self.no_face, "layers": layers}


def pick_units(top: TopK, count: int, how: str) -> list[int]:
    """`count` channels that fired at all: evenly spread over the layer ('spread'), or the strongest peaks."""
    alive = np.flatnonzero(top.values[:, 0] > 0)
    if len(alive) == 0:
        alive = np.arange(top.channels)
    if how == "strongest":
        return sorted(int(c) for c in alive[np.argsort(-top.values[alive, 0], kind="stable")[:count]])
    if how != "spread":
        raise FacegateError(f"unknown unit choice {how!r} (spread or strongest)")
    return [int(alive[k]) for k in np.unique(np.linspace(0, len(alive) - 1, min(count, len(alive))).astype(int))]


def collect(pipeline: Any, model: UnitModel, paths: Sequence[Path], layers: list[Layer], n: int = 9,
            units: int = 8, pick: str = "spread", policy: str = "central", batch: int = 16) -> UnitsResult:
    """Run every image's aligned face through the tapped graph and keep each unit's n strongest patches."""
    if n < 1 or units < 1 or batch < 1:
        raise FacegateError(f"--top, --units and the batch must be at least 1 (got {n}, {units}, {batch})")
    template = model.manifest.alignment
    assert template is not None
    rt = model.runtime(layers)
    tops: list[TopK] | None = None
    crops: list[np.ndarray] = []
    names: list[str] = []
    no_face = 0
    pending: list[np.ndarray] = []

    def flush() -> None:
        nonlocal tops
        if not pending:
            return
        outs = rt.run({rt.input_names[0]: to_input(np.stack(pending), model.manifest)})
        if tops is None:
            tops = [TopK(int(o.shape[1]), n) for o in outs]
        for top, o in zip(tops, outs, strict=True):
            top.update(o, len(crops) - len(pending))
        pending.clear()

    for path in tqdm(paths, desc="reading activations", unit="img", file=sys.stderr, disable=None):
        try:
            image = load_bgr(path)
            face = select_face(pipeline.detect(image), image.shape, policy)
        except (ImageError, NoFaceError):
            no_face += 1
            continue
        crop = pipeline.crops(image, [face])[0]
        crops.append(crop)
        names.append(str(path))
        pending.append(crop)
        if len(pending) >= batch:
            flush()
    flush()
    if tops is None:
        raise FacegateError("no face found in any of the images")
    chosen = [pick_units(t, units, pick) for t in tops]
    return UnitsResult(model.manifest.name, len(crops), no_face, layers, tops, np.stack(crops), names, chosen)
