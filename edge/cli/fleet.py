"""`facegate fleet sync | status`: a door's side of gallery sync. The daemon runs the sync itself in fleet mode
([fleet] enabled); `fleet sync` runs it alone (a door whose decisions run elsewhere, the fleet benchmark)."""

from __future__ import annotations

import argparse
import signal
import threading

from edge.cli.common import ERROR, YES, config_option, emit, settings


def cmd_sync(args: argparse.Namespace) -> int:
    from edge.daemon import setup_logging
    from edge.fleet.door import DoorSync

    cfg = settings(args)
    setup_logging("json" if args.json else cfg.log.format, cfg.log.level)
    sync = DoorSync(cfg)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    sync.start()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        sync.stop()
    return YES


def cmd_status(args: argparse.Namespace) -> int:
    from edge.fleet.door import DoorSync

    cfg = settings(args)
    sync = DoorSync(cfg, connect=False)
    try:
        if args.poll:
            sync.poll()
        status = sync.status()
    finally:
        sync.stop()
    age = status["age_s"]
    lines = [f"site {status['site']}: rev {status['rev']}, {status['count']} identities, hash {status['hash'][:16]}…",
             f"gallery confirmed current {'never' if age is None else f'{age:.0f} s ago'}"
             f" (max {cfg.fleet.max_gallery_age_s:.0f} s)"]
    lines += [f"refused: {fid} ({why})" for fid, why in sorted(status["refused"].items())]
    if status["problem"]:
        lines.append(f"problem: {status['problem']}")
    emit(args, status, "\n".join(lines))
    return ERROR if status["problem"] else YES


def register(sub: argparse._SubParsersAction) -> None:
    fleet = sub.add_parser("fleet", help="a door's gallery sync with the fleet's hub")
    actions = fleet.add_subparsers(dest="fleet_command", required=True, metavar="ACTION")
    p = actions.add_parser("sync", help="run the door's gallery sync alone (the daemon runs it itself)")
    config_option(p)
    p.add_argument("--json", action="store_true", help="log JSON lines")
    p.set_defaults(func=cmd_sync)
    p = actions.add_parser("status", help="the door's revision, hash, refused entries and gallery age (exit 2 when "
                                          "the door would fail secure)")
    config_option(p)
    p.add_argument("--poll", action="store_true", help="ask the hub first (HTTP)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)
