"""The metadata cache: what the daemon remembers about the slow share so the share is asked less often.

Four kinds of facts, each with its own time to live (TTL), all keyed by the backing identity
``(st_dev, st_ino)`` so that they survive the kernel forgetting an inode:

- attributes:  backing key -> os.stat_result
- entries:     (parent backing key, name) -> child backing key, or NEGATIVE (the name does not exist)
- listings:    directory backing key -> (tuple of names, the directory's (mtime_ns, ctime_ns) when listed)
- no-xattrs:   (backing key, xattr name) -> True when the file has no such extended attribute (the kernel
               asks for security.capability before every write, and ls -l for ACLs on every file)

Every kind is a bounded LRU (``TTLCache``): a named capacity, eviction of the least recently used item
when full, expiry by TTL on read. The listings cache weighs each listing by its number of names, so the
bound is on names, not on directories. ``statistics()`` reports hits, misses, expirations and evictions
per kind; the bench and ``fsbridge stats`` read them.

Coherence (see docs/cache-coherence.md): changes made through the mount update or drop the affected
facts at once; changes made on the host side become visible when the TTL runs out, or at once after an
explicit invalidation. A TTL of 0 disables a kind.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Generic, Hashable, Iterable, TypeVar

V = TypeVar("V")

BackingKey = tuple[int, int]


class _Negative:
    def __repr__(self) -> str:
        return "NEGATIVE"


NEGATIVE: Any = _Negative()  # an entry value meaning "this name does not exist"
MISSING: Any = object()  # what get() returns when nothing fresh is known


@dataclass(frozen=True)
class CacheConfig:
    """TTLs in seconds (0 turns that kind off) and capacities."""

    entry_ttl: float = 30.0
    attr_ttl: float = 30.0
    negative_ttl: float = 10.0
    dir_ttl: float = 30.0
    max_attrs: int = 200_000
    max_entries: int = 200_000
    max_listed_names: int = 500_000

    @classmethod
    def disabled(cls) -> "CacheConfig":
        return cls(entry_ttl=0, attr_ttl=0, negative_ttl=0, dir_ttl=0)

    @property
    def enabled(self) -> bool:
        return any((self.entry_ttl, self.attr_ttl, self.negative_ttl, self.dir_ttl))


class TTLCache(Generic[V]):
    """A bounded LRU whose items also expire.

    Capacity is in weight units (1 per item unless `weigh` says otherwise); putting an item that does not
    fit evicts least recently used items first. Not thread-safe: used from the trio thread only.
    """

    def __init__(self, name: str, capacity: int, weigh: Callable[[V], int] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.capacity = capacity
        self._weigh = weigh
        self._clock = clock
        self._items: OrderedDict[Hashable, tuple[V, float, int]] = OrderedDict()  # key -> (value, expiry, weight)
        self._weight = 0
        self.hits = self.misses = self.expired = self.evictions = 0

    def get(self, key: Hashable) -> V:
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return MISSING
        value, expiry, _ = item
        if expiry <= self._clock():
            self._remove(key)
            self.expired += 1
            self.misses += 1
            return MISSING
        self._items.move_to_end(key)
        self.hits += 1
        return value

    def peek(self, key: Hashable) -> V:
        """Like get, but counts nothing and does not refresh the LRU position."""
        item = self._items.get(key)
        if item is None or item[1] <= self._clock():
            return MISSING
        return item[0]

    def put(self, key: Hashable, value: V, ttl: float) -> None:
        if ttl <= 0:
            self.pop(key)
            return
        weight = self._weigh(value) if self._weigh else 1
        if weight > self.capacity:
            self.pop(key)
            return
        if key in self._items:
            self._remove(key)
        self._items[key] = (value, self._clock() + ttl, weight)
        self._weight += weight
        while self._weight > self.capacity:
            old_key = next(iter(self._items))
            self._remove(old_key)
            self.evictions += 1

    def pop(self, key: Hashable) -> None:
        if key in self._items:
            self._remove(key)

    def pop_where(self, predicate: Callable[[Hashable], bool]) -> int:
        doomed = [k for k in self._items if predicate(k)]
        for k in doomed:
            self._remove(k)
        return len(doomed)

    def clear(self) -> None:
        self._items.clear()
        self._weight = 0

    def __len__(self) -> int:
        return len(self._items)

    def _remove(self, key: Hashable) -> None:
        _, _, weight = self._items.pop(key)
        self._weight -= weight

    def statistics(self) -> dict[str, int]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "expired": self.expired,
            "evictions": self.evictions,
            "size": len(self._items),
            "weight": self._weight,
            "capacity": self.capacity,
        }


class MetadataCache:
    """Attributes, entries (positive and negative) and directory listings of the backing share."""

    def __init__(self, config: CacheConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.attrs: TTLCache[os.stat_result] = TTLCache("attrs", config.max_attrs, clock=clock)
        self.entries: TTLCache[Any] = TTLCache("entries", config.max_entries, clock=clock)
        self.listings: TTLCache[tuple[tuple[bytes, ...], Any]] = TTLCache(
            "listings", config.max_listed_names, weigh=lambda item: len(item[0]) + 1, clock=clock)
        self.no_xattrs: TTLCache[bool] = TTLCache("no_xattrs", config.max_attrs, clock=clock)
        # how many directory changes were made through the mount so far: an open listing that saw
        # this number change may hold names that are gone since
        self.changes = 0

    # -- attributes ------------------------------------------------------------------------------------

    def get_attr(self, key: BackingKey) -> os.stat_result:
        return self.attrs.get(key)

    def put_attr(self, st: os.stat_result) -> None:
        self.attrs.put((st.st_dev, st.st_ino), st, self.config.attr_ttl)

    def drop_attr(self, key: BackingKey | None) -> None:
        if key is not None:
            self.attrs.pop(key)

    # -- entries ---------------------------------------------------------------------------------------

    def get_entry(self, parent: BackingKey, name: bytes) -> Any:
        """The child's backing key, NEGATIVE, or MISSING."""
        return self.entries.get((parent, name))

    def put_entry(self, parent: BackingKey, name: bytes, st: os.stat_result) -> None:
        self.entries.put((parent, name), (st.st_dev, st.st_ino), self.config.entry_ttl)
        self.put_attr(st)

    def put_negative(self, parent: BackingKey, name: bytes) -> None:
        self.entries.put((parent, name), NEGATIVE, self.config.negative_ttl)

    def drop_entry(self, parent: BackingKey | None, name: bytes) -> None:
        if parent is not None:
            self.entries.pop((parent, name))

    # -- listings --------------------------------------------------------------------------------------

    def get_listing(self, directory: BackingKey, stamp: Any = None) -> tuple[bytes, ...]:
        """The names, or MISSING. With `stamp` (the directory's (mtime_ns, ctime_ns) now), a listing taken
        at another stamp is stale: the directory changed, or its inode number now names a new directory."""
        item: Any = self.listings.peek(directory)
        if item is not MISSING and stamp is not None and item[1] is not None and item[1] != stamp:
            self.listings.pop(directory)
        item = self.listings.get(directory)
        return MISSING if item is MISSING else item[0]

    def put_listing(self, directory: BackingKey, names: Iterable[bytes], stamp: Any = None) -> None:
        self.listings.put(directory, (tuple(names), stamp), self.config.dir_ttl)

    def drop_listing(self, directory: BackingKey | None) -> None:
        if directory is not None:
            self.listings.pop(directory)

    def directory_changed(self, directory: BackingKey | None) -> None:
        """Something was added to or removed from a directory: its listing and its times are stale."""
        self.changes += 1
        self.drop_listing(directory)
        self.drop_attr(directory)

    # -- absent extended attributes ----------------------------------------------------------------------

    def xattr_absent(self, key: BackingKey, name: bytes) -> bool:
        return self.no_xattrs.get((key, name)) is True

    def put_xattr_absent(self, key: BackingKey, name: bytes) -> None:
        self.no_xattrs.put((key, name), True, self.config.attr_ttl)

    def drop_xattrs(self, key: BackingKey | None) -> None:
        if key is not None:
            self.no_xattrs.pop_where(lambda k: k[0] == key)  # type: ignore[index]

    # -- invalidation ----------------------------------------------------------------------------------

    def invalidate_tree(self, top: BackingKey) -> tuple[set[BackingKey], list[tuple[BackingKey, bytes]]]:
        """Drop everything known under directory or file `top`, as far as the cached listings reach.

        Returns the backing keys dropped and the (parent, name) entries dropped, so that the caller can
        tell the kernel to forget them too.
        """
        keys: set[BackingKey] = {top}
        todo = [top]
        while todo:
            directory = todo.pop()
            item = self.listings.peek(directory)
            candidates = item[0] if item is not MISSING else ()
            for name in candidates:
                child = self.entries.peek((directory, name))
                if child is not MISSING and child is not NEGATIVE and child not in keys:
                    keys.add(child)
                    todo.append(child)
        dropped_entries = [k for k in list(self.entries._items) if k[0] in keys]  # type: ignore[index]
        for k in dropped_entries:
            self.entries.pop(k)
        for key in keys:
            self.attrs.pop(key)
            self.listings.pop(key)
        self.no_xattrs.pop_where(lambda k: k[0] in keys)  # type: ignore[index]
        return keys, dropped_entries  # type: ignore[return-value]

    def clear(self) -> None:
        self.attrs.clear()
        self.entries.clear()
        self.listings.clear()
        self.no_xattrs.clear()

    def statistics(self) -> dict[str, dict[str, int]]:
        return {c.name: c.statistics() for c in (self.attrs, self.entries, self.listings, self.no_xattrs)}
