"""Central events: `facegate collect` subscribes to every door's events and writes each to PostgreSQL once
(db.py: schema, migrations, queries, retention; collector.py: MQTT → PostgreSQL). SQLite stays the door's store;
the door needs none of this."""

from __future__ import annotations

from edge.errors import FacegateError


class CollectError(FacegateError):
    """The events database is unreachable or unusable, or a query is malformed."""
