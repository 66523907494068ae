"""Child processes of the bench: fsbridge commands, long-lived services, timed runs, and their cleanup.

Everything the bench starts that could outlive it (a mount, a server, podman's service, a running workload)
is entered in a `Registry` the moment it exists; `Registry.close()` ends all of it in reverse order, and the
runner calls it from a `finally`, so an error, a failed variant or Ctrl-C leaves nothing behind. Every child
runs in its own session (process group): Ctrl-C in the terminal reaches only the bench, which then ends its
children in order (a workload before the mount it reads from, a mount before the share under it).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil

from fsbridge.errors import FsbridgeError

log = logging.getLogger(__name__)


class BenchError(FsbridgeError):
    reason = "bench-failed"


@dataclass
class Finished:
    """A timed child run: how it ended, its wall time and its resource usage (from wait4)."""

    argv: list[str]
    returncode: int | None  # None: killed at the time bound
    timed_out: bool
    wall_s: float
    stdout: str
    stderr: str
    rusage: dict[str, float] = field(default_factory=dict)

    def error_text(self, limit: int = 600) -> str:
        text = self.stderr.strip() or self.stdout.strip() or f"exit status {self.returncode}"
        lines = text.splitlines()
        text = "\n".join(lines[-8:])
        return text[-limit:]


def end_process_group(pid: int, *, grace: float = 5.0) -> None:
    """SIGTERM the process group led by `pid`; once the leader is gone (or after `grace` seconds), SIGKILL
    whatever is left in the group."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    wait_pid_gone(pid, grace)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    wait_pid_gone(pid, grace)
    try:  # reap the leader if it is our child, so that it does not linger as a zombie
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def wait_pid_gone(pid: int, timeout: float) -> bool:
    """Wait until `pid` has exited. A zombie counts as exited: a background daemon is not our child, and
    whoever adopted it (init) reaps it in its own time."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.Error:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def mounts_under(folder: str | Path) -> list[str]:
    """Mount points at or below `folder`, deepest first (as /proc/self/mountinfo lists them)."""
    folder = os.path.realpath(folder)
    found = []
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            for line in f:
                point = line.split()[4].decode("unicode_escape").encode("latin-1").decode(errors="replace")
                if point == folder or point.startswith(folder.rstrip("/") + "/"):
                    found.append(point)
    except OSError:
        pass
    return sorted(set(found), key=len, reverse=True)


def force_unmount(point: str) -> None:
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    for cmd in ([tool, "-u", "-z", point] if tool else None, ["umount", "-l", point]):
        if cmd is None:
            continue
        try:
            subprocess.run(cmd, capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            continue
        if not os.path.ismount(point):
            return


class Registry:
    """What the bench started and must end: a stack of (description, cleanup function)."""

    def __init__(self) -> None:
        self._items: list[tuple[int, str, Callable[[], None]]] = []
        self._next = 0
        self._lock = threading.Lock()
        self.problems: list[str] = []  # cleanups that failed, for the report

    def push(self, what: str, cleanup: Callable[[], None]) -> int:
        with self._lock:
            self._next += 1
            self._items.append((self._next, what, cleanup))
            return self._next

    def release(self, token: int) -> None:
        """Run one cleanup now (a cold mount after its run) and forget it."""
        with self._lock:
            found = [item for item in self._items if item[0] == token]
            self._items = [item for item in self._items if item[0] != token]
        for _, what, cleanup in found:
            self._run(what, cleanup)

    def forget(self, token: int) -> None:
        with self._lock:
            self._items = [item for item in self._items if item[0] != token]

    def _run(self, what: str, cleanup: Callable[[], None]) -> None:
        try:
            cleanup()
        except Exception as e:  # keep cleaning the rest
            self.problems.append(f"{what}: {e}")
            log.warning("cleanup of %s failed: %s", what, e)

    def close(self) -> None:
        while True:
            with self._lock:
                if not self._items:
                    return
                _, what, cleanup = self._items.pop()
            self._run(what, cleanup)


class Fsbridge:
    """The fsbridge command line, run as a user runs it, with every mount it makes entered in the registry."""

    def __init__(self, argv: list[str], registry: Registry, env: dict[str, str]) -> None:
        self.argv = argv
        self.registry = registry
        self.env = env

    def run(self, *args: str, timeout: float = 120, env: dict[str, str] | None = None) -> str:
        try:
            result = subprocess.run(
                [*self.argv, *args],
                capture_output=True,
                text=True,
                timeout=timeout,
                env=env or self.env,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise BenchError(f"fsbridge {' '.join(args)} did not finish within {timeout:.0f} s") from None
        if result.returncode != 0:
            message = (result.stderr or result.stdout).strip().splitlines()
            raise BenchError(
                f"fsbridge {' '.join(args)} failed: {message[-1] if message else result.returncode}"
            )
        return result.stdout

    def mount(self, kind: str, mountpoint: Path, *args: str) -> "Mounted":
        """`fsbridge mount MOUNTPOINT ARGS` or `fsbridge emulate ARGS[0] MOUNTPOINT ARGS[1:]` (background)."""
        mountpoint.mkdir(parents=True, exist_ok=True)
        if kind == "emulate":
            argv = ["emulate", args[0], str(mountpoint), *args[1:]]
        else:
            argv = ["mount", str(mountpoint), *args]
        # entered before it exists: an interrupt between the mount and the registration leaves nothing
        mounted = Mounted(self, mountpoint, None)
        mounted.token = self.registry.push(f"mount {mountpoint}", mounted.cleanup)
        out = self.run(*argv, timeout=60)
        m = re.search(r"\(pid (\d+)\)", out)
        mounted.pid = int(m.group(1)) if m else None
        return mounted

    def stats(self, *mountpoints: Path) -> list[dict[str, Any] | None]:
        """`fsbridge stats MNT --json` for every mount point, in parallel; None where it failed."""
        procs = [
            subprocess.Popen(
                [*self.argv, "stats", str(m), "--json"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
                text=True,
                env=self.env,
            )
            for m in mountpoints
        ]
        out: list[dict[str, Any] | None] = []
        import json

        for proc in procs:
            try:
                text, _ = proc.communicate(timeout=60)
                out.append(json.loads(text) if proc.returncode == 0 else None)
            except (subprocess.TimeoutExpired, ValueError):
                proc.kill()
                proc.wait()
                out.append(None)
        return out


@dataclass
class Mounted:
    """A background fsbridge mount (or emulator) and its daemon."""

    fsbridge: Fsbridge
    path: Path
    pid: int | None
    token: int = 0

    def unmount(self) -> None:
        self.fsbridge.registry.release(self.token)

    def cleanup(self) -> None:
        point = str(self.path)
        if os.path.ismount(point):
            try:
                self.fsbridge.run("umount", point, timeout=60)
            except BenchError as e:
                log.warning("%s; detaching it", e)
        if os.path.ismount(point):
            force_unmount(point)
        if self.pid is not None and not wait_pid_gone(self.pid, 15):
            end_process_group(self.pid)
        if os.path.ismount(point):
            raise BenchError(f"{point} is still mounted")


def tail_lines(path: Path, lines: int = 5) -> str:
    """The last lines of a log file, on one line ("" when it cannot be read)."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


class Service:
    """A long-lived child (a server, podman's API service, the sink) in its own session, with a log file."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        registry: Registry,
        log_path: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc: subprocess.Popen[bytes] | None = None
        self.token = registry.push(f"{name} process", self.stop)
        self.registry = registry
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_ready(self, ready: Callable[[], bool], timeout: float = 30) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with status {self.proc.returncode}: {self.log_tail()}")
            time.sleep(0.03)
        raise BenchError(f"{self.name} was not ready within {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 5) -> str:
        return tail_lines(self.log_path, lines)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            end_process_group(self.proc.pid)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._log.close()

    def close(self) -> None:
        self.registry.release(self.token)


def run_timed(
    argv: list[str],
    *,
    timeout: float,
    registry: Registry,
    env: dict[str, str] | None,
    scratch: Path,
    on_start: Callable[[int], None] | None = None,
) -> Finished:
    """Run `argv` in its own session until it exits or `timeout` passes (then its group is ended).

    The wall time runs from just before the spawn to the moment wait4 returns; wait4 also gives the child's
    CPU time and peak resident set (including the descendants it waited for)."""
    out_path, err_path = scratch / "run.out", scratch / "run.err"
    timed_out = threading.Event()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
        token = registry.push(f"run {argv[0]}", lambda: end_process_group(proc.pid, grace=2))

        def expire() -> None:
            timed_out.set()
            end_process_group(proc.pid, grace=2)

        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
        try:
            if on_start is not None:
                on_start(proc.pid)
            _, status, ru = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        try:  # the leader is gone; anything it left in its group goes too
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        registry.forget(token)
    stdout = out_path.read_text(errors="replace")
    stderr = err_path.read_text(errors="replace")
    usage = {
        "user_s": ru.ru_utime,
        "system_s": ru.ru_stime,
        "maxrss_bytes": ru.ru_maxrss * 1024,
        "inblock_bytes": ru.ru_inblock * 512,
        "oublock_bytes": ru.ru_oublock * 512,
    }
    return Finished(
        argv, None if timed_out.is_set() else proc.returncode, timed_out.is_set(), wall, stdout, stderr, usage
    )
