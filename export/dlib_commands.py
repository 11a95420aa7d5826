"""`facegate export dlib-resnet`: dlib's face-recognition ResNet → ONNX (and TFLite) bundles with parity.

Writes one bundle per variant into --out, prints a one-line parity summary per bundle, and exits 1 when a
bundle missed its parity target (the bundle is still written, "passed": false in its parity.json).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from export.commands import report


def cmd_dlib_resnet(args: argparse.Namespace) -> int:
    from export.recipes import dlib_resnet, parse_variants

    variants = parse_variants(args.variants, dlib_resnet.OFFERED)
    results = dlib_resnet.export(args.out, variants=variants, images=args.images, parity_images=args.parity_images,
                                 template_images=args.template_images,
                                 calibrate=not args.no_calibrate, calibrate_pairs=args.calibrate_pairs,
                                 far=args.far, fpir=args.fpir, calib_images=args.calib_images)
    if args.no_calibrate:
        print("thresholds not calibrated (--no-calibrate): run `facegate calibrate embedder` before using the bundle")
    return report(args, results)


def add_commands(subs: dict[str, argparse._SubParsersAction]) -> None:
    p = subs["export"].add_parser(
        "dlib-resnet", help="dlib's face-recognition ResNet (.dat) → ONNX / TFLite bundles, parity against dlib")
    p.add_argument("--out", type=Path, required=True, help="folder to write the bundles into")
    p.add_argument("--images", type=Path,
                   help="LFW images folder: template fitting, parity, calibration (default: $FACEGATE_DATA/lfw/images)")
    p.add_argument("--parity-images", type=int, default=100, metavar="N",
                   help="faces on which to compare with dlib's own descriptors (default: 100)")
    p.add_argument("--template-images", type=int, default=1000, metavar="N",
                   help="faces to fit the alignment template on (default: 1000)")
    p.add_argument("--calibrate-pairs", type=Path, metavar="FILE",
                   help="View-1 pairs file for the verify/identify thresholds (default: pairsDevTrain.txt beside "
                        "the images folder; pairs.txt is refused)")
    p.add_argument("--no-calibrate", action="store_true", help="write the bundles without thresholds")
    p.add_argument("--far", type=float, default=1e-3, help="1:1 target false-accept rate (default: 1e-3)")
    p.add_argument("--fpir", type=float, default=0.01, help="1:N target false-positive identification rate")
    p.add_argument("--variants", help="comma-separated subset of: onnx-fp32,onnx-int8,tflite-fp32 (default: all)")
    p.add_argument("--calib-images", type=int, default=200, metavar="N",
                   help="device crops of photos View 2 does not name, to calibrate int8 on (default: 200)")
    p.add_argument("--json", action="store_true", help="print the bundles and their parity as JSON")
    p.set_defaults(func=cmd_dlib_resnet)
