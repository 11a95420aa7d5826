"""Rate-limited log lines: input that an outsider controls must not be able to flood the log.

Anyone allowed to publish on a door's command or claim topic can send malformed messages as fast as the
broker forwards them. Each is answered (cmd_result) and counted, but logged at most once per `interval`
seconds per kind; the next line that gets through says how many were suppressed in between.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class LogLimiter:
    def __init__(self, logger: logging.Logger, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, kind: str, message: str, *args: object) -> bool:
        """Log `message` (one line, never a traceback) unless `kind` was logged within the interval; True if
        it was written."""
        now = self.clock()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.interval:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return False
            self._last[kind] = now
            suppressed = self._suppressed.pop(kind, 0)
        if suppressed:
            message += " (%d similar message(s) suppressed)"
            args = (*args, suppressed)
        self.logger.log(level, message, *args)
        return True

    def warning(self, kind: str, message: str, *args: object) -> bool:
        return self.log(logging.WARNING, kind, message, *args)


def printable(text: str, limit: int = 80) -> str:
    """`text` cut to `limit` characters and made safe for one log line: every character outside printable ASCII
    (newlines, C1 controls, U+2028, bidi overrides that reorder what a log viewer shows) written as an escape.

    For text an outsider chose, such as a topic level: the quotes ascii() adds are dropped, so plain text reads
    as before."""
    return ascii(text[:limit])[1:-1]


def one_line(text: object, limit: int = 200) -> str:
    """An error's text as one log line: its lines and runs of white space joined by single spaces (a database's
    DETAIL lines, a traceback-shaped message), then escaped and cut as `printable` does."""
    return printable(" ".join(str(text).split()), limit)


class TokenBucket:
    """At most `burst` at once and `rate` per second on average: for replies an outsider's messages would
    otherwise draw without limit (a refusal for each junk command)."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._lock = threading.Lock()
        self._tokens = float(burst)
        self._at = clock()

    def take(self) -> bool:
        """True, using up one token, if one is left."""
        with self._lock:
            now = self.clock()
            self._tokens = min(float(self.burst), self._tokens + max(0.0, now - self._at) * self.rate)
            self._at = now
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True
