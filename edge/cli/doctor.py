"""`facegate doctor`: is this device ready? Configuration, models, liveness, store, broker, camera, clock, disk
— each with what to fix. Exit 0 ready (warnings allowed), 1 something to fix, 2 an unreadable configuration."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge.cli.common import NO, YES, emit, json_option

MARKS = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}


def cmd_doctor(args: argparse.Namespace) -> int:
    from edge import config
    from edge.doctor import diagnose

    cfg = config.load(args.config)
    report = diagnose(cfg, camera=not args.no_camera, broker=not args.no_broker)
    lines = [f"{MARKS[c.status]} {c.name}: {c.detail}" + (f"\n     → {c.fix}" if c.fix and c.status != "ok" else "")
             for c in report.checks]
    lines.append(f"{cfg.origin}: {'ready' if report.ok else 'not ready'} (profile {cfg.profile})")
    emit(args, {"config": cfg.origin, "profile": cfg.profile, **report.to_dict()}, "\n".join(lines))
    return YES if report.ok else NO


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check this device: models, liveness, store, broker, camera, clock, disk "
                                      "(exit 0 ready, 1 something to fix)")
    p.add_argument("--config", type=Path, help="the daemon's configuration (default: as `facegate run`)")
    p.add_argument("--no-camera", action="store_true", help="do not open the camera (it may be in use)")
    p.add_argument("--no-broker", action="store_true", help="do not connect to the broker")
    json_option(p)
    p.set_defaults(func=cmd_doctor)
