"""Mount lifecycle through the installed command: start, refuse, signals, busy, unmount."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest

from conftest import FSBRIDGE, Mounted, needs_fuse


def run(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FSBRIDGE, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


@pytest.fixture
def share(tmp_path: Path) -> Path:
    s = tmp_path / "share"
    s.mkdir()
    (s / "f").write_text("x")
    return s


def assert_clean_failure(result: subprocess.CompletedProcess[str], words: str) -> None:
    assert result.returncode == 1, result
    assert words in result.stderr
    assert "Traceback" not in result.stderr


@needs_fuse
def test_mount_refuses_bad_mount_points(tmp_path: Path, share: Path) -> None:
    assert_clean_failure(run("mount", str(tmp_path / "missing"), "--map", f"/h={share}"), "does not exist")
    full = tmp_path / "full"
    full.mkdir()
    (full / "file").write_text("x")
    assert_clean_failure(run("mount", str(full), "--map", f"/h={share}"), "is not empty")
    afile = tmp_path / "afile"
    afile.write_text("x")
    result = run("mount", str(afile), "--map", f"/h={share}")
    assert result.returncode == 2 and "is a file" in result.stderr  # a usage error, caught by the parser
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_clean_failure(run("mount", str(empty), "--map", f"/h={tmp_path / 'nothing-here'}"), "does not exist")


@needs_fuse
def test_background_mount_then_umount(tmp_path: Path, share: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    started = run("mount", str(mnt), "--map", f"/h={share}")
    assert started.returncode == 0, started.stderr
    try:
        assert os.path.ismount(mnt)
        pid = int(started.stdout.rsplit("pid ", 1)[1].rstrip(").\n"))
        assert (mnt / "h" / "f").read_text() == "x"
        again = run("mount", str(mnt), "--map", f"/h={share}")
        assert_clean_failure(again, "already a mount point")
    finally:
        stopped = run("umount", str(mnt))
    assert stopped.returncode == 0, stopped.stderr
    assert not os.path.ismount(mnt)
    for _ in range(200):  # the daemon exits once its mount is gone
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the mount daemon did not exit after umount")


@needs_fuse
def test_sigterm_and_sigint_unmount_cleanly(tmp_path: Path, share: Path, mounter: Callable[..., Mounted]) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        m = mounter("mount", "--map", f"/h={share}")
        assert (m.path / "h" / "f").exists()
        m.proc.send_signal(signum)
        assert m.proc.wait(timeout=10) == 0
        assert not os.path.ismount(m.path)


@needs_fuse
def test_umount_of_a_busy_mount_says_busy_and_leaves_it_working(share: Path,
                                                                mounter: Callable[..., Mounted]) -> None:
    m = mounter("mount", "--map", f"/h={share}")
    holder = subprocess.Popen(["sleep", "30"], cwd=m.path / "h")
    try:
        time.sleep(0.2)
        result = run("umount", str(m.path))
        assert_clean_failure(result, "busy")
        assert (m.path / "h" / "f").read_text() == "x"
    finally:
        holder.kill()
        holder.wait()


def test_umount_and_stats_refuse_what_is_not_ours(tmp_path: Path) -> None:
    assert_clean_failure(run("umount", str(tmp_path)), "is not mounted")
    assert_clean_failure(run("stats", str(tmp_path)), "not on an fsbridge mount")


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    result = run("mount")
    assert result.returncode == 2
    assert "Missing argument" in result.stderr
    result = run("mount", str(tmp_path), "--entry-ttl", "-1")
    assert result.returncode == 2
    result = run("emulate", str(tmp_path), str(tmp_path / "m"), "--profile", "floppy")
    assert_clean_failure(result, "unknown profile")


def test_every_command_teaches_with_an_example() -> None:
    for command in ("mount", "umount", "invalidate", "stats", "emulate", "map"):
        result = run(command, "--help")
        assert result.returncode == 0
        assert "Example" in result.stdout, command


@needs_fuse
@pytest.mark.skipif(os.geteuid() != 0, reason="the read-ahead of a mount is set through sysfs, as root")
def test_a_background_mount_returns_with_its_read_ahead_set(tmp_path: Path, share: Path) -> None:
    """A file opened right after `fsbridge mount` returns keeps the read-ahead of that moment: 1 MiB, not
    the kernel's 128 KiB, so a background start returns only once the INIT exchange and the setting are done."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    started = run("mount", str(mnt), "--map", f"/h={share}")
    assert started.returncode == 0, started.stderr
    try:
        with open("/proc/self/mountinfo") as f:
            device = next(line.split()[2] for line in f if line.split()[4] == str(mnt))
        with open(f"/sys/class/bdi/{device}/read_ahead_kb") as f:
            assert f.read().strip() == "1024"
    finally:
        stopped = run("umount", str(mnt))
    assert stopped.returncode == 0, stopped.stderr
