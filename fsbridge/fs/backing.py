"""Every call that touches the backing share goes through here.

On a 9p / virtiofs / drvfs share a syscall is a round trip out of the VM, so it runs in a worker thread
under a dedicated ``trio.CapacityLimiter``: one slow round trip never stalls the FUSE loop, and cold work
(e.g. the attributes of a whole directory) goes out as many parallel requests, as 9p's tagged requests
allow. Only the syscall runs in the thread; results come back to the trio thread, which alone updates
the shared tables.

``calls`` counts backing calls by operation; ``fsbridge stats`` and the bench read it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from collections import Counter
from typing import Any, Callable, TypeVar

import trio

T = TypeVar("T")

DEFAULT_THREADS = 32


class Backing:
    """Runs blocking calls on the share in threads and counts them."""

    def __init__(self, threads: int = DEFAULT_THREADS, *, inline: bool = False) -> None:
        self.limiter = trio.CapacityLimiter(threads)
        self.inline = inline  # run syscalls on the trio thread: only for a fast local folder (the emulator)
        self.calls: Counter[str] = Counter()  # operation name -> number of backing calls

    async def run(self, op: str, fn: Callable[..., T], *args: Any, count: int = 1) -> T:
        self.calls[op] += count
        if self.inline:
            await trio.lowlevel.checkpoint()
            return fn(*args)
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    def statistics(self) -> dict[str, int]:
        return dict(sorted(self.calls.items()))


# -- syscalls Python does not wrap -----------------------------------------------------------------------

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def renameat2(old: bytes, new: bytes, flags: int) -> None:
    """rename(2) with RENAME_NOREPLACE / RENAME_EXCHANGE, which os.rename cannot pass."""
    if flags == 0:
        os.rename(old, new)
        return
    fn = _libc.renameat2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, old, _AT_FDCWD, new, flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), old)


def scandir_names(path: bytes) -> list[bytes]:
    """The names in a directory, without . and .. (one listing round trip)."""
    with os.scandir(path) as it:
        return [entry.name for entry in it]


def lstat_many(dir_path: bytes, names: list[bytes]) -> list[os.stat_result | OSError]:
    """lstat of several names in one directory, in one thread (used when they are few)."""
    out: list[os.stat_result | OSError] = []
    for name in names:
        try:
            out.append(os.lstat(dir_path + b"/" + name))
        except OSError as e:
            out.append(e)
    return out


def open_dir_path(path: bytes) -> tuple[int, tuple[int, int]]:
    """An O_PATH descriptor of the directory at `path` (no symlink followed) and its (st_dev, st_ino)."""
    fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd, (st.st_dev, st.st_ino)


def errno_of(exc: BaseException) -> int:
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO
