"""`facegate collect run`: every door's events (facegate/+/event) into PostgreSQL, each exactly once.

The subscription is a persistent session (the broker queues events while the collector is away) with manual
acknowledgements: an event is acknowledged to the broker only after the transaction that stored it committed.
A collector killed in between gets it again, and the (device, seq) key turns the repeat into nothing. When the
database is unreachable, nothing is acknowledged and the collector retries with back-off; the doors' own outboxes
and the broker's queue hold the rest.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

from edge.collect import CollectError
from edge.collect import db as events_db
from edge.config import CREDENTIAL_COLLECT_DSN, Config, ConfigError, secret
from edge.fleet.link import Link, Message
from edge.ratelimit import one_line, printable

log = logging.getLogger(__name__)
BATCH = 500


def dsn(cfg: Config, override: str | None = None) -> str:
    value = override or secret(cfg.collect.dsn, cfg.collect.dsn_file, CREDENTIAL_COLLECT_DSN, "collect.dsn")
    if not value:
        raise ConfigError("collect.dsn: the events database's connection string (collect.dsn_file, or the "
                          "credential facegate.collect-dsn), e.g. \"host=db.example dbname=facegate user=collect\"")
    return value


def _data_errors() -> tuple[type[BaseException], ...]:
    """What an event's content (not the connection) makes fail: the database's data and constraint errors, and
    psycopg's own refusals to encode a value."""
    import psycopg

    return psycopg.DataError, psycopg.IntegrityError, ValueError, OverflowError


class Collector:
    def __init__(self, cfg: Config, dsn_override: str | None = None) -> None:
        self.cfg = cfg
        self.dsn = dsn(cfg, dsn_override)
        self.conn = events_db.connect(self.dsn)
        events_db.migrate(self.conn)
        settings = cfg.mqtt.resolved()
        self.link = Link(settings, cfg.collect.client_id, list(cfg.collect.topics), persistent=True, manual_ack=True)
        self.stored = self.duplicates = self.rejected = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_purge = 0.0

    def start(self) -> None:
        self.link.start()
        self._thread = threading.Thread(target=self._loop, name="collect", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        self.link.stop()
        self.conn.close()

    def _loop(self) -> None:
        pending: list[Message] = []
        backoff = 0.5
        while not self._stop.is_set():
            self._maybe_purge()  # every turn (it only looks at the clock): a steady stream must not defer it
            if not pending:
                m = self.link.get(0.2)
                if m is None:
                    continue
                pending.append(m)
                while len(pending) < BATCH:
                    more = self.link.get(0)
                    if more is None:
                        break
                    pending.append(more)
            try:
                self._store(pending)
                for m in pending:
                    self.link.ack(m)  # after the commit: a crash before this means redelivery, not loss
                pending = []
                backoff = 0.5
            except CollectError as exc:
                log.warning("collect: %s; retrying in %.1f s", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                self._reconnect()

    def _store(self, messages: list[Message]) -> None:
        """Store the batch in one transaction. An event the database refuses (data, not connection: a case
        parse_event did not foresee) must not hold back every door's events behind it for ever: the batch is then
        stored event by event, the refused one counted, logged and acknowledged like a malformed message."""
        import psycopg

        parsed = []
        for m in messages:
            parts = m.topic.split("/")
            try:
                parsed.append(events_db.parse_event(m.payload, parts[-2] if len(parts) >= 2 else None))
            except ValueError as exc:
                self.rejected += 1
                log.warning("collect: a message on %s is not an event (%s); acknowledged and dropped", m.topic[:120],
                            exc)
        try:
            try:
                with self.conn.transaction():
                    stored, dups = events_db.insert(self.conn, parsed)
            except _data_errors() as exc:
                log.warning("collect: the events database refused a batch of %d (%s); storing them one by one",
                            len(parsed), one_line(exc))
                stored, dups = self._store_each(parsed)
        except psycopg.Error as exc:  # the connection or the server: retried, nothing acknowledged
            raise CollectError(f"the events database refused a write ({one_line(exc)})") from None
        self.stored += stored
        self.duplicates += dups

    def _store_each(self, events: list[events_db.Event]) -> tuple[int, int]:
        """Each event under its own savepoint: a refused one rolls back alone (and is dropped), the rest commit."""
        stored = dups = 0
        with self.conn.transaction():
            for e in events:
                try:
                    with self.conn.transaction():
                        s, d = events_db.insert(self.conn, [e])
                except _data_errors() as exc:
                    self.rejected += 1
                    log.warning("collect: %s seq %d refused by the events database (%s); acknowledged and dropped",
                                printable(e.device, 64), e.seq, one_line(exc))
                    continue
                stored, dups = stored + s, dups + d
        return stored, dups

    def _reconnect(self) -> None:
        with contextlib.suppress(Exception):  # already broken
            self.conn.close()
        try:
            self.conn = events_db.connect(self.dsn)
        except CollectError as exc:
            log.warning("collect: %s", exc)

    def _maybe_purge(self) -> None:
        days = self.cfg.collect.retention_days
        if days <= 0 or time.monotonic() - self._last_purge < self.cfg.collect.purge_every_s:
            return
        self._last_purge = time.monotonic()
        try:
            n = events_db.purge(self.conn, days)
            if n:
                log.info("collect: purged %d events older than %g days", n, days)
        except Exception as exc:  # a purge failing must not stop collection
            log.warning("collect: purge failed (%s)", exc)

    def stats(self) -> dict[str, Any]:
        return {"stored": self.stored, "duplicates": self.duplicates, "rejected": self.rejected,
                "connected": self.link.connected}

    def run(self) -> int:
        import signal

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
            signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        self.start()
        log.info("collect: %s → PostgreSQL", ", ".join(self.cfg.collect.topics))
        try:
            while not self._stop.wait(0.5):
                pass
        finally:
            self.stop()
        return 0

