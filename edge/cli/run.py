"""`facegate run`: the access daemon (camera → decisions → MQTT), and its pre-deploy check."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge.cli.common import ERROR, YES, json_option


def cmd_run(args: argparse.Namespace) -> int:
    from edge import config
    from edge.daemon import Daemon, setup_logging

    cfg = config.load(args.config)
    setup_logging("json" if args.json_logs else cfg.log.format, args.log_level or cfg.log.level)
    if args.check:
        from edge.preflight import check

        report = check(cfg)
        if args.json:
            print(json.dumps({"config": cfg.origin, "profile": cfg.profile, "ok": not report.problems,
                              "problems": report.problems, "warnings": report.warnings}, indent=2))
        else:
            for line in report.warnings:
                print(f"warning: {line}")
            for line in report.problems:
                print(f"problem: {line}")
            print(f"{cfg.origin}: {'ok' if not report.problems else f'{len(report.problems)} problem(s)'} "
                  f"(profile {cfg.profile})")
        return ERROR if report.problems else YES
    return Daemon(cfg).run()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the access daemon (camera → decisions → MQTT)")
    p.add_argument("--config", type=Path,
                   help="TOML configuration (default: $CONFIGURATION_DIRECTORY/facegate.toml, else built-in "
                        "defaults; see deploy/facegate.example.toml)")
    p.add_argument("--json-logs", action="store_true", help="log one JSON object per line (log.format = json)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--check", action="store_true",
                   help="pre-deploy check: build everything short of the camera and the broker, report every "
                        "problem (exit 2 if any)")
    json_option(p)
    p.set_defaults(func=cmd_run)
