"""A private mosquitto on loopback: what the demo, `facegate bench daemon` and the tests start when they need a
broker (Debian package `mosquitto`). One harness for all of them.

A Mosquitto keeps its ports and its persistence folder across stop()/start(), so a restart is the outage a
door sees. Optionally a TLS listener (CA, server certificate and key given as files) with passwords and client
certificates. Only loopback addresses are ever bound.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge.errors import FacegateError

HOST = "127.0.0.1"


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if Path(p).exists()), None)


def passwd_binary() -> str | None:
    return shutil.which("mosquitto_passwd") or next(
        (p for p in ("/usr/bin/mosquitto_passwd",) if Path(p).exists()), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def listening(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class Mosquitto:
    """mosquitto with an anonymous plain listener (`port`) and optionally a TLS listener (`tls_port`) that may
    require a password and/or a client certificate."""

    root: Path
    port: int = field(default_factory=free_port)
    tls_port: int | None = None
    tls: tuple[Path, Path, Path] | None = None  # (CA certificate, server certificate, server key)
    passwords: dict[str, str] = field(default_factory=dict)  # applied to the TLS listener
    require_client_cert: bool = False
    persistence: bool = True
    config: str | None = None  # a complete config to use instead of the generated one
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "data").mkdir(exist_ok=True)
        if self.tls is not None and self.tls_port is None:
            self.tls_port = free_port()

    @property
    def host(self) -> str:
        return HOST

    @property
    def log_path(self) -> Path:
        return self.root / "mosquitto.log"

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _config(self) -> str:
        if self.config is not None:
            return self.config
        user = pwd.getpwuid(os.getuid()).pw_name  # as root, mosquitto would otherwise switch to its own user
        lines = [
            f"user {user}",
            "per_listener_settings true",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.root / 'data'}/",
            f"log_dest file {self.log_path}",
            "log_type error", "log_type warning", "log_type notice", "log_type information",
            "max_queued_messages 100000",
            f"listener {self.port} {HOST}",
            "allow_anonymous true",
        ]
        if self.tls is not None:
            ca, cert, key = self.tls
            lines += [f"listener {self.tls_port} {HOST}", f"cafile {ca}", f"certfile {cert}", f"keyfile {key}",
                      f"require_certificate {'true' if self.require_client_cert else 'false'}"]
            if self.passwords:
                lines += ["allow_anonymous false", f"password_file {self._password_file()}"]
            else:
                lines += ["allow_anonymous true"]
        return "\n".join(lines) + "\n"

    def _password_file(self) -> Path:
        exe = passwd_binary()
        if exe is None:
            raise FacegateError("mosquitto_passwd is not installed (Debian package mosquitto)")
        pw = self.root / "passwords"
        pw.unlink(missing_ok=True)
        for user_name, password in self.passwords.items():
            subprocess.run([exe, *([] if pw.exists() else ["-c"]), "-b", str(pw), user_name, password],
                           check=True, capture_output=True)
        return pw

    def start(self, timeout: float = 10.0) -> Mosquitto:
        exe = mosquitto_binary()
        if exe is None:
            raise FacegateError("mosquitto is not installed (apt-get install -y mosquitto)")
        conf = self.root / "mosquitto.conf"
        conf.write_text(self._config())
        self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        ports = [p for p in (self.port, self.tls_port) if p is not None]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise FacegateError(f"mosquitto exited with {self.proc.returncode}: {err}\n{self.log}")
            if all(listening(p) for p in ports):
                return self
            time.sleep(0.02)
        self.stop()
        raise FacegateError(f"mosquitto did not listen on {ports} within {timeout} s:\n{self.log}")

    def stop(self) -> None:
        """A clean shutdown (SIGTERM): mosquitto saves its sessions and queued messages to the persistence file."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
