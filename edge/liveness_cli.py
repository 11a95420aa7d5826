"""`facegate liveness IMG`, `facegate bench liveness` and `facegate bench planar`, for edge/cli.py to register.

`facegate liveness IMG [--json]`: the passive check on the largest face of one image, at the fixed
threshold. Exit 0 live, 1 spoof, 2 error (unreadable image, no face, no liveness model installed).
JSON keys: live (bool), score, threshold, plus the members' scores, the crops and the face.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _check(args: argparse.Namespace):
    from edge.liveness.minifasnet import open_passive
    from edge.models.registry import Registry

    return open_passive(Registry(), args.model, args.threads)


def cmd_liveness(args: argparse.Namespace) -> int:
    from edge.imageio import load_bgr
    from edge.models.registry import Registry
    from edge.vision.detect import Detector, select_face

    image = load_bgr(args.image)
    check = _check(args)
    detector = Detector(*Registry().open("yunet", threads=args.threads), min_face_px=args.min_face)
    face = select_face(detector.detect(image), image.shape, "largest")  # NoFaceError → exit 2
    a = check.assess(image, face)
    data = {"image": str(args.image), "model": check.name, **a.to_dict(), "face": face.to_dict()}
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        members = ", ".join(f"{k} {v:.4f}" for k, v in a.members.items())
        print(f"{'live' if a.live else 'spoof'}: score {a.score:.4f} (threshold {a.threshold:g}; {members})")
    return 0 if a.live else 1


def cmd_bench_liveness(args: argparse.Namespace) -> int:
    from edge.bench import liveness as bench
    from edge.errors import FacegateError

    if args.clips:
        if args.live is None and args.spoof is None:
            raise FacegateError("bench liveness --clips: give --live DIR and/or --spoof DIR")
        r = bench.run_clips(args.live, args.spoof, model=args.model, threads=args.threads, fps=args.fps,
                            challenge=not args.no_challenge, direction=args.direction, k=args.k, n=args.n)
        lines = [f"{label} {c['clip']}: {c['verdict']} ({c['reason']})"
                 for label in ("live", "spoof") for c in r["clips"][label]]
        lines.append(f"clips: APCER {_pct(r['apcer'])}, BPCER {_pct(r['bpcer'])}, ACER {_pct(r['acer'])}; "
                     f"no face: {r['no_face']}; tracking {r['tracking_ms_median']} ms/frame (median)")
    else:
        if args.live is None or args.spoof is None:
            raise FacegateError("bench liveness: give --live DIR and --spoof DIR")
        r = bench.run(args.live, args.spoof, model=args.model, threads=args.threads, limit=args.limit,
                      pairs=args.pairs)
        up = r["upstream_argmax"]
        lines = [f"{r['model']} ({' + '.join(r['members'])}), live iff score > {r['threshold']:g}: "
                 f"APCER {_pct(r['apcer'])} ({r['attacks_accepted']} of {r['spoof_images'] - r['no_face']['spoof']}), "
                 f"BPCER {_pct(r['bpcer'])} ({r['bona_fide_refused']} of "
                 f"{r['live_images'] - r['no_face']['live']}), ACER {_pct(r['acer'])}",
                 f"no face: {r['no_face']['live']} live, {r['no_face']['spoof']} spoof; crops shrunk "
                 f"{_pct(r['crops_adjusted']['shrunk'])}, shifted {_pct(r['crops_adjusted']['shifted'])} "
                 f"(shrunk to fit, then shifted inside: no padding); high-confidence spoof on live faces "
                 f"{_pct(r['certain_spoof_on_live'])}",
                 f"upstream arg-max rule for comparison: APCER {_pct(up['apcer'])}, BPCER {_pct(up['bpcer'])}"]
    print(json.dumps(r, indent=2) if args.json else "\n".join(lines))
    return 0


def cmd_bench_planar(args: argparse.Namespace) -> int:
    import sys

    from edge.bench import planar
    from edge.imageio import sample_images

    paths = [*sample_images(args.images, limit=args.limit), *args.image]
    r = planar.run(paths, seed=args.seed, progress=sys.stderr.isatty())
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"OpenCV {r['opencv']}, {r['faces']} faces, seed {r['seed']}; planar iff ≥ {r['planar_share']:.0%} of "
          f"the points on one homography (points kept at conditioning ≥ {r['min_condition']:g})")
    for kind, k in r["kinds"].items():
        print(f"{kind}: {k['correct']} of {k['clips']} judged {k['expected']} ({k['no_verdict']} no verdict); "
              f"some frame said the opposite in {k['some_frame_opposite']}; inliers of the deciding fit min "
              f"{k['inliers_min']:.3f}, median {k['inliers_median']:.3f}"
              + (f"; wrong: {', '.join(Path(w).name for w in k['wrong'])}" if k["wrong"] else ""))
    return 0


def cmd_calibrate_liveness(args: argparse.Namespace) -> int:
    import shlex
    import sys

    from tqdm import tqdm

    from edge.liveness.calibrate import calibrate
    from edge.models.registry import Registry

    command = "facegate " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    r = calibrate(args.live, Registry(), bpcer=args.bpcer, exclude=args.exclude_pairs or (), limit=args.limit,
                  command=command, write=not args.dry_run,
                  progress=lambda it: tqdm(it, desc="scoring live faces", unit="img", file=sys.stderr,
                                           disable=None))
    p = r["provenance"]
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(f"{r['model']}: live iff score > {r['threshold']:g} (was {r['previous_threshold']:g}); BPCER "
              f"{_pct(p['bpcer_measured'])} on {p['faces']} live faces (target {_pct(p['target_bpcer'])}; "
              f"{_pct(p['a_priori_rule']['bpcer_measured'])} at {p['a_priori_rule']['value']:g}); no face "
              f"{p['no_face']}; {p['excluded_images']} images excluded; "
              + ("written to the manifest" if r["written"] else "dry run: nothing written"))
    return 0


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f} %"


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="auto",
                   help="liveness bundle: auto (the fused MiniFASNets when installed), or a bundle name")
    p.add_argument("--threads", type=int, default=1, help="inference threads (default: 1)")
    p.add_argument("--json", action="store_true", help="print JSON")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("liveness", help="passive liveness check of one image (exit 0 live, 1 spoof, 2 error)")
    p.add_argument("image", type=Path)
    p.add_argument("--min-face", type=float, default=40.0, metavar="PX",
                   help="smallest face to find, in image pixels (default: 40)")
    _model_args(p)
    p.set_defaults(func=cmd_liveness)
    _calibrate_parser(sub)


def _calibrate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate-liveness",
                       help="set the passive check's live threshold from bona fide faces (a target BPCER)")
    p.add_argument("--live", type=Path, required=True,
                   help="folder of live faces that no evaluation uses (ideally this camera's own captures)")
    p.add_argument("--bpcer", type=float, default=0.05,
                   help="share of these live frames the threshold may refuse (default: 0.05)")
    p.add_argument("--exclude-pairs", type=Path, action="append", metavar="FILE",
                   help="leave out the images an LFW-format pairs file names, e.g. View 2 (repeatable)")
    p.add_argument("--limit", type=int, help="at most this many images (evenly spread)")
    p.add_argument("--dry-run", action="store_true", help="report the threshold without writing it")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_calibrate_liveness)


def add_bench_liveness(bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser("liveness", help="APCER/BPCER/ACER of the passive check at its fixed threshold; "
                                          "--clips: clips through the temporal rule and the challenge")
    p.add_argument("--live", type=Path, help="folder of bona fide images (or, with --clips, of clips)")
    p.add_argument("--spoof", type=Path, help="folder of attack images (or, with --clips, of clips)")
    p.add_argument("--pairs", type=Path, help="use only the --live images an LFW pairs file names (e.g. View 2)")
    p.add_argument("--limit", type=int, help="at most this many images per folder (evenly spread)")
    p.add_argument("--clips", action="store_true",
                   help="each sub-folder of frames or video file is one presentation, run through tracking, "
                        "the temporal rule and the challenge")
    p.add_argument("--fps", type=float, default=15.0, help="clips: frame rate of frame folders (default: 15)")
    p.add_argument("--no-challenge", action="store_true", help="clips: passive check and temporal rule only")
    p.add_argument("--direction", choices=("any", "left", "right"), default="any",
                   help="clips: the turn that passes the challenge (default: any; a recording cannot follow "
                        "a random instruction)")
    p.add_argument("--k", type=int, default=3, help="clips: k of the last n frames must read live (default 3)")
    p.add_argument("--n", type=int, default=5, help="clips: n (default 5)")
    _model_args(p)
    p.set_defaults(func=cmd_bench_liveness)
    p = bench.add_parser("planar", help="the planar-motion check on synthetic replays, torn prints and turning "
                                        "reliefs of the faces in a folder (a regression aid)")
    p.add_argument("--images", type=Path, required=True, help="folder of face images (searched recursively)")
    p.add_argument("--image", type=Path, action="append", default=[], metavar="FILE",
                   help="one more face image (repeatable), e.g. $FACEGATE_DATA/liveness/image_T1.jpg")
    p.add_argument("--limit", type=int, default=20, help="at most this many images from --images, evenly spread "
                                                         "(default: 20)")
    p.add_argument("--seed", type=int, default=20, help="first seed; kind i of face k uses seed + 25 i + k "
                                                        "(default: 20)")
    p.add_argument("--json", action="store_true", help="print JSON (every clip's verdict and fit)")
    p.set_defaults(func=cmd_bench_planar)
