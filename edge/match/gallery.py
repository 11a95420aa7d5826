"""The enrolled templates a scorer searches, kept in step with the store.

One Matcher (an in-memory cosine index) per embedder. Changes made through this process's Store reach it by
the store's listeners, in commit order. Changes committed by other processes — `facegate store delete` while
the daemon runs, an enrolment from the CLI, a gallery sync — are found by `follow()`: it polls SQLite's
data_version (about 5 µs) and, only when that moved, compares template ids per identity (no vectors read) and
loads or drops just the identities that changed. The daemon calls it before every frame, so a deletion takes
effect before the next decision.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Mapping

import numpy as np

from edge.errors import FacegateError
from edge.store import StoreError
from edge.store.db import Store
from edge.store.matcher import Matcher


class Gallery:
    """Templates in memory: one Matcher per embedder, and each identity's rows per embedder (paired by photo).
    What a benchmark draws; the daemon and the CLI use StoreGallery."""

    def __init__(self, embedders: tuple[str, ...]) -> None:
        if not embedders:
            raise ValueError("a gallery needs at least one embedder")
        self.embedders = embedders
        self.matchers: dict[str, Matcher] = {e: Matcher(e) for e in embedders}
        self.revision = 0  # bumped on every change: scorers with their own derived index rebuild lazily
        self.on_forget: list[Callable[[str], None]] = []  # told when an identity is deleted
        self._rows: dict[str, dict[str, list[np.ndarray]]] = {}

    def add(self, name: str, vectors: Mapping[str, np.ndarray]) -> None:
        """Templates of one identity: {embedder: (T, D) or (D,)}, rows of the embedders paired by photo."""
        for e in self.embedders:
            v = np.atleast_2d(np.asarray(vectors[e], np.float32))
            self.matchers[e].add(name, v)
            self._rows.setdefault(name, {}).setdefault(e, []).extend(v)
        self.revision += 1

    def follow(self) -> list[str]:
        return []

    def close(self) -> None:
        pass

    # -- reads ---------------------------------------------------------------------------------------------
    @property
    def primary(self) -> Matcher:
        return self.matchers[self.embedders[0]]

    @property
    def identities(self) -> int:
        """K for the 1:N threshold: enrolled identities (under the primary embedder)."""
        return self.primary.identities

    @property
    def rows(self) -> int:
        return self.primary.rows

    def names(self) -> list[str]:
        return sorted(set().union(*(m.names() for m in self.matchers.values())))

    def templates(self, name: str, embedder: str) -> np.ndarray | None:
        """(T, D) templates of one identity under one embedder; None when it has none."""
        rows = self._rows.get(name, {}).get(embedder)
        return np.stack(rows) if rows else None

    def paired(self, embedders: tuple[str, ...], name: str | None = None) -> dict[str, dict[str, np.ndarray]]:
        """{identity: {embedder: (T, D)}} with the k-th rows of each embedder from the same photo."""
        out = {}
        for who, per in self._rows.items():
            if name is None or who == name:
                out[who] = {e: np.stack(per[e]) for e in embedders if per.get(e)}
        return out


class StoreGallery(Gallery):
    """The gallery of a store, kept in step with it (changes from this process and from others)."""

    def __init__(self, store: Store, embedders: tuple[str, ...]) -> None:
        super().__init__(embedders)
        self.store = store
        self._lock = threading.Lock()
        self._version: int | None = None
        self._known: dict[str, dict[str, frozenset[int]]] = {}
        self._stale = False
        self._unsubscribe: list[Callable[[], None]] = []
        self.load()

    def add(self, name: str, vectors: Mapping[str, np.ndarray]) -> None:
        raise TypeError("a store's gallery changes through the store (enrol), not directly")

    # -- loading and following ---------------------------------------------------------------------------------
    def load(self) -> int:
        """(Re)load every template from the store; returns the number of identities."""
        matchers = {e: Matcher(e) for e in self.embedders}
        with self.store.locked():
            version = self.store.data_version()
            known = {e: self.store.template_ids(e) for e in self.embedders}
            for e, m in matchers.items():
                m.load((name, vec) for name, _, vec in self.store.templates(e))
            unsubscribe = [self.store.subscribe(m.on_change) for m in matchers.values()]
            unsubscribe.append(self.store.subscribe(self._changed_here))
        with self._lock:
            old, self._unsubscribe = self._unsubscribe, unsubscribe
            self.matchers, self._known, self._version, self._stale = matchers, known, version, False
            self.revision += 1
        for undo in old:
            undo()
        return self.identities

    def close(self) -> None:
        for undo in self._unsubscribe:
            undo()
        self._unsubscribe = []

    def _changed_here(self, action: str, name: str, _vectors: dict[str, np.ndarray]) -> None:
        # Applied to the matchers by their own listeners already; _known catches up on the next follow().
        self._stale = True
        self.revision += 1
        if action == "delete":
            for callback in list(self.on_forget):
                callback(name)

    def follow(self) -> list[str]:
        """Apply what other processes committed since the last call; returns the identities deleted by them
        (each also reported to `on_forget`). One stat and one PRAGMA when nothing changed.

        Raises StoreError when the store cannot be followed: its file deleted, replaced or damaged under the
        running process (Store.check_file), or SQLite failing to read it. The caller must then decide nothing:
        a deletion it cannot see could otherwise still be granted."""
        try:
            self.store.check_file()
            return self._follow()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.store.path} cannot be read ({type(exc).__name__}: {exc})") from None

    def _follow(self) -> list[str]:
        version = self.store.data_version()
        if version == self._version and not self._stale:
            return []
        with self._lock:
            self._version, self._stale = version, False
            deleted: set[str] = set()
            for e, matcher in self.matchers.items():
                current = self.store.template_ids(e)
                known = self._known.get(e, {})
                for name in known.keys() - current.keys():
                    if matcher.remove(name):
                        deleted.add(name)
                for name, ids in current.items():
                    if known.get(name) != ids:
                        rows = [v for _, _, v in self.store.templates(e, name)]
                        matcher.replace(name, np.stack(rows))
                self._known[e] = current
            self.revision += 1
        deleted -= set(self.names())  # still enrolled under another embedder: not a deletion of the person
        for name in sorted(deleted):
            for callback in list(self.on_forget):
                callback(name)
        return sorted(deleted)

    # -- reads ---------------------------------------------------------------------------------------------
    def templates(self, name: str, embedder: str) -> np.ndarray | None:
        """Read from the store: a 1:1 check reads one identity's rows, not the gallery."""
        rows = [v for _, _, v in self.store.templates(embedder, name)]
        return np.stack(rows) if rows else None

    def paired(self, embedders: tuple[str, ...], name: str | None = None) -> dict[str, dict[str, np.ndarray]]:
        """{identity: {embedder: (T, D)}}, rows paired by enrolment order: enrolment stores one template per
        photo for every configured embedder, in the same order, so the k-th rows come from the same photo. An
        identity missing an embedder's templates (enrolled before that embedder was configured) cannot be
        scored on all of them: that is an error naming the fix."""
        per: dict[str, dict[str, list[np.ndarray]]] = {e: {} for e in embedders}
        for e in embedders:
            for who, _, vec in self.store.templates(e, name):
                per[e].setdefault(who, []).append(vec)
        out = {}
        for who in sorted(set().union(*(set(d) for d in per.values()))):
            counts = {e: len(per[e].get(who, [])) for e in embedders}
            if len(set(counts.values())) != 1:
                raise FacegateError(f"identity {who!r} has {counts} templates; scoring needs one per embedder for "
                                    "every enrolment photo: re-enrol it, or run 'facegate store reembed "
                                    "--embedder NAME'")
            out[who] = {e: np.stack(per[e][who]) for e in embedders}
        return out
