"""A minimal sd_notify(3) client: READY, WATCHDOG, STOPPING and STATUS to systemd over $NOTIFY_SOCKET.

The protocol is one datagram of newline-separated KEY=VALUE lines to a unix socket; an address starting
with "@" is in the abstract namespace (a leading NUL byte). Without $NOTIFY_SOCKET (not under systemd, or
Type= is not notify) every call does nothing, so the daemon needs no special case when run by hand.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._sock: socket.socket | None = None
        if self.address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, state: str) -> bool:
        """Send `state` ("READY=1", "WATCHDOG=1\\nSTATUS=…"); False when there is no socket or it fails."""
        if self._sock is None:
            return False
        addr = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            self._sock.sendto(state.encode(), addr)
        except OSError:
            return False  # systemd gone or the socket full: the daemon itself must not fail for it
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str = "") -> bool:
        return self.notify("STOPPING=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval() -> float | None:
    """How often to ping: half of $WATCHDOG_USEC (when it is meant for this process), else None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 2e6
