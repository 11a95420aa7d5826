"""`facegate stylize CONTENT OUT --style NAME | --style-image IMG`: stylisation on the device (no torch)."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge.cli.common import YES, bounded, emit, json_option


def cmd_stylize(args: argparse.Namespace) -> int:
    from edge.stylize import stylize_file

    info = stylize_file(args.content, args.out, style=args.style, style_image=args.style_image, size=args.size,
                        runtime=args.runtime, threads=args.threads, overlap=args.overlap,
                        magenta=args.magenta_dir, variant=args.magenta_variant)
    emit(args, info, f"wrote {info['out']} ({info['width']}×{info['height']}, {info['model']}, "
                     f"{info['tile']}² tiles)")
    return YES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stylize", help="paint a photo in a trained style or in the style of any painting")
    p.add_argument("content", type=Path, help="the photo")
    p.add_argument("out", type=Path, help="where to write the result (PNG, JPEG, …)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--style", help="an installed style bundle (style-<NAME>), e.g. starry_night")
    which.add_argument("--style-image", type=Path, metavar="IMG",
                       help="any painting, through Magenta's arbitrary-style TFLite models")
    p.add_argument("--size", type=bounded(int, 16, 16384), metavar="N",
                   help="resize so the longer side is N pixels first")
    p.add_argument("--runtime", choices=("onnxruntime", "litert"), default="onnxruntime",
                   help="which of the style's bundles to run (default: onnxruntime)")
    p.add_argument("--overlap", type=bounded(int, 0, 1024),
                   help="tile overlap in pixels (default: the bundle's, or 64)")
    p.add_argument("--threads", type=bounded(int, 1, 64), default=1)
    p.add_argument("--magenta-dir", type=Path, help="folder of the Magenta .tflite files under their upstream "
                   "names (default: $FACEGATE_MAGENTA_DIR, else the bundles `facegate models install magenta` "
                   "installs)")
    p.add_argument("--magenta-variant", choices=("f16", "quantized"), default="f16")
    json_option(p)
    p.set_defaults(func=cmd_stylize)
