"""`facegate data wild`: write a wild development set (edge/eval/wild.py) built from LFW View 1 only."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge.cli.common import YES, bounded, emit, json_option


def cmd_wild(args: argparse.Namespace) -> int:
    from edge.eval import wild

    r = wild.build(args.images, args.out, seed=args.seed, pairs_files=args.pairs, limit=args.limit,
                   force=args.force)
    if args.sheet:
        r["sheet"] = str(wild.contact_sheet(args.out, args.sheet))
    emit(args, r, f"{r['images']} scenes in {r['out']} (seed {r['seed']}): {r['with_distractor']} with a second "
                  f"face, {r['quarter_turned']} turned by a quarter or half turn, {r['under_40px']} faces under "
                  f"40 px; pairs: " + ", ".join(f"{k} {v}" for k, v in r["pairs"].items()))
    return YES


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="evaluation data sets").add_subparsers(
        dest="data_command", required=True, metavar="SET")
    p = data.add_parser("wild", help="in-the-wild scenes from LFW View 1 (small, turned, crowded, blurred, dark, "
                                     "compressed faces), deterministic from a seed, for tuning")
    p.add_argument("--images", type=Path, required=True, help="LFW images folder (Name/Name_NNNN.jpg)")
    p.add_argument("--pairs", type=Path, nargs="+",
                   help="View-1 pairs files (default: pairsDevTrain.txt and pairsDevTest.txt beside --images); "
                        "View 2 is refused")
    p.add_argument("--out", type=Path, required=True, help="folder to write: images/, the pairs files, wild.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=bounded(int, 1), help="only the first N matched and N mismatched pairs per file")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--sheet", type=Path, help="also write a PNG contact sheet of the first 12 scenes here")
    json_option(p)
    p.set_defaults(func=cmd_wild)
