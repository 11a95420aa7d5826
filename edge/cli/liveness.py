"""`facegate liveness IMG`: the passive check on the largest face of one image, at the calibrated threshold.
Exit 0 live, 1 spoof, 2 error (unreadable image, no face, no liveness model installed). JSON keys: live
(bool), score, threshold, plus the members' scores, the crops and the face."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge.cli.bench import liveness_model_options
from edge.cli.common import NO, YES, bounded, emit, registry


def cmd_liveness(args: argparse.Namespace) -> int:
    from edge.imageio import load_bgr
    from edge.liveness.minifasnet import open_passive
    from edge.vision.detect import make_detector, select_face

    reg = registry(args)
    image = load_bgr(args.image)
    check = open_passive(reg, args.model, args.threads)
    detector = make_detector(reg, "yunet", threads=args.threads, min_face_px=args.min_face)
    face = select_face(detector.detect(image), image.shape, "largest")  # NoFaceError → exit 2
    a = check.assess(image, face)
    members = ", ".join(f"{k} {v:.4f}" for k, v in a.members.items())
    emit(args, {"image": str(args.image), "model": check.name, **a.to_dict(), "face": face.to_dict()},
         f"{'live' if a.live else 'spoof'}: score {a.score:.4f} (threshold {a.threshold:g}; {members})")
    return YES if a.live else NO


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("liveness", help="passive liveness check of one image (exit 0 live, 1 spoof, 2 error)")
    p.add_argument("image", type=Path)
    p.add_argument("--min-face", type=bounded(float, 8), default=40.0, metavar="PX",
                   help="smallest face to find, in image pixels (default: 40)")
    liveness_model_options(p)
    p.set_defaults(func=cmd_liveness)
