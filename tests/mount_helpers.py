"""Helpers shared by the real-mount tests: outcomes as comparable values, another user, tree snapshots.

The mount tests compare what an operation does on a plain local folder with what it does through the
cached mount: the result, or the errno name when it fails. ``outcome`` turns both into one value.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import pickle
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

NOBODY = 65534  # uid and gid of the unprivileged user the permission tests run as

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2


def outcome(fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    """("ok", result) or ("error", errno name): what a test compares between two folders."""
    try:
        return ("ok", fn(*args))
    except OSError as e:
        return ("error", errno.errorcode.get(e.errno or 0, e.errno))


def renameat2(old: os.PathLike | str, new: os.PathLike | str, flags: int) -> None:
    fn = _libc.renameat2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(old), _AT_FDCWD, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(old))


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def utimensat(path: os.PathLike | str, atime: tuple[int, int], mtime: tuple[int, int]) -> None:
    """utimensat(2) with (sec, nsec) pairs, so that UTIME_OMIT / UTIME_NOW can be passed per field."""
    times = (_Timespec * 2)(_Timespec(*atime), _Timespec(*mtime))
    fn = _libc.utimensat
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec), ctypes.c_int]
    if fn(_AT_FDCWD, os.fsencode(path), times, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))


def as_user(fn: Callable[..., Any], *args: Any, uid: int = NOBODY, gid: int = NOBODY,
            umask: int = 0o022) -> tuple[str, Any]:
    """Run fn(*args) in a forked child with the given uid/gid (no supplementary groups); its outcome."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 0
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            os.umask(umask)
            data = pickle.dumps(outcome(fn, *args))
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            data = pickle.dumps(("crash", repr(e)))
            code = 1
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(w, view):]
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    with os.fdopen(r, "rb") as f:
        chunks.append(f.read())
    os.waitpid(pid, 0)
    result = pickle.loads(b"".join(chunks))
    assert result[0] != "crash", result
    return result


def open_tempdir() -> Path:
    """A fresh folder under the system temp dir that every user may traverse (pytest's tmp_path is 0700)."""
    base = Path(tempfile.mkdtemp(prefix="fsbridge-test-"))
    base.chmod(0o755)
    return base


def remove_tree(base: Path) -> None:
    """Remove a test folder, refusing to descend into anything still mounted."""
    for root, dirs, _ in os.walk(base):
        for d in dirs:
            assert not os.path.ismount(os.path.join(root, d)), f"{root}/{d} is still mounted"
    shutil.rmtree(base, ignore_errors=True)


def invalidate(path: Path) -> None:
    from conftest import FSBRIDGE

    subprocess.run([FSBRIDGE, "invalidate", str(path)], check=True, capture_output=True, timeout=30)


def stat_fields(st: os.stat_result, *, times: bool = True) -> dict[str, Any]:
    """The attributes a mount must pass through unchanged.

    Excluded on purpose: st_ino and st_dev (the mount hands out its own inode numbers on its own
    device), st_atime (reads through the mount and the kernel's relatime rules move it at different
    moments) and st_blksize (the kernel reports its own I/O size for FUSE files).
    """
    out = {
        "type": stat.S_IFMT(st.st_mode),
        "mode": stat.S_IMODE(st.st_mode),
        "nlink": st.st_nlink,
        "uid": st.st_uid,
        "gid": st.st_gid,
        "size": st.st_size,
        "rdev": st.st_rdev,
    }
    if times:
        out["mtime_ns"] = st.st_mtime_ns
        out["ctime_ns"] = st.st_ctime_ns
        out["blocks"] = st.st_blocks
    return out


def twin_fields(st: os.stat_result) -> dict[str, Any]:
    """What two independent folders that saw the same operations share (times and sizes on disk differ)."""
    out = stat_fields(st, times=False)
    if stat.S_ISDIR(st.st_mode):
        del out["size"]  # a directory's size depends on its history of entries, not on its content
    return out


def snapshot(top: Path, *, times: bool = True) -> dict[bytes, dict[str, Any]]:
    """Every entry below top (bytes relative paths) with type, mode, size, nlink, mtime, content, target."""
    out: dict[bytes, dict[str, Any]] = {}
    top_b = os.fsencode(top)

    def walk(rel: bytes) -> None:
        path = top_b + (b"/" + rel if rel else b"")
        for name in sorted(os.listdir(path)):
            child_rel = rel + b"/" + name if rel else name
            child = path + b"/" + name
            st = os.lstat(child)
            info: dict[str, Any] = {
                "type": stat.S_IFMT(st.st_mode),
                "mode": stat.S_IMODE(st.st_mode),
                "nlink": st.st_nlink,
                "uid": st.st_uid,
                "gid": st.st_gid,
            }
            if times:
                info["mtime_ns"] = st.st_mtime_ns
            if stat.S_ISREG(st.st_mode):
                info["size"] = st.st_size
                with open(child, "rb") as f:
                    info["content"] = f.read()
            elif stat.S_ISLNK(st.st_mode):
                info["size"] = st.st_size
                info["target"] = os.readlink(child)
            out[child_rel] = info
            if stat.S_ISDIR(st.st_mode):
                walk(child_rel)

    walk(b"")
    return out


def diff_snapshots(a: dict, b: dict) -> list[str]:
    lines = []
    for name in sorted(set(a) | set(b)):
        if name not in a:
            lines.append(f"only in second: {name!r} {b[name]}")
        elif name not in b:
            lines.append(f"only in first: {name!r} {a[name]}")
        elif a[name] != b[name]:
            keys = sorted(set(a[name]) | set(b[name]))
            d = {k: (a[name].get(k), b[name].get(k)) for k in keys if a[name].get(k) != b[name].get(k)}
            lines.append(f"differs: {name!r} {d}")
    return lines


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def iter_names(path: Path) -> Iterator[str]:
    with os.scandir(path) as it:
        for entry in it:
            yield entry.name


def daemon_healthy(m: Any) -> None:
    """The mount process still runs and answers (the control attribute goes through the FUSE loop)."""
    assert m.proc.poll() is None, f"the mount process died:\n{m.log()}"
    stats = m.stats()
    assert "cache" in stats and "backing_calls_total" in stats
