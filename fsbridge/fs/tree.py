"""What the bridged tree looks like: the filesystem core behind the FUSE adapter.

The tree shows every mapping's host folder at its host path (``/Users/me`` at ``/Users/me``, ``C:\\x`` at
``/c/x``); the folders above a mapping root are virtual and read-only. Below a root every operation is a
passthrough to the backing share, answered from the metadata cache where a fresh answer is known.

Coherence assumption (docs/cache-coherence.md has the whole model): changes made through this mount
update or drop the cached facts at once; changes made on the host become visible when the TTLs run out,
or at once after ``fsbridge invalidate``. Opening a file always asks the share for fresh attributes
(close-to-open consistency, as NFS does), so a reader never sees stale contents from the page cache.

Mapping roots are reached through an O_PATH descriptor opened at start (``/proc/self/fd/N/...``): a share
swapped or lazily unmounted underneath keeps answering from the share we started with, and nothing
outside the share can be reached by replacing the root path with a symlink.

Concurrency: all methods run on the trio thread; only syscalls run in worker threads (backing.py). The
tables are updated after the await that fetched their facts, in one synchronous step, so every update
is atomic with respect to other requests. Methods raise OSError; the adapter maps it to an errno.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat as stat_mod
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol

import trio

from fsbridge.fs import backing as bk
from fsbridge.fs.backing import Backing
from fsbridge.fs.cache import MISSING, NEGATIVE, CacheConfig, MetadataCache
from fsbridge.fs.inodes import ROOT_INODE, InodeTable, Node

log = logging.getLogger(__name__)

CONTROL_PREFIX = b"user.fsbridge."
STATS_XATTR = b"user.fsbridge.stats"
INVALIDATE_XATTR = b"user.fsbridge.invalidate"

# The fixed part of the tree never changes while mounted, so the kernel may keep it for an hour.
VIRTUAL_TTL = 3600.0

# errnos that mean "the share itself is gone" are reported as EIO, not as a confusing socket error
_SHARE_GONE = {errno.ENOTCONN, errno.ESHUTDOWN, errno.ECONNABORTED, errno.ECONNRESET, errno.EPIPE}


class KernelNotifier(Protocol):
    """Tells the kernel to forget what it cached (implemented by the FUSE adapter)."""

    async def invalidate_inode(self, ino: int) -> None: ...

    async def invalidate_entry(self, parent_ino: int, name: bytes) -> None: ...


class NoKernel:
    async def invalidate_inode(self, ino: int) -> None:
        return None

    async def invalidate_entry(self, parent_ino: int, name: bytes) -> None:
        return None


@dataclass
class VirtualAttr:
    """Attributes of a virtual folder (duck-types os.stat_result for the fields FUSE needs)."""

    st_mode: int
    st_nlink: int
    st_mtime_ns: int
    st_uid: int = 0
    st_gid: int = 0
    st_rdev: int = 0
    st_size: int = 0
    st_blksize: int = 4096
    st_blocks: int = 0
    st_dev: int = 0
    st_ino: int = 0

    @property
    def st_atime_ns(self) -> int:
        return self.st_mtime_ns

    @property
    def st_ctime_ns(self) -> int:
        return self.st_mtime_ns


@dataclass
class Caller:
    """Who asks (from the FUSE request context): new files get this owner when the daemon is root."""

    uid: int = 0
    gid: int = 0


@dataclass
class FileHandle:
    node: Node
    fd: int  # -1 until the first read of a read-only handle (see BridgeTree.open)
    path: bytes = b""
    flags: int = 0


@dataclass
class DirHandle:
    node: Node
    # snapshot taken at the first readdir: (name, attrs), attrs None for a name found gone since
    entries: list[tuple[bytes, Any]] | None = None
    changes: int = 0  # MetadataCache.changes when the snapshot was last checked


Attr = Any  # os.stat_result or VirtualAttr
ReplyFn = Callable[[bytes, Node, Attr, int], bool]  # (name, node, attrs, next position) -> fits?


def _closing_first(fds: list[int], fn: Callable[..., Any], args: tuple[Any, ...]) -> Callable[[], Any]:
    def run() -> Any:
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        return fn(*args)

    return run


def _fresh_errno(e: OSError) -> OSError:
    if e.errno in _SHARE_GONE:
        return OSError(errno.EIO, "the backing share is not reachable")
    return e


def _dir_fd_budget() -> int:
    """How many directory descriptors to hold: half of what the process may open (raised to its hard limit)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    limit = soft if soft != resource.RLIM_INFINITY else 1 << 20
    return max(0, min(limit // 2, 100_000) - 64)


class BridgeTree:
    """The filesystem core. `roots` lists (exposed path, backing folder) pairs; "/" makes the root a share."""

    def __init__(self, roots: Iterable[tuple[str, str]], *, cache: CacheConfig | None = None,
                 backing: Backing | None = None, kernel: KernelNotifier | None = None) -> None:
        self.config = cache or CacheConfig()
        self.cache = MetadataCache(self.config)
        self.backing = backing or Backing()
        self.kernel: KernelNotifier = kernel or NoKernel()
        self.table = InodeTable()
        self.as_root = os.geteuid() == 0
        self.started = time.time_ns()
        self._files: dict[int, FileHandle] = {}  # FUSE file handle -> open backing file
        self._dirs: dict[int, DirHandle] = {}  # FUSE directory handle -> listing snapshot
        self._next_fh = 1
        self._root_fds: list[int] = []
        self._dir_fds = 0  # O_PATH descriptors held by directory nodes (see _dir_fd)
        self.max_dir_fds = _dir_fd_budget()
        self.counters: dict[str, int] = {"lookups": 0, "getattrs": 0, "readdirs": 0, "opens": 0}
        self._build(list(roots))

    # -- building --------------------------------------------------------------------------------------

    def _build(self, roots: list[tuple[str, str]]) -> None:
        if not roots:
            raise ValueError("no folders to expose: give at least one mapping")
        parsed: list[tuple[list[bytes], str]] = []
        for exposed, backing_dir in roots:
            parts = [os.fsencode(p) for p in exposed.strip("/").split("/") if p]
            parsed.append((parts, backing_dir))
        parsed.sort(key=lambda item: len(item[0]))
        whole = [b for parts, b in parsed if not parts]
        if whole:
            if len(parsed) > 1:
                raise ValueError("a mapping at / cannot be combined with other mappings")
            root_path, key = self._open_root(whole[0])
            self.table.add_root(root_path=root_path, key=key)
            return
        root = self.table.add_root(root_path=None, key=None)
        for parts, backing_dir in parsed:
            node = root
            for i, part in enumerate(parts):
                if node.virtual_children is None:
                    log.info("mapping %s lies inside another mapping; served through the outer one",
                             b"/".join(parts).decode(errors="replace"))
                    break
                child = node.virtual_children.get(part)
                if child is None:
                    last = i == len(parts) - 1
                    if last:
                        root_path, key = self._open_root(backing_dir)
                        child = self.table.add_fixed(node, part, root_path=root_path, key=key)
                    else:
                        child = self.table.add_fixed(node, part, root_path=None, key=None)
                node = child

    def _open_root(self, backing_dir: str) -> tuple[bytes, tuple[int, int]]:
        fd = os.open(backing_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._root_fds.append(fd)
        st = os.fstat(fd)
        return b"/proc/self/fd/%d" % fd, (st.st_dev, st.st_ino)

    def close(self) -> None:
        for fh in list(self._files.values()):
            try:
                os.close(fh.fd)
            except OSError:
                pass
        self._files.clear()
        for node in self.table.nodes():
            if node.fd >= 0:
                self.table.dropped_fds.append(node.fd)
                node.fd = -1
        for fd in self._root_fds + self.table.dropped_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._root_fds.clear()
        self.table.dropped_fds.clear()

    # -- helpers ---------------------------------------------------------------------------------------

    def node(self, ino: int) -> Node:
        node = self.table.get(ino)
        if node is None:
            raise OSError(errno.ESTALE, "unknown inode")
        return node

    def _virtual_attr(self, node: Node) -> VirtualAttr:
        assert node.virtual_children is not None
        subdirs = len(node.virtual_children)
        return VirtualAttr(st_mode=stat_mod.S_IFDIR | 0o555, st_nlink=2 + subdirs, st_mtime_ns=self.started)

    @staticmethod
    def _writable_parent(parent: Node) -> None:
        if parent.is_virtual:
            raise OSError(errno.EROFS, "the folders above a mapping are read-only")

    async def _call(self, op: str, fn: Callable[..., Any], *args: Any, count: int = 1) -> Any:
        if self.table.dropped_fds:
            # descriptors of directories the kernel forgot: closed in the worker (on 9p a close may be a
            # round trip), before the call itself
            doomed, self.table.dropped_fds = self.table.dropped_fds, []
            self._dir_fds -= len(doomed)
            fn, args = _closing_first(doomed, fn, args), ()
        try:
            return await self.backing.run(op, fn, *args, count=count)
        except OSError as e:
            raise _fresh_errno(e) from None

    async def _dir_fd(self, directory: Node) -> None:
        """Give `directory` an O_PATH descriptor (once), so that calls below it resolve one name only."""
        if directory.fd >= 0 or directory.root_path is not None or not directory.is_dir or directory.is_virtual:
            return
        if self._dir_fds >= self.max_dir_fds or not directory.links:
            return
        path = self.table.path(directory)
        try:
            fd = await self._call("opendir", bk.open_dir_path, path)
        except OSError:
            return  # the full path still works; errors surface from the call that needs it
        st_key = fd[1]
        if directory.fd >= 0 or st_key != directory.key or self.table.get(directory.ino) is not directory:
            self.table.dropped_fds.append(fd[0])  # lost a race, or the path names another directory now
            self._dir_fds += 1
            return
        directory.fd = fd[0]
        self._dir_fds += 1

    async def _stat_path(self, path: bytes) -> os.stat_result:
        return await self._call("lstat", os.lstat, path)

    # -- attributes ------------------------------------------------------------------------------------

    async def getattr(self, ino: int) -> Attr:
        self.counters["getattrs"] += 1
        node = self.node(ino)
        if node.is_virtual:
            return self._virtual_attr(node)
        assert node.key is not None
        st = self.cache.get_attr(node.key)
        if st is not MISSING:
            return st
        if not node.links and node.root_path is None:
            fd = self._fd_of(node)
            if fd is None:
                raise OSError(errno.ENOENT, "deleted")
            st = await self._call("fstat", os.fstat, fd)
        else:
            st = await self._stat_path(self.table.path(node))
        if (st.st_dev, st.st_ino) != node.key:
            # the path now names another file (replaced on the host): this inode is gone
            raise OSError(errno.ESTALE if node.root_path is None else errno.EIO, "replaced on the share")
        self.cache.put_attr(st)
        return st

    def _fd_of(self, node: Node) -> int | None:
        for fh in self._files.values():
            if fh.node is node and fh.fd >= 0:
                return fh.fd
        return None

    async def setattr(self, ino: int, *, mode: int | None = None, uid: int | None = None,
                      gid: int | None = None, size: int | None = None, atime_ns: int | None = None,
                      mtime_ns: int | None = None, fh: int | None = None) -> Attr:
        node = self.node(ino)
        if node.is_virtual:
            raise OSError(errno.EROFS, "virtual folder")
        handle = self._files.get(fh) if fh is not None else None
        path = self.table.path(node) if (node.links or node.root_path is not None) else None
        fd = handle.fd if handle else (self._fd_of(node) if path is None else None)

        def apply() -> os.stat_result:
            if mode is not None:
                if fd is not None:
                    os.fchmod(fd, stat_mod.S_IMODE(mode))
                else:
                    os.chmod(path, stat_mod.S_IMODE(mode))  # type: ignore[arg-type]
            if uid is not None or gid is not None:
                u = -1 if uid is None else uid
                g = -1 if gid is None else gid
                if fd is not None:
                    os.fchown(fd, u, g)
                else:
                    os.chown(path, u, g, follow_symlinks=False)  # type: ignore[arg-type]
            if size is not None:
                if fd is not None:
                    os.ftruncate(fd, size)
                else:
                    os.truncate(path, size)  # type: ignore[arg-type]
            if atime_ns is not None or mtime_ns is not None:
                current = os.fstat(fd) if fd is not None else os.lstat(path)  # type: ignore[arg-type]
                times = (current.st_atime_ns if atime_ns is None else atime_ns,
                         current.st_mtime_ns if mtime_ns is None else mtime_ns)
                if fd is not None:
                    os.utime(fd, ns=times)
                else:
                    os.utime(path, ns=times, follow_symlinks=False)  # type: ignore[arg-type]
            return os.fstat(fd) if fd is not None else os.lstat(path)  # type: ignore[arg-type]

        if path is None and fd is None:
            raise OSError(errno.ENOENT, "deleted")
        try:
            st = await self._call("setattr", apply)
        finally:
            self.cache.drop_attr(node.key)
            self.cache.drop_xattrs(node.key)  # chmod rewrites the ACL attributes
        self.cache.put_attr(st)
        return st

    # -- names -----------------------------------------------------------------------------------------

    async def lookup(self, parent_ino: int, name: bytes) -> tuple[Node, Attr]:
        """Resolve parent/name; counts one kernel lookup on success. FileNotFoundError when absent."""
        self.counters["lookups"] += 1
        parent = self.node(parent_ino)
        if parent.is_virtual:
            assert parent.virtual_children is not None
            child = parent.virtual_children.get(name)
            if child is None:
                raise FileNotFoundError(errno.ENOENT, "not in this folder")
            attr = await self.getattr(child.ino)
            self.table.remember(child)
            return child, attr
        assert parent.key is not None
        known = self.cache.get_entry(parent.key, name)
        if known is NEGATIVE:
            raise FileNotFoundError(errno.ENOENT, "no such entry (cached)")
        if known is not MISSING:
            st = self.cache.get_attr(known)
            if st is not MISSING:
                child = self.table.link(parent, name, st)
                self.table.remember(child)
                return child, st
        await self._dir_fd(parent)
        path = self.table.child_path(parent, name)
        try:
            st = await self._stat_path(path)
        except FileNotFoundError:
            self.cache.put_negative(parent.key, name)
            gone = parent.kids.get(name)
            if gone is not None:  # removed or renamed on the host: paths must not lead through it
                self.table.unlink(parent, name, gone)
            raise
        self.cache.put_entry(parent.key, name, st)
        child = self.table.link(parent, name, st)
        self.table.remember(child)
        return child, st

    def forget(self, items: Iterable[tuple[int, int]]) -> None:
        for ino, count in items:
            self.table.forget(ino, count)

    def _child(self, parent: Node, name: bytes) -> Node:
        child = parent.kids.get(name)
        if child is None:
            raise OSError(errno.ENOENT, "not looked up")
        return child

    def _created(self, parent: Node, name: bytes, st: os.stat_result, *, made: bool = True) -> Node:
        """Record parent/name -> st after mkdir, create, mknod, symlink (made) or link (not made)."""
        assert parent.key is not None
        self.cache.directory_changed(parent.key)
        if made:  # facts about an earlier file with the same (reused) inode number are not about this one
            self.cache.drop_listing((st.st_dev, st.st_ino))
            self.cache.drop_xattrs((st.st_dev, st.st_ino))
        self.cache.put_entry(parent.key, name, st)
        node = self.table.link(parent, name, st, made=made)
        self.table.remember(node)
        return node

    def _owner_for(self, parent_attr: Attr, caller: Caller) -> tuple[int, int]:
        """uid/gid to give a new file when the daemon runs as root on behalf of another user."""
        gid = -1 if parent_attr.st_mode & stat_mod.S_ISGID else caller.gid
        return caller.uid, gid

    async def _make(self, op: str, parent_ino: int, name: bytes, caller: Caller,
                    make: Callable[[bytes], Any], *, is_link: bool = False) -> tuple[Node, os.stat_result, Any]:
        parent = self.node(parent_ino)
        self._writable_parent(parent)
        await self._dir_fd(parent)
        path = self.table.child_path(parent, name)
        owner: tuple[int, int] | None = None
        if self.as_root and (caller.uid != 0 or caller.gid != 0):
            owner = self._owner_for(await self.getattr(parent_ino), caller)

        def run() -> tuple[os.stat_result, Any]:
            result = make(path)
            if owner is not None:
                os.chown(path, owner[0], owner[1], follow_symlinks=False)
            return os.lstat(path), result

        try:
            st, result = await self._call(op, run)
        except OSError:
            self.cache.directory_changed(parent.key)
            self.cache.drop_entry(parent.key, name)
            raise
        return self._created(parent, name, st), st, result

    async def mkdir(self, parent_ino: int, name: bytes, mode: int, caller: Caller) -> tuple[Node, Attr]:
        node, st, _ = await self._make("mkdir", parent_ino, name, caller, lambda p: os.mkdir(p, mode))
        return node, st

    async def mknod(self, parent_ino: int, name: bytes, mode: int, rdev: int, caller: Caller) -> tuple[Node, Attr]:
        node, st, _ = await self._make("mknod", parent_ino, name, caller, lambda p: os.mknod(p, mode, rdev))
        return node, st

    async def symlink(self, parent_ino: int, name: bytes, target: bytes, caller: Caller) -> tuple[Node, Attr]:
        node, st, _ = await self._make("symlink", parent_ino, name, caller, lambda p: os.symlink(target, p))
        return node, st

    async def create(self, parent_ino: int, name: bytes, mode: int, flags: int,
                     caller: Caller) -> tuple[Node, Attr, int]:
        flags = (flags | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW) & ~os.O_NOCTTY
        node, st, fd = await self._make("create", parent_ino, name, caller,
                                        lambda p: os.open(p, flags, stat_mod.S_IMODE(mode)))
        return node, st, self._new_file(node, fd)

    async def link(self, ino: int, new_parent_ino: int, new_name: bytes) -> tuple[Node, Attr]:
        node = self.node(ino)
        new_parent = self.node(new_parent_ino)
        self._writable_parent(new_parent)
        if node.is_virtual:
            raise OSError(errno.EPERM, "virtual folder")
        src = self.table.path(node)
        dst = self.table.child_path(new_parent, new_name)

        def run() -> os.stat_result:
            os.link(src, dst, follow_symlinks=False)
            return os.lstat(dst)

        try:
            st = await self._call("link", run)
        finally:
            self.cache.directory_changed(new_parent.key)
            self.cache.drop_entry(new_parent.key, new_name)
        return self._created(new_parent, new_name, st, made=False), st

    async def readlink(self, ino: int) -> bytes:
        node = self.node(ino)
        if node.is_virtual:
            raise OSError(errno.EINVAL, "not a symlink")
        return await self._call("readlink", os.readlink, self.table.path(node))

    async def _remove(self, op: str, parent_ino: int, name: bytes, fn: Callable[[bytes], None]) -> None:
        parent = self.node(parent_ino)
        self._writable_parent(parent)
        path = self.table.child_path(parent, name)
        child = parent.kids.get(name)
        try:
            await self._call(op, fn, path)
        finally:
            self.cache.directory_changed(parent.key)
            self.cache.drop_entry(parent.key, name)
            if child is not None:
                self.cache.drop_attr(child.key)
                self.cache.drop_listing(child.key)
        assert parent.key is not None
        self.cache.put_negative(parent.key, name)
        if child is not None:
            self.table.unlink(parent, name, child)

    async def unlink(self, parent_ino: int, name: bytes) -> None:
        await self._remove("unlink", parent_ino, name, os.unlink)

    async def rmdir(self, parent_ino: int, name: bytes) -> None:
        await self._remove("rmdir", parent_ino, name, os.rmdir)

    async def rename(self, old_parent_ino: int, old_name: bytes, new_parent_ino: int, new_name: bytes,
                     flags: int = 0) -> None:
        old_parent = self.node(old_parent_ino)
        new_parent = self.node(new_parent_ino)
        self._writable_parent(old_parent)
        self._writable_parent(new_parent)
        src = self.table.child_path(old_parent, old_name)
        dst = self.table.child_path(new_parent, new_name)
        moved = old_parent.kids.get(old_name)
        target = new_parent.kids.get(new_name)
        try:
            await self._call("rename", bk.renameat2, src, dst, flags)
        finally:
            for parent, name in ((old_parent, old_name), (new_parent, new_name)):
                self.cache.directory_changed(parent.key)
                self.cache.drop_entry(parent.key, name)
            for n in (moved, target):
                if n is not None:
                    self.cache.drop_attr(n.key)
        if flags & bk.RENAME_EXCHANGE:
            if moved is not None:
                self.table.move(moved, old_parent, old_name, new_parent, new_name)
            if target is not None:
                self.table.move(target, new_parent, new_name, old_parent, old_name)
            return
        if target is not None and target is not moved:
            self.table.unlink(new_parent, new_name, target)
        if moved is not None:
            self.table.move(moved, old_parent, old_name, new_parent, new_name)
        assert old_parent.key is not None
        self.cache.put_negative(old_parent.key, old_name)

    # -- files -----------------------------------------------------------------------------------------

    def _new_file(self, node: Node, fd: int, path: bytes = b"", flags: int = 0) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._files[fh] = FileHandle(node, fd, path, flags)
        return fh

    async def open(self, ino: int, flags: int) -> tuple[int, bool]:
        """Open a file; returns (handle, keep_cache).

        Close-to-open consistency: the share's attributes are checked on every open, and the kernel keeps
        its cached pages only if size and mtime are unchanged. The first open of a file opens it on the
        share at once (its pages are not cached yet: the reads will need it). A later read-only open only
        checks the attributes: the backing file is opened at the first read that misses the page cache, so
        re-reading a file the kernel still caches costs one attribute check and no open or close.
        """
        self.counters["opens"] += 1
        node = self.node(ino)
        if node.is_virtual:
            raise OSError(errno.EISDIR, "virtual folder")
        assert node.key is not None
        # O_TRUNC stays: with FUSE's atomic_o_trunc the kernel leaves the truncation to the open itself
        flags = (flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY)) | os.O_NOFOLLOW | os.O_CLOEXEC
        lazy = (flags & os.O_ACCMODE) == os.O_RDONLY and not flags & os.O_TRUNC and node.opened
        node.opened = True
        await self._dir_fd(self._parent_of(node))
        path = self.table.path(node)
        before = self.cache.attrs.peek(node.key)
        if lazy:
            st = await self._stat_path(path)
            fd = -1
        else:
            def run() -> tuple[int, os.stat_result]:
                fd = os.open(path, flags)
                try:
                    return fd, os.fstat(fd)
                except BaseException:
                    os.close(fd)
                    raise

            fd, st = await self._call("open", run)
        if (st.st_dev, st.st_ino) != node.key:
            if fd >= 0:
                await self._call("close", os.close, fd)
            raise OSError(errno.ESTALE, "replaced on the share")
        unchanged = (before is not MISSING and before.st_size == st.st_size
                     and before.st_mtime_ns == st.st_mtime_ns)
        self.cache.put_attr(st)
        fh = self._new_file(node, fd, path, flags)
        if not unchanged:
            # keep_cache=False only drops the kernel's pages; it still believes its old size (from a lookup,
            # or from a short read) and would cut reads there: make it fetch the fresh attributes
            await self.kernel.invalidate_inode(node.ino)
        return fh, unchanged

    def _parent_of(self, node: Node) -> Node:
        return next(reversed(node.links))[0] if node.links else node

    def _handle(self, fh: int) -> FileHandle:
        handle = self._files.get(fh)
        if handle is None:
            raise OSError(errno.EBADF, "unknown file handle")
        return handle

    async def _backing_fd(self, handle: FileHandle) -> int:
        """The handle's descriptor on the share, opened now if the open was deferred."""
        if handle.fd < 0:
            flags = handle.flags

            def run() -> tuple[int, os.stat_result]:
                fd = os.open(handle.path, flags)
                try:
                    return fd, os.fstat(fd)
                except BaseException:
                    os.close(fd)
                    raise

            fd, st = await self._call("open", run)
            if handle.fd >= 0 or (st.st_dev, st.st_ino) != handle.node.key:
                await self._call("close", os.close, fd)
                if handle.fd < 0:
                    raise OSError(errno.ESTALE, "replaced on the share since it was opened")
            else:
                handle.fd = fd
        return handle.fd

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        handle = self._handle(fh)
        fd = await self._backing_fd(handle)
        return await self._call("read", os.pread, fd, size, offset)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        handle = self._handle(fh)
        fd = await self._backing_fd(handle)
        try:
            return await self._call("write", os.pwrite, fd, data, offset)
        finally:
            self.cache.drop_attr(handle.node.key)

    async def flush(self, fh: int) -> None:
        self._handle(fh)

    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self._handle(fh)
        if handle.fd >= 0:  # a handle that never reached the share has nothing to sync
            await self._call("fsync", os.fdatasync if datasync else os.fsync, handle.fd)

    async def release(self, fh: int) -> None:
        handle = self._files.pop(fh, None)
        if handle is not None and handle.fd >= 0:
            await self.backing.run("close", os.close, handle.fd)

    # -- directories -----------------------------------------------------------------------------------

    async def opendir(self, ino: int) -> int:
        node = self.node(ino)
        if not node.is_dir:
            raise OSError(errno.ENOTDIR, "not a directory")
        fh = self._next_fh
        self._next_fh += 1
        self._dirs[fh] = DirHandle(node)
        return fh

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    async def readdir(self, fh: int, start: int, reply: ReplyFn) -> None:
        """Send entries from position `start` of the handle's snapshot through `reply` until it says full.

        Positions index a snapshot taken once per open directory handle, so a directory that changes
        while it is being listed never makes an entry skip or repeat within that listing. The kernel
        releases the directory between two readdir calls: if anything changed through the mount in
        between, the names not sent yet are checked again, because a name sent with the attributes of
        a file removed since would come back to life in the kernel's dentry cache (and in our table).
        """
        handle = self._dirs.get(fh)
        if handle is None:
            raise OSError(errno.EBADF, "unknown directory handle")
        if handle.entries is None or start == 0:
            self.counters["readdirs"] += 1
            handle.changes = self.cache.changes
            handle.entries = await self._list(handle.node)
        elif handle.changes != self.cache.changes and not handle.node.is_virtual:
            handle.changes = self.cache.changes
            rest = [name for name, attr in handle.entries[start:] if attr is not None]
            try:
                fresh = await self._attrs_of(handle.node, rest)
            except FileNotFoundError:  # the directory itself was removed: so were its names
                fresh = {}
            handle.entries[start:] = [(name, fresh.get(name)) for name, _ in handle.entries[start:]]
        directory = handle.node
        for index in range(start, len(handle.entries)):
            name, attr = handle.entries[index]
            if attr is None:
                continue
            if directory.is_virtual:
                assert directory.virtual_children is not None
                child = directory.virtual_children[name]
            else:
                child = self.table.link(directory, name, attr)
            if not reply(name, child, attr, index + 1):
                self.table.collect(child)
                return
            self.table.remember(child)

    async def _list(self, directory: Node) -> list[tuple[bytes, Attr]]:
        if directory.is_virtual:
            assert directory.virtual_children is not None
            out = []
            for name, child in directory.virtual_children.items():
                out.append((name, await self.getattr(child.ino)))
            return out
        assert directory.key is not None
        await self._dir_fd(directory)
        path = self.table.path(directory)
        # A cached listing counts only while the directory's times are those it was listed at: inode
        # numbers are reused, and a new directory must never show the names of a removed one.
        known = self.cache.attrs.peek(directory.key)
        stamp = None if known is MISSING else (known.st_mtime_ns, known.st_ctime_ns)
        names = self.cache.get_listing(directory.key, stamp)
        if names is MISSING:
            names = tuple(await self._call("readdir", bk.scandir_names, path))
            self.cache.put_listing(directory.key, names, stamp)
        attrs = await self._attrs_of(directory, names)
        return [(name, attrs[name]) for name in names if name in attrs]

    async def _attrs_of(self, directory: Node, names: Iterable[bytes]) -> dict[bytes, Attr]:
        """The attributes of names in a directory: cached where known, the rest fetched; gone names left out."""
        assert directory.key is not None
        attrs: dict[bytes, Attr] = {}
        missing: list[bytes] = []
        for name in names:
            key = self.cache.get_entry(directory.key, name)
            st = self.cache.get_attr(key) if key is not MISSING and key is not NEGATIVE else MISSING
            if st is MISSING:
                missing.append(name)
            else:
                attrs[name] = st
        if missing:
            await self._fetch_attrs(directory, missing, attrs)
        return attrs

    async def _fetch_attrs(self, directory: Node, names: list[bytes], out: dict[bytes, Attr]) -> None:
        """lstat many names at once: one batch per worker thread, all batches in parallel."""
        assert directory.key is not None
        path = self.table.dir_prefix(directory)
        workers = max(1, min(int(self.backing.limiter.total_tokens), len(names)))
        size = -(-len(names) // workers)
        batches = [names[i:i + size] for i in range(0, len(names), size)]
        results: list[list[os.stat_result | OSError]] = [[] for _ in batches]

        async def fetch(i: int) -> None:
            results[i] = await self._call("lstat", bk.lstat_many, path, batches[i], count=len(batches[i]))

        async with trio.open_nursery() as nursery:
            for i in range(len(batches)):
                nursery.start_soon(fetch, i)
        for batch, stats in zip(batches, results):
            for name, st in zip(batch, stats):
                if isinstance(st, OSError):
                    if isinstance(st, FileNotFoundError):
                        self.cache.put_negative(directory.key, name)  # vanished since listed
                    continue
                self.cache.put_entry(directory.key, name, st)
                out[name] = st

    # -- file system ------------------------------------------------------------------------------------

    def _any_root_path(self) -> bytes:
        root = self.table[ROOT_INODE]
        while root.root_path is None:
            assert root.virtual_children
            root = next(iter(root.virtual_children.values()))
        return root.root_path

    async def statfs(self) -> os.statvfs_result:
        return await self._call("statfs", os.statvfs, self._any_root_path())

    # -- extended attributes, and the control channel ---------------------------------------------------

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        if name.startswith(CONTROL_PREFIX):
            return await self._control(ino, name)
        node = self.node(ino)
        if node.is_virtual:
            raise OSError(errno.ENODATA, "no such attribute")
        assert node.key is not None
        if self.cache.xattr_absent(node.key, name):
            raise OSError(errno.ENODATA, "no such attribute (cached)")
        path = self.table.path(node)
        try:
            return await self._call("getxattr", lambda: os.getxattr(path, name, follow_symlinks=False))
        except OSError as e:
            if e.errno == errno.ENODATA:
                self.cache.put_xattr_absent(node.key, name)
            raise

    async def setxattr(self, ino: int, name: bytes, value: bytes, flags: int) -> None:
        node = self.node(ino)
        if name.startswith(CONTROL_PREFIX) or node.is_virtual:
            raise OSError(errno.EPERM, "read-only attribute")
        path = self.table.path(node)
        try:
            await self._call("setxattr", lambda: os.setxattr(path, name, value, flags, follow_symlinks=False))
        finally:
            self.cache.drop_attr(node.key)
            self.cache.drop_xattrs(node.key)

    async def listxattr(self, ino: int) -> list[bytes]:
        node = self.node(ino)
        if node.is_virtual:
            return []
        names = await self._call("listxattr", lambda: os.listxattr(self.table.path(node), follow_symlinks=False))
        return [os.fsencode(n) for n in names]

    async def removexattr(self, ino: int, name: bytes) -> None:
        node = self.node(ino)
        if name.startswith(CONTROL_PREFIX) or node.is_virtual:
            raise OSError(errno.EPERM, "read-only attribute")
        path = self.table.path(node)
        try:
            await self._call("removexattr", lambda: os.removexattr(path, name, follow_symlinks=False))
        finally:
            self.cache.drop_attr(node.key)
            self.cache.drop_xattrs(node.key)

    async def _control(self, ino: int, name: bytes) -> bytes:
        if name == STATS_XATTR:
            return json.dumps(self.statistics(), sort_keys=True).encode()
        if name == INVALIDATE_XATTR:
            count = await self.invalidate(ino)
            return json.dumps({"invalidated": count}).encode()
        raise OSError(errno.ENODATA, "no such attribute")

    # -- invalidation and statistics --------------------------------------------------------------------

    async def invalidate(self, ino: int) -> int:
        """Forget every cached fact at and below `ino`, here and in the kernel. Returns how many."""
        node = self.node(ino)
        if node.is_virtual:
            targets = [n for n in self.table.nodes() if n.key is not None]
            count = len(self.cache.attrs) + len(self.cache.entries) + len(self.cache.listings)
            self.cache.clear()
            for n in targets:
                await self.kernel.invalidate_inode(n.ino)
            return count
        assert node.key is not None
        keys, entries = self.cache.invalidate_tree(node.key)
        for parent, name in list(node.links):
            self.cache.drop_entry(parent.key, name)
        # Nodes under this one that the kernel knows, even if our listings did not reach them:
        live = [n for n in self.table.nodes() if n.key is not None and
                (n.key in keys or self.table.is_under(n, node))]
        for n in live:
            self.cache.drop_attr(n.key)
            self.cache.drop_listing(n.key)
            await self.kernel.invalidate_inode(n.ino)
            for parent, name in list(n.links):
                if parent is not node and n is not node:
                    await self.kernel.invalidate_entry(parent.ino, name)
        for parent_key, name in entries:
            parent_node = self.table.by_key(parent_key)
            if parent_node is not None:
                await self.kernel.invalidate_entry(parent_node.ino, name)
        return len(keys) + len(entries) + len(live)

    def statistics(self) -> dict[str, Any]:
        return {
            "cache": self.cache.statistics(),
            "backing_calls": self.backing.statistics(),
            "backing_calls_total": sum(self.backing.calls.values()),
            "requests": dict(self.counters),
            "inodes": len(self.table),
            "open_files": len(self._files),
            "config": {
                "entry_ttl": self.config.entry_ttl,
                "attr_ttl": self.config.attr_ttl,
                "negative_ttl": self.config.negative_ttl,
                "dir_ttl": self.config.dir_ttl,
            },
        }

