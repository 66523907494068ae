"""Hostile and unlucky input never crashes the daemon or leaves a stale mount.

Odd names (newlines, bytes that are not UTF-8, the longest allowed and one byte more), deep trees,
symlink loops, a file that changes size while it is read, and the share disappearing underneath the
mount. After each test the daemon must still run and answer, and the mount fixture's teardown checks
that it unmounts cleanly with no traceback in its log.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Mounted
from mount_helpers import daemon_healthy, outcome

pytestmark = pytest.mark.fuse

Bridge = tuple[Path, Path, Mounted]


def mkdir_at(dir_fd: int, name: str) -> None:
    os.mkdir(name, dir_fd=dir_fd)


def read_bytes(path: bytes | Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture
def hostile(bridge: Bridge) -> Iterator[Bridge]:
    yield bridge
    daemon_healthy(bridge[2])


def test_odd_names(hostile: Bridge) -> None:
    backing, view, _ = hostile
    odd = [
        b"new\nline", b"\nleading-newline", b"trailing-newline\n", b"tab\there", b"carriage\rreturn",
        b"\xff\xfe not utf-8", b"\xc3\x28 broken sequence", b"latin-1 \xe9t\xe9", b"\x01\x02\x1b[31m",
        b" leading space", b"trailing space ", b"-dash", b"*?[glob]", b"back\\slash", b"'quote\"",
        unicodedata.normalize("NFC", "caf\u00e9").encode(), unicodedata.normalize("NFD", "caf\u00e9").encode(),
        "emoji \U0001F600".encode(), b"x" * 255,
    ]
    v, b = os.fsencode(view), os.fsencode(backing)
    for name in odd:
        with open(v + b"/" + name, "wb") as f:
            f.write(name)
        os.mkdir(v + b"/dir-" + name[:250])
    # NFC and NFD spellings are two different names on Linux, through the mount as on the backing
    assert sorted(os.listdir(v)) == sorted(os.listdir(b))
    assert len(os.listdir(v)) == 2 * len(odd)
    for name in odd:
        assert read_bytes(b + b"/" + name) == name
        assert read_bytes(v + b"/" + name) == name
        st = os.lstat(v + b"/" + name)
        assert st.st_size == len(name)
    # names made on the backing side show up too (never looked up before, so nothing is cached)
    for name in odd[:5]:
        os.symlink(name, b + b"/host-" + name[:240])
        assert os.readlink(v + b"/host-" + name[:240]) == name
    # rename between odd names, then remove them all
    os.rename(v + b"/" + odd[0], v + b"/" + odd[5] + b".renamed")
    assert os.path.exists(b + b"/" + odd[5] + b".renamed")
    for name in os.listdir(v):
        path = v + b"/" + name
        (os.rmdir if os.path.isdir(path) and not os.path.islink(path) else os.unlink)(path)
    assert os.listdir(b) == [] and os.listdir(v) == []


def test_name_length_limits_match_the_backing(hostile: Bridge) -> None:
    backing, view, _ = hostile
    longest, too_long = "n" * 255, "n" * 256
    (view / ("d" + longest[1:])).mkdir()
    assert (backing / ("d" + longest[1:])).is_dir()
    (view / longest).write_text("fits")
    assert (backing / longest).read_text() == "fits"
    assert os.listdir(view / ("d" + longest[1:])) == []
    cases: list[Callable[[Path], object]] = [
        lambda r: (r / too_long).write_text("no"),
        lambda r: os.mkdir(r / too_long),
        lambda r: os.lstat(r / too_long),
        lambda r: os.symlink("x", r / too_long),
        lambda r: os.rename(r / longest, r / too_long),
        lambda r: os.link(r / longest, r / too_long),
        lambda r: os.symlink("t" * 5000, r / "link-target-too-long"),  # over PATH_MAX: ENAMETOOLONG
        lambda r: os.listdir(r / ("u" * 256) / "x"),
    ]
    for case in cases:
        expected = outcome(case, backing)
        assert expected[0] == "error"
        assert outcome(case, view) == expected
    assert sorted(os.listdir(view)) == sorted(os.listdir(backing))


def test_deep_trees(hostile: Bridge) -> None:
    backing, view, _ = hostile
    # depth 100 through ordinary paths
    deep = view.joinpath(*[f"level{i:03d}" for i in range(100)])
    deep.mkdir(parents=True)
    (deep / "bottom").write_text("down here")
    mirror = backing.joinpath(*[f"level{i:03d}" for i in range(100)])
    assert (mirror / "bottom").read_text() == "down here"
    assert sum(len(dirs) for _, dirs, _ in os.walk(view)) == 100
    # move the whole chain under a new top: every path below changes at once
    os.rename(view / "level000", view / "moved")
    moved = view.joinpath("moved", *[f"level{i:03d}" for i in range(1, 100)])
    assert (moved / "bottom").read_text() == "down here"
    assert not os.path.exists(deep)

    # Deeper than PATH_MAX, built with directory descriptors. The daemon reaches backing files by
    # their full path, so past PATH_MAX it cannot follow a local folder; it must refuse cleanly
    # (ENAMETOOLONG) rather than crash or hang, and keep serving what it can reach.
    name = "p" * 200
    results = []
    fd = os.open(view, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(30):  # 30 * 201 bytes: well past 4096
            result = outcome(mkdir_at, fd, name)
            results.append(result)
            if result[0] != "ok":
                break
            new = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = new
    finally:
        os.close(fd)
    assert all(r == ("ok", None) or r == ("error", "ENAMETOOLONG") for r in results), results
    assert results[:15] == [("ok", None)] * 15
    assert (view / "moved").is_dir()


def test_symlink_loops(hostile: Bridge) -> None:
    backing, view, _ = hostile
    os.symlink("self", view / "self")
    os.symlink("pong", view / "ping")
    os.symlink("ping", view / "pong")
    os.mkdir(view / "d")
    os.symlink("..", view / "d" / "up")  # a directory loop, only when followed
    for i in range(45):  # a chain longer than the kernel's 40 follows
        os.symlink(f"chain{i + 1}", view / f"chain{i}")
    (view / "chain45").write_text("end")
    for root in (backing, view):
        assert outcome(read_bytes, root / "self") == ("error", "ELOOP")
        assert outcome(os.stat, root / "ping") == ("error", "ELOOP")
        assert outcome(os.listdir, root / "pong") == ("error", "ELOOP")
        assert outcome(os.stat, root / "chain0") == ("error", "ELOOP")
        assert outcome(read_bytes, root / "chain10") == ("ok", b"end")
        assert os.readlink(root / "self") == "self" and os.readlink(root / "ping") == "pong"
        assert os.path.samefile(root / "d" / "up" / "d" / "up" / "d", root / "d")
        assert sorted(os.listdir(root / "d" / "up" / "d" / "up")) == sorted(os.listdir(root))
    walked = [top for top, _, _ in os.walk(view)]  # os.walk does not follow links: it ends
    assert len(walked) == 2


def test_file_changing_size_while_read(hostile: Bridge) -> None:
    backing, view, _ = hostile
    target = backing / "growing"
    target.write_bytes(b"a" * 100_000)
    stop = threading.Event()
    problems: list[BaseException] = []
    reads = [0]

    def writer() -> None:  # the host side: appends and truncations, as a log rotator or a build does
        i = 0
        while not stop.is_set():
            with open(target, "ab") as f:
                f.write(b"a" * (1000 + 3000 * (i % 5)))
            if i % 7 == 0:
                os.truncate(target, (i * 7919) % 50_000)
            i += 1

    def whole_reader() -> None:
        while not stop.is_set():
            try:
                data = (view / "growing").read_bytes()
                assert data.strip(b"a\0") == b"", data[:100]
                reads[0] += 1
            except BaseException as e:  # noqa: BLE001 - reported below
                problems.append(e)
                return

    def handle_reader() -> None:
        fd = os.open(view / "growing", os.O_RDONLY)
        try:
            offset = 0
            while not stop.is_set():
                data = os.pread(fd, 65536, offset)  # data, or b"" at the end of the file
                assert data.strip(b"a\0") == b""
                offset = 0 if not data or offset > 200_000 else offset + len(data)
                os.fstat(fd)
        except BaseException as e:  # noqa: BLE001
            problems.append(e)
        finally:
            os.close(fd)

    threads = [threading.Thread(target=f) for f in (writer, whole_reader, whole_reader, handle_reader)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join(timeout=20)
    assert not any(t.is_alive() for t in threads), "a reader hung"
    assert not problems, problems
    assert reads[0] > 0
    # once the writer is done, a new open sees exactly what the backing has (close-to-open)
    assert (view / "growing").read_bytes() == target.read_bytes()


# -- the share disappearing underneath --------------------------------------------------------------------

PROBE = r"""
import json, os, sys, time
view, suffix = sys.argv[1], sys.argv[2]
ops = {
    "read a file read before": lambda: open(os.path.join(view, "warm.txt"), "rb").read(),
    "read a file never seen": lambda: open(os.path.join(view, "cold.txt"), "rb").read(),
    "stat a name never seen": lambda: os.stat(os.path.join(view, "cold-dir", "x")).st_size,
    "list a folder never listed": lambda: os.listdir(os.path.join(view, "cold-dir")),
    "create a file": lambda: open(os.path.join(view, "new.txt" + suffix), "wb").close(),
    "make a folder": lambda: os.mkdir(os.path.join(view, "new-dir" + suffix)),
    "statfs": lambda: os.statvfs(view).f_blocks,
    "list the mapping root": lambda: os.listdir(view),
}
out = {}
for name, op in ops.items():
    t = time.monotonic()
    try:
        op()
        result = "ok"
    except OSError as e:
        result = e.errno
    out[name] = [result, time.monotonic() - t]
print(json.dumps(out))
"""

ACCEPTED = {errno.EIO, errno.ENOENT, errno.ENOTCONN}


def probe(view: Path, suffix: str = "") -> dict[str, tuple[object, float]]:
    """Run the operations in a child process, so that a hang is a failed test and not a stuck run.
    `suffix` makes the names to create new ones."""
    try:
        proc = subprocess.run([sys.executable, "-c", PROBE, str(view), suffix], capture_output=True, text=True,
                              timeout=30, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("operations through the mount hung after the share went away")
    assert proc.returncode == 0, proc.stderr
    return {k: (v[0], v[1]) for k, v in json.loads(proc.stdout).items()}


@pytest.fixture
def over_emulator(tmp_path: Path, mounter: Callable[..., Mounted]) -> Iterator[tuple[Mounted, Mounted, Path]]:
    """The cached mount over an emulated share: (emulator, cached mount, the share seen through both)."""
    source = tmp_path / "source"
    (source / "cold-dir").mkdir(parents=True)
    (source / "warm.txt").write_text("warm")
    (source / "cold.txt").write_text("cold")
    emulator = mounter("emulate", str(source), "--latency-us", "50")
    cached = mounter("mount", "--map", f"/host/share={emulator.path}")
    view = cached.path / "host" / "share"
    assert (view / "warm.txt").read_text() == "warm"
    try:
        yield emulator, cached, view
    finally:
        if emulator.proc.poll() is None:
            emulator.proc.kill()
            emulator.proc.wait()
        # a killed FUSE daemon leaves its mount behind ("transport endpoint is not connected")
        subprocess.run(["fusermount3", "-uz", str(emulator.path)], capture_output=True, check=False)


def check_fails_fast(results: dict[str, tuple[object, float]]) -> None:
    for name, (result, seconds) in results.items():
        assert seconds < 5, f"{name} took {seconds:.1f} s"
        assert result == "ok" or result in ACCEPTED, f"{name}: {result}"
    # what has to reach the share fails with EIO (the share's own ENOTCONN is translated)
    for name in ("read a file never seen", "create a file", "list a folder never listed", "statfs"):
        assert results[name][0] == errno.EIO, (name, results[name])


def unmounts_cleanly(cached: Mounted) -> None:
    """fusermount3 -u works (Mounted.stop asserts it) and the daemon then exits on its own, successfully."""
    cached.stop()
    assert not os.path.ismount(cached.path)
    assert cached.proc.returncode == 0, cached.log()


def test_share_killed_underneath(over_emulator: tuple[Mounted, Mounted, Path]) -> None:
    emulator, cached, view = over_emulator
    os.kill(emulator.proc.pid, signal.SIGKILL)
    emulator.proc.wait(timeout=10)
    check_fails_fast(probe(view))
    check_fails_fast(probe(view, "-again"))  # and again: no stuck worker, no half-made entry
    daemon_healthy(cached)
    unmounts_cleanly(cached)


def test_share_lazily_unmounted_underneath(over_emulator: tuple[Mounted, Mounted, Path]) -> None:
    emulator, cached, view = over_emulator
    subprocess.run(["fusermount3", "-uz", str(emulator.path)], check=True, capture_output=True)
    # By design the mount holds the share's root open, so a share detached underneath keeps answering
    # from the share it started with (nothing else can be swapped in at that path).
    results = probe(view)
    assert results["read a file never seen"][0] == "ok"
    assert results["create a file"][0] == "ok"
    assert all(seconds < 5 for _, seconds in results.values())
    # and once the share's server is gone too, operations fail fast
    os.kill(emulator.proc.pid, signal.SIGKILL)
    emulator.proc.wait(timeout=10)
    results = probe(view, "-again")
    for name, (result, seconds) in results.items():
        assert seconds < 5, f"{name} took {seconds:.1f} s"
        assert result == "ok" or result in ACCEPTED, f"{name}: {result}"
    assert results["read a file never seen"][0] == errno.EIO
    daemon_healthy(cached)
    unmounts_cleanly(cached)
