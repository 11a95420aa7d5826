"""`facegate models install NAME|FILE|URL [--sha256 HEX] [--file PATH …]`, wired into edge/cli.py's `models` group."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def install(args: argparse.Namespace) -> int:
    from edge.models.install import install as do_install
    from edge.models.registry import Registry

    model_dir = args.model_dir or Registry().model_dir
    names = do_install(args.source, sha256=args.sha256, model_dir=model_dir, progress=not args.quiet,
                       mirror=args.mirror, files=args.file or ())
    data = {"installed": names, "model_dir": str(model_dir)}
    text = "\n".join(f"installed {n} into {Path(model_dir) / n}" for n in names)
    print(json.dumps(data, indent=2) if args.json else text)
    return 0


def add_install_parser(models_subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from edge.models.install import GROUPS, KNOWN

    known = ", ".join(f"{k} ({v.note})" if v.note else k for k, v in KNOWN.items())
    groups = ", ".join(f"{k} ({' + '.join(v)})" for k, v in GROUPS.items())
    p = models_subparsers.add_parser(
        "install", help="install a model bundle (known name, bundle folder/archive, or URL), hash-checked",
        description=f"Known names: {known}. Groups: {groups}. A known name is downloaded from its pinned URL, "
                    "or read from --file (its sha256 must be the pinned one). A URL must point at a bundle "
                    "archive and needs --sha256.")
    p.add_argument("source", help="known name or group, bundle folder, .tar.gz/.tgz/.tar/.zip archive, or "
                                  "http(s) URL")
    p.add_argument("--file", type=Path, action="append", metavar="PATH",
                   help="a known name's upstream file already on disk, instead of downloading it (repeat for "
                        "each file of a group, e.g. both MiniFASNet .pth files)")
    p.add_argument("--sha256", metavar="HEX", help="expected sha256 of the downloaded or given file")
    p.add_argument("--mirror", metavar="URL",
                   help="base URL of a local copy of the upstream files (or $FACEGATE_MODEL_MIRROR)")
    p.add_argument("--model-dir", type=Path, help="install here instead of <state dir>/models")
    p.add_argument("--quiet", action="store_true", help="no download progress bar")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=install)
    return p
