"""A real two-node RabbitMQ cluster with the MQTT plugin, for the slow cluster test (Debian's `rabbitmq-server`).

Each node gets its own node name, ports (AMQP, MQTT, Erlang distribution), data and log folders; the nodes share
a private Erlang cookie and a private epmd port, and everything listens on loopback only. Node 2 joins node 1
(`rabbitmqctl join_cluster`), as an operator would."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from edge.mqtt.broker import free_port, listening

SBIN = Path("/usr/lib/rabbitmq/bin")


def rabbitmq_server() -> Path | None:
    for candidate in (SBIN / "rabbitmq-server", shutil.which("rabbitmq-server")):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    return None


class RabbitCluster:
    def __init__(self, root: Path, nodes: int = 2) -> None:
        server = rabbitmq_server()
        if server is None:
            pytest.skip("rabbitmq-server is not installed (apt-get install -y rabbitmq-server)")
        self.bindir = server.parent
        self.root = Path(root)
        (self.root / "home").mkdir(parents=True, exist_ok=True)
        cookie = self.root / "home" / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o400)
        self.epmd_port = free_port()
        tag = secrets.token_hex(3)
        self.nodes = [f"fg{i + 1}-{tag}@localhost" for i in range(nodes)]
        self.mqtt_ports = [free_port() for _ in range(nodes)]
        self.amqp_ports = [free_port() for _ in range(nodes)]
        self.dist_ports = [free_port() for _ in range(nodes)]
        self.procs: list[subprocess.Popen[bytes]] = []

    def _env(self, i: int) -> dict[str, str]:
        d = self.root / f"node{i + 1}"
        d.mkdir(exist_ok=True)
        (d / "plugins").write_text("[rabbitmq_mqtt].\n")
        (d / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_ports[i]}\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.mqtt_ports[i]}\n"
            "mqtt.allow_anonymous = true\nloopback_users = none\n")
        return {**os.environ, "HOME": str(self.root / "home"), "ERL_EPMD_PORT": str(self.epmd_port),
                "ERL_EPMD_ADDRESS": "127.0.0.1", "RABBITMQ_NODENAME": self.nodes[i],
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_NODE_PORT": str(self.amqp_ports[i]),
                "RABBITMQ_DIST_PORT": str(self.dist_ports[i]), "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
                "RABBITMQ_LOG_BASE": str(d / "log"), "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "plugins"), "RABBITMQ_PID_FILE": str(d / "pid"),
                "RABBITMQ_PLUGINS_EXPAND_DIR": str(d / "expand"),
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}"}

    def ctl(self, i: int, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.bindir / "rabbitmqctl"), "-n", self.nodes[i], *args], env=self._env(i),
                              capture_output=True, text=True, timeout=timeout, check=False)

    def start(self, timeout: float = 180) -> RabbitCluster:
        for i in range(len(self.nodes)):
            log = open(self.root / f"node{i + 1}.out", "wb")  # noqa: SIM115 - the server keeps writing to it
            self.procs.append(subprocess.Popen([str(self.bindir / "rabbitmq-server")], env=self._env(i),
                                               stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout
        for i in range(len(self.nodes)):
            while True:  # the CLI reaches the node only once its VM has registered with epmd
                r = self.ctl(i, "await_startup", "--timeout", "30", timeout=60)
                if r.returncode == 0 or time.monotonic() > deadline or self.procs[i].poll() is not None:
                    break
                time.sleep(1.0)
            if r.returncode != 0:
                self.stop()
                raise RuntimeError(f"{self.nodes[i]} did not start: {r.stderr}\n"
                                   f"{(self.root / f'node{i + 1}.out').read_text(errors='replace')[-3000:]}")
        for i in range(1, len(self.nodes)):
            for args in (("stop_app",), ("join_cluster", self.nodes[0]), ("start_app",)):
                r = self.ctl(i, *args)
                if r.returncode != 0:
                    self.stop()
                    raise RuntimeError(f"{self.nodes[i]} {' '.join(args)}: {r.stderr}")
        deadline = time.monotonic() + 60
        while not all(listening(p) for p in self.mqtt_ports):
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the MQTT listeners did not open")
            time.sleep(0.2)
        return self

    def members(self) -> str:
        return self.ctl(0, "cluster_status").stdout

    def stop(self) -> None:
        for i in reversed(range(len(self.procs))):
            self.ctl(i, "stop", timeout=60)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        subprocess.run([epmd, "-port", str(self.epmd_port), "-kill"], capture_output=True, timeout=30, check=False)

    def __enter__(self) -> RabbitCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
