"""`facegate store list | show | delete | backup | restore | audit | reembed`."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from edge.cli.common import (
    YES,
    bounded,
    config_option,
    emit,
    json_option,
    open_store,
    pipeline,
    recognition_options,
    settings,
    store_options,
)
from edge.errors import FacegateError


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def _templates(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {e}" for e, n in sorted(counts.items())) or "no templates"


def cmd_store(args: argparse.Namespace) -> int:
    from edge.store.db import Store

    action = args.store_command
    if action == "restore":
        from edge.paths import state_dir
        from edge.store.crypto import load_key

        settings(args)
        dest = args.store or state_dir() / "facegate.db"
        if args.force and args.reapply_deletions:
            raise FacegateError("--force brings deleted identities back, --reapply-deletions deletes them again: "
                                "give one")
        deleted = "restore" if args.force else "reapply" if args.reapply_deletions else "refuse"
        again = Store.restore(args.file, dest, key=load_key(args.key_file, store=dest),
                              replace_encrypted=args.replace_encrypted, deleted=deleted)
        emit(args, {"restored": str(dest), "from": str(args.file), "deleted_again": again},
             f"restored {dest} from {args.file}" + (f"; deleted again: {', '.join(again)}" if again else ""))
        return YES
    if action == "backup" and Path(args.file).exists() and not args.force:
        raise FacegateError(f"{args.file} exists; give --force to replace it")
    with open_store(args) as store:
        if action == "list":
            rows = [{"name": i.name, "display_name": i.display_name, "templates": i.templates, "crops": i.crops,
                     "created": i.created} for i in store.identities()]
            text = "\n".join(f"{r['name']:<30} {_templates(r['templates'])}"
                             + (f", {r['crops']} crops" if r["crops"] else "") for r in rows)
            emit(args, rows, text or "(no identities)")
        elif action == "show":
            ident = store.identity(args.name)
            if ident is None:
                raise FacegateError(f"unknown identity {args.name!r}")
            audit = [a for a in store.audit() if a.get("name") == args.name]
            data = {"name": ident.name, "display_name": ident.display_name, "metadata": ident.metadata,
                    "templates": ident.templates, "crops": ident.crops, "created": ident.created, "audit": audit}
            lines = [f"{ident.name}" + (f" ({ident.display_name})" if ident.display_name else ""),
                     f"  enrolled {_iso(ident.created)}; {_templates(ident.templates)}; {ident.crops} crops kept"]
            lines += [f"  metadata: {ident.metadata}"] if ident.metadata else []
            lines += [f"  {_iso(a['ts'])} {a['action']}: {a['command']}" for a in audit]
            emit(args, data, "\n".join(lines))
        elif action == "delete":
            if not store.delete(args.name, command=f"store delete {args.name}"):
                raise FacegateError(f"unknown identity {args.name!r}")
            emit(args, {"deleted": args.name}, f"deleted {args.name}")
        elif action == "backup":
            store.backup(args.file)
            emit(args, {"backup": str(args.file)}, f"backed up to {args.file}")
        elif action == "audit":
            rows = store.audit(limit=args.limit)
            emit(args, rows, "\n".join(f"{_iso(r['ts'])} {r['action']:<8} {r.get('name')}: {r['command']}"
                                       for r in rows))
        elif action == "reembed":
            from edge.reembed import reembed

            args.model = args.embedder
            summary = reembed(store, pipeline(args), args.embedder)
            emit(args, summary, f"re-embedded {summary['templates']} template(s) of {summary['identities']} "
                                f"identities with {args.embedder}")
    return YES


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("store", help="list, show, delete, back up, restore, audit, re-embed")
    store_options(group)  # `store --store X list` as well as `store list --store X`
    config_option(group)
    actions = group.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    for action, helptext in (("list", "list identities"), ("show", "one identity with its audit trail"),
                             ("delete", "delete an identity: templates, crops, gone from the disk files"),
                             ("backup", "consistent copy of the store"),
                             ("restore", "replace the store with a validated backup"),
                             ("audit", "the audit log"), ("reembed", "recompute templates from kept crops")):
        p = actions.add_parser(action, help=helptext)
        if action in ("show", "delete"):
            p.add_argument("name")
        if action in ("backup", "restore"):
            p.add_argument("file", type=Path)
        if action == "backup":
            p.add_argument("--force", action="store_true", help="replace FILE if it exists")
        if action == "restore":
            p.add_argument("--force", action="store_true",
                           help="bring back identities the store deleted after the backup was made (refused "
                                "without this or --reapply-deletions)")
            p.add_argument("--reapply-deletions", action="store_true",
                           help="delete again, after restoring, the identities deleted since the backup was made")
            p.add_argument("--replace-encrypted", action="store_true",
                           help="let a plaintext backup, or one sealed with another key, replace an encrypted "
                                "store (refused without this)")
        if action == "audit":
            p.add_argument("--limit", type=bounded(int, 1, 10**9))
        store_options(p)
        if action == "reembed":
            p.add_argument("--embedder", required=True, help="embedder whose templates to (re)compute")
            recognition_options(p)
        else:
            config_option(p)
            json_option(p)
        p.set_defaults(func=cmd_store)
