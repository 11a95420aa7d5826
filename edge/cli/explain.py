"""`facegate explain …`: pictures of why a match scored as it did, and of what the model's units respond to.

  explain match A B --out map.png           occlusion maps of both faces, the score beside the threshold
  explain identify PROBE --store DB --id N   the probe against a stored identity (its kept crop if any)
  explain units --images DIR --out DIR       top image patches of chosen units, one grid PNG per layer
  explain bench --images DIR --pairs FILE    share of View-1 genuine pairs whose maps point at the face

The work is done in edge/explain/.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edge.cli.common import bounded, config_option, open_store, store_options
from edge.explain.occlusion import DEFAULT_FILL, FILLS
from edge.vision.detect import POLICIES


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)


def _progress(it: Any, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(it, desc=desc[:40], unit="batch", file=sys.stderr, disable=None, leave=False)


def _explainer(args: argparse.Namespace):
    from edge.explain.match import MatchExplainer, embedder_names
    from edge.pipeline import FacePipeline

    names = embedder_names(args.model)
    pipe = FacePipeline(embedder=names[0], extra_embedders=names[1:], threads=args.threads,
                        min_face_px=args.min_face)
    fusion = None
    if args.model == "fused":  # the fused z-score and its calibrated thresholds, as the door decides
        from edge.match.fusion import Fusion

        m = pipe.registry.manifest("fused")
        fusion = Fusion(m)
        fusion.check_members(pipe.registry)
    templates = "mean"
    if getattr(args, "config", None) is not None:  # identify: the photos reduced as the daemon reduces them
        from edge import config

        templates = config.load(args.config).decision.templates
    return MatchExplainer(pipe, patch=args.patch, stride=args.stride, batch=args.batch, fill=args.fill,
                          progress=_progress,
                          fusion=fusion, templates=templates,
                          **({"margin": args.margin} if getattr(args, "margin", None) is not None else {}))


def _write(path: Path, data: bytes) -> None:
    from edge.atomic import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)


def _summary(ex, out: Path) -> str:
    verdict = {True: "match", False: "no match", None: "no calibrated threshold"}[ex.match]
    thr = f"{ex.threshold:.4f}" if ex.threshold is not None else "n/a"
    lines = [f"{ex.model}: score {ex.score:.4f}, threshold {thr} ({ex.threshold_kind}): {verdict}"]
    for s in ex.sides:
        if s.map is None:
            lines.append(f"  {s.label}: {s.note}")
            continue
        cells = ", ".join(f"({x:.0f},{y:.0f}) drop {s.map.drops[i, j]:.3f}"
                          for i, j in s.map.top_cells(3) for x, y in [s.map.grid.centre(i, j)])
        lines.append(f"  {s.label}: strongest cells (x,y) {cells}; {s.map.drops.size} cells in {s.map.ms / 1e3:.1f} s")
    lines.append(f"wrote {out}")
    return "\n".join(lines)


def cmd_match(args: argparse.Namespace) -> int:
    from edge.errors import FacegateError
    from edge.imageio import load_bgr

    ex_ = _explainer(args)
    views = []
    for path in (args.image1, args.image2):
        try:
            views.append(ex_.view(load_bgr(path), args.policy))
        except FacegateError as exc:
            msg = str(exc)
            raise FacegateError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    ex = ex_.pair(views[0], views[1], (args.image1.name, args.image2.name))
    _write(args.out, ex.png())
    _emit(args, {**ex.to_dict(), "images": [str(args.image1), str(args.image2)], "out": str(args.out)},
          _summary(ex, args.out))
    return 0


def cmd_identify(args: argparse.Namespace) -> int:
    from edge.errors import FacegateError
    from edge.explain.match import explain_stored
    from edge.imageio import load_bgr

    with open_store(args) as store:  # never creates an empty store just to explain against it
        if store.identity(args.id) is None:
            raise FacegateError(f"unknown identity {args.id!r}")
        ex_ = _explainer(args)
        probe = ex_.view(load_bgr(args.image), args.policy)
        ex = explain_stored(ex_, store, args.id, probe, args.fpir, probe_label=args.image.name)
    _write(args.out, ex.png())
    _emit(args, {**ex.to_dict(), "image": str(args.image), "identity": args.id, "out": str(args.out)},
          _summary(ex, args.out))
    return 0


def cmd_units(args: argparse.Namespace) -> int:
    from edge.errors import FacegateError
    from edge.explain.units import UnitModel, collect
    from edge.imageio import sample_images
    from edge.models.registry import Registry
    from edge.pipeline import FacePipeline

    registry = Registry()
    model = UnitModel(registry, args.model, threads=args.threads)
    if args.list_layers:
        rows = [{"tensor": t, **model.fields[t].to_dict()} for t in model.maps]
        _emit(args, rows, "\n".join(f"{r['tensor']:<24} {r['shape'][0]}x{r['shape'][1]}  field {r['size'][0]} px, "
                                    f"stride {r['jump'][0]}" for r in rows))
        return 0
    if args.images is None or args.out is None:
        raise FacegateError("explain units: give --images DIR and --out DIR (or --list-layers)")
    layers = model.layers(args.layers.split(",") if args.layers else ())
    pipe = FacePipeline(registry, embedder=args.model, threads=args.threads, min_face_px=args.min_face)
    if args.cell < 8:
        raise FacegateError(f"--cell must be at least 8 pixels, not {args.cell}")
    result = collect(pipe, model, sample_images(args.images, args.limit), layers, n=args.top, units=args.units,
                     pick=args.pick, policy=args.policy)
    from edge.explain.draw import png

    files = []
    for k, la in enumerate(result.layers):
        out = args.out / f"{result.model}-{la.tensor}.png".replace("/", "_")
        _write(out, png(result.grid(k, cell=args.cell)))
        files.append(str(out))
    data = {**result.to_dict(), "files": files}
    text = "\n".join([f"{result.images} faces ({result.no_face} images without one)"]
                     + [f"{la.tensor} ({la.depth or 'chosen'}; field {la.field.size[0]} px): units "
                        f"{', '.join(map(str, u))} -> {f}"
                        for la, u, f in zip(result.layers, result.units, files, strict=True)])
    _emit(args, data, text)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from edge.explain import bench

    r = bench.run(_explainer(args), args.images, args.pairs, limit=args.limit, top=args.top, draws=args.draws,
                  seed=args.seed, policy=args.policy, out=args.out)
    if not args.details:
        r.pop("details")
    by_top = ", ".join(f"top {k}: {v:.2%}" for k, v in r["inside_fraction_by_top"].items())
    text = (f"{r['model']}: {r['inside_fraction']:.2%} of {r['pairs']} genuine pairs have the top {r['top_cells']} "
            f"cell(s) of both maps inside the central box {r['central_box_xyxy']} (faces: "
            f"{r['faces_inside_fraction']:.2%}; {by_top}); masking the "
            f"top cells drops the score {r['mask_top_drop_mean']:.4f} vs {r['mask_random_drop_mean']:.4f} for random "
            f"cells ({r['top_beats_random_fraction']:.2%} of faces); {r['ms_per_map_median']:.0f} ms per "
            f"{r['cells_per_map']}-cell map")
    _emit(args, r, text)
    return 0


# -- parser -------------------------------------------------------------------------------------------------
def _occlusion_opts(p: argparse.ArgumentParser, policy: str = "largest") -> None:
    p.add_argument("--model", default="",
                   help="embedder: sface, sface-int8, dlib-resnet, fused (the built-in fusion's score and thresholds), "
                        "or names joined by + (scored by the mean of their cosines; default: the manifests' "
                        "default embedder, as enrol uses)")
    p.add_argument("--patch", type=int, default=16, help="side of the occluding patch, crop pixels (default: 16)")
    p.add_argument("--fill", choices=FILLS, default=DEFAULT_FILL,
                   help="what the patch shows: the face blurred (detail removed, colour and shape kept), or "
                        f"mid-grey (default: {DEFAULT_FILL})")
    p.add_argument("--stride", type=int, default=8, help="step between patches, crop pixels (default: 8)")
    p.add_argument("--batch", type=int, default=64, help="occluded crops per inference batch (default: 64)")
    _device_opts(p, policy)


def _device_opts(p: argparse.ArgumentParser, policy: str) -> None:
    p.add_argument("--threads", type=int, default=1, help="inference threads (default: 1)")
    p.add_argument("--min-face", type=float, default=40.0, metavar="PX",
                   help="smallest face to find, in image pixels (default: 40)")
    p.add_argument("--policy", choices=POLICIES, default=policy,
                   help=f"which face to use when several are found (default: {policy})")
    p.add_argument("--json", action="store_true", help="print JSON (with the occlusion grids)")


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("explain", help="why a match scored so, and what the model's units see (pictures)")
    ex = group.add_subparsers(dest="explain_command", required=True, metavar="ACTION")

    p = ex.add_parser("match", help="occlusion maps of both faces of a 1:1 comparison, beside score and threshold")
    p.add_argument("image1", type=Path)
    p.add_argument("image2", type=Path)
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    _occlusion_opts(p)
    p.set_defaults(func=cmd_match)

    p = ex.add_parser("identify", help="occlusion map of a probe against a stored identity (and of its kept "
                                       "crop, when the store kept one)")
    p.add_argument("image", type=Path)
    p.add_argument("--id", required=True, help="the stored identity to explain the score against")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    store_options(p)
    config_option(p)
    p.add_argument("--fpir", type=bounded(float, 1e-6, 0.5), default=0.01,
                   help="target FPIR of the 1:N threshold (default: 0.01)")
    _occlusion_opts(p)
    p.set_defaults(func=cmd_identify)

    p = ex.add_parser("units", help="image patches that most activate chosen units, a grid PNG per layer")
    p.add_argument("--model", default="sface", help="ONNX embedder (default: sface)")
    p.add_argument("--images", type=Path, help="folder of face photos (recursive)")
    p.add_argument("--out", type=Path, help="folder for the PNGs")
    p.add_argument("--layers", help="comma-separated feature maps (tensor names; default: one shallow, one "
                                    "middle, one deep, by receptive field)")
    p.add_argument("--list-layers", action="store_true", help="list the feature maps and their receptive fields")
    p.add_argument("--units", type=int, default=8, help="units per layer (default: 8)")
    p.add_argument("--pick", choices=("spread", "strongest"), default="spread",
                   help="which units: spread evenly over the layer, or those with the strongest peaks")
    p.add_argument("--top", type=int, default=9, help="patches per unit (default: 9)")
    p.add_argument("--limit", type=int, default=1000, help="at most this many images, evenly spread (default 1000)")
    p.add_argument("--cell", type=int, default=64, help="pixels per patch in the grid (default: 64)")
    _device_opts(p, "central")
    p.set_defaults(func=cmd_units)

    p = ex.add_parser("bench", help="share of LFW View-1 genuine pairs whose strongest occlusion cells lie in "
                                    "the face's central region")
    p.add_argument("--images", type=Path, required=True, help="LFW images folder (Name/Name_NNNN.jpg)")
    p.add_argument("--pairs", type=Path, required=True,
                   help="View-1 pairs file (pairsDevTrain.txt or pairsDevTest.txt; pairs.txt is refused)")
    p.add_argument("--limit", type=int, default=50, help="genuine pairs, evenly spread over the file (default 50)")
    p.add_argument("--top", type=int, default=1,
                   help="strongest cells of each map that must fall inside (default: 1, the strongest)")
    p.add_argument("--margin", type=float,
                   help="widen the eyes-nose-mouth box by this many eye distances (default: 0.5, brows included)")
    p.add_argument("--draws", type=int, default=10, help="random cell sets per face for the masking check")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="also write each pair's picture into this folder")
    p.add_argument("--details", action="store_true", help="with --json: every pair's cells and drops")
    _occlusion_opts(p, "central")
    p.set_defaults(func=cmd_bench)
