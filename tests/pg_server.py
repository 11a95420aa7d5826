"""A private PostgreSQL server for the tests (Debian's `postgresql`): initdb and pg_ctl in a temporary folder, on
a free loopback port, trust authentication on loopback only, stopped (and its folder removed) afterwards. Never
a mock. As root (CI), the server runs as the `postgres` user, since PostgreSQL refuses to run as root."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from edge.mqtt.broker import free_port


def pg_bin() -> Path | None:
    for tool in ("initdb", "pg_ctl"):
        if shutil.which(tool) is None:
            break
    else:
        return Path(shutil.which("pg_ctl")).parent  # type: ignore[arg-type]
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


class PgServer:
    def __init__(self) -> None:
        bindir = pg_bin()
        if bindir is None:
            pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql)")
        self.bindir = bindir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="facegate-pg-"))
        self.data = self.root / "data"
        self.user: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no postgres user to run PostgreSQL as")
            self.user = "postgres"
            shutil.chown(self.root, "postgres")
            os.chmod(self.root, 0o700)

    def _run(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bindir / cmd[0]), *cmd[1:]]
        if self.user is not None:
            argv = ["runuser", "-u", self.user, "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)

    def start(self) -> PgServer:
        r = self._run("initdb", "-D", str(self.data), "-U", "facegate", "--auth=trust", "-E", "UTF8",
                      "--no-instructions")
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed: {r.stderr}")
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=on"
        r = self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w", "start")
        if r.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {r.stderr}\n{(self.root / 'log').read_text()}")
        return self

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} dbname=postgres user=facegate"

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
