"""The slow-share emulator's wire (no FUSE): a request never costs less than its modelled latency's floor.

Its waits end on one timerfd and may wake a little early to make up for the timer's own lateness, but never
by more than half the latency, however many requests wait at once (a first version, averaging each
waiter's lateness, woke requests up to 1 ms early under load: the share got faster with load). Only lower
bounds are asserted: a wait can be late on a busy machine, never early.
"""

from __future__ import annotations

import time

import trio

from fsbridge.emulator import Profile, SlowWire

LATENCY_US = 250


def _costs(parallel: int, rounds: int, serial: int, bandwidth_mib: float | None = None,
           nbytes: int = 0) -> tuple[list[float], list[float]]:
    wire = SlowWire(Profile("test", LATENCY_US, bandwidth_mib, "a test"))
    parallel_costs: list[float] = []
    serial_costs: list[float] = []

    async def one(out: list[float]) -> None:
        since = time.perf_counter()
        await wire.delay(nbytes, since=since)
        out.append(time.perf_counter() - since)

    async def main() -> None:
        for _ in range(rounds):
            async with trio.open_nursery() as nursery:
                for _ in range(parallel):
                    nursery.start_soon(one, parallel_costs)
        for _ in range(serial):
            await one(serial_costs)

    trio.run(main)
    return parallel_costs, serial_costs


def test_no_request_is_answered_before_half_its_latency_even_under_load() -> None:
    parallel, serial = _costs(parallel=32, rounds=20, serial=200)
    floor = LATENCY_US / 2 / 1e6
    assert min(parallel) >= floor, f"a parallel request took {min(parallel) * 1e6:.0f} us"
    assert min(serial) >= floor, f"a request after the parallel ones took {min(serial) * 1e6:.0f} us"


def test_the_shared_pipe_spaces_transfers_by_the_bandwidth() -> None:
    # 16 transfers of 1 MiB through a 100 MiB/s pipe at once: the last waits its turn, about 160 ms
    parallel, _ = _costs(parallel=16, rounds=1, serial=0, bandwidth_mib=100, nbytes=1 << 20)
    assert max(parallel) >= 16 / 100 * 0.9
