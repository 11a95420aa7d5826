"""Home Assistant MQTT discovery: one device per door box with four entities.

- event "Access": fires on every facegate event, event_type = decision (granted, denied, unknown, spoof);
- sensor "Last identity": the last person granted, read from the retained state topic (so it survives a Home
  Assistant restart and is cleared by forget_identity);
- binary_sensor "Face present": the retained facegate/<device>/face_present topic (ON/OFF);
- lock "Door": sends to facegate/<device>/door/command and reads its state back from the same topic, so unlocks
  decided by facegate and by Home Assistant both show.

All four share the availability topic (online, offline as the Last Will). Configs are retained and re-sent when
Home Assistant announces itself on <discovery_prefix>/status, as its documentation asks.
"""

from __future__ import annotations

import json

from edge import __version__
from edge.mqtt.settings import MqttSettings

DECISIONS = ("granted", "denied", "unknown", "spoof")
ON, OFF = "ON", "OFF"


def node_id(settings: MqttSettings) -> str:
    return f"facegate_{settings.device}"


def status_topic(settings: MqttSettings) -> str:
    return f"{settings.discovery_prefix}/status"


def config_topic(settings: MqttSettings, component: str, object_id: str) -> str:
    return f"{settings.discovery_prefix}/{component}/{node_id(settings)}/{object_id}/config"


def discovery_messages(settings: MqttSettings) -> list[tuple[str, str]]:
    """(topic, JSON payload) of each entity's retained discovery config."""
    node = node_id(settings)
    common = {
        "device": {"identifiers": [node], "name": f"facegate {settings.device}", "manufacturer": "facegate",
                   "model": "facegate edge", "sw_version": __version__},
        "origin": {"name": "facegate", "sw_version": __version__},
        "availability": [{"topic": settings.topic("availability"), "payload_available": "online",
                          "payload_not_available": "offline"}],
    }
    entities = {
        ("event", "access"): {
            "name": "Access",
            "state_topic": settings.topic("event"),
            "event_types": list(DECISIONS),
            # HA wants {"event_type": ...}; the rest become the event's attributes.
            "value_template": ("{{ {'event_type': value_json.decision, 'identity': value_json.identity, "
                               "'score': value_json.score, 'door': value_json.door, 'seq': value_json.seq, "
                               "'event_id': value_json.event_id} | tojson }}"),
            "icon": "mdi:door-sliding",
            "qos": 1,
        },
        ("sensor", "last_identity"): {
            "name": "Last identity",
            "state_topic": settings.topic("state"),
            "value_template": "{{ value_json.last_identity if value_json.last_identity else 'none' }}",
            "icon": "mdi:account-check",
        },
        ("binary_sensor", "face_present"): {
            "name": "Face present",
            "state_topic": settings.topic("face_present"),
            "payload_on": ON,
            "payload_off": OFF,
            "device_class": "occupancy",
        },
        ("lock", "door"): {
            "name": "Door",
            "command_topic": settings.topic("door", "command"),
            "command_template": '{"command": "{{ value }}", "source": "homeassistant"}',
            "payload_lock": "LOCK",
            "payload_unlock": "UNLOCK",
            "payload_open": "OPEN",
            "state_topic": settings.topic("door", "command"),
            "value_template": "{{ value_json.command }}",
            "state_locked": "LOCK",
            "state_unlocked": "UNLOCK",
            "qos": 1,
        },
    }
    return [(config_topic(settings, component, object_id),
             json.dumps({**config, "unique_id": f"{node}_{object_id}", **common}, sort_keys=True))
            for (component, object_id), config in entities.items()]
