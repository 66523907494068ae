"""Per-operation cost of a real share, measured inside a throw-away guest (no fsbridge involved).

The emulator's profiles (docs/benchmarks.md) model a share's latency per request; this gives the measured
figure for the share this machine's qemu really provides (9p with a cache mode, or virtiofs), under the
accelerator the guest ran with, so the two can be compared:

    from fsbridge.bench.guest_measure import measure_share
    measure_share("/tmp/scratch", kind="9p", cache="none")["ops_us"]["stat"]

The workload runs in the guest's python with the standard library only, in a fresh folder it creates and
removes under the shared folder: create+write, stat, listing with a stat per entry, open+read, unlink, of
`files` small files, `rounds` times; the medians per operation are returned in microseconds.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

from fsbridge.bench.guest import GuestError, Share, run_in_guest

_WORKLOAD = r"""
import json, os, statistics, sys, time
top, files, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
per_op = {"create_write": [], "stat": [], "list_stat": [], "open_read": [], "unlink": []}
for r in range(rounds):
    d = os.path.join(top, f"round{r}")
    os.mkdir(d)
    names = [os.path.join(d, f"f{i:05d}") for i in range(files)]
    t = time.perf_counter()
    for n in names:
        with open(n, "wb") as f:
            f.write(b"x" * 100)
    per_op["create_write"].append((time.perf_counter() - t) / files)
    t = time.perf_counter()
    for n in names:
        os.stat(n)
    per_op["stat"].append((time.perf_counter() - t) / files)
    t = time.perf_counter()
    for e in os.scandir(d):
        e.stat(follow_symlinks=False)
    per_op["list_stat"].append((time.perf_counter() - t) / files)
    t = time.perf_counter()
    for n in names:
        with open(n, "rb") as f:
            f.read()
    per_op["open_read"].append((time.perf_counter() - t) / files)
    t = time.perf_counter()
    for n in names:
        os.unlink(n)
    per_op["unlink"].append((time.perf_counter() - t) / files)
    os.rmdir(d)
print("RESULT " + json.dumps({k: statistics.median(v) * 1e6 for k, v in per_op.items()}))
"""


def measure_share(folder: str, *, kind: str = "9p", cache: str | None = "none", files: int = 100,
                  rounds: int = 3, deadline_s: float = 300.0) -> dict:
    """Median microseconds per operation on `folder` shared into a guest; plus how the guest ran."""
    os.makedirs(folder, exist_ok=True)
    work = tempfile.mkdtemp(prefix="measure-", dir=folder)
    try:
        run = run_in_guest([sys.executable, "-c", _WORKLOAD, work, str(files), str(rounds)],
                           shares=[Share(folder, kind=kind, cache=cache)], deadline_s=deadline_s)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [line for line in run.output.splitlines() if line.startswith("RESULT ")]
    if run.exit_code != 0 or not lines:
        raise GuestError(f"the measurement failed in the guest (exit {run.exit_code}): {run.output[-500:]}")
    return {
        "share": {"kind": kind, "cache": cache, "folder": folder},
        "ops_us": json.loads(lines[-1][len("RESULT "):]),
        "files": files,
        "rounds": rounds,
        "accel": run.accel,
        "accel_notes": run.accel_notes,
        "boot_s": run.boot_s,
        "command_s": run.command_s,
    }
