"""The MQTT side of the edge daemon: events with an on-disk outbox, retained state, Home Assistant discovery and
signed commands.

Import the pieces from their modules (`edge.mqtt.settings.MqttSettings`, `edge.mqtt.publisher.Publisher`,
`edge.mqtt.commands.sign_command`); this package only defines the error they share, so importing it stays cheap
(no paho, no SQLite).
"""

from edge.errors import FacegateError


class MqttError(FacegateError):
    """MQTT settings or files (CA, certificate, key, outbox, command counters) are unusable as given."""
