"""The hub's HTTP side: how a door that missed something catches up.

Why HTTP and not snapshots chunked over MQTT: a snapshot is large (about 1 KB an identity: 10 MB for 10,000)
and wanted by one door at a time. Over MQTT it would pass through every bridge and every node of a cluster to
reach all subscribers of a site, each door would have to reassemble chunks it may partly miss, and it would sit
in brokers' queues for persistent sessions. Over HTTP it goes from the hub to the one door that asked, in one
response, with TCP's flow control; the broker keeps carrying only the small things (deltas, the manifest, acks).
Everything served is signed by the hub and the templates in it are sealed with the site key, so the transport
needs no trust for integrity or confidentiality; TLS (hub.tls_cert, with client certificates by
hub.tls_client_ca) keeps out who may ask at all.

GET /v1/sites/<site>/manifest           the signed manifest, with the time of the hub's last good sync
GET /v1/sites/<site>/batches?after=N    {"rev", "floor", "batches": [envelope text, …]} (410 when N < floor)
GET /v1/sites/<site>/snapshot           the signed snapshot of every live entry (cached per revision)
GET /v1/status                          the hub's revisions and the doors' acknowledgements (no templates)
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from edge.config import ConfigError
from edge.fleet.records import VERSION, canonical, sign_text
from edge.ratelimit import LogLimiter, one_line, printable

if TYPE_CHECKING:
    from edge.fleet.hub import Hub

log = logging.getLogger(__name__)
limited = LogLimiter(log)
MAX_BATCH_RESPONSE = 8 * 2**20
# A connection that sends nothing (or half a request) holds a thread: it is closed after this long idle, and at
# most MAX_CONNECTIONS are served at once (more are closed at once), so idle outsiders cannot exhaust the hub.
CONNECTION_TIMEOUT_S = 30.0
MAX_CONNECTIONS = 256


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("http: " + fmt, *args)

    def _send(self, code: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _error(self, code: int, message: str, **extra: Any) -> None:
        self._send(code, json.dumps({"error": message, **extra}).encode())

    def do_GET(self) -> None:
        hub = self.server.hub
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        try:
            if parts == ["v1", "status"]:
                self._send(200, json.dumps(hub.status()).encode())
                return
            if len(parts) != 4 or parts[:2] != ["v1", "sites"]:
                self._error(404, "no such resource")
                return
            site, what = parts[2], parts[3]
            if site not in hub.ciphers:
                self._error(404, f"unknown site {site[:64]!r}")
                return
            if what == "manifest":
                self._send(200, hub.manifest(site))
            elif what == "batches":
                query = parse_qs(url.query)
                try:
                    after = int(query.get("after", ["0"])[0])
                except ValueError:
                    after = -1
                if not 0 <= after < 2**63:  # SQLite's integers: anything else overflows in the query
                    self._error(400, "after must be an integer in 0..2^63-1")
                    return
                state = hub.journal.site(site)
                if after < state.floor:
                    self._error(410, "gone: load a snapshot", floor=state.floor, rev=state.rev)
                    return
                batches = hub.journal.batches(site, after, MAX_BATCH_RESPONSE)
                body = json.dumps({"rev": state.rev, "floor": state.floor,
                                   "batches": [b.decode() for b in batches]}).encode()
                self._send(200, body)
            elif what == "snapshot":
                self._send(200, self.server.snapshot(site))
            else:
                self._error(404, "no such resource")
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # a bug must cost one request an answer, not a traceback and a dropped connection
            limited.log(logging.ERROR, "http-500", "hub http: GET %s failed (%s: %s)", printable(self.path, 120),
                        type(exc).__name__, one_line(exc))
            log.debug("hub http: GET failed", exc_info=True)
            self.close_connection = True
            with contextlib.suppress(OSError):  # the client is gone
                self._error(500, "internal error")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], hub: Hub) -> None:
        super().__init__(address, _Handler)
        self.hub = hub
        # site → (rev, the signed time, the signed body, the entries' joined text): re-signed when the hub has
        # synced again since, the entries read from the journal once per revision.
        self._snapshots: dict[str, tuple[int, float, bytes, str]] = {}
        self._snap_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        """On serve_forever's thread: only hand the connection to a thread of its own if a slot is free."""
        if not self._slots.acquire(blocking=False):
            limited.warning("busy", "hub http: %d connections open; one from %s closed unanswered",
                            MAX_CONNECTIONS, client_address[0])
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        """On the connection's own thread: the TLS handshake (never in accept(), where one silent client would
        stop the server for everyone), bounded in time like the rest of the connection."""
        request.settimeout(CONNECTION_TIMEOUT_S)  # every blocking read or write after it, the handler's included
        if isinstance(request, ssl.SSLSocket):
            try:
                request.do_handshake()
            except OSError as exc:  # ssl.SSLError, a timeout, a reset: this client's problem only
                limited.log(logging.INFO, "tls", "hub http: TLS handshake with %s failed (%s)", client_address[0],
                            one_line(exc))
                return
        super().finish_request(request, client_address)

    def snapshot(self, site: str) -> bytes:
        """The signed snapshot at the site's current revision. Its time is the hub's last successful sync, as a
        manifest's is: a hub whose sync has stopped must not vouch for a gallery through snapshots either. The
        entries are read once per revision (ten doors restarting together cost one read); only the signature is
        made again when the sync time moved on."""
        with self._snap_lock:
            synced_at = self.hub.synced_at
            state = self.hub.journal.site(site)
            cached = self._snapshots.get(site)
            if cached is not None and cached[0] == state.rev and cached[1] == synced_at:
                return cached[2]
            if cached is not None and cached[0] == state.rev:
                joined = cached[3]
            else:
                # entries and state read under the journal's lock in one go would be cleaner; a batch committed in
                # between is caught by the hash check on the door, which then asks again.
                with self.hub.journal._lock:
                    state = self.hub.journal.site(site)
                    joined = ",".join(self.hub.journal.entries(site))
            # The entries are stored as canonical JSON already: spliced into the canonical text of the rest (keys
            # in sorted order: count, entries, epoch, …) rather than parsed and written again, 10,000 times.
            head = canonical({"v": VERSION, "kind": "snapshot", "site": site, "epoch": self.hub.journal.epoch,
                              "rev": state.rev, "ts": synced_at, "hash": state.hash, "count": state.count})
            count_part, rest = head[1:].split(",", 1)
            assert count_part.startswith('"count":')
            text = "{" + count_part + ',"entries":[' + joined + "]," + rest
            body = sign_text(self.hub.key, "snapshot", text)
            self._snapshots[site] = (state.rev, synced_at, body, joined)
            return body


class HubServer:
    def __init__(self, hub: Hub) -> None:
        cfg = hub.cfg.hub
        host, _, port = cfg.listen.rpartition(":")
        try:
            self.server = _Server((host.strip("[]"), int(port)), hub)
        except OSError as exc:
            raise ConfigError(f"hub.listen: cannot listen on {cfg.listen!r} ({exc.strerror or exc})") from None
        if cfg.tls_cert:
            try:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.minimum_version = ssl.TLSVersion.TLSv1_2
                context.load_cert_chain(cfg.tls_cert, cfg.tls_key)
                if cfg.tls_client_ca:
                    context.load_verify_locations(cfg.tls_client_ca)
                    context.verify_mode = ssl.CERT_REQUIRED
            except (OSError, ValueError) as exc:
                self.server.server_close()
                raise ConfigError(f"hub.tls_cert: the hub's TLS files are unusable ({exc})") from None
            # The handshake happens in the connection's thread (_Server.finish_request), not in accept().
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True,
                                                     do_handshake_on_connect=False)
        self._thread = threading.Thread(target=self.server.serve_forever, name="fleet-hub-http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return self.server.server_address[:2]  # type: ignore[return-value]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
