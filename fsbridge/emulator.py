"""The slow-share emulator behind `fsbridge emulate`: a model of 9p / virtiofs / drvfs on one machine.

It is the fsbridge passthrough with every cache off (daemon caches disabled, kernel entry and attribute
timeouts 0, direct I/O so the page cache is bypassed) plus a fixed delay on every FUSE request and a
throughput cap shared by all reads and writes. Requests are delayed concurrently, as a 9p server answers
tagged requests in parallel, so parallel work through it is possible, as on the real share.

Where each profile's numbers come from is written in docs/benchmarks.md ("Emulator profiles").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import trio

from fsbridge.errors import ConfigError


@dataclass(frozen=True)
class Profile:
    name: str
    latency_us: float  # what every FUSE request costs in all
    bandwidth_mib: float | None  # MiB/s shared by all reads and writes; None: uncapped
    summary: str


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("9p-virtio", 250, 500,
                "QEMU virtio-9p (podman machine with qemu, Lima 9p) with cache=none: every lookup and stat "
                "is a round trip"),
        Profile("wsl2-drvfs", 330, 300,
                "WSL2 /mnt/c: 9p to the Windows host plus the drvfs translation of NTFS metadata"),
        Profile("virtiofs", 60, 2000,
                "virtiofs with cache=none (podman machine applehv/libkrun, Lima vz): FUSE round trips "
                "over a shared-memory virtqueue"),
        Profile("none", 0, None, "no added delay: the cost of the FUSE passthrough alone"),
    )
}


def resolve_profile(name: str | None, latency_us: float | None, bandwidth_mib: float | None) -> Profile:
    """A named profile, possibly with its numbers overridden, or explicit numbers."""
    if name is not None:
        try:
            base = PROFILES[name]
        except KeyError:
            known = ", ".join(sorted(PROFILES))
            raise ConfigError(f"unknown profile {name!r}; known profiles: {known}", reason="bad-profile") from None
    elif latency_us is not None:
        base = Profile("custom", latency_us, bandwidth_mib, "explicit numbers")
    else:
        raise ConfigError("give --profile NAME or --latency-us N", reason="bad-profile")
    if latency_us is not None and latency_us < 0:
        raise ConfigError("--latency-us must not be negative", reason="bad-profile")
    if bandwidth_mib is not None and bandwidth_mib <= 0:
        raise ConfigError("--bandwidth-mib must be positive", reason="bad-profile")
    return Profile(
        base.name,
        base.latency_us if latency_us is None else latency_us,
        base.bandwidth_mib if bandwidth_mib is None else bandwidth_mib,
        base.summary,
    )


class SlowWire:
    """A fixed latency per request and one shared pipe of limited bandwidth.

    The wait runs in a worker thread until a deadline: trio's own timers round to whole milliseconds
    (epoll), far coarser than a 9p round trip, while a thread's clock_nanosleep (with the timer slack
    set to 1 ns) keeps microseconds. The thread hop itself costs time (about 0.1 ms on a small VM), so
    it is measured once and subtracted: a request then waits the profile's latency, not latency + hop.
    Waits overlap freely, so concurrent requests are answered concurrently.
    """

    def __init__(self, profile: Profile) -> None:
        self.latency_s = profile.latency_us / 1e6
        self.bytes_per_s = profile.bandwidth_mib * 1024 * 1024 if profile.bandwidth_mib else None
        self._free_at = 0.0  # perf_counter time at which the pipe has sent everything queued on it
        self._limiter = trio.CapacityLimiter(1024)
        self._hop_s: float | None = None  # measured cost of a round trip to a worker thread
        self.requests = 0

    async def _calibrate(self) -> float:
        samples = []
        for _ in range(31):
            start = time.perf_counter()
            await trio.to_thread.run_sync(_sleep_until, start, limiter=self._limiter)
            samples.append(time.perf_counter() - start)
        samples.sort()
        return samples[len(samples) // 2]

    async def delay(self, nbytes: int = 0, *, since: float | None = None) -> None:
        """Wait until the request has cost the profile's latency (counted from `since`, when it arrived)
        and its bytes have passed the shared pipe."""
        self.requests += 1
        now = time.perf_counter()
        deadline = (now if since is None else since) + self.latency_s
        if self.bytes_per_s and nbytes:
            self._free_at = max(now, self._free_at) + nbytes / self.bytes_per_s
            deadline = max(deadline, self._free_at)
        if deadline <= now:
            return
        if self._hop_s is None:
            self._hop_s = await self._calibrate()
        await trio.to_thread.run_sync(_sleep_until, deadline - self._hop_s, limiter=self._limiter)


_thread_state = threading.local()


def _sleep_until(deadline: float) -> None:
    if not getattr(_thread_state, "precise", False):
        _set_timer_slack_1ns()
        _thread_state.precise = True
    remaining = deadline - time.perf_counter()
    if remaining > 0:
        time.sleep(remaining)


def _set_timer_slack_1ns() -> None:
    """Linux rounds a sleeping thread's wake-up up by its timer slack (50 us by default)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(29, 1, 0, 0, 0)  # PR_SET_TIMERSLACK
    except (OSError, AttributeError):
        pass


# FUSE requests that travel to the share and back; forget has no reply and costs nothing.
_DELAYED = ("lookup", "getattr", "setattr", "readlink", "mknod", "mkdir", "unlink", "rmdir", "symlink",
            "rename", "link", "open", "flush", "release", "fsync", "opendir", "readdir", "releasedir",
            "statfs", "getxattr", "setxattr", "listxattr", "removexattr", "create")


def emulated_operations(base_cls: type, wire: SlowWire) -> type:
    """A subclass of the FUSE operations class whose every request first waits on the slow wire."""

    def delayed(name: str) -> Callable[..., Any]:
        original = getattr(base_cls, name)

        @functools.wraps(original)
        async def handler(self: Any, *args: Any) -> Any:
            # the emulator's own work counts towards the latency: a profile's number is the whole
            # cost of a request, not the cost on top of this process's overhead
            since = time.perf_counter()
            try:
                return await original(self, *args)
            finally:
                await wire.delay(since=since)

        return handler

    async def read(self: Any, fh: int, off: int, size: int) -> bytes:
        since = time.perf_counter()
        data = await base_cls.read(self, fh, off, size)
        await wire.delay(len(data), since=since)
        return data

    async def write(self: Any, fh: int, off: int, buf: bytes) -> int:
        since = time.perf_counter()
        await wire.delay(len(buf), since=since)
        return await base_cls.write(self, fh, off, buf)

    namespace: dict[str, Any] = {name: delayed(name) for name in _DELAYED}
    namespace.update(read=read, write=write, wire=wire)
    return type("Emulated" + base_cls.__name__, (base_cls,), namespace)
