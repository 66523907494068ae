"""The pyfuse3 adapter: translates FUSE requests into BridgeTree calls and back, nothing more.

Errors are translated in one place (`fuse_errors`): OSError keeps its errno, anything unexpected is
logged with its traceback and becomes EIO, so a bug never kills the daemon or leaves a dead mount.
Kernel timeouts are chosen here: entries and attributes live in the kernel as long as in our cache
(so a warm stat never reaches the daemon), negative entries are returned as ``st_ino = 0`` with the
negative TTL, and the virtual folders, which never change, for an hour.
"""

from __future__ import annotations

import errno
import logging
import os
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import pyfuse3
import trio

from fsbridge.fs.tree import VIRTUAL_TTL, BridgeTree, Caller

log = logging.getLogger(__name__)


@contextmanager
def fuse_errors(op: str) -> Iterator[None]:
    try:
        yield
    except pyfuse3.FUSEError:
        raise
    except OSError as e:
        raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
    except Exception:  # a bug: report it, answer EIO, keep serving
        log.exception("unexpected error in %s", op)
        raise pyfuse3.FUSEError(errno.EIO) from None


class KernelInvalidator:
    """Tells the kernel to drop cached inodes and entries. The notifications are written from a worker
    thread, because the kernel may wait on requests that this very trio loop has to answer."""

    async def invalidate_inode(self, ino: int) -> None:
        await trio.to_thread.run_sync(self._inode, ino)

    async def invalidate_entry(self, parent_ino: int, name: bytes) -> None:
        await trio.to_thread.run_sync(self._entry, parent_ino, name)

    @staticmethod
    def _inode(ino: int) -> None:
        try:
            pyfuse3.invalidate_inode(ino)
        except OSError as e:  # ENOENT: the kernel had already forgotten it
            log.debug("invalidate_inode(%d): %s", ino, e)

    @staticmethod
    def _entry(parent_ino: int, name: bytes) -> None:
        try:
            pyfuse3.invalidate_entry(parent_ino, name)
        except OSError as e:
            log.debug("invalidate_entry(%d, %r): %s", parent_ino, name, e)


class BridgeOperations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, tree: BridgeTree, *, direct_io: bool = False) -> None:
        super().__init__()
        self.tree = tree
        self.direct_io = direct_io  # the emulator: no page cache, every read goes to the share
        cfg = tree.config
        self.entry_ttl = cfg.entry_ttl
        self.attr_ttl = cfg.attr_ttl
        self.negative_ttl = cfg.negative_ttl

    # -- conversions -----------------------------------------------------------------------------------

    def entry(self, node: Any, st: Any) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = node.ino
        e.generation = 0
        if node.is_virtual:
            e.entry_timeout = e.attr_timeout = VIRTUAL_TTL
        else:
            e.entry_timeout = self.entry_ttl
            e.attr_timeout = self.attr_ttl
        e.st_mode = st.st_mode
        e.st_nlink = st.st_nlink
        e.st_uid = st.st_uid
        e.st_gid = st.st_gid
        e.st_rdev = st.st_rdev
        e.st_size = st.st_size
        e.st_blksize = st.st_blksize
        e.st_blocks = st.st_blocks
        e.st_atime_ns = st.st_atime_ns
        e.st_mtime_ns = st.st_mtime_ns
        e.st_ctime_ns = st.st_ctime_ns
        return e

    @staticmethod
    def caller(ctx: Any) -> Caller:
        return Caller(uid=ctx.uid, gid=ctx.gid)

    # -- requests --------------------------------------------------------------------------------------

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        with fuse_errors("lookup"):
            try:
                node, st = await self.tree.lookup(parent_inode, name)
            except FileNotFoundError:
                if self.negative_ttl <= 0:
                    raise
                negative = pyfuse3.EntryAttributes()
                negative.st_ino = 0
                negative.entry_timeout = self.negative_ttl
                return negative
            return self.entry(node, st)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        try:
            self.tree.forget(inode_list)
        except Exception:  # forget must never raise
            log.exception("forget failed")

    async def getattr(self, inode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        with fuse_errors("getattr"):
            st = await self.tree.getattr(inode)
            return self.entry(self.tree.node(inode), st)

    async def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None, ctx: Any) -> pyfuse3.EntryAttributes:
        with fuse_errors("setattr"):
            st = await self.tree.setattr(
                inode,
                mode=attr.st_mode if fields.update_mode else None,
                uid=attr.st_uid if fields.update_uid else None,
                gid=attr.st_gid if fields.update_gid else None,
                size=attr.st_size if fields.update_size else None,
                atime_ns=attr.st_atime_ns if fields.update_atime else None,
                mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
                fh=fh,
            )
            return self.entry(self.tree.node(inode), st)

    async def readlink(self, inode: int, ctx: Any) -> bytes:
        with fuse_errors("readlink"):
            return await self.tree.readlink(inode)

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> pyfuse3.EntryAttributes:
        with fuse_errors("mknod"):
            return self.entry(*await self.tree.mknod(parent_inode, name, mode, rdev, self.caller(ctx)))

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        with fuse_errors("mkdir"):
            return self.entry(*await self.tree.mkdir(parent_inode, name, mode, self.caller(ctx)))

    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        with fuse_errors("symlink"):
            return self.entry(*await self.tree.symlink(parent_inode, name, target, self.caller(ctx)))

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        with fuse_errors("link"):
            return self.entry(*await self.tree.link(inode, new_parent_inode, new_name))

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        with fuse_errors("unlink"):
            await self.tree.unlink(parent_inode, name)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        with fuse_errors("rmdir"):
            await self.tree.rmdir(parent_inode, name)

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
                     flags: int, ctx: Any) -> None:
        with fuse_errors("rename"):
            await self.tree.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Any) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        with fuse_errors("create"):
            node, st, fh = await self.tree.create(parent_inode, name, mode, flags, self.caller(ctx))
            return pyfuse3.FileInfo(fh=fh, direct_io=self.direct_io, keep_cache=False), self.entry(node, st)

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        with fuse_errors("open"):
            fh, unchanged = await self.tree.open(inode, flags)
            return pyfuse3.FileInfo(fh=fh, direct_io=self.direct_io,
                                    keep_cache=unchanged and not self.direct_io)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        with fuse_errors("read"):
            return await self.tree.read(fh, off, size)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        with fuse_errors("write"):
            return await self.tree.write(fh, off, buf)

    async def flush(self, fh: int) -> None:
        with fuse_errors("flush"):
            await self.tree.flush(fh)

    async def release(self, fh: int) -> None:
        with fuse_errors("release"):
            await self.tree.release(fh)

    async def fsync(self, fh: int, datasync: bool) -> None:
        with fuse_errors("fsync"):
            await self.tree.fsync(fh, datasync)

    async def opendir(self, inode: int, ctx: Any) -> int:
        with fuse_errors("opendir"):
            return await self.tree.opendir(inode)

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        with fuse_errors("readdir"):
            await self.tree.readdir(fh, start_id, lambda name, node, st, next_id: pyfuse3.readdir_reply(
                token, name, self.entry(node, st), next_id))

    async def releasedir(self, fh: int) -> None:
        with fuse_errors("releasedir"):
            await self.tree.releasedir(fh)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        with fuse_errors("statfs"):
            sv = await self.tree.statfs()
            out = pyfuse3.StatvfsData()
            for field in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
                          "f_favail", "f_namemax"):
                setattr(out, field, getattr(sv, field))
            return out

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        with fuse_errors("getxattr"):
            return await self.tree.getxattr(inode, name)

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        with fuse_errors("setxattr"):
            await self.tree.setxattr(inode, name, value, 0)

    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        with fuse_errors("listxattr"):
            return await self.tree.listxattr(inode)

    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        with fuse_errors("removexattr"):
            await self.tree.removexattr(inode, name)


def umask_zero() -> None:
    """The kernel already applied the caller's umask to every mode it sends; ours must not apply twice."""
    os.umask(0)
