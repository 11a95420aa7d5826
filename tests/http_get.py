"""A plain HTTP GET for tests of the daemon's health server and the hub's HTTP side: the status and body of any
answer, an error status included."""

from __future__ import annotations

import urllib.error
import urllib.request


def get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
