"""The inode table: which FUSE inode number stands for which backing file, and how to reach it.

Nodes are keyed by the backing file's ``(st_dev, st_ino)`` (libfuse's passthrough_hp does the same), so
hard links share a node and a renamed file keeps its inode. A node does not store its path: it stores its
links ``(parent node, name)`` and the path is rebuilt through the parents, so renaming a directory moves
its whole subtree at once. Mapping roots carry a fixed backing path instead; virtual directories (the
folders above a mapping's root) have children but no backing file.

Lookup counts follow the FUSE contract: +1 for every entry the kernel receives (lookup, create, mkdir,
symlink, link, mknod, and readdirplus entries the kernel accepted), -n on forget. A node stays in the table
while the kernel knows it or while a live child still needs it to build its path. A negative count is a bug
and fails loudly.

All methods are synchronous and never block: they run on the trio thread only, so between two awaits
the table is consistent (no locks needed).
"""

from __future__ import annotations

import logging
import os
import stat as stat_mod
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

ROOT_INODE = 1

BackingKey = tuple[int, int]  # (st_dev, st_ino) of the backing file
_COUNTER_START = 1 << 63


@dataclass(eq=False, slots=True)  # slots: a node per file the kernel knows; 200,000 of them must stay small
class Node:
    ino: int
    key: BackingKey | None  # None for virtual directories
    root_path: bytes | None = None  # absolute backing path of a mapping root
    # links of this file: (parent node, name) -> None, in the order they were last seen to hold (an ordered
    # set); several for hard links, empty once unlinked
    links: dict[tuple["Node", bytes], None] = field(default_factory=dict)
    # children of a virtual directory: name -> node (never changes after start)
    virtual_children: dict[bytes, "Node"] | None = None
    # the live links below this directory: name -> node (what the kernel may still ask about)
    kids: dict[bytes, "Node"] = field(default_factory=dict)
    lookups: int = 0
    is_dir: bool = False
    # an O_PATH descriptor of this directory on the share, or -1: paths below it start at
    # /proc/self/fd/N, so the share resolves one name per call instead of the whole path
    fd: int = -1
    opened: bool = False  # opened through the mount before (its pages may be in the kernel's cache)

    @property
    def is_virtual(self) -> bool:
        return self.key is None

    def __repr__(self) -> str:
        return f"<Node {self.ino} key={self.key} lookups={self.lookups}>"


class InodeTable:
    """Nodes by FUSE inode number and by backing key."""

    def __init__(self) -> None:
        self._by_ino: dict[int, Node] = {}  # FUSE inode number -> node
        self._by_key: dict[BackingKey, Node] = {}  # backing (st_dev, st_ino) -> node that has links
        self._next_ino = _COUNTER_START  # for virtual folders and numbers that are taken
        self._devices: dict[int, int] = {}  # backing st_dev -> its index in the FUSE inode numbers
        self.dropped_fds: list[int] = []  # descriptors of collected directories, for the owner to close

    # -- building the fixed part: root, virtual folders, mapping roots ---------------------------------

    def add_root(self, *, root_path: bytes | None, key: BackingKey | None) -> Node:
        if root_path is None:
            node = Node(ROOT_INODE, None, virtual_children={}, is_dir=True)
        else:
            node = Node(ROOT_INODE, key, root_path=root_path, is_dir=True)
            if key is not None:
                self._by_key[key] = node
        node.lookups = 1 << 60  # the kernel never forgets the root
        self._by_ino[ROOT_INODE] = node
        return node

    def add_fixed(self, parent: Node, name: bytes, *, root_path: bytes | None, key: BackingKey | None) -> Node:
        """A virtual folder (root_path None) or a mapping root below a virtual folder; never forgotten."""
        assert parent.virtual_children is not None, "fixed nodes live under virtual folders"
        node = Node(self._new_ino(), key, root_path=root_path, is_dir=True)
        if root_path is None:
            node.virtual_children = {}
        node.lookups = 1 << 60
        parent.virtual_children[name] = node
        self._by_ino[node.ino] = node
        if key is not None:
            self._by_key.setdefault(key, node)
        return node

    # -- queries ---------------------------------------------------------------------------------------

    def __getitem__(self, ino: int) -> Node:
        return self._by_ino[ino]

    def get(self, ino: int) -> Node | None:
        return self._by_ino.get(ino)

    def by_key(self, key: BackingKey) -> Node | None:
        return self._by_key.get(key)

    def __len__(self) -> int:
        return len(self._by_ino)

    def nodes(self) -> list[Node]:
        return list(self._by_ino.values())

    @classmethod
    def path(cls, node: Node) -> bytes:
        """The backing path of a node, rebuilt through the parents of the link seen last.

        The link seen last is the one most likely to hold: a file renamed on the host keeps its node,
        and its old name stays among its links until something shows that it is gone.
        """
        if node.root_path is not None or node.fd >= 0:
            # a directory we hold: no lookup on the share at all; "/." so that lstat does not stop at the
            # /proc magic link
            return cls.dir_prefix(node) + b"/."
        parts: list[bytes] = []
        while node.root_path is None:
            if not node.links:
                raise FileNotFoundError(f"inode {node.ino} has no link left")
            parent, name = next(reversed(node.links))
            parts.append(name)
            node = parent
            if node.fd >= 0:
                parts.append(cls.dir_prefix(node))
                break
        else:
            parts.append(node.root_path)
        parts.reverse()
        return b"/".join(parts)

    @classmethod
    def child_path(cls, parent: Node, name: bytes) -> bytes:
        """The backing path of `name` in the directory `parent`.

        Joined to the held descriptor itself, not to its "/." form: on the share every "." is one more
        component to walk (a permission check, so one more round trip where attributes are not cached)."""
        return cls.dir_prefix(parent) + b"/" + name

    @classmethod
    def dir_prefix(cls, directory: Node) -> bytes:
        """What the names in `directory` are joined to: its descriptor's /proc path, or its full path."""
        if directory.root_path is not None:
            return directory.root_path
        if directory.fd >= 0:
            return b"/proc/self/fd/%d" % directory.fd
        return cls.path(directory)

    def is_under(self, node: Node, ancestor: Node) -> bool:
        """Whether node is ancestor or lies below it (through any of its links)."""
        seen: set[int] = set()
        todo = [node]
        while todo:
            n = todo.pop()
            if n is ancestor:
                return True
            if n.ino in seen:
                continue
            seen.add(n.ino)
            todo.extend(parent for parent, _ in n.links)
        return False

    # -- changes ---------------------------------------------------------------------------------------

    def link(self, parent: Node, name: bytes, st: os.stat_result, *, made: bool = False) -> Node:
        """The node for backing file `st` reached as parent/name, created if new (lookup count untouched).

        `made`: st is a file this mount has just created (mkdir, create, mknod, symlink). A node that still
        holds its key then stands for a removed file whose inode number the backing has already reused,
        e.g. while the removal's own table update still waits for its turn; it must not be reused.
        """
        key = (st.st_dev, st.st_ino)
        node = self._by_key.get(key)
        is_dir = stat_mod.S_ISDIR(st.st_mode)
        if node is not None and (node.is_dir != is_dir or (made and (is_dir or st.st_nlink <= 1))):
            # The backing inode number was reused for another file: a new identity.
            self._unkey(node)
            node = None
        if node is None:
            node = Node(self._new_ino(key), key, is_dir=stat_mod.S_ISDIR(st.st_mode))
            self._by_ino[node.ino] = node
            self._by_key[key] = node
        if node.root_path is None and parent.kids.get(name) is not node:
            if node.is_dir:
                # a directory has one name: a newer sighting replaces the old one (moved on the host)
                for old in list(node.links):
                    self._drop_link(node, old)
            self._add_link(node, parent, name)
        elif (parent, name) in node.links:  # seen again: the link to build paths through
            node.links[(parent, name)] = node.links.pop((parent, name))
        return node

    def unlink(self, parent: Node, name: bytes, node: Node) -> None:
        """parent/name no longer names node (unlink, rmdir, or the target of a rename)."""
        if (parent, name) in node.links:
            self._drop_link(node, (parent, name))
        if not node.links and node.root_path is None:
            self._unkey(node)
        self._collect(node)

    def move(self, node: Node, old_parent: Node, old_name: bytes, new_parent: Node, new_name: bytes) -> None:
        if (old_parent, old_name) in node.links:
            self._drop_link(node, (old_parent, old_name), collect=False)
        self._add_link(node, new_parent, new_name)
        self._collect(old_parent)
        if node.key is not None:
            self._by_key.setdefault(node.key, node)

    def remember(self, node: Node, count: int = 1) -> None:
        node.lookups += count

    def forget(self, ino: int, count: int) -> None:
        node = self._by_ino.get(ino)
        if node is None:
            log.error("forget of unknown inode %d", ino)
            return
        node.lookups -= count
        if node.lookups < 0:
            raise AssertionError(f"negative lookup count on {node!r}")
        self._collect(node)

    def collect(self, node: Node) -> None:
        """Drop node if nobody needs it (e.g. a readdirplus entry the kernel did not take)."""
        self._collect(node)

    # -- internals -------------------------------------------------------------------------------------

    def _new_ino(self, key: BackingKey | None = None) -> int:
        """The FUSE inode number for a new node: the backing inode number where it is free.

        Stable numbers matter: git keeps st_ino in its index and re-reads every file whose number
        changed, and the kernel forgets and re-learns inodes all the time. The first backing device
        keeps its numbers as they are; others are spread into the high bits. A number already taken (a
        reused backing number while the old file is still open, or a clash) gets one from a counter that
        starts at 2**63, where backing numbers do not reach.
        """
        if key is not None:
            dev, number = key
            index = self._devices.setdefault(dev, len(self._devices))
            candidate = number ^ (index << 56) if index else number
            if ROOT_INODE < candidate < _COUNTER_START and candidate not in self._by_ino:
                return candidate
        ino = self._next_ino
        self._next_ino += 1
        return ino

    def _unkey(self, node: Node) -> None:
        if node.key is not None and self._by_key.get(node.key) is node:
            del self._by_key[node.key]

    def _add_link(self, node: Node, parent: Node, name: bytes) -> None:
        previous = parent.kids.get(name)
        if previous is not None and previous is not node:
            # the name now stands for another file: the old one lost this link
            self._drop_link(previous, (parent, name), collect=False)
            if not previous.links:
                self._unkey(previous)
            self._collect(previous)
        node.links.pop((parent, name), None)
        node.links[(parent, name)] = None
        parent.kids[name] = node

    def _drop_link(self, node: Node, link: tuple[Node, bytes], collect: bool = True) -> None:
        node.links.pop(link, None)
        parent, name = link
        if parent.kids.get(name) is node:
            del parent.kids[name]
        if collect:
            self._collect(parent)

    def _collect(self, node: Node) -> None:
        """Remove node, and then its parents, while neither the kernel nor a child needs them."""
        todo = [node]
        while todo:
            node = todo.pop()
            if node.lookups or node.kids or node.ino == ROOT_INODE or node.root_path is not None:
                continue
            if self._by_ino.pop(node.ino, None) is None:
                continue
            self._unkey(node)
            if node.fd >= 0:
                self.dropped_fds.append(node.fd)
                node.fd = -1
            for parent, name in list(node.links):
                node.links.pop((parent, name), None)
                if parent.kids.get(name) is node:
                    del parent.kids[name]
                todo.append(parent)
