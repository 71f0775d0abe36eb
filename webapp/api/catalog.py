"""What a search needs to know of each collection (that it exists, its default mode), held in this
process so that a search sends no Redis command.

The index watcher (`webapp.api.live`) owns it: each of its syncs replaces or updates it, on the same
swap channel and poll that swap versions. Creating, dropping or changing a collection publishes a
message on that channel, so every process learns of it within the bound of a swap (at once, or at the
latest by the next poll when a message is lost).

A name this process does not know may belong to a collection created a moment ago: it is looked up in
Redis once, but those look-ups are bounded per process (a flood of searches on random names must not
become a flood of Redis reads): a name found missing is remembered for a short while, and past a small
rate an unknown name is answered from what the process knows (a 404) until the watcher catches up.

Writes carry the generation at which their Redis read began (`mark()`): a write whose read is older than
a later write of the same name is dropped, so a look-up or a full sync that read before a drop or a
`default_mode` change cannot undo it when it lands after.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# A name found missing by a look-up is answered 404 without another look-up for this long.
MISSING_TTL = 1.0
MISSING_MAX = 4096
# Look-ups of unknown names per second per process (a token bucket of this depth).
LOOKUPS_PER_SECOND = 20.0

Lookup = Callable[[str], tuple[bool, str | None]]


class Catalog:
    """Collection name -> its default search mode (None: the service's default) for every collection
    the watcher last saw. The mapping is replaced, never mutated, so a reader needs no lock."""

    def __init__(self, lookup: Lookup, clock: Callable[[], float] = time.monotonic,
                 per_second: float = LOOKUPS_PER_SECOND):
        self._lookup = lookup
        self._clock = clock
        self._known: dict[str, str | None] = {}
        self._missing: dict[str, float] = {}  # name -> when the answer expires
        self._generation = 0
        self._written: dict[str, int] = {}  # name -> the generation of its last single-name write
        self._write = threading.Lock()
        self._rate = per_second
        self._tokens = per_second
        self._refilled = clock()
        self.lookups = 0

    def mark(self) -> int:
        """The generation now: take it before reading Redis, pass it with what was read."""
        return self._generation

    def replace(self, modes: dict[str, str | None], since: int | None = None) -> None:
        """Every collection that exists, as a full sync read them from generation `since` on; names
        written singly after that keep what those writes said."""
        with self._write:
            self._generation += 1
            known = dict(modes)
            newer = {name: g for name, g in self._written.items() if since is not None and g > since}
            for name in newer:
                if name in self._known:
                    known[name] = self._known[name]
                else:
                    known.pop(name, None)
            self._known, self._written = known, newer
            self._missing = {}

    def update(self, name: str, exists: bool, mode: str | None, since: int | None = None) -> None:
        """One collection, as a message about it, a look-up or this process's own change found it;
        `since`: the generation its read began at (None: the newest word, e.g. a change just made)."""
        with self._write:
            if since is not None and self._written.get(name, 0) > since:
                return  # a later write of this name already landed
            self._generation += 1
            self._written[name] = self._generation
            known = dict(self._known)
            if exists:
                known[name] = mode
                self._missing.pop(name, None)
            else:
                known.pop(name, None)
            self._known = known

    def names(self) -> set[str]:
        return set(self._known)

    def known(self, name: str) -> tuple[bool, str | None]:
        """(whether the collection exists, its default mode) from memory only."""
        known = self._known
        return (True, known[name]) if name in known else (False, None)

    def get(self, name: str) -> tuple[bool, str | None]:
        """(whether the collection exists, its default mode): from memory, or for a name this process
        does not know, one bounded look-up (which may raise the look-up's RedisError)."""
        known = self._known
        if name in known:
            return True, known[name]
        now = self._clock()
        if self._missing.get(name, 0.0) > now or not self._take(now):
            return False, None
        self.lookups += 1
        since = self.mark()
        exists, mode = self._lookup(name)
        if exists:
            self.update(name, True, mode, since)
        else:
            with self._write:
                if len(self._missing) >= MISSING_MAX:
                    self._missing = {}
                self._missing[name] = now + MISSING_TTL
        return exists, mode

    def _take(self, now: float) -> bool:
        with self._write:
            self._tokens = min(self._rate, self._tokens + (now - self._refilled) * self._rate)
            self._refilled = now
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True
