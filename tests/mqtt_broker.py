"""Real mosquitto brokers for the MQTT tests, on free loopback ports, with persistence in a temporary folder.

No mocks: the tests talk to the broker the devices use (Debian package `mosquitto`). A Broker keeps its ports and
its persistence file across stop()/start(), so a restart is the outage a door sees. Also here: a throw-away CA
(the `cryptography` package) and a Subscriber that records what arrives.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.mqtt.broker import Mosquitto, free_port

HOST = "127.0.0.1"  # tests never talk to anything else
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def require_mosquitto() -> None:
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed (apt-get install -y mosquitto)")


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


# -- a test certificate authority -------------------------------------------------------------------------
@dataclass(frozen=True)
class Cert:
    cert: Path
    key: Path


def make_ca(directory: Path, name: str) -> tuple[Cert, Any]:
    """A self-signed CA; returns its files and its private key object (to sign with)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    files = Cert(directory / f"{name}.crt", directory / f"{name}.key")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return files, (cert, key)


def issue_cert(ca: tuple[Any, Any], directory: Path, name: str, server: bool) -> Cert:
    """A leaf certificate signed by `ca`: a server one for 127.0.0.1/localhost, or a client one named `name`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                     else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    files = Cert(directory / f"{name}.crt", directory / f"{name}.key")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return files


@dataclass(frozen=True)
class Pki:
    ca: Cert
    server: Cert
    client: Cert
    other_ca: Cert  # a CA that signed nothing the broker presents: the "wrong CA"


def make_pki(directory: Path) -> Pki:
    ca_files, ca = make_ca(directory, "test-ca")
    other_files, _ = make_ca(directory, "other-ca")
    return Pki(ca_files, issue_cert(ca, directory, "broker", server=True),
                   issue_cert(ca, directory, "door1", server=False), other_files)


# -- the broker ---------------------------------------------------------------------------------------------
class Broker(Mosquitto):
    """The package's mosquitto harness (edge/mqtt/broker.py), given a test PKI for its TLS listener."""

    def __init__(self, root: Path, pki: Pki | None = None, passwords: dict[str, str] | None = None,
                 require_client_cert: bool = False, config: str | None = None, port: int | None = None,
                 tls_port: int | None = None) -> None:
        require_mosquitto()
        tls = (pki.ca.cert, pki.server.cert, pki.server.key) if pki is not None else None
        super().__init__(root, port=port or free_port(), tls_port=tls_port, tls=tls, passwords=passwords or {},
                         require_client_cert=require_client_cert, config=config)
        self.pki = pki


@dataclass
class Msg:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """Records every message on `topics` (QoS 1). persistent=True: an MQTT 5 session with clean_start False and a
    one-hour expiry, so the broker queues messages for it while it is away, across broker restarts."""

    def __init__(self, broker: Broker, topics: list[str], client_id: str = "test-observer",
                 persistent: bool = False, username: str | None = None, password: str | None = None) -> None:
        self.broker = broker
        self.topics = topics
        self.messages: list[Msg] = []
        self.granted: list[Any] = []  # the SUBACK's reason codes (failures show ACL refusals)
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_message = self._on_message
        self.persistent = persistent

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            client.subscribe([(t, 1) for t in self.topics])

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, reasons: list[Any], _p: Any) -> None:
        self.granted = list(reasons)
        self._subscribed.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Msg(message.topic, bytes(message.payload), bool(message.retain)))
            self._cond.notify_all()

    def start(self) -> Subscriber:
        props = None
        if self.persistent:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
        self.client.connect(HOST, self.broker.port, keepalive=10, clean_start=not self.persistent, properties=props)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("test subscriber: no SUBACK")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Subscriber:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def on(self, topic: str) -> list[Msg]:
        with self._cond:
            return [m for m in self.messages if mqtt.topic_matches_sub(topic, m.topic)]

    def wait_for(self, predicate: Callable[[list[Msg]], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(list(self.messages)):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
            return True

    def wait_count(self, topic: str, n: int, timeout: float = 10.0) -> list[Msg]:
        self.wait_for(lambda msgs: sum(mqtt.topic_matches_sub(topic, m.topic) for m in msgs) >= n, timeout)
        return self.on(topic)


def publish(broker: Broker, topic: str, payload: bytes | str, retain: bool = False, username: str | None = None,
            password: str | None = None) -> None:
    """One message from a throw-away client (QoS 1, waits for the PUBACK) on the plain port."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-pub-{time.monotonic_ns()}")
    if username is not None:
        client.username_pw_set(username, password)
    client.connect(HOST, broker.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


# -- facegate-side helpers -------------------------------------------------------------------------------
def settings_for(broker: Broker, tmp: Path, **overrides: Any) -> Any:
    """MqttSettings for `broker`'s plain port with files under `tmp` and quick reconnects."""
    from edge.mqtt.settings import MqttSettings

    values: dict[str, Any] = {"host": HOST, "port": broker.port, "device": "door1", "outbox_path": tmp / "outbox.db",
                              "command_state_path": tmp / "counters.json",
                              "claim_state_path": tmp / "claim-counters.json", "reconnect_min_s": 0.1,
                              "reconnect_max_s": 0.5}
    values.update(overrides)
    return MqttSettings(**values)


def sample_event(decision: str = "granted", identity: str | None = "alice", **extra: Any) -> dict[str, Any]:
    """The decision fields the daemon core supplies."""
    event: dict[str, Any] = {
        "decision": decision, "identity": identity, "score": 0.71 if identity else 0.22, "threshold": 0.5,
        "liveness": {"verdict": "spoof" if decision == "spoof" else "live", "score": 0.93},
        "model": "sface", "frames": 3, "latency_ms": 41.5}
    event.update(extra)
    return event


EVENT_SCHEMA = Path(__file__).resolve().parent.parent / "edge" / "mqtt" / "event.schema.json"
