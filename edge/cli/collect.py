"""`facegate collect run | query | purge | migrate`: every door's events in PostgreSQL, once each, and the
questions asked of them (who entered door X between …, where was identity Y)."""

from __future__ import annotations

import argparse
import datetime as dt

from edge.cli.common import YES, bounded, config_option, emit, json_option, settings


def _when(text: str) -> dt.datetime:
    """ISO 8601 (a date, or a date and time; UTC unless it names an offset)."""
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 date or time (2026-05-01T08:00)") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _conn(args: argparse.Namespace):
    from edge.collect import db
    from edge.collect.collector import dsn

    conn = db.connect(dsn(settings(args), args.dsn))
    db.migrate(conn)
    return conn


def cmd_run(args: argparse.Namespace) -> int:
    from edge.collect.collector import Collector
    from edge.daemon import setup_logging

    cfg = settings(args)
    setup_logging("json" if args.json else cfg.log.format, cfg.log.level)
    return Collector(cfg, args.dsn).run()


def cmd_query(args: argparse.Namespace) -> int:
    from edge.collect import db

    since = args.since or dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    until = args.until or dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    with _conn(args) as conn:
        if args.door:
            rows = db.entries(conn, args.door, since, until, args.decision, args.limit)
            text = "\n".join(f"{r['ts']}  {r['identity'] or '-':<30} {r['device']}/{r['door']}" for r in rows)
        else:
            rows = db.whereabouts(conn, args.identity, since, until, args.limit)
            text = "\n".join(f"{r['ts']}  {r['device']}/{r['door']}  {r['decision']}" for r in rows)
    emit(args, rows, text or "(none)")
    return YES


def cmd_purge(args: argparse.Namespace) -> int:
    from edge.collect import db

    days = args.older_than_days if args.older_than_days is not None else settings(args).collect.retention_days
    with _conn(args) as conn:
        n = db.purge(conn, days) if days > 0 else 0
    emit(args, {"purged": n, "older_than_days": days}, f"purged {n} events older than {days:g} days")
    return YES


def cmd_migrate(args: argparse.Namespace) -> int:
    from edge.collect import db

    with _conn(args) as conn:
        summary = db.counts(conn)
    emit(args, {"schema": len(db.MIGRATIONS), **summary},
         f"schema version {len(db.MIGRATIONS)}; {summary['events']} events from {len(summary['devices'])} devices")
    return YES


def _common(p: argparse.ArgumentParser) -> None:
    config_option(p)
    p.add_argument("--dsn", help="PostgreSQL connection string (default: collect.dsn / dsn_file / the credential)")


def register(sub: argparse._SubParsersAction) -> None:
    collect = sub.add_parser("collect", help="every door's events into PostgreSQL, and queries over them")
    actions = collect.add_subparsers(dest="collect_command", required=True, metavar="ACTION")
    p = actions.add_parser("run", help="subscribe to the doors' events and store each once")
    _common(p)
    p.add_argument("--json", action="store_true", help="log JSON lines")
    p.set_defaults(func=cmd_run)

    p = actions.add_parser("query", help="who entered a door between two times, or where an identity was")
    _common(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--door", help="a door's name or device: its events with --decision (default granted)")
    which.add_argument("--identity", help="an identity: every event naming it")
    p.add_argument("--since", type=_when, help="from (ISO 8601, UTC unless an offset is given)")
    p.add_argument("--until", type=_when, help="until, exclusive")
    p.add_argument("--decision", default="granted", help="with --door: which decisions (default granted)")
    p.add_argument("--limit", type=bounded(int, 1, 1000000), default=10000)
    json_option(p)
    p.set_defaults(func=cmd_query)

    p = actions.add_parser("purge", help="delete events older than the retention (collect.retention_days)")
    _common(p)
    p.add_argument("--older-than-days", type=bounded(float, 0))
    json_option(p)
    p.set_defaults(func=cmd_purge)

    p = actions.add_parser("migrate", help="create or upgrade the schema; print what is stored")
    _common(p)
    json_option(p)
    p.set_defaults(func=cmd_migrate)
