"""`facegate calibrate embedder | liveness`: operating points from data no evaluation uses, written into the
model's manifest (an override in the model directory) with their provenance.

- embedder: the 1:1 threshold at a target FAR and the 1:N impostor tail, from an LFW-format pairs file (View 1,
  never View 2) through the device pipeline;
- liveness: the passive check's live threshold as a quantile of bona fide faces (a target BPCER).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from edge.cli.common import YES, bounded, config_option, emit, json_option, pct, registry


def cmd_embedder(args: argparse.Namespace) -> int:
    from edge.eval.calibrate import calibrate

    reg = registry(args)
    entries = calibrate(args.model, args.images, args.pairs, args.far, registry=reg, fpir=args.fpir)
    if not args.dry_run:
        written = str(reg.write_override(args.model, {"thresholds": entries}))
        for e in entries.values():
            e["provenance"]["written_to"] = written
    entry = entries["verify"]
    p = entry["provenance"]
    emit(args, entries, f"{args.model} verify threshold {entry['value']:.4f} at FAR {p['far_measured']:.2e} "
                        f"(target {p['far_target']:.0e}), FRR {p['frr_measured']:.4f}, {p['impostor_pairs']} "
                        f"impostor pairs" + ("" if args.dry_run else f"; written to {p['written_to']}"))
    return YES


def cmd_fusion(args: argparse.Namespace) -> int:
    import json

    from edge.errors import FacegateError
    from edge.eval.calibrate import calibrate_fusion

    reg = registry(args)
    members = tuple(m.strip() for m in args.members.split(",") if m.strip())
    weights = {}
    for item in (args.weights or "").split(","):
        if item.strip():
            name, _, value = item.partition("=")
            try:
                weights[name.strip()] = float(value)
            except ValueError:
                raise FacegateError(f"--weights: {item!r} is not NAME=NUMBER") from None
    r = calibrate_fusion(args.name, members, args.images, args.pairs, args.far, registry=reg, fpir=args.fpir,
                         weights=weights)
    written = None
    if not args.dry_run:
        if args.name in reg.names():
            written = str(reg.write_override(args.name, r))
        else:
            from edge.atomic import atomic_write_bytes

            path = reg.model_dir / args.name / "manifest.json"
            manifest = {"name": args.name, "task": "fusion", "licence": "Apache-2.0",
                        "source": {"recipe": "facegate calibrate fusion"}, **r}
            atomic_write_bytes(path, (json.dumps(manifest, indent=2) + "\n").encode())
            written = str(path)
    v = r["thresholds"]["verify"]
    stats = ", ".join(f"{m} μ {s['mu']:.4f} σ {s['sigma']:.4f}" for m, s in r["extra"]["stats"].items())
    emit(args, {**r, "written_to": written},
         f"{args.name}: {stats}; verify threshold {v['value']:.4f} at FAR {v['provenance']['far_measured']:.2e}, "
         f"FRR {v['provenance']['frr_measured']:.4f}" + (f"; written to {written}" if written else "; dry run"))
    return YES


def cmd_liveness(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from edge.liveness.calibrate import calibrate

    command = "facegate " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    r = calibrate(args.live, registry(args), bpcer=args.bpcer, exclude=args.exclude_pairs or (), limit=args.limit,
                  command=command, write=not args.dry_run,
                  progress=lambda it: tqdm(it, desc="scoring live faces", unit="img", file=sys.stderr,
                                           disable=None))
    p = r["provenance"]
    emit(args, r, f"{r['model']}: live iff score > {r['threshold']:g} (was {r['previous_threshold']:g}); BPCER "
                  f"{pct(p['bpcer_measured'])} on {p['faces']} live faces (target {pct(p['target_bpcer'])}; "
                  f"{pct(p['a_priori_rule']['bpcer_measured'])} at {p['a_priori_rule']['value']:g}); no face "
                  f"{p['no_face']}; {p['excluded_images']} images excluded; "
                  + ("written to the manifest" if r["written"] else "dry run: nothing written"))
    return YES


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("calibrate", help="set operating thresholds from data no evaluation uses").add_subparsers(
        dest="calibrate_command", required=True, metavar="WHAT")
    p = group.add_parser("embedder", help="an embedder's 1:1 threshold at a target FAR and its 1:N impostor tail")
    p.add_argument("--model", required=True, help="embedder model name, e.g. sface")
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--pairs", type=Path, required=True, help="LFW-format pairs file (use View 1, never View 2)")
    p.add_argument("--far", type=bounded(float, 1e-9, 0.5), default=1e-3)
    p.add_argument("--fpir", type=bounded(float, 1e-6, 0.5), default=0.01,
                   help="1:N target false-positive identification rate recorded with the impostor tail")
    p.add_argument("--dry-run", action="store_true", help="print, do not write the manifest override")
    config_option(p)
    json_option(p)
    p.set_defaults(func=cmd_embedder)

    p = group.add_parser("fusion", help="a score fusion of several embedders: impostor statistics per member and "
                                        "the fused score's 1:1 threshold and 1:N tail")
    p.add_argument("--name", default="fused", help="the fusion's model name (default: fused)")
    p.add_argument("--members", default="sface-int8,dlib-resnet-int8",
                   help="comma-separated embedders (default: sface-int8,dlib-resnet-int8, the built-in fused's)")
    p.add_argument("--weights", help="NAME=W,… relative weights (default: equal)")
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--pairs", type=Path, required=True, help="LFW-format pairs file (use View 1, never View 2)")
    p.add_argument("--far", type=bounded(float, 1e-9, 0.5), default=1e-3)
    p.add_argument("--fpir", type=bounded(float, 1e-6, 0.5), default=0.01)
    p.add_argument("--dry-run", action="store_true", help="print, do not write the manifest")
    config_option(p)
    json_option(p)
    p.set_defaults(func=cmd_fusion)

    p = group.add_parser("liveness", help="the passive check's live threshold from bona fide faces (a target BPCER)")
    p.add_argument("--live", type=Path, required=True,
                   help="folder of live faces that no evaluation uses (ideally this camera's own captures)")
    p.add_argument("--bpcer", type=bounded(float, 0.0001, 0.5), default=0.05,
                   help="share of these live frames the threshold may refuse (default: 0.05)")
    p.add_argument("--exclude-pairs", type=Path, action="append", metavar="FILE",
                   help="leave out the images an LFW-format pairs file names, e.g. View 2 (repeatable)")
    p.add_argument("--limit", type=bounded(int, 1), help="at most this many images (evenly spread)")
    p.add_argument("--dry-run", action="store_true", help="report the threshold without writing it")
    config_option(p)
    json_option(p)
    p.set_defaults(func=cmd_liveness)
