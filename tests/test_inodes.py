"""The inode table: keys, links, lookup counts, and when nodes may be dropped."""

from __future__ import annotations

import os

import pytest

from fsbridge.fs.inodes import ROOT_INODE, InodeTable


def st(ino: int, mode: int = 0o100644, dev: int = 7) -> os.stat_result:
    return os.stat_result((mode, ino, dev, 1, 0, 0, 0, 0, 0, 0))


DIR = 0o040755


@pytest.fixture
def table() -> InodeTable:
    t = InodeTable()
    t.add_root(root_path=b"/share", key=(7, 1))
    return t


def test_paths_are_rebuilt_through_parents_so_a_rename_moves_the_subtree(table: InodeTable) -> None:
    root = table[ROOT_INODE]
    a = table.link(root, b"a", st(2, DIR))
    f = table.link(a, b"f", st(3))
    table.remember(a)
    table.remember(f)
    assert table.path(f) == b"/share/a/f"
    assert table.path(root) == b"/share/."  # the root itself: "/." so lstat passes a /proc magic link
    b = table.link(root, b"b", st(4, DIR))
    table.remember(b)
    table.move(a, root, b"a", b, b"moved")
    assert table.path(f) == b"/share/b/moved/f"
    assert b"a" not in root.kids


def test_hard_links_share_one_node(table: InodeTable) -> None:
    root = table[ROOT_INODE]
    one = table.link(root, b"one", st(5))
    two = table.link(root, b"two", st(5))
    assert one is two
    assert {name for _, name in one.links} == {b"one", b"two"}
    table.remember(one, 2)
    table.unlink(root, b"one", one)
    assert table.path(one) == b"/share/two"
    assert table.by_key((7, 5)) is one


def test_forget_drops_a_node_and_then_its_unneeded_parents(table: InodeTable) -> None:
    root = table[ROOT_INODE]
    d = table.link(root, b"d", st(2, DIR))
    f = table.link(d, b"f", st(3))
    table.remember(d)
    table.remember(f, 3)
    table.forget(d.ino, 1)
    assert table.get(d.ino) is d, "a parent stays while a child needs it to build its path"
    table.forget(f.ino, 3)
    assert table.get(f.ino) is None
    assert table.get(d.ino) is None
    assert table.by_key((7, 2)) is None
    assert len(table) == 1


def test_negative_lookup_count_fails_loudly(table: InodeTable) -> None:
    f = table.link(table[ROOT_INODE], b"f", st(3))
    table.remember(f)
    with pytest.raises(AssertionError, match="negative lookup count"):
        table.forget(f.ino, 2)


def test_an_entry_the_kernel_did_not_take_is_collected(table: InodeTable) -> None:
    f = table.link(table[ROOT_INODE], b"f", st(3))
    table.collect(f)
    assert table.get(f.ino) is None


def test_unlinked_but_known_node_keeps_its_number_and_loses_its_key(table: InodeTable) -> None:
    root = table[ROOT_INODE]
    f = table.link(root, b"f", st(3))
    table.remember(f)
    table.unlink(root, b"f", f)
    assert table.get(f.ino) is f  # the kernel may still hold an open file
    assert table.by_key((7, 3)) is None  # a new file with a reused inode number gets a new node
    g = table.link(root, b"g", st(3))
    assert g is not f
    with pytest.raises(FileNotFoundError):
        table.path(f)


def test_a_name_replaced_on_the_host_points_at_the_new_file(table: InodeTable) -> None:
    root = table[ROOT_INODE]
    old = table.link(root, b"f", st(3))
    table.remember(old)
    new = table.link(root, b"f", st(9))
    assert root.kids[b"f"] is new
    assert not old.links


def test_virtual_folders_and_mapping_roots_are_never_forgotten() -> None:
    t = InodeTable()
    root = t.add_root(root_path=None, key=None)
    users = t.add_fixed(root, b"Users", root_path=None, key=None)
    me = t.add_fixed(users, b"me", root_path=b"/mnt/u", key=(1, 1))
    assert root.virtual_children == {b"Users": users}
    assert t.path(me) == b"/mnt/u/."
    f = t.link(me, b"f", st(2))
    t.collect(f)
    assert t.get(me.ino) is me and t.get(users.ino) is users


def test_names_below_a_held_directory_join_its_descriptor_not_its_dot(table: InodeTable) -> None:
    """Every "." in a backing path is one more component for the share to walk (a permission round trip
    where attributes are not cached): children join the held descriptor, only the folder itself needs "/."."""
    root = table[ROOT_INODE]
    d = table.link(root, b"d", st(2, DIR))
    table.remember(d)
    assert table.child_path(d, b"x") == b"/share/d/x"
    d.fd = 42
    assert table.child_path(d, b"x") == b"/proc/self/fd/42/x"
    assert table.path(d) == b"/proc/self/fd/42/."
    f = table.link(d, b"x", st(3))
    assert table.path(f) == b"/proc/self/fd/42/x"
    assert table.child_path(root, b"y") == b"/share/y"
    d.fd = -1  # the table closes no descriptor in this test
