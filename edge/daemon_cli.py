"""`facegate run` and `facegate bench daemon`: the daemon's command line.

edge/cli.py registers these: `add_commands(sub)` adds `run` to the top level, and
`add_bench_daemon(bench)` adds `daemon` to the `bench` group. `python -m edge.daemon_cli run …` works too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


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
        return 2 if report.problems else 0
    return Daemon(cfg).run()


def cmd_bench_daemon(args: argparse.Namespace) -> int:
    from edge.bench import daemon as bench

    result = bench.run(args.source, fps=args.fps, frames_per_image=args.frames_per_image, limit=args.limit,
                       broker=args.broker, config_path=args.config)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['decisions']} decisions over {result['frames']} frames: p50 {result['p50_ms']} ms, "
              f"p99 {result['p99_ms']} ms, {result['fps']} fps, {result['frames_dropped']} frames dropped, "
              f"RSS peak {result['rss_peak_mb']} MB, liveness {result['liveness']}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the access daemon (camera → decisions → MQTT)")
    p.add_argument("--config", type=Path,
                   help="TOML configuration (default: $CONFIGURATION_DIRECTORY/facegate.toml, else built-in "
                        "defaults; see deploy/facegate.example.toml)")
    p.add_argument("--json-logs", action="store_true", help="log one JSON object per line (log.format = json)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--check", action="store_true",
                   help="pre-deploy check: build everything short of the camera and the broker, report every "
                        "problem (exit 2 if any)")
    p.add_argument("--json", action="store_true", help="with --check: the report as JSON")
    p.set_defaults(func=cmd_run)


def add_bench_daemon(bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser("daemon", help="decision latency (capture → MQTT subscriber), fps, drops, RSS")
    p.add_argument("--source", type=Path, required=True,
                   help="image folder (recursive; a folder per person enrols each person's first image)")
    p.add_argument("--fps", type=float, default=15.0)
    p.add_argument("--frames-per-image", type=int, default=8, help="frames each image is shown for (default 8)")
    p.add_argument("--limit", type=int, default=300, help="images to show (default 300)")
    p.add_argument("--broker", help="HOST:PORT of a broker (default: start a private one on loopback)")
    p.add_argument("--config", type=Path, help="base configuration (source, store, mqtt are set by the bench)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_daemon)
