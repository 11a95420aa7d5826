"""The `facegate` command line: one module per command group, each with `register(subparsers)`; shared
printing, exit codes and options in common.py. The modules hold no logic of their own: they parse, call the
library, and print text or --json.

Exit codes: 0 yes / success, 1 a negative answer, 2 an error (one line on stderr).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from edge import __version__
from edge.errors import FacegateError

# The command groups, in the order `facegate --help` lists them. Imported when the parser is built; each module
# imports the heavy parts (models, numpy work) only inside its handlers, so start-up stays cheap.
GROUPS: tuple[str, ...] = ("edge.cli.faces", "edge.cli.people", "edge.cli.store", "edge.cli.run", "edge.cli.web",
                           "edge.cli.doctor",
                           "edge.cli.liveness", "edge.cli.calibrate", "edge.cli.models", "edge.cli.bench",
                           "edge.cli.data", "edge.cli.explain", "edge.cli.stylize", "edge.cli.demo", "edge.cli.hub",
                           "edge.cli.fleet", "edge.cli.collect")
# Groups that need PyTorch: handed to export/ (the [export] extra), the only place edge/ imports it.
TORCH_GROUPS = ("export", "train", "style")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facegate", description="Offline face access control for the edge.")
    parser.add_argument("--version", action="version", version=f"facegate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in GROUPS:
        importlib.import_module(module).register(sub)
    for group in TORCH_GROUPS:
        sub.add_parser(group, help=f"{group} commands (need the [export] extra)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in TORCH_GROUPS:
        return _torch_group(argv)
    args = build_parser().parse_args(argv)
    try:
        if hasattr(args, "config") and args.command != "run":
            from edge.cli.common import settings

            settings(args)  # defaults the daemon's configuration sets, under what the command line gave
        return int(args.func(args))
    except FacegateError as exc:
        print(f"facegate: error: {exc}", file=sys.stderr)
        return 2
    except FILE_SYSTEM_ERRORS as exc:
        # A folder that is read-only, a file where a folder should be: the machine's state, not a bug. One
        # line that names the path, as for any other bad input.
        print(f"facegate: error: {exc.filename or ''}: {exc.strerror or exc}"
              + (f" ({exc.filename2})" if exc.filename2 else ""), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("facegate: interrupted", file=sys.stderr)
        return 130


# OSErrors that describe the file system the command was pointed at (permissions, a file where a folder is
# expected, a missing folder) rather than a fault in facegate.
FILE_SYSTEM_ERRORS = (PermissionError, FileExistsError, IsADirectoryError, NotADirectoryError, FileNotFoundError)


def _torch_group(argv: list[str]) -> int:
    """Hand the export/train/style groups to export/."""
    try:
        from export.cli import main as export_main

        return int(export_main(argv))
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ("edge", "export"):
            raise  # our own bug, not a missing extra
        print(f"facegate: error: '{argv[0]}' needs the export extra ({exc.name} is missing): "
              "pip install 'facegate[export]'", file=sys.stderr)
        return 2
    except FacegateError as exc:
        print(f"facegate: error: {exc}", file=sys.stderr)
        return 2
