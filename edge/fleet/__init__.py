"""Many doors, one gallery: a hub that publishes its store as signed, encrypted gallery records, and doors that
apply them in order (deploy/FLEET.md).

- records.py: the documents on the wire (batch, manifest, snapshot), their Ed25519 signatures, the sealed
  entries and the gallery hash.
- keys.py: the hub's signing key, the doors' public key and the site keys.
- journal.py: the hub's log of published batches and what each site holds.
- hub.py / hubhttp.py: `facegate hub run`; the HTTP side doors catch up from.
- door.py: a door's sync (a thread of the daemon in fleet mode, or `facegate fleet sync`).
- link.py: the MQTT connection the hub, the door sync and the collector share.
"""

from __future__ import annotations

from edge.errors import FacegateError


class FleetError(FacegateError):
    """A fleet setting, key or document is unusable (the message says which and why)."""
