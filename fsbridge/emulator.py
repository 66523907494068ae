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
import heapq
import os
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

    Waits end at deadlines kept in one heap and signalled by one timerfd (see `_Timer`): trio's own timers
    round to whole milliseconds (epoll), far coarser than a 9p round trip, and a worker thread per wait
    (the first design) cost about 0.1 ms of CPU per request, which on a small VM made the emulator's CPU,
    not its latency, the limit of parallel work through it. Waits overlap freely, so concurrent requests
    are answered concurrently.
    """

    def __init__(self, profile: Profile) -> None:
        self.latency_s = profile.latency_us / 1e6
        self.bytes_per_s = profile.bandwidth_mib * 1024 * 1024 if profile.bandwidth_mib else None
        self._free_at = 0.0  # perf_counter time at which the pipe has sent everything queued on it
        self._timer: _Timer | None = None
        self.requests = 0

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
        if self._timer is None:
            self._timer = _Timer()
        # waking early makes up for the timer's own lateness, but never by more than half the latency
        await self._timer.sleep_until(deadline, earliest=deadline - self.latency_s / 2)


class _Timer:
    """Wakes trio tasks at perf_counter deadlines with microsecond precision, without threads.

    One heap of (deadline, ticket, event) and one timerfd (CLOCK_MONOTONIC, which perf_counter reads on
    Linux) armed for the earliest deadline; a trio system task waits for the timerfd to become readable and
    sets the events that are due. Everything runs on the trio thread, so the heap needs no lock."""

    def __init__(self) -> None:
        self.fd = _timerfd_create()
        self.heap: list[tuple[float, int, trio.Event]] = []  # wake-up time, ticket (for order) -> its waiter
        self.armed_for = float("inf")
        self.tickets = 0
        # How late the timer task runs after the time it was armed for (timerfd, epoll, trio's scheduler):
        # about 0.1 ms on a small VM. Waiters are woken that much early, so that they resume near their
        # deadline. Measured once per firing, by the timer task: not per waiter, whose resumption also
        # waits for the other waiters woken with it (CPU queueing, which a real share's waiters pay too).
        self.wake_delay = 0.0
        trio.lowlevel.spawn_system_task(self._wake_due)

    async def sleep_until(self, deadline: float, *, earliest: float) -> None:
        """Return at about `deadline`; woken early by the timer's measured lateness, never before `earliest`."""
        event = trio.Event()
        self.tickets += 1
        wake_at = max(deadline - self.wake_delay, earliest)
        heapq.heappush(self.heap, (wake_at, self.tickets, event))
        if wake_at < self.armed_for:
            self._arm(wake_at)
        await event.wait()

    def _arm(self, deadline: float) -> None:
        self.armed_for = deadline
        _timerfd_settime_abs(self.fd, max(1, int(deadline * 1e9)))

    async def _wake_due(self) -> None:
        while True:
            await trio.lowlevel.wait_readable(self.fd)
            try:
                os.read(self.fd, 8)
            except BlockingIOError:
                pass  # re-armed for a later deadline after it became readable
            now = time.perf_counter()
            if self.armed_for != float("inf"):
                late = min(max(0.0, now - self.armed_for), 0.001)
                self.wake_delay += (late - self.wake_delay) / 16  # a moving average
            while self.heap and self.heap[0][0] <= now:
                heapq.heappop(self.heap)[2].set()
            if self.heap:
                self._arm(self.heap[0][0])
            else:
                self.armed_for = float("inf")


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK_CLOEXEC = os.O_NONBLOCK | os.O_CLOEXEC  # TFD_NONBLOCK, TFD_CLOEXEC share these values
_TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _timerfd_create() -> int:
    fd = _libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), "timerfd_create")
    return int(fd)


def _timerfd_settime_abs(fd: int, deadline_ns: int) -> None:
    spec = _Itimerspec(_Timespec(0, 0), _Timespec(deadline_ns // 1_000_000_000, deadline_ns % 1_000_000_000))
    if _libc.timerfd_settime(fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), "timerfd_settime")


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
