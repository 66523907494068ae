"""Shared fixtures: real mounts started as a user would start them, and torn down with a check.

The mount fixtures start ``fsbridge mount --foreground`` / ``fsbridge emulate --foreground`` in a
subprocess (the installed console script), poll until the mount point is mounted, fail at once if the
process died, and in teardown unmount with ``fusermount3 -u`` (asserting that it worked), then
terminate / kill the process and remove the mount point.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
FSBRIDGE = str(Path(sys.executable).with_name("fsbridge"))


def fuse_available() -> bool:
    return os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


needs_fuse = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (allow_other, other users, chown)")


class Mounted:
    """A running fsbridge process and its mount point."""

    def __init__(self, argv: list[str], mountpoint: Path, log: Path) -> None:
        self.argv = argv
        self.path = mountpoint
        self.log_path = log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not os.path.ismount(mountpoint):
            if self.proc.poll() is not None:
                self._log.close()
                raise RuntimeError(f"mount process exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"not mounted within 20 s:\n{self.log()}")
            time.sleep(0.02)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stats(self) -> dict:
        import json

        return json.loads(os.getxattr(self.path, "user.fsbridge.stats"))

    def backing_calls(self) -> int:
        return int(self.stats()["backing_calls_total"])

    def stop(self) -> None:
        """Unmount (checked), then make sure the process is gone."""
        try:
            if os.path.ismount(self.path):
                result = subprocess.run(["fusermount3", "-u", str(self.path)], capture_output=True, text=True)
                if result.returncode != 0:
                    subprocess.run(["fusermount3", "-uz", str(self.path)], capture_output=True)
                    raise AssertionError(f"fusermount3 -u failed: {result.stderr}")
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            self._log.close()
        assert "Traceback" not in self.log(), self.log()


@pytest.fixture
def mounter(tmp_path: Path) -> Iterator[Callable[..., Mounted]]:
    """mounter("mount", *args) or mounter("emulate", SOURCE, *args): a real foreground mount."""
    if not fuse_available():
        pytest.skip("needs /dev/fuse and fusermount3")
    started: list[Mounted] = []
    counter = iter(range(1000))

    def start(command: str, *args: str, mountpoint: Path | None = None) -> Mounted:
        n = next(counter)
        mp = mountpoint or tmp_path / f"mnt{n}"
        mp.mkdir(exist_ok=True)
        if command == "emulate":
            source, *rest = args
            argv = [FSBRIDGE, "emulate", source, str(mp), "--foreground", *rest]
        else:
            argv = [FSBRIDGE, "mount", str(mp), "--foreground", *args]
        m = Mounted(argv, mp, tmp_path / f"mount{n}.log")
        started.append(m)
        return m

    yield start
    errors = []
    for m in reversed(started):  # the cached mount before the emulator under it
        try:
            m.stop()
        except AssertionError as e:
            errors.append(e)
        try:
            m.path.rmdir()
        except OSError:
            pass
    if errors:
        raise errors[0]


@pytest.fixture
def bridge(tmp_path: Path, mounter: Callable[..., Mounted]) -> tuple[Path, Path, Mounted]:
    """(backing folder, the same folder seen through the cached mount, the mount)."""
    backing = tmp_path / "backing"
    backing.mkdir()
    m = mounter("mount", "--map", f"/host/data={backing}")
    return backing, m.path / "host" / "data", m
