"""Which names the admin page answers to (the Host header), against DNS rebinding.

A web page elsewhere can make a visitor's browser send requests to the door's own address by giving its own
domain a DNS answer that points there ("rebinding"); the browser then treats the door's page as that
domain's, and the page's scripts may read it. Those requests carry the attacker's name in Host. The admin page
therefore answers only to names it knows: IP literals (a browser sends the name it was given, and no domain
resolves to a Host header of digits), localhost, this machine's own host names, and `web.allowed_hosts` (the
name a TLS reverse proxy passes on, e.g. "door.example.org"; ".example.org" for it and every subdomain; "*"
for any, turning the check off). Anything else gets 400 before any route runs.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections.abc import Iterable
from typing import Any

from edge.ratelimit import printable
from edge.web.asgi import Wrapper

log = logging.getLogger("facegate.web")

MAX_LOGGED = 32  # refused names logged, once each: a scanner must not be able to fill the log


def own_names() -> set[str]:
    """localhost and this machine's names (as `hostname`, its mDNS .local form, and its FQDN)."""
    names = {"localhost"}
    try:
        host = socket.gethostname().lower().rstrip(".")
    except OSError:
        host = ""
    if host:
        names |= {host, host.split(".")[0] + ".local"}
        try:
            fqdn = socket.getfqdn(host).lower().rstrip(".")
        except (OSError, UnicodeError):
            fqdn = ""
        if fqdn:
            names.add(fqdn)
    return names


def host_name(header: str) -> str | None:
    """The name in a Host header, lower-case, without the port or a trailing dot; None if malformed."""
    header = header.strip().lower()
    if header.startswith("["):  # [v6]:port
        end = header.find("]")
        if end < 0 or (header[end + 1:] and not re.fullmatch(r":\d{1,5}", header[end + 1:])):
            return None
        return header[1:end]
    name, sep, port = header.partition(":")
    if sep and not re.fullmatch(r"\d{1,5}", port):
        return None
    return name.rstrip(".") or None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostPolicy:
    def __init__(self, allowed: Iterable[str]) -> None:
        patterns = [p.lower().rstrip(".") for p in allowed]
        self.any = "*" in patterns
        self.exact = own_names() | {p for p in patterns if p != "*" and not p.startswith(".")}
        self.suffixes = tuple(p for p in patterns if p.startswith("."))

    def allows(self, header: str | None) -> bool:
        if self.any:
            return True
        name = host_name(header or "")
        if name is None:
            return False
        return _is_ip(name) or name in self.exact or any(
            name.endswith(s) or name == s[1:] for s in self.suffixes)


class HostGuard(Wrapper):
    """ASGI middleware: requests whose Host the policy does not allow are answered 400, nothing else runs."""

    def __init__(self, app: Any, allowed: Iterable[str]) -> None:
        super().__init__(app)
        self.policy = HostPolicy(allowed)
        self._logged: set[str] = set()

    async def http(self, scope: Any, receive: Any, send: Any) -> None:
        hosts = [v for k, v in scope.get("headers") or [] if k == b"host"]
        header = hosts[0].decode("latin-1") if len(hosts) == 1 else ""  # none or several: refused
        if self.policy.allows(header):
            await self.app(scope, receive, send)
            return
        shown = f"'{printable(header, 100)}'"  # an outsider's text: escaped and cut before it reaches the log
        if len(self._logged) < MAX_LOGGED and shown not in self._logged:
            self._logged.add(shown)
            log.warning("web: refused a request for host %s (not in web.allowed_hosts)", shown)
        body = (b"This address is not one the admin page answers to. If it is this door's name, add it to "
                b"web.allowed_hosts.\n")
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
