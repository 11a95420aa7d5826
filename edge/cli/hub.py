"""`facegate hub keygen | run | status`: the fleet's hub (deploy/FLEET.md). People are enrolled into the hub's
store with the usual commands (`facegate enroll --config hub.toml …`); the hub publishes what changes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge.cli.common import ERROR, YES, config_option, emit, json_option, settings


def cmd_keygen(args: argparse.Namespace) -> int:
    from edge.config import SITE_RE
    from edge.errors import FacegateError
    from edge.fleet.keys import keygen

    for site in args.site:
        if not SITE_RE.fullmatch(site):
            raise FacegateError(f"--site {site!r}: 1 to 64 letters, digits, '_' or '-'")
    out = keygen(args.out, args.site, force=args.force)
    text = [f"signing key: {out['signing_key_file']} (the hub only; hub.signing_key_file)",
            f"public key:  {out['public_key']} (every door: fleet.public_key)"]
    text += [f"site key:    {v} (the hub's hub.site_keys_dir, and that site's doors: fleet.site_key_file)"
             for k, v in out.items() if k.startswith("site_key:")]
    emit(args, out, "\n".join(text))
    return YES


def cmd_run(args: argparse.Namespace) -> int:
    from edge.daemon import setup_logging
    from edge.fleet.hub import Hub, check

    cfg = settings(args)
    setup_logging("json" if args.json else cfg.log.format, cfg.log.level)
    if args.check:
        problems = check(cfg)
        emit(args, {"ok": not problems, "problems": problems},
             "\n".join([f"problem: {p}" for p in problems] + [f"{cfg.origin}: {'ok' if not problems else 'problems'}"]))
        return ERROR if problems else YES
    return Hub(cfg).run()


def cmd_status(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.request

    from edge.errors import FacegateError

    cfg = settings(args)
    host, _, port = cfg.hub.listen.rpartition(":")
    scheme = "https" if cfg.hub.tls_cert else "http"
    url = args.url or f"{scheme}://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/v1/status", timeout=10) as r:
            status = json.loads(r.read())
    except (OSError, urllib.error.URLError, json.JSONDecodeError) as exc:
        raise FacegateError(f"the hub at {url} did not answer ({exc}); is `facegate hub run` running?") from None
    lines = [f"{site}: rev {s['rev']}, {s['count']} identities, hash {s['hash'][:16]}…"
             for site, s in status["sites"].items()]
    lines += [f"  {d['site']}/{d['device']}: rev {d['rev']} {'in step' if d['in_step'] else 'BEHIND'}"
              + (f", {len(d['refused'])} entries refused" if isinstance(d.get("refused"), dict) and d["refused"]
                 else "") for d in status["doors"]]
    emit(args, status, "\n".join(lines))
    return YES if all(d["in_step"] for d in status["doors"]) else 1


def register(sub: argparse._SubParsersAction) -> None:
    hub = sub.add_parser("hub", help="the fleet's hub: one store published to many doors (deploy/FLEET.md)")
    actions = hub.add_subparsers(dest="hub_command", required=True, metavar="ACTION")
    p = actions.add_parser("keygen", help="the hub's Ed25519 signing key and one AES key per site (all 0600)")
    p.add_argument("--out", type=Path, required=True, help="folder for signing.key, signing.pub, <site>.key")
    p.add_argument("--site", action="append", default=[], help="a site to make a key for (repeat)")
    p.add_argument("--force", action="store_true", help="replace existing keys (every door then needs the new ones)")
    json_option(p)
    p.set_defaults(func=cmd_keygen)

    p = actions.add_parser("run", help="publish the hub's store to the doors of hub.sites")
    config_option(p)
    p.add_argument("--check", action="store_true", help="check keys and settings, do not start (exit 2 if wrong)")
    p.add_argument("--json", action="store_true", help="log JSON lines (with --check: the result as JSON)")
    p.set_defaults(func=cmd_run)

    p = actions.add_parser("status", help="each site's revision and every door's acknowledgement (exit 1 if a "
                                          "door is behind)")
    config_option(p)
    p.add_argument("--url", help="the hub's HTTP address (default: from hub.listen)")
    json_option(p)
    p.set_defaults(func=cmd_status)
