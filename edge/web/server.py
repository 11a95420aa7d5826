"""Serving the admin page with uvicorn: on its own (`facegate web`), or in a thread of `facegate run`.

The listening socket is bound first (`bind_web`), when the daemon is built, so a taken port or a missing
[web] extra is a configuration error found at start-up, before anything is published, like the health port.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

from edge.config import Config, ConfigError

log = logging.getLogger("facegate.web")
WEB_HINT = "the admin page needs the web extra: pip install 'facegate[web]'"


def _need_extra() -> None:
    try:
        import jinja2  # noqa: F401
        import python_multipart  # noqa: F401  (form uploads)
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ModuleNotFoundError as exc:
        raise ConfigError(f"web.enabled: {WEB_HINT} ({exc.name} is missing)") from None


def bind_socket(listen: str, key: str = "web.listen") -> socket.socket:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, int(port)))
            sock.listen(128)
        except BaseException:
            sock.close()
            raise
    except (OSError, OverflowError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{key}: cannot listen on {listen!r} ({why})") from None
    sock.set_inheritable(True)
    return sock


class WebServer:
    """uvicorn on a bound socket; `mount` gives it the app's services, `start` serves in a thread."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.services: Any = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    @property
    def url(self) -> str:
        host = self.sock.getsockname()[0]
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"

    def mount(self, services: Any) -> None:
        import uvicorn

        from edge.web.app import create_app

        self.services = services
        config = uvicorn.Config(create_app(services), log_level="warning", access_log=False, lifespan="off",
                                server_header=False, timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)

    def serve(self) -> None:
        """Serve in this thread until stopped (SIGINT/SIGTERM when it is the main thread)."""
        assert self._server is not None, "mount() first"
        self._server.run(sockets=[self.sock])

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve, name="web", daemon=True)
        self._thread.start()
        log.info("admin page on %s", self.url)

    def wait_started(self, timeout: float = 10.0) -> bool:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._server is not None and self._server.started:
                return True
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        self.close()

    def close(self) -> None:
        if self.services is not None:
            self.services.close()
            self.services = None
        self.sock.close()


def bind_web(cfg: Config) -> WebServer:
    _need_extra()
    return WebServer(bind_socket(cfg.web.listen))
