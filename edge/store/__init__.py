"""Enrolment storage: the SQLite store (db), encryption at rest (crypto) and the in-memory matcher.

Import the pieces from their modules (`edge.store.db.Store`, `edge.store.matcher.Matcher`); this package
only defines the error they share, so importing it stays cheap.
"""

from edge.errors import FacegateError


class StoreError(FacegateError):
    """The store cannot be opened, read or changed as asked (missing or wrong key, bad file, unknown name)."""
