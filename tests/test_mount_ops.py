"""Every operation through the cached mount behaves as on a plain local folder.

Each test runs the same operation on a local folder and through the mount (whose backing is another
local folder) and compares the outcome: the result, or the errno when it fails. Attributes seen through
the mount are also compared field by field with the backing file itself (``stat_fields`` lists what is
left out and why). The permission tests run the operations as an unprivileged user (uid 65534) against
a mount served by root with allow_other and default_permissions, as the VM runs it.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Mounted, needs_root
from mount_helpers import (
    NOBODY,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    UTIME_NOW,
    UTIME_OMIT,
    as_user,
    daemon_healthy,
    open_tempdir,
    outcome,
    remove_tree,
    renameat2,
    stat_fields,
    twin_fields,
    utimensat,
)

pytestmark = pytest.mark.fuse


@dataclass
class Twin:
    local: Path  # a plain folder: the reference
    view: Path  # the backing folder seen through the cached mount
    backing: Path
    mount: Mounted

    def same(self, fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
        """Run fn(root, *args) on the local folder and through the mount; both outcomes must be equal."""
        expected = outcome(fn, self.local, *args)
        got = outcome(fn, self.view, *args)
        assert got == expected, f"through the mount {got}, on a local folder {expected}"
        return got

    def same_as_user(self, fn: Callable[[Path], Any], **kw: Any) -> tuple[str, Any]:
        expected = as_user(fn, self.local, **kw)
        got = as_user(fn, self.view, **kw)
        assert got == expected, f"as uid {NOBODY}: through the mount {got}, on a local folder {expected}"
        return got

    def same_attrs(self, rel: str) -> None:
        """The mount shows rel as the twin folder has it, and exactly as its backing file is."""
        seen = os.lstat(self.view / rel)
        assert twin_fields(seen) == twin_fields(os.lstat(self.local / rel)), rel
        assert stat_fields(seen) == stat_fields(os.lstat(self.backing / rel)), rel


@pytest.fixture
def open_base() -> Iterator[Path]:
    base = open_tempdir()
    yield base
    remove_tree(base)


@pytest.fixture
def twin(open_base: Path, mounter: Callable[..., Mounted]) -> Iterator[Twin]:
    local, backing = open_base / "local", open_base / "backing"
    for d in (local, backing):
        d.mkdir()
        d.chmod(0o755)
    m = mounter("mount", "--map", f"/host/data={backing}", mountpoint=open_base / "mnt")
    yield Twin(local, m.path / "host" / "data", backing, m)
    daemon_healthy(m)


def open_close(path: Path, flags: int, mode: int = 0o644) -> bool:
    """Open and close at once: only whether (and how) the open fails matters."""
    os.close(os.open(path, flags, mode))
    return True


def read_fd(path: Path, flags: int = os.O_RDONLY) -> bytes:
    fd = os.open(path, flags)
    try:
        return os.read(fd, 10)
    finally:
        os.close(fd)


def remove(*paths: Path) -> None:
    for path in paths:
        os.unlink(path)


def write(path: Path, data: bytes, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode: int = 0o644) -> int:
    fd = os.open(path, flags, mode)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)


# -- names and attributes ------------------------------------------------------------------------------


def test_lookup_and_getattr_of_every_kind(twin: Twin) -> None:
    def build(root: Path) -> None:
        write(root / "file", b"12345")
        os.mkdir(root / "dir", 0o750)
        os.symlink("file", root / "link")
        os.symlink("nowhere", root / "dangling")
        os.mkfifo(root / "fifo", 0o640)
        os.link(root / "file", root / "hard")

    twin.same(build)
    for rel in ("file", "dir", "link", "dangling", "fifo", "hard"):
        twin.same_attrs(rel)
    # following a symlink, and the errors of a lookup
    twin.same(lambda r: twin_fields(os.stat(r / "link")))
    twin.same(lambda r: os.stat(r / "dangling"))  # ENOENT
    twin.same(lambda r: os.lstat(r / "missing"))  # ENOENT
    twin.same(lambda r: os.lstat(r / "missing"))  # ENOENT again, now from the negative cache
    twin.same(lambda r: os.lstat(r / "file" / "below"))  # ENOTDIR
    twin.same(lambda r: os.path.exists(r / "dir" / "x"))
    # a name that appears after a failed lookup through the mount is visible at once when made here
    twin.same(lambda r: write(r / "missing", b"now"))
    twin.same(lambda r: os.lstat(r / "missing").st_size)


def test_setattr_chmod_chown_truncate(twin: Twin) -> None:
    twin.same(lambda r: write(r / "f", b"x" * 10_000))
    twin.same(lambda r: os.mkdir(r / "d"))
    for mode in (0o600, 0o4755, 0o2711, 0o1777, 0o000, 0o644):
        twin.same(lambda r, m: os.chmod(r / "f", m), mode)
        twin.same_attrs("f")
    twin.same(lambda r: os.chmod(r / "d", 0o3775))
    twin.same_attrs("d")

    twin.same(lambda r: os.chown(r / "f", NOBODY, NOBODY))
    twin.same_attrs("f")
    twin.same(lambda r: os.chown(r / "f", -1, 0))
    twin.same_attrs("f")
    twin.same(lambda r: os.symlink("f", r / "l"))
    twin.same(lambda r: os.lchown(r / "l", NOBODY, -1))
    twin.same_attrs("l")
    twin.same_attrs("f")  # lchown did not follow the link

    for size in (4096, 0, 1 << 20, 7):
        twin.same(lambda r, n: os.truncate(r / "f", n), size)
        twin.same_attrs("f")
    twin.same(lambda r: (r / "f").read_bytes())
    twin.same(lambda r: os.truncate(r / "d", 0))  # EISDIR
    twin.same(lambda r: os.truncate(r / "nope", 0))  # ENOENT
    twin.same(lambda r: os.truncate(r / "f", -1))  # EINVAL

    # ftruncate / fchmod on an open descriptor (setattr with a file handle)
    def through_fd(r: Path) -> bytes:
        fd = os.open(r / "f", os.O_RDWR)
        try:
            os.ftruncate(fd, 3)
            os.fchmod(fd, 0o640)
            os.write(fd, b"abcdef")
            return os.pread(fd, 100, 0)
        finally:
            os.close(fd)

    twin.same(through_fd)
    twin.same_attrs("f")


def test_utimens_explicit_partial_and_now(twin: Twin) -> None:
    twin.same(lambda r: write(r / "f", b"data"))
    twin.same(lambda r: os.mkdir(r / "d"))
    atime, mtime = 1_000_000_123_456_789, 1_100_000_987_654_321
    for rel in ("f", "d"):
        twin.same(lambda r, p: os.utime(r / p, ns=(atime, mtime)), rel)
        for root in (twin.local, twin.view, twin.backing):
            st = os.lstat(root / rel)
            assert (st.st_atime_ns, st.st_mtime_ns) == (atime, mtime), root
        twin.same_attrs(rel)

    # only atime: mtime stays
    twin.same(lambda r: utimensat(r / "f", (2_000_000_000, 5), (0, UTIME_OMIT)))
    for root in (twin.local, twin.view, twin.backing):
        st = os.lstat(root / "f")
        assert (st.st_atime_ns, st.st_mtime_ns) == (2_000_000_000_000_000_005, mtime), root
    twin.same_attrs("f")

    # only mtime: atime stays
    twin.same(lambda r: utimensat(r / "f", (0, UTIME_OMIT), (1_500_000_000, 42)))
    for root in (twin.local, twin.view, twin.backing):
        st = os.lstat(root / "f")
        assert (st.st_atime_ns, st.st_mtime_ns) == (2_000_000_000_000_000_005, 1_500_000_000_000_000_042), root
    twin.same_attrs("f")

    # UTIME_NOW for both, via os.utime(path) and for mtime alone via utimensat
    before = time.time_ns() - 50_000_000  # the kernel's clock is coarse: allow it to lag a little
    twin.same(lambda r: os.utime(r / "f"))
    after = time.time_ns() + 50_000_000
    for root in (twin.local, twin.view):
        st = os.lstat(root / "f")
        assert before <= st.st_mtime_ns <= after and before <= st.st_atime_ns <= after, root
    twin.same_attrs("f")
    twin.same(lambda r: os.utime(r / "f", ns=(atime, mtime)))
    twin.same(lambda r: utimensat(r / "f", (0, UTIME_OMIT), (0, UTIME_NOW)))
    st = os.lstat(twin.view / "f")
    assert st.st_atime_ns == atime and st.st_mtime_ns >= before
    twin.same_attrs("f")

    # a symlink's own times (utimensat with AT_SYMLINK_NOFOLLOW goes to the link, not its target)
    twin.same(lambda r: os.symlink("f", r / "l"))
    twin.same(lambda r: os.utime(r / "l", ns=(atime, 1_234_567_890_123_456_789), follow_symlinks=False))
    assert os.lstat(twin.view / "l").st_mtime_ns == 1_234_567_890_123_456_789
    twin.same_attrs("l")
    twin.same(lambda r: os.utime(r / "missing", ns=(1, 1)))  # ENOENT


def test_readdir_names_and_types(twin: Twin) -> None:
    def build(root: Path) -> None:
        for i in range(300):  # more than one readdir reply buffer
            write(root / f"file-{i:03d}", b"x")
        os.mkdir(root / "sub")
        os.symlink("sub", root / "to-sub")
        os.mkfifo(root / "pipe")

    twin.same(build)

    def listing(root: Path) -> list[tuple[str, bool, bool, bool, bool]]:
        with os.scandir(root) as it:
            return sorted((e.name, e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False),
                           e.is_symlink(), e.is_dir()) for e in it)

    twin.same(listing)
    twin.same(lambda r: sorted(os.listdir(r / "sub")))
    twin.same(lambda r: os.listdir(r / "file-000"))  # ENOTDIR
    twin.same(lambda r: os.listdir(r / "nope"))  # ENOENT
    # the listing follows changes made through the mount at once
    twin.same(lambda r: remove(*(r / f"file-{i:03d}" for i in range(0, 300, 3))))
    twin.same(lambda r: os.rename(r / "file-001", r / "sub" / "moved"))
    twin.same(listing)
    twin.same(lambda r: sorted(os.listdir(r / "sub")))
    for root in (twin.view, twin.backing):
        assert sorted(os.listdir(root)) == sorted(os.listdir(twin.local)), root
    # an entry's attributes from the listing are the file's attributes
    for rel in ("file-002", "sub", "to-sub", "pipe"):
        twin.same_attrs(rel)


def test_a_listing_in_progress_does_not_bring_removed_names_back(twin: Twin) -> None:
    """Names removed while a directory is being read (between two getdents calls) stay removed."""
    names = [f"entry-with-a-longer-name-{i:04d}" for i in range(400)]  # several getdents calls' worth
    twin.same(lambda r: [write(r / name, b"x") for name in names])

    def remove_while_listing(root: Path) -> tuple[list[str], list[bool]]:
        with os.scandir(root) as it:
            next(it)
            for name in names:
                os.unlink(root / name)
            os.mkdir(root / "made-meanwhile")
            list(it)
        return sorted(os.listdir(root)), [os.path.lexists(root / name) for name in names]

    twin.same(remove_while_listing)
    twin.same_attrs("made-meanwhile")


# -- files -----------------------------------------------------------------------------------------------


def test_open_create_read_write_flush_fsync_release(twin: Twin) -> None:
    def session(root: Path) -> list[Any]:
        out: list[Any] = []
        fd = os.open(root / "f", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            out.append(os.write(fd, b"hello world"))
            out.append(os.pwrite(fd, b"W", 6))
            os.fsync(fd)
            os.fdatasync(fd)
            out.append(os.pread(fd, 100, 0))
            out.append(os.pread(fd, 100, 50))  # past the end: empty
            out.append(os.lseek(fd, 0, os.SEEK_END))
            out.append(os.fstat(fd).st_size)
            dup = os.dup(fd)  # a second flush on close of the duplicate
            os.close(dup)
        finally:
            os.close(fd)
        return out

    twin.same(session)
    twin.same_attrs("f")
    twin.same(lambda r: open_close(r / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL))  # EEXIST
    twin.same(lambda r: open_close(r / "nope", os.O_RDONLY))  # ENOENT
    twin.same(lambda r: open_close(r / "nope" / "x", os.O_RDONLY | os.O_CREAT))  # ENOENT
    twin.same(lambda r: (r / "f").read_bytes())

    # O_TRUNC on an existing file
    twin.same(lambda r: write(r / "f", b"short"))
    twin.same(lambda r: (r / "f").read_bytes())
    twin.same_attrs("f")

    # O_APPEND: every write lands at the end, whatever the offset says
    def append(root: Path) -> bytes:
        fd = os.open(root / "f", os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, b"+1")
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, b"+2")
        finally:
            os.close(fd)
        with open(root / "f", "ab") as f:
            f.write(b"+3")
        return (root / "f").read_bytes()

    assert twin.same(append) == ("ok", b"short+1+2+3")
    twin.same_attrs("f")

    # an open file keeps working after its name is gone (reads and writes on the open handle)
    def unlinked(root: Path) -> list[Any]:
        fd = os.open(root / "f", os.O_RDWR)
        try:
            os.unlink(root / "f")
            os.pwrite(fd, b"Z", 0)
            return [os.pread(fd, 100, 0), os.fstat(fd).st_nlink, os.fstat(fd).st_size, os.path.exists(root / "f")]
        finally:
            os.close(fd)

    twin.same(unlinked)

    # open of a directory for writing, and reading a directory
    twin.same(lambda r: os.mkdir(r / "d"))
    twin.same(lambda r: open_close(r / "d", os.O_WRONLY))  # EISDIR
    twin.same(lambda r: read_fd(r / "d", os.O_RDONLY | os.O_DIRECTORY))  # EISDIR
    twin.same(lambda r: write(r / "plain", b"x"))
    twin.same(lambda r: open_close(r / "plain", os.O_RDONLY | os.O_DIRECTORY))  # ENOTDIR


def test_writes_then_reads_large_file_and_mmap(twin: Twin) -> None:
    blob = hashlib.shake_256(b"fsbridge").digest(3 * 1024 * 1024 + 12345)  # a few MiB, not page aligned

    def big(root: Path) -> str:
        with open(root / "big", "wb") as f:
            f.writelines(blob[i:i + 100_000] for i in range(0, len(blob), 100_000))
        # patch the middle and grow it through pwrite past the end
        fd = os.open(root / "big", os.O_RDWR)
        try:
            os.pwrite(fd, b"MIDDLE", len(blob) // 2)
            os.pwrite(fd, b"TAIL", len(blob) + 4096)
        finally:
            os.close(fd)
        return hashlib.sha256((root / "big").read_bytes()).hexdigest()

    twin.same(big)
    assert (twin.view / "big").read_bytes() == (twin.backing / "big").read_bytes() == (twin.local / "big").read_bytes()
    twin.same_attrs("big")

    def mapped(root: Path) -> tuple[bytes, bytes, int]:
        with open(root / "big", "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return mm[:64], mm[len(blob) // 2:len(blob) // 2 + 6], len(mm)

    assert twin.same(mapped)[1][1] == b"MIDDLE"

    # a shared writable mapping reaches the backing file
    def mapped_write(root: Path) -> bytes:
        with open(root / "big", "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
            mm[10:16] = b"MAPPED"
            mm.flush()
        with open(root / "big", "rb") as again:
            return again.read(32)

    twin.same(mapped_write)
    assert (twin.backing / "big").read_bytes()[10:16] == b"MAPPED"


# -- directories, removal, rename ------------------------------------------------------------------------


def test_mkdir_rmdir_unlink(twin: Twin) -> None:
    twin.same(lambda r: os.mkdir(r / "d", 0o711))
    twin.same_attrs("d")
    twin.same(lambda r: os.mkdir(r / "d"))  # EEXIST
    twin.same(lambda r: os.mkdir(r / "a" / "b"))  # ENOENT
    twin.same(lambda r: write(r / "d" / "f", b"1"))
    twin.same(lambda r: os.rmdir(r / "d"))  # ENOTEMPTY
    twin.same(lambda r: os.rmdir(r / "d" / "f"))  # ENOTDIR
    twin.same(lambda r: os.unlink(r / "d"))  # EISDIR
    twin.same(lambda r: os.unlink(r / "nope"))  # ENOENT
    twin.same(lambda r: os.rmdir(r / "nope"))  # ENOENT
    twin.same(lambda r: os.mkdir(r / "d" / "f" / "x"))  # ENOTDIR
    twin.same(lambda r: os.unlink(r / "d" / "f"))
    twin.same(lambda r: os.path.lexists(r / "d" / "f"))
    twin.same_attrs("d")  # the parent's times and link count after the removal
    twin.same(lambda r: os.rmdir(r / "d"))
    twin.same(lambda r: os.path.lexists(r / "d"))
    # the name can be used again at once, as another kind of file
    twin.same(lambda r: write(r / "d", b"now a file"))
    twin.same_attrs("d")
    twin.same(lambda r: os.listdir(r))


def test_rename_variants(twin: Twin) -> None:
    def build(root: Path) -> None:
        write(root / "a", b"A")
        write(root / "b", b"B")
        os.mkdir(root / "empty")
        os.mkdir(root / "full")
        write(root / "full" / "x", b"X")
        os.mkdir(root / "dir")
        write(root / "dir" / "inner", b"I")

    twin.same(build)
    twin.same(lambda r: os.rename(r / "a", r / "a2"))  # plain
    twin.same(lambda r: (r / "a2").read_bytes())
    twin.same(lambda r: os.lstat(r / "a"))  # ENOENT
    twin.same(lambda r: os.rename(r / "a2", r / "b"))  # over an existing file
    twin.same(lambda r: ((r / "b").read_bytes(), sorted(os.listdir(r))))
    twin.same_attrs("b")
    twin.same(lambda r: os.rename(r / "dir", r / "full"))  # ENOTEMPTY
    twin.same(lambda r: os.rename(r / "dir", r / "b"))  # ENOTDIR
    twin.same(lambda r: os.rename(r / "b", r / "empty"))  # EISDIR
    twin.same(lambda r: os.rename(r / "dir", r / "dir" / "sub"))  # EINVAL: into itself
    twin.same(lambda r: os.rename(r / "nope", r / "x"))  # ENOENT
    twin.same(lambda r: os.rename(r / "dir", r / "empty"))  # a directory over an empty one
    twin.same(lambda r: (r / "empty" / "inner").read_bytes())  # the subtree moved with it
    twin.same(lambda r: os.rename(r / "empty", r / "full" / "deeper"))
    twin.same(lambda r: (r / "full" / "deeper" / "inner").read_bytes())
    twin.same_attrs("full/deeper/inner")
    twin.same_attrs("full")

    twin.same(lambda r: write(r / "c", b"C"))
    twin.same(lambda r: renameat2(r / "b", r / "c", RENAME_NOREPLACE))  # EEXIST
    twin.same(lambda r: ((r / "b").read_bytes(), (r / "c").read_bytes()))
    twin.same(lambda r: renameat2(r / "b", r / "new", RENAME_NOREPLACE))
    twin.same(lambda r: renameat2(r / "new", r / "c", RENAME_EXCHANGE))
    twin.same(lambda r: ((r / "new").read_bytes(), (r / "c").read_bytes()))
    twin.same(lambda r: renameat2(r / "c", r / "full", RENAME_EXCHANGE))  # a file with a directory
    twin.same(lambda r: ((r / "c" / "x").read_bytes(), (r / "full").read_bytes()))
    twin.same_attrs("c")
    twin.same_attrs("full")
    twin.same(lambda r: renameat2(r / "new", r / "missing", RENAME_EXCHANGE))  # ENOENT
    twin.same(lambda r: sorted(os.listdir(r)))


def test_symlink_readlink(twin: Twin) -> None:
    twin.same(lambda r: write(r / "target", b"T"))
    twin.same(lambda r: os.symlink("target", r / "rel"))
    twin.same(lambda r: os.symlink("/definitely/not/here", r / "abs"))
    twin.same(lambda r: os.symlink("x" * 4000, r / "long"))
    twin.same(lambda r: os.symlink("target", r / "rel"))  # EEXIST
    for rel in ("rel", "abs", "long"):
        twin.same(lambda r, p: os.readlink(r / p), rel)
        twin.same_attrs(rel)
    twin.same(lambda r: os.readlink(r / "target"))  # EINVAL
    twin.same(lambda r: (r / "rel").read_bytes())
    twin.same(lambda r: open_close(r / "abs", os.O_RDONLY))  # ENOENT
    twin.same(lambda r: open_close(r / "rel", os.O_RDONLY | os.O_NOFOLLOW))  # ELOOP
    twin.same(lambda r: os.unlink(r / "rel"))
    twin.same(lambda r: os.path.exists(r / "target"))


def test_hard_links(twin: Twin) -> None:
    twin.same(lambda r: write(r / "one", b"shared"))
    twin.same(lambda r: os.mkdir(r / "d"))
    twin.same(lambda r: os.link(r / "one", r / "two"))
    twin.same(lambda r: os.link(r / "one", r / "d" / "three"))
    twin.same(lambda r: os.link(r / "one", r / "two"))  # EEXIST
    twin.same(lambda r: os.link(r / "d", r / "dlink"))  # EPERM: no hard links to directories
    twin.same(lambda r: os.link(r / "nope", r / "x"))  # ENOENT
    for rel in ("one", "two", "d/three"):
        twin.same_attrs(rel)
    assert os.lstat(twin.view / "one").st_nlink == 3
    # one inode through the mount for every name, and a write through one name shows through the others
    inos = {os.lstat(twin.view / rel).st_ino for rel in ("one", "two", "d/three")}
    assert len(inos) == 1
    twin.same(lambda r: write(r / "two", b"changed", os.O_WRONLY | os.O_TRUNC))
    twin.same(lambda r: ((r / "one").read_bytes(), (r / "d" / "three").read_bytes()))
    twin.same(lambda r: os.unlink(r / "one"))
    twin.same_attrs("two")
    assert os.lstat(twin.view / "two").st_nlink == 2
    twin.same(lambda r: os.rename(r / "two", r / "d" / "three"))  # rename onto another link of itself
    twin.same(lambda r: sorted(os.listdir(r)) + sorted(os.listdir(r / "d")))
    twin.same_attrs("two")
    assert os.lstat(twin.view / "two").st_ino == os.lstat(twin.view / "d" / "three").st_ino


def test_mknod_fifo_and_statfs(twin: Twin) -> None:
    twin.same(lambda r: os.mkfifo(r / "fifo", 0o620))
    twin.same(lambda r: os.mkfifo(r / "fifo"))  # EEXIST
    twin.same(lambda r: os.mknod(r / "nod", 0o600 | stat.S_IFIFO))
    twin.same_attrs("fifo")
    twin.same_attrs("nod")

    def roundtrip(root: Path) -> bytes:  # a FIFO on the mount is a pipe: the kernel carries the data
        fd = os.open(root / "fifo", os.O_RDWR | os.O_NONBLOCK)
        try:
            os.write(fd, b"through the pipe")
            return os.read(fd, 100)
        finally:
            os.close(fd)

    twin.same(roundtrip)

    seen, real = os.statvfs(twin.view), os.statvfs(twin.backing)
    assert seen.f_bsize == real.f_bsize and seen.f_frsize == real.f_frsize
    assert seen.f_blocks == real.f_blocks
    assert seen.f_namemax == real.f_namemax
    assert abs(seen.f_bavail - real.f_bavail) * real.f_frsize < 256 * 1024 * 1024
    assert abs(seen.f_files - real.f_files) <= 0  # the inode total never moves
    # the folders above the mapping report the same file system
    assert os.statvfs(twin.mount.path).f_blocks == real.f_blocks


def test_xattrs(twin: Twin) -> None:
    twin.same(lambda r: write(r / "f", b"x"))
    twin.same(lambda r: os.mkdir(r / "d"))
    twin.same(lambda r: os.getxattr(r / "f", "user.color"))  # ENODATA
    twin.same(lambda r: os.getxattr(r / "f", "user.color"))  # ENODATA again (now remembered)
    twin.same(lambda r: os.setxattr(r / "f", "user.color", b"blue"))
    twin.same(lambda r: os.getxattr(r / "f", "user.color"))  # visible at once after the cached absence
    twin.same(lambda r: os.setxattr(r / "f", "user.big", bytes(range(256)) * 16))
    twin.same(lambda r: os.getxattr(r / "f", "user.big"))
    twin.same(lambda r: os.setxattr(r / "f", "user.empty", b""))
    twin.same(lambda r: os.getxattr(r / "f", "user.empty"))
    twin.same(lambda r: os.setxattr(r / "d", "user.on-dir", b"yes"))
    twin.same(lambda r: sorted(os.listxattr(r / "f")))
    twin.same(lambda r: sorted(os.listxattr(r / "d")))
    twin.same(lambda r: os.setxattr(r / "f", "user.color", b"green"))  # replace
    twin.same(lambda r: os.getxattr(r / "f", "user.color"))
    twin.same(lambda r: os.removexattr(r / "f", "user.color"))
    twin.same(lambda r: os.removexattr(r / "f", "user.color"))  # ENODATA
    twin.same(lambda r: os.getxattr(r / "f", "user.color"))  # ENODATA
    twin.same(lambda r: sorted(os.listxattr(r / "f")))
    twin.same(lambda r: os.getxattr(r / "nope", "user.color"))  # ENOENT
    twin.same(lambda r: os.setxattr(r / "f", "bogus.namespace", b"1"))  # EOPNOTSUPP
    twin.same_attrs("f")  # the ctime moved with every change
    # Not compared: XATTR_CREATE / XATTR_REPLACE. pyfuse3 (3.5) drops setxattr's flags before calling
    # the file system, so a FUSE file system built on it cannot honour them.


# -- another user: permissions and ownership -------------------------------------------------------------


@needs_root
def test_permission_errors_match_a_local_folder(twin: Twin) -> None:
    def build(root: Path) -> None:
        root.chmod(0o755)
        write(root / "root-file", b"root's", mode=0o644)
        os.chmod(root / "root-file", 0o644)
        write(root / "open-file", b"anyone's", mode=0o666)
        os.chmod(root / "open-file", 0o666)
        write(root / "secret", b"s", mode=0o600)
        os.chmod(root / "secret", 0o600)
        os.mkdir(root / "closed", 0o700)
        write(root / "closed" / "inside", b"i")
        os.mkdir(root / "sticky")
        os.chmod(root / "sticky", 0o1777)
        write(root / "sticky" / "roots", b"r")
        os.mkdir(root / "public")
        os.chmod(root / "public", 0o777)

    twin.same(build)
    cases: list[Callable[[Path], Any]] = [
        lambda r: write(r / "root-file", b"no", os.O_WRONLY),  # EACCES
        lambda r: write(r / "root-file", b"no", os.O_WRONLY | os.O_APPEND),  # EACCES
        lambda r: os.truncate(r / "root-file", 0),  # EACCES
        lambda r: (r / "root-file").read_bytes(),  # allowed
        lambda r: (r / "secret").read_bytes(),  # EACCES
        lambda r: write(r / "new-in-root-dir", b"no"),  # EACCES: 0755 root folder
        lambda r: os.mkdir(r / "new-dir"),  # EACCES
        lambda r: os.symlink("x", r / "new-link"),  # EACCES
        lambda r: os.unlink(r / "root-file"),  # EACCES
        lambda r: os.rename(r / "root-file", r / "renamed"),  # EACCES
        lambda r: os.link(r / "root-file", r / "public" / "hard"),  # EPERM (protected_hardlinks)
        lambda r: os.chmod(r / "root-file", 0o777),  # EPERM: not the owner
        lambda r: os.chown(r / "open-file", NOBODY, NOBODY),  # EPERM
        lambda r: os.utime(r / "root-file", ns=(1, 1)),  # EPERM: explicit times need ownership
        lambda r: os.utime(r / "root-file"),  # EACCES: "now" needs write permission
        lambda r: os.utime(r / "open-file"),  # allowed: writable by everyone
        lambda r: write(r / "open-file", b"mine now", os.O_WRONLY | os.O_TRUNC),  # allowed
        lambda r: os.listdir(r / "closed"),  # EACCES
        lambda r: os.lstat(r / "closed" / "inside"),  # EACCES
        lambda r: os.unlink(r / "sticky" / "roots"),  # EPERM: sticky folder, someone else's file
        lambda r: os.rename(r / "sticky" / "roots", r / "sticky" / "mine"),  # EPERM
        lambda r: os.setxattr(r / "root-file", "user.x", b"1"),  # EACCES
        lambda r: os.getxattr(r / "secret", "user.x"),  # EACCES
        lambda r: os.setxattr(r / "public", "trusted.x", b"1"),  # EPERM
    ]
    results = [twin.same_as_user(case) for case in cases]
    errors = [r[1] for r in results if r[0] == "error"]
    assert "EACCES" in errors and "EPERM" in errors
    twin.same(lambda r: ((r / "root-file").read_bytes(), (r / "open-file").read_bytes(), sorted(os.listdir(r))))
    for rel in ("root-file", "open-file", "sticky/roots"):
        twin.same_attrs(rel)


@needs_root
def test_files_made_by_another_user_are_theirs(twin: Twin) -> None:
    def build(root: Path) -> None:
        os.mkdir(root / "public")
        os.chmod(root / "public", 0o777)

    twin.same(build)

    def make(root: Path) -> list[Any]:
        p = root / "public"
        write(p / "file", b"mine", mode=0o666)
        os.mkdir(p / "dir", 0o777)
        os.symlink("file", p / "link")
        os.mkfifo(p / "fifo", 0o666)
        write(p / "excl", b"e", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o4755)  # setuid kept: own file
        os.chmod(p / "file", 0o600)  # allowed: the owner
        os.utime(p / "file", ns=(5, 5))  # allowed: the owner
        os.rename(p / "fifo", p / "fifo2")
        return sorted(os.listdir(p))

    twin.same_as_user(make, umask=0o027)
    for rel in ("public/file", "public/dir", "public/link", "public/fifo2", "public/excl"):
        twin.same_attrs(rel)
        st = os.lstat(twin.backing / rel)
        assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY), rel
    assert stat.S_IMODE(os.lstat(twin.backing / "public/dir").st_mode) == 0o750  # the caller's umask
    # and the owner may remove them again, through the mount as locally
    twin.same_as_user(lambda r: remove(*(r / "public" / n for n in ("file", "link", "fifo2", "excl"))))
    twin.same_as_user(lambda r: os.rmdir(r / "public" / "dir"))
    twin.same(lambda r: os.listdir(r / "public"))


@needs_root
def test_setgid_directory_passes_its_group_on(twin: Twin) -> None:
    group = 4321  # a group the user is not in

    def build(root: Path) -> None:
        os.mkdir(root / "shared")
        os.chown(root / "shared", 0, group)
        os.chmod(root / "shared", 0o2777)

    twin.same(build)

    def make(root: Path) -> None:
        p = root / "shared"
        write(p / "file", b"x", mode=0o666)
        os.mkdir(p / "sub", 0o777)
        write(p / "sub" / "deeper", b"y", mode=0o666)
        write(p / "sgid-exec", b"z", mode=0o2775)  # not in the group: the kernel drops S_ISGID

    twin.same_as_user(make)
    for rel in ("shared/file", "shared/sub", "shared/sub/deeper", "shared/sgid-exec"):
        twin.same_attrs(rel)
        st = os.lstat(twin.backing / rel)
        assert (st.st_uid, st.st_gid) == (NOBODY, group), rel
    assert os.lstat(twin.backing / "shared/sub").st_mode & stat.S_ISGID  # a subfolder inherits the bit
    # outside a setgid folder the caller's own group is used
    twin.same(lambda r: os.chmod(r, 0o777))
    twin.same_as_user(lambda r: write(r / "plain", b"p"))
    twin.same_attrs("plain")
    assert os.lstat(twin.backing / "plain").st_gid == NOBODY


@needs_root
def test_errors_seen_by_another_user_do_not_leak_between_users(twin: Twin) -> None:
    """A denied lookup for one user is not remembered as an answer for root (the cache is not per-user)."""
    twin.same(lambda r: os.mkdir(r / "closed", 0o700))
    twin.same(lambda r: write(r / "closed" / "f", b"root only"))
    twin.same_as_user(lambda r: os.lstat(r / "closed" / "f"))  # EACCES
    twin.same_as_user(lambda r: os.lstat(r / "closed" / "g"))  # EACCES
    twin.same(lambda r: (r / "closed" / "f").read_bytes())
    twin.same(lambda r: os.lstat(r / "closed" / "g"))  # ENOENT for root
