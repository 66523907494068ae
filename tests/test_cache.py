"""The metadata cache on its own: TTLs, LRU bounds, weights, statistics, subtree invalidation."""

from __future__ import annotations

import os

from fsbridge.fs.cache import MISSING, NEGATIVE, CacheConfig, MetadataCache, TTLCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fake_stat(dev: int, ino: int, size: int = 0) -> os.stat_result:
    return os.stat_result((0o100644, ino, dev, 1, 0, 0, size, 0, 0, 0))


def test_items_expire_after_their_ttl() -> None:
    clock = Clock()
    cache: TTLCache[str] = TTLCache("t", 10, clock=clock)
    cache.put("a", "x", ttl=5)
    assert cache.get("a") == "x"
    clock.now += 4.9
    assert cache.get("a") == "x"
    clock.now += 0.2
    assert cache.get("a") is MISSING
    assert cache.statistics()["expired"] == 1
    assert cache.statistics()["hits"] == 2
    assert cache.statistics()["misses"] == 1
    assert len(cache) == 0


def test_least_recently_used_item_is_evicted_first() -> None:
    cache: TTLCache[int] = TTLCache("t", 3, clock=Clock())
    for k in "abc":
        cache.put(k, 1, ttl=60)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("d", 1, ttl=60)
    assert cache.peek("b") is MISSING
    assert cache.peek("a") == 1 and cache.peek("c") == 1 and cache.peek("d") == 1
    assert cache.statistics()["evictions"] == 1


def test_weighted_capacity_bounds_names_not_listings() -> None:
    cache: TTLCache[tuple[bytes, ...]] = TTLCache("l", 10, weigh=lambda v: len(v) + 1, clock=Clock())
    cache.put("d1", (b"a", b"b", b"c"), ttl=60)  # weight 4
    cache.put("d2", (b"a", b"b", b"c", b"d"), ttl=60)  # weight 5
    assert cache.statistics()["weight"] == 9
    cache.put("d3", (b"x",), ttl=60)  # weight 2: d1 must go
    assert cache.peek("d1") is MISSING
    assert cache.statistics()["weight"] == 7
    cache.put("huge", tuple(b"n%d" % i for i in range(20)), ttl=60)  # larger than the whole cache
    assert cache.peek("huge") is MISSING
    assert cache.peek("d2") is not MISSING


def test_zero_ttl_stores_nothing() -> None:
    cache = MetadataCache(CacheConfig.disabled(), clock=Clock())
    st = fake_stat(1, 2)
    cache.put_entry((1, 1), b"f", st)
    cache.put_negative((1, 1), b"g")
    cache.put_listing((1, 1), [b"f"])
    assert cache.get_entry((1, 1), b"f") is MISSING
    assert cache.get_entry((1, 1), b"g") is MISSING
    assert cache.get_attr((1, 2)) is MISSING
    assert cache.get_listing((1, 1)) is MISSING


def test_negative_entries_have_their_own_ttl() -> None:
    clock = Clock()
    cache = MetadataCache(CacheConfig(negative_ttl=2, entry_ttl=30), clock=clock)
    cache.put_negative((1, 1), b"missing")
    cache.put_entry((1, 1), b"present", fake_stat(1, 5))
    assert cache.get_entry((1, 1), b"missing") is NEGATIVE
    clock.now += 3
    assert cache.get_entry((1, 1), b"missing") is MISSING
    assert cache.get_entry((1, 1), b"present") == (1, 5)


def test_invalidate_tree_drops_everything_below_a_directory_and_nothing_else() -> None:
    cache = MetadataCache(CacheConfig(), clock=Clock())
    root, sub, other = (1, 1), (1, 2), (1, 9)
    cache.put_attr(fake_stat(*root))
    cache.put_entry(root, b"sub", fake_stat(*sub))
    cache.put_listing(root, [b"sub"])
    cache.put_entry(sub, b"f", fake_stat(1, 3))
    cache.put_negative(sub, b"nope")
    cache.put_listing(sub, [b"f"])
    cache.put_entry(other, b"g", fake_stat(1, 10))
    cache.put_xattr_absent((1, 3), b"security.capability")

    keys, entries = cache.invalidate_tree(sub)

    assert keys == {sub, (1, 3)}
    assert set(entries) == {(sub, b"f"), (sub, b"nope")}
    assert cache.get_listing(sub) is MISSING
    assert cache.get_entry(sub, b"nope") is MISSING
    assert cache.get_attr((1, 3)) is MISSING
    assert not cache.xattr_absent((1, 3), b"security.capability")
    # outside the subtree: untouched
    assert cache.get_entry(other, b"g") == (1, 10)
    assert cache.get_listing(root) == (b"sub",)
    assert cache.get_attr(root) is not MISSING


def test_statistics_name_every_kind() -> None:
    stats = MetadataCache(CacheConfig()).statistics()
    assert set(stats) == {"attrs", "entries", "listings", "no_xattrs"}
    assert stats["attrs"]["capacity"] == CacheConfig().max_attrs
