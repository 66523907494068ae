"""Differential test: random operation sequences give the same results through the mount as locally.

A seeded generator draws a sequence of operations over a small name space, where files, folders and
links keep colliding. Each operation runs on a plain local folder A and, through the cached mount, on
folder B (the mount's backing); the outcomes (result or errno) must be equal at every step. Every few
steps, and at the end, the trees are compared:

- A against the mount: names, types, modes, owners, sizes, contents, symlink targets, link counts. Not the
  mtimes: A and B are changed at different moments, so their clocks differ by design.
- the mount against B: all of the above and the mtimes to the nanosecond (the mount must show what the
  backing has).

Then the host changes B behind the mount's back (the same operations on A), ``fsbridge invalidate`` makes
the mount see it, the trees are compared again, and more operations run through the mount on top.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Mounted
from mount_helpers import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    daemon_healthy,
    diff_snapshots,
    invalidate,
    open_tempdir,
    outcome,
    remove_tree,
    renameat2,
    snapshot,
    twin_fields,
)

Bridge = tuple[Path, Path, Mounted]

pytestmark = pytest.mark.fuse

# (seed, extra mount options): the default caches, and a plain passthrough where the kernel revalidates
# every name at once (host-side changes then meet inodes the kernel still holds)
RUNS = [(1, ()), (2, ()), (3, ()), (5, ()), (8, ()), (13, ()), (2004, ("--no-cache",)), (2009, ("--no-cache",))]
STEPS = 150

# a small name space, so that names collide: files become folders, links point at moving targets
DIRS = ["d", "e", "d/f", "e/d"]
FILES = ["a", "b", "c", "d/a", "d/b", "d/f/a", "d/f/b", "e/a", "e/d/a", "e/d/b"]
PATHS = DIRS + FILES
# Targets never leave the tree: A and the mounted B sit in different places, so what lies above them
# differs. ("f/../../b" climbs out of d/f, and names nothing where there is no f.)
LINK_TARGETS = PATHS + ["nowhere", "/absolute/elsewhere", ".", "d/../e", "f/../../b"]

Op = tuple[str, Callable[[Path], Any]]


def _write(path: Path, flags: int, data: bytes, offset: int | None = None, mode: int = 0o644) -> int:
    fd = os.open(path, flags, mode)
    try:
        return os.write(fd, data) if offset is None else os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def _read(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def draw(rng: random.Random) -> Op:
    """One random operation: a description and a function applied to a root folder."""
    def pick(kind: list[str]) -> str:  # mostly a name of the expected kind, sometimes any name
        return rng.choice(kind if rng.random() < 0.8 else PATHS)

    p, q = pick(FILES), pick(FILES)
    data = rng.randbytes(rng.choice([0, 1, 17, 600, 5000]))
    kind = rng.choices(
        ["create", "write", "append", "truncate", "mkdir", "rmdir", "unlink", "rename", "symlink", "link",
         "chmod", "utime", "read", "stat", "listdir", "readlink"],
        weights=[12, 8, 5, 4, 5, 3, 5, 8, 4, 4, 4, 4, 5, 5, 3, 2])[0]
    if kind == "create":
        flags = rng.choice([os.O_WRONLY | os.O_CREAT, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                            os.O_WRONLY | os.O_CREAT | os.O_TRUNC, os.O_RDWR | os.O_CREAT | os.O_APPEND])
        mode = rng.choice([0o644, 0o600, 0o755, 0o640])
        return f"create {p} flags={flags:#o} mode={mode:o} len={len(data)}", \
            lambda r: _write(r / p, flags, data, mode=mode)
    if kind == "write":
        offset = rng.choice([0, 1, 100, 4095, 4096, 9000])
        return f"pwrite {p} off={offset} len={len(data)}", lambda r: _write(r / p, os.O_WRONLY, data, offset)
    if kind == "append":
        return f"append {p} len={len(data)}", lambda r: _write(r / p, os.O_WRONLY | os.O_APPEND, data)
    if kind == "truncate":
        size = rng.choice([0, 1, 100, 4096, 10_000])
        return f"truncate {p} {size}", lambda r: os.truncate(r / p, size)
    if kind in ("mkdir", "rmdir", "listdir") or (kind == "rename" and rng.random() < 0.3):
        p, q = pick(DIRS), pick(DIRS)
    if kind == "mkdir":
        mode = rng.choice([0o755, 0o700, 0o2775, 0o777])
        return f"mkdir {p} {mode:o}", lambda r: os.mkdir(r / p, mode)
    if kind == "rmdir":
        return f"rmdir {p}", lambda r: os.rmdir(r / p)
    if kind == "unlink":
        return f"unlink {p}", lambda r: os.unlink(r / p)
    if kind == "rename":
        flags = rng.choice([0, 0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE])
        return f"rename {p} {q} flags={flags}", lambda r: renameat2(r / p, r / q, flags)
    if kind == "symlink":
        target = rng.choice(LINK_TARGETS)
        return f"symlink {target} {p}", lambda r: os.symlink(target, r / p)
    if kind == "link":
        return f"link {p} {q}", lambda r: os.link(r / p, r / q, follow_symlinks=False)
    if kind == "chmod":
        mode = rng.choice([0o600, 0o644, 0o755, 0o4755, 0o1777, 0o000, 0o2750])
        return f"chmod {p} {mode:o}", lambda r: os.chmod(r / p, mode)
    if kind == "utime":
        ns = (rng.randrange(1 << 61), rng.randrange(1 << 61))
        follow = rng.random() < 0.5
        return f"utime {p} {ns} follow={follow}", lambda r: os.utime(r / p, ns=ns, follow_symlinks=follow)
    if kind == "read":
        return f"read {p}", lambda r: _read(r / p)
    if kind == "stat":
        return f"lstat {p}", lambda r: twin_fields(os.lstat(r / p))
    if kind == "listdir":
        return f"listdir {p}", lambda r: sorted(os.listdir(r / p))
    return f"readlink {p}", lambda r: os.readlink(r / p)


class Run:
    def __init__(self, seed: int, a: Path, b: Path, view: Path, mount: Mounted) -> None:
        self.seed, self.a, self.b, self.view, self.mount = seed, a, b, view, mount
        self.rng = random.Random(seed)
        self.history: list[str] = []

    def context(self) -> str:
        return f"seed {self.seed}, after {len(self.history)} steps; last steps:\n  " + "\n  ".join(self.history[-12:])

    def step(self, *, through_mount: bool) -> None:
        desc, fn = draw(self.rng)
        self.history.append(desc if through_mount else f"[host] {desc}")
        expected = outcome(fn, self.a)
        got = outcome(fn, self.view if through_mount else self.b)
        assert got == expected, f"{desc}: got {got}, a local folder gives {expected}\n{self.context()}"

    def compare_trees(self, when: str) -> None:
        local, seen = snapshot(self.a, times=False), snapshot(self.view, times=False)
        problems = diff_snapshots(local, seen)
        assert not problems, f"{when}: the mount differs from a local folder:\n" + "\n".join(problems) + \
            "\n" + self.context()
        seen_timed, backing = snapshot(self.view), snapshot(self.b)
        problems = diff_snapshots(backing, seen_timed)
        assert not problems, f"{when}: the mount differs from its backing:\n" + "\n".join(problems) + \
            "\n" + self.context()


@pytest.fixture
def open_base() -> Iterator[Path]:
    base = open_tempdir()
    yield base
    remove_tree(base)


@pytest.mark.parametrize(("seed", "options"), RUNS, ids=[f"seed{s}{'-'.join(('',) + o)}" for s, o in RUNS])
def test_random_sequences_match_a_local_folder(seed: int, options: tuple[str, ...], open_base: Path,
                                                mounter: Callable[..., Mounted]) -> None:
    print(f"differential seed {seed} {' '.join(options)}")
    a, b = open_base / "a", open_base / "b"
    a.mkdir()
    b.mkdir()
    m = mounter("mount", "--map", f"/host/data={b}", *options, mountpoint=open_base / "mnt")
    run = Run(seed, a, b, m.path / "host" / "data", m)

    for d in DIRS:  # start with the folders in place, so that more steps succeed
        os.mkdir(a / d)
        os.mkdir(run.view / d)
    for i in range(STEPS):
        run.step(through_mount=True)
        if i % 25 == 24:
            run.compare_trees(f"after step {i + 1}")
    run.compare_trees("after the sequence")

    # the host changes the backing behind the mount's back; invalidate makes the mount see it at once
    for _ in range(30):
        run.step(through_mount=False)
    invalidate(run.view)
    run.compare_trees("after host-side changes and fsbridge invalidate")

    # and the mount keeps working on top of what the host did
    for _ in range(50):
        run.step(through_mount=True)
    run.compare_trees("after more steps through the mount")
    daemon_healthy(m)


def test_host_side_changes_show_after_invalidate(bridge: Bridge) -> None:
    """Changes made on the host behind the mount's back, while the mount holds cached facts and the
    kernel holds inodes, are all visible after ``fsbridge invalidate``, exactly as the backing has them."""
    backing, view, m = bridge
    (backing / "a-old").write_text("renamed on the host")
    (backing / "grows").write_text("short")
    (backing / "goes").write_text("removed on the host")
    (backing / "old-dir").mkdir()
    (backing / "kept" / "sub").mkdir(parents=True)
    (backing / "kept" / "file").write_text("k")
    held = os.open(view / "a-old", os.O_RDONLY)  # the kernel keeps this inode while the file is open
    try:
        snapshot(view)  # every fact cached: attributes, entries, listings
        assert outcome(lambda: os.lstat(view / "appears")) == ("error", "ENOENT")  # a cached absence
        old_dir_ino = os.lstat(backing / "old-dir").st_ino

        os.rename(backing / "a-old", backing / "b-new")  # the old name sorts first: it must not be used
        with open(backing / "grows", "a") as f:
            f.write(" and longer now")
        os.chmod(backing / "grows", 0o600)
        os.unlink(backing / "goes")
        (backing / "appears").write_text("new on the host")
        os.rmdir(backing / "old-dir")
        (backing / "new-dir").mkdir()  # ext4 hands the freed inode number straight out again
        (backing / "new-dir" / "inside").write_text("i")
        reused = os.lstat(backing / "new-dir").st_ino == old_dir_ino
        os.rename(backing / "kept" / "file", backing / "kept" / "sub" / "file")

        invalidate(view)
        problems = diff_snapshots(snapshot(backing), snapshot(view))
        assert not problems, f"(inode number reused: {reused})\n" + "\n".join(problems)
        assert (view / "b-new").read_text() == "renamed on the host"
        assert os.read(held, 100) == b"renamed on the host"  # the open file is still the same file
    finally:
        os.close(held)
    daemon_healthy(m)


def test_a_new_folder_never_shows_the_listing_of_a_removed_one(tmp_path: Path,
                                                                mounter: Callable[..., Mounted]) -> None:
    """The backing reuses a removed folder's inode number for a new folder at once. Cached facts are kept
    by inode number, so the old folder's cached listing must not be taken for the new one's, even
    once the old folder is forgotten and nothing leads to its listing any more."""
    backing = tmp_path / "backing"
    (backing / "old-dir").mkdir(parents=True)
    short = ("--entry-ttl", "0.2", "--attr-ttl", "0.2", "--negative-ttl", "0.2")  # listings keep the 30 s default
    m = mounter("mount", "--map", f"/host/data={backing}", *short)
    view = m.path / "host" / "data"
    assert os.listdir(view / "old-dir") == []  # cached: an empty listing
    old_ino = os.lstat(backing / "old-dir").st_ino
    os.rmdir(backing / "old-dir")
    for attempt in range(20):  # ext4 hands freed inode numbers out again, nearly always the next one
        new_dir = backing / f"new-dir-{attempt}"
        new_dir.mkdir()
        if os.lstat(new_dir).st_ino == old_ino:
            break
    else:
        pytest.skip("the backing did not reuse the inode number")
    (new_dir / "inside").write_text("i")
    time.sleep(0.3)
    assert not os.path.exists(view / "old-dir")  # the mount learns it is gone, and the kernel forgets it
    assert os.listdir(view / new_dir.name) == ["inside"]
    invalidate(view)
    assert os.listdir(view / new_dir.name) == ["inside"]
    daemon_healthy(m)


def test_a_file_opened_after_a_host_change_reads_the_new_contents(bridge: Bridge) -> None:
    """Close-to-open: whatever the TTLs, an open after a host-side change reads what the share has now,
    even where the kernel still holds the old size (from a lookup, or learnt from a short read)."""
    backing, view, m = bridge
    (backing / "grows").write_bytes(b"first")
    assert os.stat(view / "grows").st_size == 5  # the kernel now holds size 5 for the attribute TTL
    with open(backing / "grows", "ab") as f:
        f.write(b" and more")
    fd = os.open(view / "grows", os.O_RDONLY)
    try:
        assert os.fstat(fd).st_size == 14
        assert os.read(fd, 100) == b"first and more"
    finally:
        os.close(fd)

    (backing / "shrinks").write_bytes(b"0123456789" * 100)
    assert (view / "shrinks").read_bytes() == b"0123456789" * 100  # cached pages, size 1000
    with open(backing / "shrinks", "r+b") as f:
        f.truncate(10)
    assert (view / "shrinks").read_bytes() == b"0123456789"

    (backing / "same-size").write_bytes(b"a" * 100_000)
    original = os.stat(backing / "same-size")
    fd = os.open(view / "same-size", os.O_RDONLY)
    try:
        os.truncate(backing / "same-size", 30_000)  # shrunk on the host while open here ...
        assert len(os.pread(fd, 65_536, 0)) == 30_000  # ... which the kernel learns from a short read
        with open(backing / "same-size", "ab") as f:  # then back to the old size and mtime
            f.write(b"b" * 70_000)
        os.utime(backing / "same-size", ns=(original.st_atime_ns, original.st_mtime_ns))
    finally:
        os.close(fd)
    assert (view / "same-size").read_bytes() == b"a" * 30_000 + b"b" * 70_000
    daemon_healthy(m)
