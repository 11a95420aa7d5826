"""`facegate export sface|minifasnet|torch`: build model bundles with their parity reports.

Each command writes one bundle per variant into --out (see export/bundle.py), prints a one-line parity
summary per bundle, and exits 1 when any bundle missed its parity targets (the bundle is still written, with
"passed": false in its parity.json, so the evidence can be read).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge.models.manifest import TASKS


def _common(p: argparse.ArgumentParser, offered: tuple[str, ...], calib: bool = True) -> None:
    p.add_argument("--out", type=Path, required=True, help="folder to write the bundles into")
    p.add_argument("--images", type=Path,
                   help="face images for calibration and parity (default: $FACEGATE_DATA/lfw/images)")
    p.add_argument("--parity-images", type=int, default=100, metavar="N",
                   help="held-out face crops to compare source and variants on (default: 100)")
    if calib:
        p.add_argument("--calib-images", type=int, default=200, metavar="N",
                       help="face crops to calibrate int8 on, from images the pairs file does not name (default: 200)")
        p.add_argument("--pairs", type=Path, help="LFW pairs file for the int8 accuracy check "
                       "(default: pairs.txt beside the images folder)")
        p.add_argument("--lfw-folds", type=int, metavar="K",
                       help="use only the first K folds of the pairs file (quicker, noisier; default: all)")
    p.add_argument("--variants", help=f"comma-separated subset of: {','.join(offered)} (default: all)")
    p.add_argument("--json", action="store_true", help="print the bundles and their parity as JSON")


def report(args: argparse.Namespace, results: list[tuple[Path, bool]]) -> int:
    if args.json:
        rows = [{"bundle": str(p), "passed": ok, "parity": json.loads((p / "parity.json").read_text())}
                for p, ok in results]
        for r in rows:
            r["parity"].pop("crop_images", None)
        print(json.dumps(rows, indent=2))
    failed = [p.name for p, ok in results if not ok]
    print(f"wrote {len(results)} bundle(s) to {args.out}" + (f"; parity FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def cmd_sface(args: argparse.Namespace) -> int:
    from export.recipes import parse_variants, sface

    variants = parse_variants(args.variants, sface.OFFERED)
    return report(args, sface.export(args.out, variants=variants, source=args.source, images=args.images,
                                      calib_images=args.calib_images, parity_images=args.parity_images,
                                      pairs=args.pairs, lfw_folds=args.lfw_folds))


def cmd_int8(args: argparse.Namespace) -> int:
    from edge.atomic import atomic_write_bytes
    from export import int8_ranges

    command = " ".join(["facegate export int8", "--source", args.source, "--calib-images", str(args.calib_images),
                        "--out", str(args.out)])
    data = int8_ranges.build(args.source, images=args.images, name=args.name, calib_images=args.calib_images,
                             command=command)
    atomic_write_bytes(args.out, (json.dumps(data, indent=2) + "\n").encode())
    check = data["quantize"]["provenance"]["view1"]
    if args.json:
        print(json.dumps({"manifest": str(args.out), "default": data["default"], "view1": check}, indent=2))
    else:
        ref, twin = check[args.source], check[data["name"]]
        print(f"{data['name']}: View-1 pooled accuracy {twin['view1_pooled_accuracy']:.4f} vs "
              f"{ref['view1_pooled_accuracy']:.4f} ({check['delta_pp']:+.2f} pp) → "
              f"{'default embedder' if data['default'] else 'not the default'}; manifest written to {args.out}")
    return 0


def cmd_minifasnet(args: argparse.Namespace) -> int:
    from export.recipes import minifasnet, parse_variants

    variants = parse_variants(args.variants, minifasnet.OFFERED)
    models = tuple(m if m.startswith("minifasnet-") else f"minifasnet-{m}" for m in args.models.split(","))
    return report(args, minifasnet.export(args.out, models=models, variants=variants, weights_dir=args.weights_dir,
                                           download=args.download, images=args.images,
                                           parity_images=args.parity_images, samples=args.samples,
                                           mirror=args.mirror))


def cmd_torch(args: argparse.Namespace) -> int:
    from export.recipes import parse_variants, torch_module

    spec = torch_module.ModelSpec(name=args.name, task=args.task, size=tuple(args.input_size), colour=args.colour,
                                  mean=tuple(args.mean), std=tuple(args.std), licence=args.licence,
                                  template=args.template, crop_scale=args.crop_scale, live_index=args.live_index)
    variants = parse_variants(args.variants, torch_module.OFFERED)
    return report(args, torch_module.export(args.out, args.module, spec, weights=args.weights, variants=variants,
                                             images=args.images, calib_images=args.calib_images,
                                             parity_images=args.parity_images, pairs=args.pairs,
                                             lfw_folds=args.lfw_folds))


def add_commands(subs: dict[str, argparse._SubParsersAction]) -> None:
    from export.recipes import VARIANTS
    from export.recipes.minifasnet import MODELS
    from export.recipes.minifasnet import OFFERED as MINIFASNET
    from export.recipes.sface import OFFERED as SFACE

    export = subs["export"]
    p = export.add_parser("sface", help="SFace → ONNX int8/fp16 and TFLite fp32/int8/fp16 bundles with parity")
    p.add_argument("--source", default="sface", help="the embedder to convert (default: sface)")
    _common(p, SFACE)
    p.set_defaults(func=cmd_sface)

    p = export.add_parser("int8", help="an embedder's int8 twin, quantised on the device: ranges, View-1 choice, "
                          "thresholds → its manifest")
    p.add_argument("--source", default="sface", help="the ONNX embedder to make an int8 twin of (default: sface)")
    p.add_argument("--name", help="the twin's model name (default: SOURCE-int8)")
    p.add_argument("--out", type=Path, required=True, help="manifest file to write (edge/models/builtin/NAME.json "
                   "to ship it, or <model dir>/NAME/manifest.json to install it here)")
    p.add_argument("--images", type=Path, help="LFW images folder, with the View-1 and View-2 pairs files beside "
                   "it (default: $FACEGATE_DATA/lfw/images)")
    p.add_argument("--calib-images", type=int, default=200, metavar="N",
                   help="face crops to measure activation ranges on (default: 200)")
    p.add_argument("--json", action="store_true", help="print the View-1 check as JSON")
    p.set_defaults(func=cmd_int8)

    p = export.add_parser("minifasnet", help="MiniFASNet state dicts → ONNX and TFLite liveness bundles")
    p.add_argument("--models", default=",".join(m.removeprefix("minifasnet-") for m in MODELS),
                   help="comma-separated: v2 (2.7× crop), v1se (4.0× crop) (default: both)")
    p.add_argument("--weights-dir", type=Path,
                   help="folder holding the .pth files (default: $FACEGATE_DATA/models/minifasnet)")
    p.add_argument("--download", action="store_true",
                   help="fetch missing weights from the pinned upstream URL (sha256-checked)")
    p.add_argument("--mirror", help="base URL of a local copy of the upstream files (or $FACEGATE_MODEL_MIRROR)")
    p.add_argument("--samples", type=Path,
                   help="extra live/spoof images for parity (default: $FACEGATE_DATA/liveness)")
    _common(p, MINIFASNET, calib=False)
    p.set_defaults(func=cmd_minifasnet)

    p = export.add_parser("torch", help="a PyTorch module from our own training → ONNX and TFLite bundles")
    p.add_argument("--module", required=True, metavar="MOD:FUNC",
                   help="factory returning the nn.Module: package.module:function or file.py:function")
    p.add_argument("--weights", type=Path, help="state dict (or checkpoint with 'state_dict') to load into it")
    p.add_argument("--name", required=True, help="model name; variants get suffixes (-int8, -tflite, …)")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--input-size", type=int, nargs=2, required=True, metavar=("W", "H"))
    p.add_argument("--colour", choices=("RGB", "BGR"), default="RGB", help="channel order the module expects")
    p.add_argument("--mean", type=float, nargs=3, default=(0.0, 0.0, 0.0), help="per-channel mean on 0–255")
    p.add_argument("--std", type=float, nargs=3, default=(1.0, 1.0, 1.0), help="per-channel std on 0–255")
    p.add_argument("--licence", default="proprietary")
    p.add_argument("--template", default="sface", help="model whose alignment template embedders use")
    p.add_argument("--crop-scale", type=float, help="liveness: face box scale of the crops")
    p.add_argument("--live-index", type=int, default=1, help="liveness: index of the live class")
    _common(p, tuple(VARIANTS))
    p.set_defaults(func=cmd_torch)
