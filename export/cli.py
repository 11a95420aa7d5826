"""The torch-side command groups (`facegate export|train|style …`), loaded only when asked for.

Sub-commands that need torch import it themselves and name the extra to install when it is missing.
"""

from __future__ import annotations

import argparse

from edge.errors import FacegateError

# Modules that add `facegate export|train|style …` commands: each has add_commands(groups) taking the
# sub-parsers of the three groups as a dict {"export": …, "train": …, "style": …}.
COMMAND_MODULES: tuple[str, ...] = ("export.commands", "export.dlib_commands", "export.style_commands",
                                    "export.train_commands")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facegate")
    groups = parser.add_subparsers(dest="group", required=True)
    export = groups.add_parser("export", help="conversion, quantisation and calibration").add_subparsers(
        dest="export_command", required=True, metavar="ACTION")
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
