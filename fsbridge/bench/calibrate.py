"""Where the emulator's profiles come from: per-operation cost of real shares, measured in a qemu guest.

    python -m fsbridge.bench.calibrate --out bench/results/DATE-MACHINE/calibration

The same small workload (per file of a fresh folder: create+write, stat by name, listing with a stat per
entry, open+read, unlink) runs in four places, and the figures are put side by side:

1. in a guest, on each real share (9p with a cache mode, virtiofs), and on the guest's own tmpfs, in one boot;
2. on this host's tmpfs (/dev/shm): native speed, to tell how much slower the guest's CPU is (TCG);
3. on this host, through `fsbridge emulate --latency-us 0`, reading `fsbridge stats` between the phases:
   how many FUSE requests each operation costs on the emulator, which is what a profile's latency is per.

Then, per operation: the share's extra cost in the guest (share minus the guest's tmpfs), scaled to native
speed in two ways, because a share's cost is partly the guest kernel's work (slowed down under TCG like any
guest CPU work) and partly qemu's 9p or virtiofs server, which runs natively on the host:

- low  = extra cost / slowdown (all of it guest CPU work, slowed down by TCG);
- high = extra cost (none of it slowed down: all of it the host-side server and the virtqueue round trip);

and each divided by the emulator's requests for that operation: the per-request latency a profile would
need for the emulated operation to cost what the real one does. With KVM the slowdown is near 1 and the two
bounds meet. The workload uses the standard library only, so the guest runs it with the host's python.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from fsbridge.bench.guest import GuestError, Share, run_in_guest
from fsbridge.bench.guest_assets import GuestUnavailable, ensure_guest_assets
from fsbridge.bench.runner import cpu_model

OPS = ("create_write", "stat_at", "list_stat", "open_read", "unlink")
SHARES = ("9p:none", "9p:loose", "virtiofs:auto")  # kind:cache, as `--share qemu-KIND:CACHE` names them

# One process, every folder given on the command line, RESULT lines with median microseconds per operation.
# With FSB_STATS set to a mount point, also the FUSE requests per operation from its `fsbridge stats` xattr.
WORKLOAD = r"""
import json, os, statistics, sys, time
files, rounds, folders = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
stats_at = os.environ.get("FSB_STATS")

def requests():
    if not stats_at:
        return 0
    return sum(json.loads(os.getxattr(stats_at, "user.fsbridge.stats"))["requests"].values())

def timed(per_op, reqs, op, fn):
    before = requests()
    t = time.perf_counter()
    fn()
    per_op[op].append((time.perf_counter() - t) / files * 1e6)
    reqs[op].append((requests() - before) / files)

for top in folders:
    per_op = {op: [] for op in ("create_write", "stat_at", "list_stat", "open_read", "unlink")}
    reqs = {op: [] for op in per_op}
    for r in range(rounds):
        d = os.path.join(top, f"calibrate-{os.getpid()}-{r}")
        os.mkdir(d)
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        names = [f"f{i:05d}" for i in range(files)]
        def create():
            for n in names:
                fd = os.open(n, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dfd)
                os.write(fd, b"x" * 100)
                os.close(fd)
        def stat_at():
            for n in names:
                os.stat(n, dir_fd=dfd, follow_symlinks=False)
        def list_stat():
            with os.scandir(d) as it:
                for e in it:
                    e.stat(follow_symlinks=False)
        def open_read():
            for n in names:
                fd = os.open(n, os.O_RDONLY, dir_fd=dfd)
                os.read(fd, 4096)
                os.close(fd)
        def unlink():
            for n in names:
                os.unlink(n, dir_fd=dfd)
        for op, fn in (("create_write", create), ("stat_at", stat_at), ("list_stat", list_stat),
                       ("open_read", open_read), ("unlink", unlink)):
            timed(per_op, reqs, op, fn)
        os.close(dfd)
        os.rmdir(d)
    out = {"folder": top, "us": {k: statistics.median(v) for k, v in per_op.items()}}
    if stats_at:
        out["requests"] = {k: statistics.median(v) for k, v in reqs.items()}
    print("RESULT " + json.dumps(out), flush=True)
"""


def _results(output: str) -> list[dict[str, Any]]:
    return [json.loads(line[len("RESULT "):]) for line in output.splitlines() if line.startswith("RESULT ")]


def measure_in_guest(kind: str, cache: str, folder: Path, files: int, rounds: int) -> dict[str, Any]:
    """The workload on `folder` shared into a guest over `kind` with `cache`, and on the guest's tmpfs."""
    share = folder / f"{kind}-{cache}"
    share.mkdir(parents=True)
    command = [sys.executable, "-c", WORKLOAD, str(files), str(rounds), str(share), "/tmp"]
    run = run_in_guest(command, [Share(str(share), kind=kind, cache=cache)], deadline_s=900,
                       assets=ensure_guest_assets())
    got = _results(run.output)
    if run.exit_code != 0 or len(got) != 2:
        raise GuestError(f"the workload failed in the guest (exit {run.exit_code}): {run.output[-500:]}")
    return {"share": f"{kind}:{cache}", "on_share_us": got[0]["us"], "guest_tmpfs_us": got[1]["us"],
            "accel": run.accel, "accel_notes": run.accel_notes, "boot_s": round(run.boot_s, 2)}


def measure_native(files: int, rounds: int) -> dict[str, float]:
    folder = tempfile.mkdtemp(prefix="fsbridge-calibrate-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        out = subprocess.run([sys.executable, "-c", WORKLOAD, str(files), str(rounds), folder],
                             capture_output=True, text=True, check=True, timeout=600)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return _results(out.stdout)[0]["us"]


def emulator_requests(files: int, work: Path) -> dict[str, float]:
    """FUSE requests per operation on `fsbridge emulate` (latency 0), counted by its own `fsbridge stats`."""
    fsbridge = str(Path(sys.executable).with_name("fsbridge"))
    src, mnt = work / "emulated-src", work / "emulated-mnt"
    src.mkdir()
    mnt.mkdir()
    subprocess.run([fsbridge, "emulate", str(src), str(mnt), "--latency-us", "0"], check=True,
                   capture_output=True, timeout=60)
    try:
        out = subprocess.run([sys.executable, "-c", WORKLOAD, str(files), "1", str(mnt)], capture_output=True,
                             text=True, check=True, timeout=600, env=dict(os.environ, FSB_STATS=str(mnt)))
    finally:
        subprocess.run([fsbridge, "umount", str(mnt)], capture_output=True, timeout=60)
    return _results(out.stdout)[0]["requests"]


def derive(measured: dict[str, Any], native: dict[str, float], requests: dict[str, float]) -> dict[str, Any]:
    """Per operation: the slowdown of the guest, the share's extra cost, and the per-request latency bounds."""
    rows = {}
    for op in OPS:
        guest_local = measured["guest_tmpfs_us"][op]
        on_share = measured["on_share_us"][op]
        slowdown = guest_local / native[op] if native[op] > 0 else None
        extra = max(0.0, on_share - guest_local)
        n = requests.get(op) or None
        low = extra / slowdown if slowdown else None
        rows[op] = {
            "guest_tmpfs_us": guest_local, "on_share_us": on_share, "host_tmpfs_us": native[op],
            "slowdown": slowdown, "extra_us": extra, "extra_native_low_us": low, "extra_native_high_us": extra,
            "emulator_requests": n,
            "per_request_low_us": low / n if (low is not None and n) else None,
            "per_request_high_us": extra / n if n else None,
        }
    return rows


def render(doc: dict[str, Any]) -> str:
    lines = ["# Calibration of the emulator's profiles against real shares in a qemu guest", "",
             f"{doc['date']}; host: {doc['host']['cpu']}, {doc['host']['cores']} cores, Linux "
             f"{doc['host']['kernel']}; {doc['files']} files x {doc['rounds']} rounds per folder.", "",
             f"Reproduce: `{doc['command']}`", "",
             "Microseconds per operation (medians over rounds). *slowdown*: guest tmpfs / host tmpfs. "
             "*per request*: the share's extra cost over the guest's tmpfs, scaled to native speed, divided by "
             "the FUSE requests the emulator needs for the same operation: low = all of the extra cost slowed "
             "down like guest CPU work, high = none of it (see fsbridge/bench/calibrate.py).", ""]
    for m in doc["shares"]:
        accel = m["accel"] + (f" ({'; '.join(m['accel_notes'])})" if m["accel_notes"] else "")
        lines += [f"## {m['share']} (accelerator: {accel})", "",
                  "| operation | host tmpfs | guest tmpfs | slowdown | on the share | emulator requests "
                  "| per request, low–high |", "|---|---:|---:|---:|---:|---:|---:|"]
        for op, r in m["derived"].items():
            lo, hi = r["per_request_low_us"], r["per_request_high_us"]
            span = f"{lo:.0f}–{hi:.0f} µs" if lo is not None and hi is not None else "-"
            slow = f"{r['slowdown']:.1f}×" if r["slowdown"] else "-"
            lines.append(f"| {op} | {r['host_tmpfs_us']:.1f} | {r['guest_tmpfs_us']:.1f} | {slow} | "
                         f"{r['on_share_us']:.1f} | {r['emulator_requests'] or '-'} | {span} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fsbridge.bench.calibrate", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for calibration.json and calibration.md")
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--share", action="append", choices=SHARES, help="kind:cache to measure (default: all)")
    args = parser.parse_args(argv)
    shares = args.share or list(SHARES)
    work = Path(tempfile.mkdtemp(prefix="fsbridge-calibrate-", dir="/var/tmp"))
    try:
        native = measure_native(args.files, args.rounds)
        requests = emulator_requests(args.files, work)
        measured = []
        for spec in shares:
            kind, _, cache = spec.partition(":")
            print(f"calibrate: {spec} ...", file=sys.stderr, flush=True)
            m = measure_in_guest(kind, cache, work, args.files, args.rounds)
            m["derived"] = derive(m, native, requests)
            measured.append(m)
    except GuestUnavailable as e:
        print(f"calibrate: no qemu guest on this machine: {e.message}", file=sys.stderr)
        return 1
    except (GuestError, subprocess.SubprocessError, OSError) as e:
        print(f"calibrate: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("calibrate: interrupted", file=sys.stderr)
        return 130
    finally:
        if os.path.ismount(work / "emulated-mnt"):
            subprocess.run(["fusermount3", "-u", "-z", str(work / "emulated-mnt")], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    doc = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": {"cpu": cpu_model(), "cores": os.cpu_count(), "kernel": platform.release()},
        "command": "python -m fsbridge.bench.calibrate " + " ".join(
            ["--out", str(args.out), "--files", str(args.files), "--rounds", str(args.rounds)]
            + [f"--share={s}" for s in (args.share or [])]),
        "files": args.files, "rounds": args.rounds,
        "host_tmpfs_us": native, "emulator_requests": requests, "shares": measured,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "calibration.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / "calibration.md").write_text(render(doc))
    print(render(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
