"""Home Assistant MQTT discovery: one device per door box.

Every profile:
- event "Access": fires on every facegate event, event_type = decision (granted, denied, unknown, spoof);
- sensor "Last identity": the last person granted, read from the retained state topic (so it survives a Home
  Assistant restart and is cleared by forget_identity);
- binary_sensor "Face present": the retained facegate/<device>/face_present topic (ON/OFF).

The door profile only (a kiosk sends no door commands, so it has no lock to show):
- lock "Door": its state is the retained door/state the daemon publishes (locked / unlocked, edge/door.py),
  so a grant shows as unlocked until the controller relocks; its LOCK / UNLOCK / OPEN go to door/set, and the
  daemon relays them to the lock controller on door/command with a duration and an expiry, like a grant;
- switch "Face unlock": ON / OFF on face_unlock/set, state on the retained face_unlock; while off, no face
  opens the door (an automation can follow an alarm panel or a schedule).

All share the availability topic (online, offline as the Last Will). Configs are retained and re-sent when
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


DOOR_ENTITIES = (("lock", "door"), ("switch", "face_unlock"))


def discovery_messages(settings: MqttSettings, door: bool = False) -> list[tuple[str, str]]:
    """(topic, JSON payload) of each entity's retained discovery config; `door`: the door profile's lock and
    face-unlock switch too. Without them, their config topics get an empty payload, which makes Home Assistant
    remove the entities a door profile had announced before (a box moved to the kiosk profile shows no lock)."""
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
    }
    if door:
        entities[("lock", "door")] = {
            "name": "Door",
            # Commands go to the daemon, which relays them to the lock controller (door/command) with a duration
            # and an expiry: the controller hears one publisher, and the state below stays true.
            "command_topic": settings.topic("door", "set"),
            "payload_lock": "LOCK",
            "payload_unlock": "UNLOCK",
            "payload_open": "OPEN",
            "state_topic": settings.topic("door", "state"),
            "value_template": "{{ value_json.state }}",
            "state_locked": "locked",
            "state_unlocked": "unlocked",
            "qos": 1,
        }
        entities[("switch", "face_unlock")] = {
            "name": "Face unlock",
            "command_topic": settings.topic("face_unlock", "set"),
            "state_topic": settings.topic("face_unlock"),
            "payload_on": ON,
            "payload_off": OFF,
            "icon": "mdi:face-recognition",
            "entity_category": "config",
            "qos": 1,
        }
    out = [(config_topic(settings, component, object_id),
            json.dumps({**config, "unique_id": f"{node}_{object_id}", **common}, sort_keys=True))
           for (component, object_id), config in entities.items()]
    if not door:
        out += [(config_topic(settings, component, object_id), "") for component, object_id in DOOR_ENTITIES]
    return out
