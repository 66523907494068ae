"""The mount's correctness checks over a real 9p share, run inside a qemu guest by tests/test_guest_9p.py.

Run in the guest as:  python tests/guest_checks.py --share SHARE --out RESULTS.json

SHARE is the 9p share (the host folder, seen at its host path), seeded by the host with identical twin
folders `raw/` and `via/` and an `inv/` folder. This script starts `fsbridge mount` over the share
(`--map /host/data=SHARE`), then runs each check: the same operations on `raw/` directly on 9p and on
`via/` through the mount, comparing the outcomes (results or errno names), the folders afterwards, and
what the mount shows with what 9p shows for the same files. The invalidation check asks the host (through
files in `SHARE/.sync/`) to change `inv/` on its side, as a user editing files on a Mac would, and checks
that the mount hides the change until `fsbridge invalidate` and shows it after. Every check's outcome
(and any assertion message) goes to RESULTS.json, which the host-side test asserts one by one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import stat
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from mount_helpers import diff_snapshots, outcome, snapshot, stat_fields

MOUNTPOINT = Path("/mnt/fsbridge")
HOST_PREFIX = "/host/data"
TTL = "300"  # long TTLs: a host change must stay hidden until invalidated, however slow the guest is
BIG_SIZE = 300_000

# The checks, in the order they run; the host-side test asserts each of these names.
CHECKS = (
    "mount_started",
    "lookup_attrs",
    "lookup_missing",
    "listing",
    "read",
    "readlink",
    "write",
    "create",
    "rename",
    "unlink_rmdir",
    "errno_values",
    "cache_answers_repeated_stat",
    "host_change_hidden_before_invalidate",
    "open_reads_host_change",
    "host_change_visible_after_invalidate",
    "unmount_clean",
)

# The host side's part of the invalidation check: SHARE/.sync/<REQUEST> appears, the host changes inv/,
# then writes SHARE/.sync/<DONE>.
REQUEST = "host-change-request"
DONE = "host-change-done"
INV_OLD = b"version one\n"
INV_NEW = b"version two, longer than the first\n"


# --- what the host seeds before the guest boots (also imported by the host-side test) -----------------


def seed_share(share: Path) -> None:
    """Twin folders raw/ and via/ with the same content, the inv/ folder, and the .sync/ folder."""
    for twin in ("raw", "via"):
        top = share / twin
        top.mkdir()
        (top / "a.txt").write_bytes(b"alpha\n")
        (top / "empty").write_bytes(b"")
        (top / "big.bin").write_bytes(_big())
        (top / "mode600").write_bytes(b"private\n")
        (top / "mode600").chmod(0o600)
        (top / "dir" / "sub" / "deeper").mkdir(parents=True)
        (top / "dir" / "sub" / "deeper" / "x.txt").write_bytes(b"x" * 10)
        (top / "dir" / "b.txt").write_bytes(b"bravo\n")
        (top / "emptydir").mkdir()
        (top / "many").mkdir()
        for i in range(60):
            (top / "many" / f"f{i:03d}").write_bytes(str(i).encode())
        os.symlink("a.txt", top / "link")
        os.symlink("missing-target", top / "dangling")
        for check in ("write", "create", "rename", "unlink_rmdir", "errno_values"):
            work = top / f"w-{check}"
            work.mkdir()
            (work / "file.txt").write_bytes(b"existing content\n")
            (work / "other.txt").write_bytes(b"other\n")
            (work / "full").mkdir()
            (work / "full" / "inside.txt").write_bytes(b"in\n")
            (work / "full" / "nested").mkdir()
            (work / "emptydir").mkdir()
    inv = share / "inv"
    inv.mkdir()
    (inv / "changed.txt").write_bytes(INV_OLD)
    (inv / "gone.txt").write_bytes(b"to be deleted on the host\n")
    (inv / "mode.txt").write_bytes(b"mode\n")
    (inv / "mode.txt").chmod(0o644)
    (share / ".sync").mkdir()
    (share / ".logs").mkdir()


def host_change(share: Path) -> None:
    """What the host does to inv/ while the guest waits: modify, create, delete, chmod."""
    inv = share / "inv"
    (inv / "changed.txt").write_bytes(INV_NEW)
    (inv / "new.txt").write_bytes(b"created on the host\n")
    (inv / "gone.txt").unlink()
    (inv / "mode.txt").chmod(0o600)


def _big() -> bytes:
    out = bytearray()
    i = 0
    while len(out) < BIG_SIZE:
        out += hashlib.sha256(str(i).encode()).digest()
        i += 1
    return bytes(out[:BIG_SIZE])


# --- the checks -----------------------------------------------------------------------------------------


class Ctx:
    def __init__(self, share: Path) -> None:
        self.share = share
        self.raw = share  # the share itself, on 9p
        self.view = MOUNTPOINT / HOST_PREFIX.lstrip("/")  # the same folder through the mount
        self.proc: subprocess.Popen | None = None
        self.log = share / ".logs" / "mount.log"
        self.timings: dict[str, float] = {}
        self.fsbridge = str(Path(sys.executable).with_name("fsbridge"))


def both(ctx: Ctx, fn: Callable[[Path], Any]) -> tuple[Any, Any]:
    """(outcome on raw 9p, outcome through the mount) of fn(root), root being raw/ or via/."""
    return outcome(fn, ctx.raw / "raw"), outcome(fn, ctx.view / "via")


def same(ctx: Ctx, label: str, fn: Callable[[Path], Any], expect: tuple[str, Any] | None = None) -> Any:
    raw, got = both(ctx, fn)
    assert got == raw, f"{label}: through the mount {got!r}, on raw 9p {raw!r}"
    if expect is not None:
        assert got == expect, f"{label}: got {got!r} on both, expected {expect!r}"
    return got


def twins_agree(ctx: Ctx, rel: str) -> None:
    """After a sequence of operations: raw/REL and via/REL hold the same tree (both read on 9p), and the
    mount shows via/REL exactly as 9p does (times included)."""
    a = snapshot(ctx.raw / "raw" / rel, times=False)
    b = snapshot(ctx.raw / "via" / rel, times=False)
    diff = diff_snapshots(a, b)
    assert not diff, f"raw/{rel} and via/{rel} differ on the share:\n" + "\n".join(diff[:20])
    seen = snapshot(ctx.view / "via" / rel)
    truth = snapshot(ctx.raw / "via" / rel)
    diff = diff_snapshots(seen, truth)
    assert not diff, f"the mount shows via/{rel} unlike 9p:\n" + "\n".join(diff[:20])


def check_mount_started(ctx: Ctx) -> None:
    MOUNTPOINT.mkdir(parents=True, exist_ok=True)
    log = open(ctx.log, "wb")
    argv = [ctx.fsbridge, "mount", str(MOUNTPOINT), "--foreground", "--map", f"{HOST_PREFIX}={ctx.share}",
            "--entry-ttl", TTL, "--attr-ttl", TTL, "--negative-ttl", TTL, "--dir-ttl", TTL]
    t0 = time.monotonic()
    ctx.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    while not os.path.ismount(MOUNTPOINT):
        assert ctx.proc.poll() is None, f"fsbridge mount exited with {ctx.proc.returncode}: {_log(ctx)}"
        assert time.monotonic() - t0 < 90, f"not mounted within 90 s: {_log(ctx)}"
        time.sleep(0.05)
    ctx.timings["mount_start_s"] = time.monotonic() - t0
    assert (ctx.view / "via" / "a.txt").exists(), "the share's files are not under the mount"


def check_lookup_attrs(ctx: Ctx) -> None:
    rels = ["a.txt", "empty", "big.bin", "mode600", "dir", "dir/sub", "dir/sub/deeper/x.txt", "dir/b.txt",
            "emptydir", "many", "many/f059", "link", "dangling"]
    for rel in rels:
        seen = os.lstat(ctx.view / "via" / rel)
        truth = os.lstat(ctx.raw / "via" / rel)
        assert stat_fields(seen) == stat_fields(truth), (
            f"{rel}: through the mount {stat_fields(seen)}, on 9p {stat_fields(truth)}")
    # A stable inode number: the share's own (see docs/cache-coherence.md, "Inode numbers").
    assert os.lstat(ctx.view / "via" / "a.txt").st_ino == os.lstat(ctx.view / "via" / "a.txt").st_ino
    st = os.stat(ctx.view / "via" / "link")  # follows the link to a.txt
    assert stat.S_ISREG(st.st_mode) and st.st_size == 6, f"stat through a symlink: {st}"


def check_lookup_missing(ctx: Ctx) -> None:
    same(ctx, "missing name", lambda r: os.lstat(r / "nope").st_size, ("error", "ENOENT"))
    same(ctx, "missing name twice (negative entry)", lambda r: os.lstat(r / "nope").st_size, ("error", "ENOENT"))
    same(ctx, "under a missing folder", lambda r: os.lstat(r / "nope" / "x").st_size, ("error", "ENOENT"))
    same(ctx, "below a file", lambda r: os.lstat(r / "a.txt" / "x").st_size, ("error", "ENOTDIR"))
    same(ctx, "dangling symlink followed", lambda r: os.stat(r / "dangling").st_size, ("error", "ENOENT"))
    same(ctx, "exists", lambda r: os.path.exists(r / "dir" / "sub" / "deeper"), ("ok", True))


def check_listing(ctx: Ctx) -> None:
    def names(r: Path, rel: str) -> list[tuple[str, bool, bool, bool]]:
        with os.scandir(r / rel) as it:
            return sorted((e.name, e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False),
                           e.is_symlink()) for e in it)

    for rel in ("", "dir", "dir/sub", "emptydir", "many"):
        got = same(ctx, f"listing of via/{rel}", lambda r: names(r, rel))
        assert got[0] == "ok" and (got[1] or rel == "emptydir"), f"listing of {rel}: {got}"
    assert len(os.listdir(ctx.view / "via" / "many")) == 60
    same(ctx, "listing a file", lambda r: os.listdir(r / "a.txt"), ("error", "ENOTDIR"))
    same(ctx, "listing a missing folder", lambda r: os.listdir(r / "nope"), ("error", "ENOENT"))


def check_read(ctx: Ctx) -> None:
    for rel in ("a.txt", "empty", "big.bin", "dir/sub/deeper/x.txt", "mode600"):
        got = same(ctx, f"read {rel}", lambda r: hashlib.sha256((r / rel).read_bytes()).hexdigest())
        assert got[0] == "ok"
    assert (ctx.view / "via" / "big.bin").read_bytes() == _big(), "big.bin content differs from what was seeded"

    def preads(r: Path) -> list[bytes]:
        fd = os.open(r / "big.bin", os.O_RDONLY)
        try:
            return [os.pread(fd, n, off) for off, n in ((0, 10), (4095, 3), (131071, 70000), (BIG_SIZE - 5, 100),
                                                         (BIG_SIZE + 10, 10))]
        finally:
            os.close(fd)

    got = same(ctx, "reads at offsets", preads)
    assert got[1][-1] == b"" and len(got[1][-2]) == 5, "reads at and past the end"
    # a second read of a cached file (page cache kept across opens while size and mtime hold)
    same(ctx, "re-read", lambda r: (r / "a.txt").read_bytes(), ("ok", b"alpha\n"))


def check_readlink(ctx: Ctx) -> None:
    same(ctx, "readlink", lambda r: os.readlink(r / "link"), ("ok", "a.txt"))
    same(ctx, "readlink dangling", lambda r: os.readlink(r / "dangling"), ("ok", "missing-target"))
    same(ctx, "readlink of a file", lambda r: os.readlink(r / "a.txt"), ("error", "EINVAL"))


def check_write(ctx: Ctx) -> None:
    w = "w-write"

    def write_new(r: Path) -> bytes:
        p = r / w / "new.txt"
        with open(p, "wb") as f:
            f.write(b"hello")
        with open(p, "ab") as f:
            f.write(b" world")
        fd = os.open(p, os.O_WRONLY)
        try:
            os.pwrite(fd, b"XY", 2)
        finally:
            os.close(fd)
        return p.read_bytes()

    same(ctx, "write, append, pwrite", write_new, ("ok", b"heXYo world"))
    # what the mount wrote is on the share at once
    assert (ctx.raw / "via" / w / "new.txt").read_bytes() == b"heXYo world", "write through the mount not on 9p"

    def truncations(r: Path) -> list[int]:
        p = r / w / "new.txt"
        os.truncate(p, 4)
        a = os.stat(p).st_size
        os.truncate(p, 10)
        return [a, os.stat(p).st_size, len(p.read_bytes()), p.read_bytes().count(b"\0")]

    same(ctx, "truncate shorter and longer", truncations, ("ok", [4, 10, 10, 6]))
    same(ctx, "O_TRUNC rewrite", lambda r: ((r / w / "file.txt").write_bytes(b"short"),
                                            (r / w / "file.txt").read_bytes())[1], ("ok", b"short"))

    def big_write(r: Path) -> int:
        data = _big()[::-1]
        (r / w / "big-out.bin").write_bytes(data)
        return int((r / w / "big-out.bin").read_bytes() == data)

    same(ctx, "300 kB write and read back", big_write, ("ok", 1))
    same(ctx, "chmod", lambda r: (os.chmod(r / w / "other.txt", 0o640),
                                  stat.S_IMODE(os.stat(r / w / "other.txt").st_mode))[1], ("ok", 0o640))
    twins_agree(ctx, w)


def check_create(ctx: Ctx) -> None:
    w = "w-create"
    excl = os.O_CREAT | os.O_EXCL | os.O_WRONLY

    def create_excl(r: Path, name: str) -> int:
        os.close(os.open(r / w / name, excl, 0o644))
        return stat.S_IMODE(os.stat(r / w / name).st_mode)

    same(ctx, "O_EXCL create", lambda r: create_excl(r, "made.txt"), ("ok", 0o644))
    same(ctx, "O_EXCL create again", lambda r: create_excl(r, "made.txt"), ("error", "EEXIST"))
    same(ctx, "O_EXCL on an existing file", lambda r: create_excl(r, "file.txt"), ("error", "EEXIST"))
    same(ctx, "create in a missing folder", lambda r: create_excl(r, "nope/x"), ("error", "ENOENT"))
    same(ctx, "create below a file", lambda r: create_excl(r, "file.txt/x"), ("error", "ENOTDIR"))
    same(ctx, "mkdir", lambda r: os.mkdir(r / w / "newdir", 0o755), ("ok", None))
    same(ctx, "mkdir again", lambda r: os.mkdir(r / w / "newdir"), ("error", "EEXIST"))
    same(ctx, "mkdir over a file", lambda r: os.mkdir(r / w / "file.txt"), ("error", "EEXIST"))
    same(ctx, "mkdir nested", lambda r: os.makedirs(r / w / "newdir" / "a" / "b"), ("ok", None))
    same(ctx, "symlink", lambda r: os.symlink("file.txt", r / w / "sl"), ("ok", None))
    same(ctx, "symlink over a name", lambda r: os.symlink("x", r / w / "sl"), ("error", "EEXIST"))
    same(ctx, "new file listed", lambda r: sorted(os.listdir(r / w)),
         ("ok", ["emptydir", "file.txt", "full", "made.txt", "newdir", "other.txt", "sl"]))
    twins_agree(ctx, w)


def check_rename(ctx: Ctx) -> None:
    w = "w-rename"
    same(ctx, "rename", lambda r: os.rename(r / w / "other.txt", r / w / "renamed.txt"), ("ok", None))
    same(ctx, "old name gone", lambda r: os.lstat(r / w / "other.txt").st_size, ("error", "ENOENT"))
    same(ctx, "new name there", lambda r: (r / w / "renamed.txt").read_bytes(), ("ok", b"other\n"))
    same(ctx, "rename over an existing file",
         lambda r: (os.rename(r / w / "renamed.txt", r / w / "file.txt"), (r / w / "file.txt").read_bytes())[1],
         ("ok", b"other\n"))
    same(ctx, "rename a folder with content",
         lambda r: (os.rename(r / w / "full", r / w / "moved"), (r / w / "moved" / "inside.txt").read_bytes())[1],
         ("ok", b"in\n"))
    same(ctx, "old folder path gone", lambda r: os.lstat(r / w / "full" / "inside.txt").st_size,
         ("error", "ENOENT"))
    same(ctx, "rename into another folder",
         lambda r: os.rename(r / w / "file.txt", r / w / "moved" / "nested" / "f.txt"), ("ok", None))
    same(ctx, "rename a missing name", lambda r: os.rename(r / w / "nope", r / w / "x"), ("error", "ENOENT"))
    same(ctx, "rename a folder over a non-empty folder",
         lambda r: os.rename(r / w / "emptydir", r / w / "moved"), ("error", "ENOTEMPTY"))
    (ctx.raw / "raw" / w / "plain.txt").write_bytes(b"p")
    (ctx.view / "via" / w / "plain.txt").write_bytes(b"p")
    same(ctx, "rename a file over a folder", lambda r: os.rename(r / w / "plain.txt", r / w / "emptydir"),
         ("error", "EISDIR"))
    same(ctx, "rename a folder over a file", lambda r: os.rename(r / w / "emptydir", r / w / "plain.txt"),
         ("error", "ENOTDIR"))
    same(ctx, "rename a folder over an empty folder",
         lambda r: (os.mkdir(r / w / "target"), os.rename(r / w / "emptydir", r / w / "target"))[1], ("ok", None))
    same(ctx, "listing after renames", lambda r: sorted(os.listdir(r / w)), ("ok", ["moved", "plain.txt", "target"]))
    twins_agree(ctx, w)


def check_unlink_rmdir(ctx: Ctx) -> None:
    w = "w-unlink_rmdir"
    same(ctx, "unlink", lambda r: os.unlink(r / w / "file.txt"), ("ok", None))
    same(ctx, "unlinked name gone", lambda r: os.lstat(r / w / "file.txt").st_size, ("error", "ENOENT"))
    same(ctx, "unlink again", lambda r: os.unlink(r / w / "file.txt"), ("error", "ENOENT"))
    same(ctx, "unlink a folder", lambda r: os.unlink(r / w / "emptydir"), ("error", "EISDIR"))
    same(ctx, "rmdir a non-empty folder", lambda r: os.rmdir(r / w / "full"), ("error", "ENOTEMPTY"))
    same(ctx, "rmdir a file", lambda r: os.rmdir(r / w / "other.txt"), ("error", "ENOTDIR"))
    same(ctx, "rmdir", lambda r: os.rmdir(r / w / "emptydir"), ("ok", None))
    same(ctx, "rmdir again", lambda r: os.rmdir(r / w / "emptydir"), ("error", "ENOENT"))

    def unlink_open(r: Path) -> bytes:  # an open file outlives its name
        f = open(r / w / "other.txt", "rb")
        try:
            os.unlink(r / w / "other.txt")
            return f.read()
        finally:
            f.close()

    same(ctx, "read after unlink of an open file", unlink_open, ("ok", b"other\n"))
    same(ctx, "empty a folder, then rmdir",
         lambda r: (os.unlink(r / w / "full" / "inside.txt"), os.rmdir(r / w / "full" / "nested"),
                    os.rmdir(r / w / "full"))[2], ("ok", None))
    same(ctx, "listing after removals", lambda r: os.listdir(r / w), ("ok", []))
    twins_agree(ctx, w)


def check_errno_values(ctx: Ctx) -> None:
    w = "w-errno_values"
    expected = [
        ("open a missing file", lambda r: open(r / w / "nope", "rb").close(), "ENOENT"),
        ("open a folder for writing", lambda r: open(r / w / "full", "wb").close(), "EISDIR"),
        ("open a file as a folder", lambda r: os.close(os.open(r / w / "file.txt", os.O_RDONLY | os.O_DIRECTORY)),
         "ENOTDIR"),
        ("mkdir over a folder", lambda r: os.mkdir(r / w / "full"), "EEXIST"),
        ("O_EXCL create over a folder", lambda r: os.close(os.open(r / w / "full", os.O_CREAT | os.O_EXCL)),
         "EEXIST"),
        ("rmdir non-empty", lambda r: os.rmdir(r / w / "full"), "ENOTEMPTY"),
        ("list a file named with a trailing slash", lambda r: os.listdir(f"{r / w / 'file.txt'}/"), "ENOTDIR"),
        ("unlink a folder", lambda r: os.unlink(r / w / "full"), "EISDIR"),
        ("truncate a folder", lambda r: os.truncate(r / w / "full", 0), "EISDIR"),
        ("stat below a missing folder", lambda r: os.stat(r / w / "a" / "b"), "ENOENT"),
    ]
    for label, fn, name in expected:
        got = same(ctx, label, fn)
        assert got == ("error", name), f"{label}: {got!r} on both, expected {name}"
    twins_agree(ctx, w)


def check_cache_answers_repeated_stat(ctx: Ctx) -> None:
    """The point of the mount: a repeated stat does not reach the share. Also times both, for the record."""
    target = ctx.view / "via" / "dir" / "b.txt"
    os.lstat(target)
    before = _backing_calls()
    n = 200
    t0 = time.perf_counter()
    for _ in range(n):
        os.lstat(target)
    ctx.timings["mount_warm_stat_us"] = (time.perf_counter() - t0) / n * 1e6
    after = _backing_calls()
    raw_target = ctx.raw / "via" / "dir" / "b.txt"
    t0 = time.perf_counter()
    for _ in range(n):
        os.lstat(raw_target)
    ctx.timings["raw_9p_stat_us"] = (time.perf_counter() - t0) / n * 1e6
    assert after - before <= 1, f"{n} repeated stats made {after - before} calls on the share"
    # listing a cold folder through the mount vs on 9p (names + each entry's attributes)
    t0 = time.perf_counter()
    for e in os.scandir(ctx.raw / "raw" / "many"):
        e.stat(follow_symlinks=False)
    ctx.timings["raw_9p_list_60_ms"] = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    for e in os.scandir(ctx.view / "raw" / "many"):
        e.stat(follow_symlinks=False)
    ctx.timings["mount_cold_list_60_ms"] = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    for e in os.scandir(ctx.view / "raw" / "many"):
        e.stat(follow_symlinks=False)
    ctx.timings["mount_warm_list_60_ms"] = (time.perf_counter() - t0) * 1e3


def _inv_state(top: Path) -> dict[str, Any]:
    inv = top / "inv"
    return {
        "listing": sorted(os.listdir(inv)),
        "changed_size": outcome(lambda: os.stat(inv / "changed.txt").st_size)[1],
        "new": outcome(lambda: os.stat(inv / "new.txt").st_size)[0],
        "gone": outcome(lambda: os.stat(inv / "gone.txt").st_size)[0],
        "mode": outcome(lambda: stat.S_IMODE(os.stat(inv / "mode.txt").st_mode))[1],
    }


def check_host_change_hidden_before_invalidate(ctx: Ctx) -> None:
    before = _inv_state(ctx.view)  # warms every cache: entries, attributes, the listing, a negative entry
    expected_before = {"listing": ["changed.txt", "gone.txt", "mode.txt"], "changed_size": len(INV_OLD),
                       "new": "error", "gone": "ok", "mode": 0o644}
    assert before == expected_before, f"before the host change the mount shows {before}"
    (ctx.share / ".sync" / REQUEST).write_text("please\n")
    t0 = time.monotonic()
    while not (ctx.share / ".sync" / DONE).exists():
        assert time.monotonic() - t0 < 60, "the host did not make its change within 60 s"
        time.sleep(0.05)
    truth = _inv_state(ctx.raw)
    expected_after = {"listing": ["changed.txt", "mode.txt", "new.txt"], "changed_size": len(INV_NEW),
                      "new": "ok", "gone": "error", "mode": 0o600}
    assert truth == expected_after, f"9p does not show the host's change: {truth}"
    seen = _inv_state(ctx.view)
    assert seen == before, f"the cache (TTL {TTL} s) should still show {before}, the mount shows {seen}"


def check_open_reads_host_change(ctx: Ctx) -> None:
    """Close-to-open: opening a file asks the share, whatever the TTLs (docs/cache-coherence.md, 2)."""
    data = (ctx.view / "inv" / "changed.txt").read_bytes()
    assert data == INV_NEW, f"open after the host's change read {data!r}"


def check_host_change_visible_after_invalidate(ctx: Ctx) -> None:
    t0 = time.monotonic()
    done = subprocess.run([ctx.fsbridge, "invalidate", str(ctx.view / "inv")], capture_output=True, text=True,
                          timeout=120)
    ctx.timings["invalidate_command_s"] = time.monotonic() - t0
    assert done.returncode == 0, f"fsbridge invalidate exited {done.returncode}: {done.stderr.strip()}"
    seen = _inv_state(ctx.view)
    truth = _inv_state(ctx.raw)
    assert seen == truth, f"after invalidate the mount shows {seen}, 9p shows {truth}"
    assert (ctx.view / "inv" / "new.txt").read_bytes() == b"created on the host\n"
    assert stat_fields(os.stat(ctx.view / "inv" / "changed.txt")) == stat_fields(os.stat(ctx.raw / "inv" /
                                                                                          "changed.txt"))


def check_unmount_clean(ctx: Ctx) -> None:
    assert ctx.proc is not None and ctx.proc.poll() is None, f"the mount process died: {_log(ctx)}"
    done = subprocess.run(["fusermount3", "-u", str(MOUNTPOINT)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"fusermount3 -u: {done.stderr.strip()}"
    ctx.proc.wait(timeout=60)
    assert ctx.proc.returncode == 0, f"fsbridge mount exited {ctx.proc.returncode}: {_log(ctx)}"
    assert "Traceback" not in _log(ctx), _log(ctx)


def _backing_calls() -> int:
    return int(json.loads(os.getxattr(MOUNTPOINT, "user.fsbridge.stats"))["backing_calls_total"])


def _log(ctx: Ctx) -> str:
    try:
        return ctx.log.read_text(errors="replace")[-2000:]
    except OSError:
        return "(no log)"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--share", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    ctx = Ctx(args.share)
    results: dict[str, dict[str, Any]] = {}
    for name in CHECKS:
        if name != "unmount_clean" and results.get("mount_started", {}).get("ok") is False:
            results[name] = {"ok": False, "detail": "not run: the mount did not start", "seconds": 0.0}
            continue
        t0 = time.monotonic()
        try:
            globals()[f"check_{name}"](ctx)
            results[name] = {"ok": True, "detail": "", "seconds": time.monotonic() - t0}
        except Exception as e:  # noqa: BLE001 - every failure is a result for the host to report
            detail = f"{type(e).__name__}: {e}" if isinstance(e, AssertionError) else traceback.format_exc()
            results[name] = {"ok": False, "detail": detail[-4000:], "seconds": time.monotonic() - t0}
        print(f"{name}: {'ok' if results[name]['ok'] else 'FAILED'} ({results[name]['seconds']:.2f} s)", flush=True)
    if ctx.proc is not None and ctx.proc.poll() is None:  # a failed unmount check: do not leave it running
        subprocess.run(["fusermount3", "-uz", str(MOUNTPOINT)], capture_output=True)
        ctx.proc.kill()
    partial = args.out.with_suffix(".partial")
    partial.write_text(json.dumps({"checks": results, "timings": ctx.timings}, indent=1))
    os.rename(partial, args.out)
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
