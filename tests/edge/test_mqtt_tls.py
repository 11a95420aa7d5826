"""TLS and passwords against a real mosquitto with a throw-away CA: the right CA works; a wrong CA, a wrong password
or a missing client certificate fail cleanly (one clear log line per attempt, retries, no crash)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from edge.mqtt import MqttError
from edge.mqtt.publisher import Publisher
from tests.mqtt_broker import Broker, Pki, Subscriber, make_pki, sample_event, settings_for, wait_until

EVENTS = "facegate/door1/event"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_settings(broker: Broker, pki: Pki, tmp: Path, **overrides: object):
    assert broker.tls_port is not None
    return settings_for(broker, tmp, **{"port": broker.tls_port, "tls_ca": pki.ca.cert, **overrides})


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("edge.mqtt") and r.levelno >= logging.ERROR]


def network_thread_alive() -> bool:
    return any(t.name.startswith("paho-mqtt-client-") and t.is_alive() for t in threading.enumerate())


def fails_cleanly(pub: Publisher, caplog: pytest.LogCaptureFixture, expect: str) -> list[str]:
    """Let the publisher retry for a while; it must stay up, disconnected, keep events, and log each attempt once."""
    pub.start()
    event = pub.publish_event(sample_event())
    assert wait_until(lambda: len(errors(caplog)) >= 3, 10), errors(caplog)
    assert not pub.connected and network_thread_alive()
    assert pub.outbox_depth == 1 and event["seq"] == 1
    lines = errors(caplog)
    assert all(expect in line and "retrying in" in line for line in lines), lines
    t0 = time.monotonic()
    pub.stop(flush_timeout=1)
    assert time.monotonic() - t0 < 5
    return lines


def test_right_ca_with_client_certificate_and_password(tmp_path: Path, pki: Pki) -> None:
    with Broker(tmp_path / "broker", pki=pki, passwords={"door1": "s3cret-door1"}, require_client_cert=True) as b, \
            Subscriber(b, [EVENTS]) as sub:
        pub = Publisher(tls_settings(b, pki, tmp_path, username="door1", password="s3cret-door1",
                                     tls_cert=pki.client.cert, tls_key=pki.client.key))
        pub.start()
        try:
            assert pub.wait_connected(10), b.log
            sent = pub.publish_event(sample_event())
            assert sub.wait_count(EVENTS, 1)[0].json()["event_id"] == sent["event_id"]
        finally:
            pub.stop()


def test_wrong_ca_fails_cleanly_and_keeps_events(tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge.mqtt")
    with Broker(tmp_path / "broker", pki=pki) as b:
        pub = Publisher(tls_settings(b, pki, tmp_path, tls_ca=pki.other_ca.cert, reconnect_min_s=0.2,
                                     reconnect_max_s=0.4))
        lines = fails_cleanly(pub, caplog, "certificate verify failed")
        assert "not signed by tls_ca" in lines[0]
        # Fixed configuration, same outbox: the event kept through the failures is delivered.
        with Subscriber(b, [EVENTS]) as sub:
            fixed = Publisher(tls_settings(b, pki, tmp_path))
            fixed.start()
            try:
                assert sub.wait_count(EVENTS, 1)[0].json()["seq"] == 1
            finally:
                fixed.stop()


def test_wrong_password_fails_cleanly(tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge.mqtt")
    with Broker(tmp_path / "broker", pki=pki, passwords={"door1": "s3cret-door1"}) as b:
        pub = Publisher(tls_settings(b, pki, tmp_path, username="door1", password="guess", reconnect_min_s=0.2,
                                     reconnect_max_s=0.4))
        lines = fails_cleanly(pub, caplog, "refused the connection")
        assert "check username and password" in lines[0]


def test_missing_client_certificate_fails_cleanly(tmp_path: Path, pki: Pki,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge.mqtt")
    with Broker(tmp_path / "broker", pki=pki, require_client_cert=True) as b:
        pub = Publisher(tls_settings(b, pki, tmp_path, reconnect_min_s=0.2, reconnect_max_s=0.4))
        fails_cleanly(pub, caplog, "mqtt: ")


def test_plain_client_on_a_tls_port_fails_cleanly(tmp_path: Path, pki: Pki,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge.mqtt")
    with Broker(tmp_path / "broker", pki=pki) as b:
        assert b.tls_port is not None
        pub = Publisher(settings_for(b, tmp_path, port=b.tls_port, reconnect_min_s=0.2, reconnect_max_s=0.4))
        fails_cleanly(pub, caplog, "mqtt: ")


def test_unreadable_tls_files_are_a_configuration_error(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(MqttError, match="TLS files"):
        Publisher(settings_for(Broker(tmp_path / "b"), tmp_path, tls_ca=tmp_path / "missing.crt"))
    with pytest.raises(MqttError, match="TLS files"):
        Publisher(settings_for(Broker(tmp_path / "b"), tmp_path, tls_ca=pki.ca.cert, tls_cert=pki.client.cert,
                               tls_key=pki.server.key))  # key of another certificate
