"""One MQTT connection for the fleet's processes (the hub, a door's sync, the collector), built from an [mqtt]
section: broker, credentials, TLS and protocol as the door's publisher uses them.

paho's network thread only queues what arrives; the owner takes messages from `inbox` on its own thread, so a
slow apply (a 10,000-entry snapshot) never stalls keepalives. With `persistent`, the broker keeps the session and
queues QoS 1 messages while the client is away (MQTT 5: clean_start false and a session expiry; 3.1.1: clean
session false). With `manual_ack`, a QoS 1 message is acknowledged only when the owner calls ack(): the
collector acknowledges an event once PostgreSQL has committed it, so a crash in between means redelivery, not
loss.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.fleet import FleetError
from edge.mqtt.settings import MqttSettings

log = logging.getLogger(__name__)
SESSION_EXPIRY_S = 7 * 86400


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool
    mid: int
    qos: int


class Link:
    def __init__(self, settings: MqttSettings, client_id: str, subscriptions: list[str], persistent: bool = False,
                 manual_ack: bool = False, will: tuple[str, bytes, bool] | None = None,
                 on_connect: Callable[[], None] | None = None, max_inbox: int = 100000) -> None:
        self.settings = settings
        self.client_id = client_id
        self.subscriptions = subscriptions
        self.persistent = persistent
        self.manual_ack = manual_ack
        self.inbox: queue.Queue[Message] = queue.Queue(max_inbox)
        self.dropped = 0
        self.connections = 0
        self._on_connect_cb = on_connect
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._started = False
        v5 = settings.protocol == "5"
        kwargs: dict[str, Any] = {"protocol": mqtt.MQTTv5} if v5 else {"protocol": mqtt.MQTTv311,
                                                                       "clean_session": not persistent}
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                                  manual_ack=manual_ack, **kwargs)
        if settings.username:
            self.client.username_pw_set(settings.username, settings.password or None)
        if settings.tls_ca:
            try:
                context = ssl.create_default_context(cafile=settings.tls_ca)
                context.minimum_version = ssl.TLSVersion.TLSv1_2
                if settings.tls_cert:
                    context.load_cert_chain(settings.tls_cert, settings.tls_key)
            except (OSError, ValueError) as exc:
                raise FleetError(f"mqtt TLS files (tls_ca {settings.tls_ca}, tls_cert {settings.tls_cert}) are "
                                 f"unusable: {exc}") from None
            self.client.tls_set_context(context)
            self.client.tls_insecure_set(settings.tls_insecure)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=will[2])
        self.client.reconnect_delay_set(settings.reconnect_min_s, settings.reconnect_max_s)  # type: ignore[arg-type]
        self.client.max_inflight_messages_set(100)
        self.client.max_queued_messages_set(0)
        self.client.suppress_exceptions = True
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    # -- paho's thread -------------------------------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.warning("mqtt %s: connection refused (%s)", self.client_id, reason)
            return
        self.connections += 1
        self._connected.set()
        if self.subscriptions:
            client.subscribe([(t, 1) for t in self.subscriptions])
        else:
            self._subscribed.set()
        if self._on_connect_cb is not None:
            self._on_connect_cb()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._connected.clear()
        self._subscribed.clear()

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, reasons: list[Any], _p: Any) -> None:
        failed = [r for r in reasons if getattr(r, "is_failure", False) or r == 128]
        if failed:
            log.error("mqtt %s: subscription refused by the broker (ACL?): %s", self.client_id, failed)
        self._subscribed.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, m: mqtt.MQTTMessage) -> None:
        try:
            self.inbox.put_nowait(Message(m.topic, bytes(m.payload), bool(m.retain), m.mid, m.qos))
        except queue.Full:
            self.dropped += 1  # not acknowledged (manual_ack): the broker sends it again after a reconnect

    # -- the owner's side ---------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._started:
            return
        self._started = True
        s = self.settings
        props = None
        extra: dict[str, Any] = {}
        if s.protocol == "5":
            extra["clean_start"] = not self.persistent
            if self.persistent:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = SESSION_EXPIRY_S
        self.client.connect_async(s.host, s.port, s.keepalive, properties=props, **extra)
        self.client.loop_start()

    def stop(self) -> None:
        if not self._started:
            return
        self.client.disconnect()
        self.client.loop_stop()
        self._started = False
        self._connected.clear()

    def kill(self) -> None:
        """Drop the connection without DISCONNECT (the broker publishes the will): a crash, for tests."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()
        self._started = False
        self._connected.clear()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._connected.is_set() and self._subscribed.is_set():
                return True
            time.sleep(0.01)
        return self._connected.is_set() and self._subscribed.is_set()

    def publish(self, topic: str, payload: bytes | str, retain: bool = False, qos: int = 1) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=qos, retain=retain)

    def ack(self, message: Message) -> None:
        if self.manual_ack and message.qos > 0:
            self.client.ack(message.mid, message.qos)

    def get(self, timeout: float) -> Message | None:
        try:
            return self.inbox.get(timeout=timeout)
        except queue.Empty:
            return None
