"""`facegate demo`: the daemon end to end on public-domain sample faces; no camera, no broker needed."""

from __future__ import annotations

import argparse

from edge.cli.common import json_option


def cmd_demo(args: argparse.Namespace) -> int:
    if args.compare:
        from edge import demo

        return demo.run(as_json=args.json)
    from edge import demo_daemon

    return demo_daemon.run(as_json=args.json, profile=args.profile)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the daemon end to end on public-domain sample faces: no camera, no broker "
                                    "needed (needs [demo])")
    p.add_argument("--compare", action="store_true", help="only compare the sample faces (no daemon, no MQTT)")
    p.add_argument("--profile", choices=("kiosk", "door"), default="kiosk",
                   help="door: with liveness (MiniFASNet installed from $FACEGATE_DATA/models/minifasnet), a live "
                        "visitor granted and a printed photo refused (default: kiosk)")
    json_option(p)
    p.set_defaults(func=cmd_demo)
