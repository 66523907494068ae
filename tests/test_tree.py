"""The filesystem core without FUSE: a temp folder is the 'share', requests are plain method calls."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
import trio

from fsbridge.fs.cache import CacheConfig
from fsbridge.fs.inodes import ROOT_INODE
from fsbridge.fs.tree import INVALIDATE_XATTR, STATS_XATTR, BridgeTree, Caller


def make_tree(share: Path, **cache: Any) -> BridgeTree:
    return BridgeTree([("/Users/me", str(share))], cache=CacheConfig(**cache))


async def walk_to(tree: BridgeTree, *names: str) -> int:
    ino = ROOT_INODE
    for name in names:
        node, _ = await tree.lookup(ino, name.encode())
        ino = node.ino
    return ino


async def list_dir(tree: BridgeTree, ino: int) -> list[bytes]:
    fh = await tree.opendir(ino)
    names: list[bytes] = []
    await tree.readdir(fh, 0, lambda name, node, attr, nxt: names.append(name) or True)
    await tree.releasedir(fh)
    return names


@pytest.fixture
def share(tmp_path: Path) -> Path:
    root = tmp_path / "share"
    for d in range(3):
        (root / f"d{d}").mkdir(parents=True)
        for f in range(5):
            (root / f"d{d}" / f"f{f}").write_text(f"{d}.{f}")
    return root


def test_virtual_folders_lead_to_the_mapping_root(share: Path) -> None:
    async def main() -> None:
        tree = make_tree(share)
        assert await list_dir(tree, ROOT_INODE) == [b"Users"]
        users = await walk_to(tree, "Users")
        assert await list_dir(tree, users) == [b"me"]
        attr = await tree.getattr(users)
        assert attr.st_mode & 0o777 == 0o555
        me = await walk_to(tree, "Users", "me")
        assert sorted(await list_dir(tree, me)) == [b"d0", b"d1", b"d2"]
        with pytest.raises(OSError) as e:
            await tree.mkdir(users, b"new", 0o755, Caller())
        assert e.value.errno == errno.EROFS
        with pytest.raises(FileNotFoundError):
            await tree.lookup(users, b"nobody")
        tree.close()

    trio.run(main)


def test_a_listing_fetches_attributes_once_and_lookups_then_hit_the_cache(share: Path) -> None:
    async def main() -> None:
        tree = make_tree(share)
        d1 = await walk_to(tree, "Users", "me", "d1")
        before = dict(tree.backing.calls)
        assert len(await list_dir(tree, d1)) == 5
        after = dict(tree.backing.calls)
        assert after.get("readdir", 0) - before.get("readdir", 0) == 1
        assert after["lstat"] - before["lstat"] == 5
        # every entry of the listing is now known: lookups and a second listing cost nothing
        calls = sum(tree.backing.calls.values())
        for f in range(5):
            await tree.lookup(d1, f"f{f}".encode())
        await list_dir(tree, d1)
        assert sum(tree.backing.calls.values()) == calls
        tree.close()

    trio.run(main)


def test_negative_entries_are_cached_until_something_is_created(share: Path) -> None:
    async def main() -> None:
        tree = make_tree(share)
        d0 = await walk_to(tree, "Users", "me", "d0")
        with pytest.raises(FileNotFoundError):
            await tree.lookup(d0, b"later")
        calls = sum(tree.backing.calls.values())
        with pytest.raises(FileNotFoundError):
            await tree.lookup(d0, b"later")
        assert sum(tree.backing.calls.values()) == calls, "second miss answered from the negative cache"
        _, _, fh = await tree.create(d0, b"later", 0o644, os.O_WRONLY, Caller())
        await tree.release(fh)
        node, attr = await tree.lookup(d0, b"later")
        assert attr.st_size == 0
        assert (share / "d0" / "later").exists()
        tree.close()

    trio.run(main)


def test_host_changes_show_after_the_ttl_or_at_once_after_invalidate(share: Path) -> None:
    async def main() -> None:
        tree = make_tree(share, attr_ttl=3600, entry_ttl=3600, dir_ttl=3600, negative_ttl=3600)
        d2 = await walk_to(tree, "Users", "me", "d2")
        assert len(await list_dir(tree, d2)) == 5
        (share / "d2" / "host-new").write_text("x")
        (share / "d2" / "f0").write_text("grown on the host")
        assert len(await list_dir(tree, d2)) == 5, "within the TTL the cached listing stands"
        f0, _ = await tree.lookup(d2, b"f0")
        assert (await tree.getattr(f0.ino)).st_size == 3
        me = await walk_to(tree, "Users", "me")
        dropped = await tree.invalidate(me)
        assert dropped > 0
        assert len(await list_dir(tree, d2)) == 6
        assert (await tree.getattr(f0.ino)).st_size == len("grown on the host")
        tree.close()

    trio.run(main)


def test_rename_keeps_the_inode_and_moves_the_subtree(share: Path) -> None:
    async def main() -> None:
        tree = make_tree(share)
        me = await walk_to(tree, "Users", "me")
        d0 = await walk_to(tree, "Users", "me", "d0")
        f3, _ = await tree.lookup(d0, b"f3")
        await tree.rename(me, b"d0", me, b"renamed")
        assert (await tree.getattr(f3.ino)).st_size == 3
        fh, _ = await tree.open(f3.ino, os.O_RDONLY)
        assert await tree.read(fh, 0, 100) == b"0.3"
        await tree.release(fh)
        with pytest.raises(FileNotFoundError):
            await tree.lookup(me, b"d0")
        renamed, _ = await tree.lookup(me, b"renamed")
        assert renamed.ino == d0
        tree.close()

    trio.run(main)


def test_open_revalidates_so_keep_cache_is_only_granted_for_unchanged_files(share: Path) -> None:
    async def main() -> None:
        tree = make_tree(share, attr_ttl=3600)
        d1 = await walk_to(tree, "Users", "me", "d1")
        f, _ = await tree.lookup(d1, b"f1")
        fh, keep = await tree.open(f.ino, os.O_RDONLY)
        await tree.release(fh)
        assert keep
        (share / "d1" / "f1").write_text("changed on the host, longer")
        fh, keep = await tree.open(f.ino, os.O_RDONLY)
        assert not keep, "a changed file must not be served from the old page cache"
        assert (await tree.getattr(f.ino)).st_size == len("changed on the host, longer")
        await tree.release(fh)
        tree.close()

    trio.run(main)


def test_control_attributes_report_statistics_and_invalidate(share: Path) -> None:
    import json

    async def main() -> None:
        tree = make_tree(share)
        me = await walk_to(tree, "Users", "me")
        await list_dir(tree, me)
        stats = json.loads(await tree.getxattr(ROOT_INODE, STATS_XATTR))
        assert stats["backing_calls"]["readdir"] == 1
        assert stats["cache"]["listings"]["size"] == 1
        result = json.loads(await tree.getxattr(me, INVALIDATE_XATTR))
        assert result["invalidated"] >= 1
        assert tree.cache.statistics()["listings"]["size"] == 0
        with pytest.raises(OSError) as e:
            await tree.setxattr(me, STATS_XATTR, b"x", 0)
        assert e.value.errno == errno.EPERM
        tree.close()

    trio.run(main)


def test_the_share_is_held_by_a_descriptor_so_a_swapped_root_path_is_not_followed(tmp_path: Path, share: Path) -> None:
    async def main() -> None:
        tree = BridgeTree([("/", str(share))], cache=CacheConfig.disabled())
        # The share is reached through the descriptor opened at start: renaming the folder away and
        # putting another one in its place does not redirect the mount.
        share.rename(tmp_path / "moved-away")
        (tmp_path / "share").mkdir()
        assert sorted(await list_dir(tree, ROOT_INODE)) == [b"d0", b"d1", b"d2"]
        tree.close()

    trio.run(main)


def test_mapping_at_root_cannot_be_combined(share: Path) -> None:
    with pytest.raises(ValueError):
        BridgeTree([("/", str(share)), ("/x", str(share))])


def test_a_reopen_checks_attributes_and_opens_the_share_only_for_reads_that_miss_the_page_cache(
        share: Path) -> None:
    async def main() -> None:
        tree = make_tree(share)
        d0 = await walk_to(tree, "Users", "me", "d0")
        f, _ = await tree.lookup(d0, b"f2")
        fh, _ = await tree.open(f.ino, os.O_RDONLY)  # the first open: opened on the share at once
        assert await tree.read(fh, 0, 100) == b"0.2"
        await tree.release(fh)
        calls = dict(tree.backing.calls)
        fh, keep = await tree.open(f.ino, os.O_RDONLY)
        assert keep
        assert tree.backing.calls["lstat"] == calls["lstat"] + 1, "close-to-open: the attributes are checked"
        assert tree.backing.calls["open"] == calls["open"], "but nothing is opened on the share yet"
        await tree.release(fh)  # never read (the page cache served it): nothing to close either
        assert tree.backing.calls["close"] == calls["close"]
        fh, _ = await tree.open(f.ino, os.O_RDONLY)
        assert await tree.read(fh, 0, 100) == b"0.2"  # a read that reaches the daemon opens the file
        assert tree.backing.calls["open"] == calls["open"] + 1
        await tree.release(fh)
        tree.close()

    trio.run(main)
