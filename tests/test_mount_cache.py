"""The metadata cache on a real mount: what reaches the share, and when host changes become visible."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Callable

from conftest import FSBRIDGE, Mounted


def make_tree(root: Path, dirs: int = 4, files: int = 10) -> list[Path]:
    out = []
    for d in range(dirs):
        (root / f"d{d}").mkdir(parents=True, exist_ok=True)
        for f in range(files):
            p = root / f"d{d}" / f"f{f}.txt"
            p.write_text(f"{d}/{f}")
            out.append(p)
    return out


def test_a_warm_stat_never_reaches_the_share(bridge: tuple[Path, Path, Mounted]) -> None:
    backing, view, m = bridge
    paths = [view / p.relative_to(backing) for p in make_tree(backing)]
    for p in paths:
        os.lstat(p)
    before = m.backing_calls()
    for _ in range(3):
        for p in paths:
            os.lstat(p)
    assert m.backing_calls() == before


def test_a_listing_hands_every_entry_to_the_kernel_so_stats_after_it_are_free(
        bridge: tuple[Path, Path, Mounted]) -> None:
    backing, view, m = bridge
    make_tree(backing, dirs=1, files=50)
    os.lstat(view / "d0")
    stats = m.stats()["backing_calls"]
    names = os.listdir(view / "d0")
    assert len(names) == 50
    after_list = m.stats()["backing_calls"]
    assert after_list.get("readdir", 0) - stats.get("readdir", 0) == 1
    assert after_list["lstat"] - stats["lstat"] == 50
    total = m.backing_calls()
    for name in names:
        os.lstat(view / "d0" / name)
    assert m.backing_calls() == total, "readdirplus gave the kernel every entry's attributes"


def test_missing_names_are_remembered(bridge: tuple[Path, Path, Mounted]) -> None:
    backing, view, m = bridge
    assert not (view / "nope").exists()
    calls = m.backing_calls()
    for _ in range(5):
        assert not (view / "nope").exists()
    assert m.backing_calls() == calls


def test_changes_through_the_mount_are_visible_at_once(bridge: tuple[Path, Path, Mounted]) -> None:
    backing, view, m = bridge
    make_tree(backing, dirs=1, files=3)
    assert sorted(os.listdir(view / "d0")) == ["f0.txt", "f1.txt", "f2.txt"]
    assert not (view / "d0" / "new").exists()
    (view / "d0" / "new").write_text("12345")
    assert (view / "d0" / "new").stat().st_size == 5
    assert "new" in os.listdir(view / "d0")
    os.rename(view / "d0" / "f0.txt", view / "d0" / "g0.txt")
    assert sorted(os.listdir(view / "d0")) == ["f1.txt", "f2.txt", "g0.txt", "new"]
    with open(view / "d0" / "new", "a") as f:
        f.write("678")
    assert (view / "d0" / "new").stat().st_size == 8
    os.unlink(view / "d0" / "new")
    assert not (view / "d0" / "new").exists()
    os.chmod(view / "d0" / "f1.txt", 0o600)
    assert (view / "d0" / "f1.txt").stat().st_mode & 0o777 == 0o600


def test_host_changes_appear_at_once_after_invalidate(tmp_path: Path, mounter: Callable[..., Mounted]) -> None:
    backing = tmp_path / "share"
    make_tree(backing, dirs=1, files=2)
    m = mounter("mount", "--map", f"/h={backing}", "--attr-ttl", "3600", "--entry-ttl", "3600",
                "--dir-ttl", "3600", "--negative-ttl", "3600")
    view = m.path / "h" / "d0"
    assert sorted(os.listdir(view)) == ["f0.txt", "f1.txt"]
    assert not (view / "later.txt").exists()
    (backing / "d0" / "later.txt").write_text("from the host")
    (backing / "d0" / "f0.txt").write_text("rewritten on the host")
    assert not (view / "later.txt").exists(), "within the TTL the negative entry stands"
    result = subprocess.run([FSBRIDGE, "invalidate", str(view / "later.txt")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "cached facts dropped" in result.stdout
    assert (view / "later.txt").read_text() == "from the host"
    assert sorted(os.listdir(view)) == ["f0.txt", "f1.txt", "later.txt"]
    assert (view / "f0.txt").stat().st_size == len("rewritten on the host")
    assert (view / "f0.txt").read_text() == "rewritten on the host"


def test_host_changes_appear_when_the_ttl_runs_out(tmp_path: Path, mounter: Callable[..., Mounted]) -> None:
    backing = tmp_path / "share"
    make_tree(backing, dirs=1, files=1)
    m = mounter("mount", "--map", f"/h={backing}", "--attr-ttl", "0.5", "--entry-ttl", "0.5",
                "--dir-ttl", "0.5", "--negative-ttl", "0.5")
    view = m.path / "h" / "d0"
    assert os.listdir(view) == ["f0.txt"]
    assert not (view / "x").exists()
    (backing / "d0" / "x").write_text("x")
    os.truncate(backing / "d0" / "f0.txt", 0)
    time.sleep(0.8)
    assert sorted(os.listdir(view)) == ["f0.txt", "x"]
    assert (view / "f0.txt").stat().st_size == 0


def test_no_cache_sends_every_stat_to_the_share(tmp_path: Path, mounter: Callable[..., Mounted]) -> None:
    backing = tmp_path / "share"
    make_tree(backing, dirs=1, files=1)
    m = mounter("mount", "--map", f"/h={backing}", "--no-cache")
    target = m.path / "h" / "d0" / "f0.txt"
    os.lstat(target)
    calls = m.backing_calls()
    for _ in range(5):
        os.lstat(target)
    assert m.backing_calls() >= calls + 5


def test_stats_command_reports_hits_and_backing_calls(bridge: tuple[Path, Path, Mounted]) -> None:
    backing, view, m = bridge
    make_tree(backing, dirs=2, files=3)
    for top, _, files in os.walk(view):
        for f in files:
            os.lstat(os.path.join(top, f))
    out = subprocess.run([FSBRIDGE, "stats", str(m.path), "--json"], capture_output=True, text=True, check=True)
    stats = json.loads(out.stdout)
    assert stats["backing_calls"]["readdir"] >= 3
    assert stats["cache"]["attrs"]["size"] >= 6
    human = subprocess.run([FSBRIDGE, "stats", str(m.path)], capture_output=True, text=True, check=True).stdout
    assert "backing calls:" in human and "readdir" in human
    not_ours = subprocess.run([FSBRIDGE, "stats", str(backing)], capture_output=True, text=True)
    assert not_ours.returncode == 1
    assert "not on an fsbridge mount" in not_ours.stderr
    assert "Traceback" not in not_ours.stderr


def test_inode_numbers_are_the_backings_and_survive_the_kernel_forgetting(bridge: tuple[Path, Path, Mounted]) -> None:
    """git keeps st_ino in its index: a number that changed after the kernel dropped its caches would
    make it re-read every file."""
    backing, view, m = bridge
    make_tree(backing, dirs=2, files=3)
    before = {p: os.lstat(view / p.relative_to(backing)).st_ino for p in backing.rglob("*")}
    assert before == {p: os.lstat(p).st_ino for p in before}
    with open("/proc/sys/vm/drop_caches", "w") as f:  # the kernel forgets, and the daemon with it
        f.write("2\n")
    assert {p: os.lstat(view / p.relative_to(backing)).st_ino for p in before} == before
