"""`facegate models list | verify | install`."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge.cli.common import ERROR, YES, config_option, emit, json_option, registry
from edge.errors import FacegateError


def cmd_list(args: argparse.Namespace) -> int:
    reg = registry(args)
    rows = []
    for name in reg.names():
        m = reg.manifest(name)
        rows.append({"name": m.name, "task": m.task, "file": m.file, "sha256": m.sha256, "runtime": m.runtime,
                     "licence": m.licence, "source": m.source,
                     "thresholds": {k: v.value for k, v in m.thresholds.items()}})
    emit(args, rows, "\n".join(f"{r['name']:<22} {r['task']:<12} {r['runtime']:<12} {r['file']}" for r in rows))
    return YES


def cmd_verify(args: argparse.Namespace) -> int:
    from edge.models.registry import PackageMissingError

    reg = registry(args)
    rows, failed = [], False
    for name in args.names or reg.names():
        try:
            m = reg.manifest(name)
            path = reg.runtime_file(m)  # checks the source hash and (re)builds a prepared copy if stale
            # A fusion has no file of its own: verifying it verified its members' files.
            source = path if m.task == "fusion" else reg.source_path(m)
            rows.append({"name": name, "ok": True, "file": str(source), "runtime_file": str(path)})
        except PackageMissingError as exc:
            if args.names or not exc.optional:
                failed = True
                rows.append({"name": name, "ok": False, "error": str(exc)})
            else:  # an optional model this device was installed without: not offered, nothing to check
                rows.append({"name": name, "ok": True, "skipped": str(exc)})
        except FacegateError as exc:
            failed = True
            rows.append({"name": name, "ok": False, "error": str(exc)})
    emit(args, rows, "\n".join(f"{_status(r)} {r['name']}: {r.get('runtime_file') or r.get('skipped') or r['error']}"
                               for r in rows))
    return ERROR if failed else YES


def _status(row: dict) -> str:
    return "skip" if "skipped" in row else "ok  " if row["ok"] else "FAIL"


def cmd_install(args: argparse.Namespace) -> int:
    from edge.models.install import install

    model_dir = args.model_dir or registry(args).model_dir
    names = install(args.source, sha256=args.sha256, model_dir=model_dir, progress=not args.quiet,
                    mirror=args.mirror, files=args.file or (), replace_builtin=args.replace_builtin)
    emit(args, {"installed": names, "model_dir": str(model_dir)},
         "\n".join(f"installed {n} into {Path(model_dir) / n}" for n in names))
    return YES


def register(sub: argparse._SubParsersAction) -> None:
    from edge.models.install import GROUPS, KNOWN

    models = sub.add_parser("models", help="list, verify and install model bundles").add_subparsers(
        dest="models_command", required=True, metavar="ACTION")
    p = models.add_parser("list", help="list known models")
    config_option(p)
    json_option(p)
    p.set_defaults(func=cmd_list)
    p = models.add_parser("verify", help="check every model file's sha256 and prepare it if needed (an optional "
                                         "model whose package is not installed is skipped unless named)")
    p.add_argument("names", nargs="*")
    config_option(p)
    json_option(p)
    p.set_defaults(func=cmd_verify)

    known = ", ".join(f"{k} ({v.note})" if v.note else k for k, v in KNOWN.items())
    groups = ", ".join(f"{k} ({' + '.join(v)})" for k, v in GROUPS.items())
    p = models.add_parser(
        "install", help="install a model bundle (known name, bundle folder/archive, or URL), hash-checked",
        description=f"Known names: {known}. Groups: {groups}. A known name is downloaded from its pinned URL, "
                    "or read from --file (its sha256 must be the pinned one). A URL must point at a bundle "
                    "archive and needs --sha256.")
    p.add_argument("source", help="known name or group, bundle folder, .tar.gz/.tgz/.tar/.zip archive, or "
                                  "http(s) URL")
    p.add_argument("--file", type=Path, action="append", metavar="PATH",
                   help="a known name's upstream file already on disk, instead of downloading it (repeat for "
                        "each file of a group, e.g. both MiniFASNet .pth files)")
    p.add_argument("--sha256", metavar="HEX", help="expected sha256 of the downloaded or given file (for a "
                                                     "bundle folder: of the model file inside it)")
    p.add_argument("--replace-builtin", action="store_true",
                   help="let the bundle take the name of a built-in model (e.g. an exported sface-int8), which "
                        "it then replaces for every command; refused without this")
    p.add_argument("--mirror", metavar="URL",
                   help="base URL of a local copy of the upstream files (or $FACEGATE_MODEL_MIRROR)")
    p.add_argument("--model-dir", type=Path, help="install here instead of models.model_dir / <state dir>/models")
    p.add_argument("--quiet", action="store_true", help="no download progress bar")
    config_option(p)
    json_option(p)
    p.set_defaults(func=cmd_install)
