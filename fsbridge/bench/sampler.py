"""Resource sampling during a run: CPU, memory and I/O of every process involved, every 0.5 s (psutil).

The processes are named by role ("workload", "mount", "share", "server", "podman", ...); each role's
process is sampled together with all of its descendants (a server's `podman load`, a service's children),
and a role may gain processes during the run (the workload starts after the sampler). One sample is also
taken at the start and at the stop, so even a run shorter than the interval has a before and an after.
A process that ends between two samples is counted up to its last sample (the runner replaces the timed
workload's CPU and I/O with the exact figures wait4 reports; its peak RSS stays the sampled one, because
wait4's maxrss includes the moment between fork and exec, when the child is still a copy of the bench).
Long-lived daemons also report their lifetime high-water mark (VmHWM), which the variants record after
each run.

Per role the run gets: CPU seconds used (user + system, summed over the role's processes, between the
first and the last sample of each process), the peak resident set (the highest sum over the role's
processes in one sample; for a long-lived daemon the kernel's own high-water mark VmHWM is recorded as
well), and the bytes read and written (storage: read_bytes/write_bytes; system calls: read_chars/
write_chars). The machine as a whole: mean CPU busy percent and disk bytes read and written.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psutil

INTERVAL_S = 0.5


def vm_hwm_bytes(pid: int | None) -> int | None:
    """The peak resident set a process has had in its life (VmHWM), in bytes."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class Sampler:
    def __init__(self, roles: dict[str, int | None], interval: float = INTERVAL_S) -> None:
        self.roots: dict[str, int] = {role: pid for role, pid in roles.items() if pid}
        self.interval = interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # (role, pid) -> first and last (cpu_s, read_bytes, write_bytes, read_chars, write_chars)
        self._first: dict[tuple[str, int], tuple[float, ...]] = {}
        self._last: dict[tuple[str, int], tuple[float, ...]] = {}
        self._procs: dict[int, psutil.Process] = {}
        self.peak_rss: dict[str, int] = {}  # role -> highest summed RSS in one sample
        self.samples = 0
        self._disk0: Any = None
        self._disk1: Any = None
        self._t0 = self._t1 = 0.0
        self._cpu0: Any = None
        self._cpu1: Any = None

    def add(self, role: str, pid: int) -> None:
        with self._lock:
            self.roots[role] = pid
        self.sample()

    def _proc(self, pid: int) -> psutil.Process | None:
        proc = self._procs.get(pid)
        if proc is None:
            try:
                proc = psutil.Process(pid)
            except psutil.Error:
                return None
            self._procs[pid] = proc
        return proc

    def sample(self) -> None:
        with self._lock:
            roots = dict(self.roots)
            for role, pid in roots.items():
                root = self._proc(pid)
                if root is None:
                    continue
                try:
                    family = [root, *root.children(recursive=True)]
                except psutil.Error:
                    family = [root]
                rss = 0
                for proc in family:
                    try:
                        with proc.oneshot():
                            times = proc.cpu_times()
                            mem = proc.memory_info()
                            try:
                                io = proc.io_counters()
                                io_tuple = (io.read_bytes, io.write_bytes, io.read_chars, io.write_chars)
                            except (psutil.AccessDenied, AttributeError):
                                io_tuple = (0, 0, 0, 0)
                    except psutil.Error:
                        continue
                    figures = (times.user + times.system, *io_tuple)
                    key = (role, proc.pid)
                    self._first.setdefault(key, figures)
                    self._last[key] = figures
                    rss += mem.rss
                self.peak_rss[role] = max(self.peak_rss.get(role, 0), rss)
            self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> "Sampler":
        self._t0 = time.perf_counter()
        self._disk0 = psutil.disk_io_counters()
        self._cpu0 = psutil.cpu_times()
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        """Stop sampling and return the run's figures (JSON-able)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sample()
        self._t1 = time.perf_counter()
        self._disk1 = psutil.disk_io_counters()
        self._cpu1 = psutil.cpu_times()
        return self.figures()

    def figures(self) -> dict[str, Any]:
        roles: dict[str, dict[str, Any]] = {}
        for (role, _pid), first in self._first.items():
            last = self._last[(role, _pid)]
            r = roles.setdefault(
                role, {"cpu_s": 0.0, "read_bytes": 0, "write_bytes": 0, "read_chars": 0, "write_chars": 0}
            )
            r["cpu_s"] += last[0] - first[0]
            for i, name in enumerate(("read_bytes", "write_bytes", "read_chars", "write_chars"), start=1):
                r[name] += int(last[i] - first[i])
        for role, peak in self.peak_rss.items():
            roles.setdefault(role, {})["peak_rss_bytes"] = peak
        for r in roles.values():
            r["cpu_s"] = round(r.get("cpu_s", 0.0), 4)
        machine: dict[str, Any] = {"seconds": round(self._t1 - self._t0, 4), "samples": self.samples}
        if self._cpu0 is not None and self._cpu1 is not None:
            busy0 = sum(self._cpu0) - self._cpu0.idle - getattr(self._cpu0, "iowait", 0)
            busy1 = sum(self._cpu1) - self._cpu1.idle - getattr(self._cpu1, "iowait", 0)
            total = sum(self._cpu1) - sum(self._cpu0)
            machine["cpu_busy_percent"] = round(100 * (busy1 - busy0) / total, 1) if total > 0 else None
        if self._disk0 is not None and self._disk1 is not None:
            machine["disk_read_bytes"] = self._disk1.read_bytes - self._disk0.read_bytes
            machine["disk_write_bytes"] = self._disk1.write_bytes - self._disk0.write_bytes
        return {"interval_s": self.interval, "roles": roles, "machine": machine}
