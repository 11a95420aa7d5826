"""`facegate web`: the admin page (people, enrolment, decisions, the door) on its own, on loopback by default.

  facegate web --create-admin NAME     create an account (password from stdin), then serve
  facegate web [--listen HOST:PORT]    serve the page with the daemon's configuration

Inside `facegate run` the same page is served when `[web] enabled = true`. The work is done in edge/web/.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from dataclasses import replace

from edge.cli.common import YES, config_option, json_option, settings
from edge.errors import FacegateError


def _password(name: str) -> str:
    """The new account's password: typed twice on a terminal, else the first line of standard input."""
    if sys.stdin.isatty():
        first = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != first:
            raise FacegateError("the two passwords differ: nothing was created")
        return first
    line = sys.stdin.readline()
    return line[:-1] if line.endswith("\n") else line


def cmd_web(args: argparse.Namespace) -> int:
    from edge.config import ConfigError
    from edge.daemon import setup_logging

    try:
        from edge.web.accounts import open_accounts
        from edge.web.server import bind_web
        from edge.web.services import Services
    except ModuleNotFoundError as exc:
        raise FacegateError(f"the admin page needs the web extra: pip install 'facegate[web]' ({exc.name} is "
                            "missing)") from None
    cfg = settings(args)
    if args.listen:
        host, _, port = args.listen.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"--listen: {args.listen!r} is not HOST:PORT")
        cfg = replace(cfg, web=replace(cfg.web, listen=args.listen))
    setup_logging(cfg.log.format, cfg.log.level)
    accounts = open_accounts(cfg.web)
    try:
        if args.create_admin:
            accounts.create(args.create_admin, _password(args.create_admin), replace=args.reset)
            if args.no_serve:
                _say(args, {"account": args.create_admin, "accounts": str(accounts.path)},
                     f"account {args.create_admin} {'reset' if args.reset else 'created'} in {accounts.path}")
                return YES
        elif args.no_serve:
            raise FacegateError("--no-serve goes with --create-admin NAME")
        if not accounts.names():
            raise FacegateError(f"no account in {accounts.path} yet: create one with "
                                "`facegate web --create-admin NAME` (the password is read from standard input)")
        server = bind_web(cfg)
    except BaseException:
        accounts.close()
        raise
    try:
        server.mount(Services.standalone(cfg, accounts))
    except BaseException:
        server.close()
        raise
    _say(args, {"url": server.url, "accounts": str(accounts.path), "store": str(server.services.store.path)},
         f"admin page on {server.url} (store {server.services.store.path}); Ctrl-C stops it")
    try:
        server.serve()
    finally:
        server.close()
    return YES


def _say(args: argparse.Namespace, data: dict, text: str) -> None:
    print(json.dumps(data) if args.json else text, flush=True)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("web", help="the admin page: people, enrolment, decisions, the door (needs [web])")
    config_option(p)
    p.add_argument("--listen", metavar="HOST:PORT", help="where to listen (default: web.listen, 127.0.0.1:8080; "
                                                         "reach it from elsewhere through a TLS reverse proxy)")
    p.add_argument("--create-admin", metavar="NAME",
                   help="create an administrator account first; its password is read from standard input")
    p.add_argument("--reset", action="store_true", help="with --create-admin: set a new password for NAME")
    p.add_argument("--no-serve", action="store_true", help="with --create-admin: create the account and exit")
    json_option(p)
    p.set_defaults(func=cmd_web)

