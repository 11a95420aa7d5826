"""The torch-side command groups (`facegate export|train|style …`), loaded only when asked for.

Sub-commands that need torch import it themselves and name the extra to install when it is missing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge.errors import FacegateError


def cmd_calibrate(args: argparse.Namespace) -> int:
    from edge.models.registry import Registry
    from export.calibrate import calibrate

    reg = Registry()
    entries = calibrate(args.model, args.images, args.pairs, args.far, registry=reg, fpir=args.fpir)
    if not args.dry_run:
        written = str(reg.write_override(args.model, {"thresholds": entries}))
        for e in entries.values():
            e["provenance"]["written_to"] = written
    if args.json:
        print(json.dumps(entries, indent=2))
    else:
        entry = entries["verify"]
        p = entry["provenance"]
        print(f"{args.model} verify threshold {entry['value']:.4f} at FAR {p['far_measured']:.2e} "
              f"(target {p['far_target']:.0e}), FRR {p['frr_measured']:.4f}, {p['impostor_pairs']} impostor pairs"
              + ("" if args.dry_run else f"; written to {p['written_to']}"))
    return 0


# Modules that add `facegate export|train|style …` commands: each has add_commands(groups) taking the
# sub-parsers of the three groups as a dict {"export": …, "train": …, "style": …}.
COMMAND_MODULES: tuple[str, ...] = ("export.commands", "export.dlib_commands", "export.style_commands",
                                    "export.train_commands")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facegate")
    groups = parser.add_subparsers(dest="group", required=True)
    export = groups.add_parser("export", help="conversion, quantisation and calibration").add_subparsers(
        dest="export_command", required=True, metavar="ACTION")
    p = export.add_parser("calibrate", help="set a model's 1:1 threshold at a target FAR and its 1:N impostor tail")
    p.add_argument("--model", required=True)
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--pairs", type=Path, required=True, help="LFW-format pairs file (use View 1, never View 2)")
    p.add_argument("--far", type=float, default=1e-3)
    p.add_argument("--fpir", type=float, default=0.01,
                   help="1:N target false-positive identification rate recorded with the impostor tail")
    p.add_argument("--dry-run", action="store_true", help="print, do not write the manifest override")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_calibrate)
    subs = {"export": export}
    for name in ("train", "style"):
        subs[name] = groups.add_parser(name, help=f"{name} commands").add_subparsers(
            dest=f"{name}_command", metavar="ACTION")
    import importlib

    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(subs)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if not hasattr(args, "func"):
        raise FacegateError(f"'facegate {args.group}' has no commands in this version")
    return int(args.func(args))
