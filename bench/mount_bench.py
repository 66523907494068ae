#!/usr/bin/env python3
"""Benchmark of the cached mount (`fsbridge mount`) over a slow share modelled by `fsbridge emulate`.

It drives fsbridge only through its command line, in subprocesses, as a user would, and imports none of
fsbridge's measured modules. Each timed workload runs in its own Python process
(`python -m fsbridge.bench.workloads`, the workloads `fsbridge bench` uses), so a timing covers the workload alone.

What it measures (docs/benchmarks.md explains each, and what it does not show):

  metadata   a tree of --files small files in --dirs folders; two workloads, `statlist` (lstat of every
             known path: the `git status` pattern) and `walk` (list every folder, lstat every entry), on
             four variants, interleaved round by round (the order rotates every round) after one
             untimed warm-up round:
               local   the source tree on the local disk
               raw     the same tree through the emulated share (`fsbridge emulate --profile P`)
               cold    a fresh `fsbridge mount` over the emulated share for every run
               warm    one long-lived `fsbridge mount` over the emulated share, primed by one walk;
                       `fsbridge stats` before and after every run counts its backing calls
  read       a --read-mib file read sequentially: on the raw emulated share, and through a fresh mount
             (cold: page cache dropped first where permitted) followed by a re-read of the unchanged file
             on the same mount (must be served from the page cache: no backing read calls)
  memory     a tree of --mem-entries entries walked --mem-walks times (default 3) through one fresh mount;
             the mount daemon's peak resident set (VmHWM) after each walk

Results: results.json (every raw run, the machine, the parameters), report.md (medians, min-max, ratios
against the goals, PASS/FAIL) and report.png (if matplotlib is installed) in --out.

    # full size with the committed run's repeats (3 metadata rounds, raw statlist once): about 9 minutes
    .venv/bin/python bench/mount_bench.py --repeat 3 --read-repeat 3 --raw-statlist-rounds 1
    .venv/bin/python bench/mount_bench.py                       # full size, 5 rounds: about 15 minutes
    .venv/bin/python bench/mount_bench.py --quick --out /tmp/b  # a small smoke run, about a minute

Needs Linux, /dev/fuse and fusermount3; run as root to drop the page cache (otherwise "cold" reads are
cold only in the mount's own page cache, which a fresh mount always is, and the report says so).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import random
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKLOADS = ["-m", "fsbridge.bench.workloads"]  # run by the same interpreter: python -m ...

HOST_PREFIX = "/share"  # the host folder name the mapping exposes: MOUNTPOINT/share/...
LONG_TTL = 86400.0  # the warm mount's TTLs (see --warm-ttl)

VARIANT_LABELS = {
    "local": "local disk",
    "raw": "emulated share (raw)",
    "cold": "cached mount, cold",
    "warm": "cached mount, warm",
}

GOALS = {
    "warm_statlist": 1.2,  # warm statlist <= 1.2 x local
    "warm_walk": 2.0,  # warm walk <= 2 x local
    "cold_walk": 0.3,  # cold walk <= 0.3 x raw share
    "read": 0.8,  # cold sequential read >= 0.8 x raw share throughput
}


class BenchError(Exception):
    pass


# --- small helpers ---------------------------------------------------------------------------------------


def log(msg: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {msg}", file=sys.stderr, flush=True)


def find_fsbridge(explicit: str | None) -> str:
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "fsbridge"
    if beside.exists():
        return str(beside)
    found = shutil.which("fsbridge")
    if not found:
        raise BenchError("the fsbridge command was not found (install the package or pass --fsbridge PATH)")
    return found


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (peak resident set) of a process, in bytes."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def cpu_seconds(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except psutil.Error:
        return None


def drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def cache_drops() -> int | None:
    """How often anyone wrote to /proc/sys/vm/drop_caches since boot (/proc/vmstat). This bench never drops
    caches while a workload runs, so an increase during a run means another process did: on a shared machine
    that empties the kernel's dentry, inode and page caches under the warm mount and the re-read."""
    try:
        with open("/proc/vmstat") as f:
            return sum(int(line.split()[1]) for line in f if line.startswith(("drop_pagecache ", "drop_slab ")))
    except (OSError, ValueError, IndexError):
        return None


def file_refaults() -> int | None:
    """Page-cache pages read back after the kernel's reclaim had evicted them (/proc/vmstat
    workingset_refault_file). Reclaim, including DAMON's proactive pageout, leaves a trace that a page was
    evicted; dropping caches and a file system invalidating its own pages do not. A re-read that fetches
    blocks again while this rises was hit by reclaim, not by the mount."""
    try:
        with open("/proc/vmstat") as f:
            return sum(int(line.split()[1]) for line in f if line.startswith("workingset_refault_file "))
    except (OSError, ValueError, IndexError):
        return None


def mounts_under(folder: str) -> list[str]:
    folder = os.path.realpath(folder)
    found = []
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            for line in f:
                point = line.split()[4].decode("unicode_escape").encode("latin-1").decode(errors="replace")
                if point == folder or point.startswith(folder + "/"):
                    found.append(point)
    except OSError:
        pass
    return found


def fs_type(path: str) -> str | None:
    real = os.path.realpath(path)
    best, best_type = "", None
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            for line in f:
                fields = line.split()
                point = fields[4].decode("unicode_escape").encode("latin-1").decode(errors="replace")
                sep = fields.index(b"-")
                if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                    best, best_type = point, fields[sep + 1].decode()
    except OSError:
        pass
    return best_type


def damon_pageout() -> list[dict[str, Any]]:
    """Proactive reclaim by DAMON schemes that page memory out (some VM hosts run one): it can evict page
    cache pages a few seconds old, so a re-read may fetch a few blocks again without anyone dropping caches."""
    found = []
    root = Path("/sys/kernel/mm/damon/admin/kdamonds")
    try:
        for kd in sorted(root.glob("[0-9]*")):
            if (kd / "state").read_text().strip() != "on":
                continue
            for ctx in sorted(kd.glob("contexts/[0-9]*")):
                aggr_us = int((ctx / "monitoring_attrs/intervals/aggr_us").read_text())
                for scheme in sorted(ctx.glob("schemes/[0-9]*")):
                    if (scheme / "action").read_text().strip() != "pageout":
                        continue
                    min_age = int((scheme / "access_pattern/age/min").read_text())
                    found.append({"kdamond": kd.name, "operations": (ctx / "operations").read_text().strip(),
                                  "min_age_s": min_age * aggr_us / 1e6})
    except (OSError, ValueError):
        pass
    return found


def source_state() -> dict[str, Any]:
    """Which fsbridge source the mounts ran: the git commit, files changed since it, and a digest of the
    package's files. Taken at the start and the end of a run: if the digests differ, someone edited fsbridge
    while the bench ran and later mounts ran other code than earlier ones."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((REPO / "fsbridge").rglob("*.py")):
        try:
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
        except OSError:
            continue

    def git(*argv: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(REPO), *argv], capture_output=True, text=True, check=False)
        except OSError:
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    dirty = git("status", "--porcelain", "--", "fsbridge")
    return {"git_head": git("rev-parse", "HEAD"), "fsbridge_changed_since_head": dirty.splitlines() if dirty else [],
            "fsbridge_sha256": digest.hexdigest()}


def machine_info(fsbridge: str, workdir: str) -> dict[str, Any]:
    cpu_model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    version = subprocess.run([fsbridge, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return {
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model or platform.processor(),
        "cores": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "kernel": platform.release(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "fsbridge_version": version.rsplit(" ", 1)[-1] if version else None,
        "workdir_fstype": fs_type(workdir),
        "damon_pageout": damon_pageout(),
        "euid": os.geteuid(),
    }


def default_out() -> Path:
    label = f"{os.cpu_count()}core-{platform.machine()}"
    return REPO / "bench" / "results" / f"{dt.date.today().isoformat()}-{label}" / "mount"


# --- the tree ----------------------------------------------------------------------------------------------


def make_tree(root: Path, files: int, dirs: int, *, seed: int = 1, sized: bool = True) -> list[str]:
    """`dirs` folders (about sqrt(dirs) top-level groups holding the rest) and `files` files spread over
    them round-robin. Small files of 0-4 KiB (a source tree) when `sized`, else empty. Returns the sorted
    relative paths of the files (the "index" of the statlist workload)."""
    rng = random.Random(seed)
    top = max(1, min(dirs, round(math.sqrt(dirs))))
    folders = [f"g{i:03d}" for i in range(top)]
    folders += [f"g{j % top:03d}/d{j:05d}" for j in range(dirs - top)]
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
    payload = bytes(rng.getrandbits(8) for _ in range(4096))
    paths = []
    for k in range(files):
        rel = f"{folders[k % len(folders)]}/f{k:06d}.txt"
        fd = os.open(root / rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            if sized:
                size = min(4096, int(rng.expovariate(1 / 1200)))
                os.write(fd, payload[:size])
        finally:
            os.close(fd)
        paths.append(rel)
    paths.sort()
    return paths


def make_big_file(path: Path, mib: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(1024 * 1024)
    with open(path, "wb") as f:
        f.writelines(i.to_bytes(8, "little") + block[8:] for i in range(mib))
    os.sync()


# --- the bench ---------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.fsbridge = find_fsbridge(args.fsbridge)
        self.python = sys.executable
        self.mounted: list[tuple[str, int | None]] = []  # (mountpoint, daemon pid), in mount order
        self.runs: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.emu_pid: int | None = None
        parent = args.workdir or ("/var/tmp" if os.path.isdir("/var/tmp") else None)
        self.work = Path(tempfile.mkdtemp(prefix="fsbridge-bench-", dir=parent))
        self.src = self.work / "src"  # the "host" folder: tree/ and big/
        self.emu = self.work / "emu"  # the emulated share of src
        self.warm_mnt = self.work / "warm"
        self.cold_mnt = self.work / "cold"
        self.mem_src = self.work / "memsrc"
        self.mem_mnt = self.work / "memmnt"
        for d in (self.src, self.emu, self.warm_mnt, self.cold_mnt, self.mem_src, self.mem_mnt):
            d.mkdir()
        self.statlist_file = self.work / "index.txt"

    # -- fsbridge through its CLI --------------------------------------------------------------------

    def cli(self, *argv: str, timeout: float = 120) -> str:
        result = subprocess.run([self.fsbridge, *argv], capture_output=True, text=True, timeout=timeout,
                                check=False)
        if result.returncode != 0:
            raise BenchError(f"fsbridge {' '.join(argv)} failed ({result.returncode}): "
                             f"{(result.stderr or result.stdout).strip()}")
        return result.stdout

    @staticmethod
    def _pid_of(output: str) -> int | None:
        m = re.search(r"\(pid (\d+)\)", output)
        return int(m.group(1)) if m else None

    def emulate(self, source: Path, mountpoint: Path) -> int | None:
        return self._start(mountpoint, ["emulate", str(source), str(mountpoint), "--profile", self.args.profile])

    def mount(self, mountpoint: Path, backing: Path, *, ttl: float | None = None) -> int | None:
        argv = ["mount", str(mountpoint), "--map", f"{HOST_PREFIX}={backing}"]
        if ttl is not None:
            argv += ["--entry-ttl", str(ttl), "--attr-ttl", str(ttl), "--dir-ttl", str(ttl),
                     "--negative-ttl", str(ttl)]
        return self._start(mountpoint, argv)

    def _start(self, mountpoint: Path, argv: list[str]) -> int | None:
        """Run `fsbridge mount|emulate`; whatever happens, remember the mount so that cleanup finds it."""
        try:
            out = self.cli(*argv)
        except (BenchError, subprocess.TimeoutExpired):
            # the command failed or hung, but its daemon may have started (or start later): find it by the
            # mount point it serves, which is unique to this run, so that cleanup can stop it
            self.mounted.append((str(mountpoint), self._daemon_serving(str(mountpoint))))
            raise
        pid = self._pid_of(out)
        self.mounted.append((str(mountpoint), pid))
        return pid

    @staticmethod
    def _daemon_serving(mountpoint: str) -> int | None:
        """The pid of the fsbridge daemon this run started for `mountpoint` (its spec names the mount point)."""
        needle = f"\"mountpoint\": {json.dumps(mountpoint)}"
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmd = proc.info.get("cmdline") or []
            if len(cmd) >= 3 and cmd[1:3] == ["-m", "fsbridge.fs.mount"] and needle in " ".join(cmd[3:]):
                return proc.pid
        return None

    def umount(self, mountpoint: Path | str) -> None:
        mountpoint = str(mountpoint)
        pid = None
        for i, (point, p) in enumerate(self.mounted):
            if point == mountpoint:
                pid = p
                del self.mounted[i]
                break
        try:
            if os.path.ismount(mountpoint):
                subprocess.run([self.fsbridge, "umount", mountpoint], capture_output=True, timeout=60, check=False)
        except (subprocess.SubprocessError, OSError):
            pass
        if os.path.ismount(mountpoint):  # busy or the daemon hangs: detach it lazily
            tool = shutil.which("fusermount3") or shutil.which("fusermount")
            cmd = [tool, "-u", "-z", mountpoint] if tool else ["umount", "-l", mountpoint]
            subprocess.run(cmd, capture_output=True, check=False)
        if pid is not None:
            self._end_process(pid)

    @staticmethod
    def _end_process(pid: int) -> None:
        try:
            proc = psutil.Process(pid)
        except psutil.Error:
            return
        try:
            proc.wait(timeout=10)
            return
        except psutil.TimeoutExpired:
            pass
        except psutil.Error:
            return
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                proc.send_signal(sig)
                proc.wait(timeout=wait)
                return
            except psutil.TimeoutExpired:
                continue
            except psutil.Error:
                return

    def stats(self, mountpoint: Path) -> dict[str, Any]:
        return json.loads(self.cli("stats", str(mountpoint), "--json"))

    # -- workloads in their own process --------------------------------------------------------------

    def workload(self, *argv: str, timeout: float = 1800) -> dict[str, Any]:
        """Run one workload in its own process; also note how busy the rest of the machine was meanwhile
        (other users of a shared machine disturb the timings, and the report says so)."""
        load = os.getloadavg()[0]
        drops = cache_drops()
        refaults = file_refaults()
        before = self._cpu_snapshot()
        t0 = time.monotonic()
        proc = subprocess.Popen([self.python, *WORKLOADS, *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        wall = time.monotonic() - t0
        others = self._others_cpu_pct(before, self._cpu_snapshot(), wall, exclude={proc.pid})
        external = cache_drops() - drops if drops is not None else None
        refaulted = file_refaults() - refaults if refaults is not None else None
        if proc.returncode != 0:
            raise BenchError(f"workload {' '.join(argv)} failed: {err.strip()}")
        return {**json.loads(out), "loadavg_1m": load, "others_cpu_pct": others, "external_cache_drops": external,
                "page_refaults": refaulted}

    @staticmethod
    def _cpu_snapshot() -> dict[int, tuple[float, int]]:
        seen: dict[int, tuple[float, int]] = {}
        for proc in psutil.process_iter(["pid", "ppid"]):
            try:
                t = proc.cpu_times()
                seen[proc.pid] = (t.user + t.system, proc.info["ppid"])
            except psutil.Error:
                continue
        return seen

    def _others_cpu_pct(self, before: dict[int, tuple[float, int]], after: dict[int, tuple[float, int]],
                        wall: float, exclude: set[int]) -> float | None:
        """Percent of one core used by processes that are not part of this bench during `wall` seconds."""
        if wall <= 0:
            return None
        mine = {os.getpid(), *exclude, *(pid for _, pid in self.mounted if pid)}
        if self.emu_pid:
            mine.add(self.emu_pid)
        total = 0.0
        for pid, (cpu, ppid) in after.items():
            if pid in mine or ppid in mine:
                continue
            total += max(0.0, cpu - before.get(pid, (0.0, 0))[0]) if pid in before else 0.0
        return 100.0 * total / wall

    def metadata_workload(self, workload: str, root: Path) -> dict[str, Any]:
        if workload == "walk":
            return self.workload("walk", str(root))
        return self.workload("statlist", str(root), str(self.statlist_file))

    # -- phases --------------------------------------------------------------------------------------

    def setup(self) -> None:
        a = self.args
        t0 = time.monotonic()
        log(f"generating {a.files} files in {a.dirs} folders under {self.src / 'tree'}")
        paths = make_tree(self.src / "tree", a.files, a.dirs)
        self.statlist_file.write_text("".join(p + "\n" for p in paths))
        if a.read_mib:
            log(f"writing a {a.read_mib} MiB file")
            make_big_file(self.src / "big" / "blob.bin", a.read_mib)
        log(f"generated in {time.monotonic() - t0:.1f} s; starting the emulator ({a.profile})")
        self.emu_pid = self.emulate(self.src, self.emu)

    def roots(self, variant: str) -> Path:
        return {
            "local": self.src / "tree",
            "raw": self.emu / "tree",
            "cold": self.cold_mnt / HOST_PREFIX.strip("/") / "tree",
            "warm": self.warm_mnt / HOST_PREFIX.strip("/") / "tree",
        }[variant]

    def _emu_snapshot(self) -> dict[str, Any] | None:
        """What the emulated share has answered so far: its request counters and its calls on the source."""
        try:
            st = self.stats(self.emu)
        except BenchError:
            return None
        return {"requests": st.get("requests", {}), "calls": st.get("backing_calls", {})}

    @staticmethod
    def _delta(after: dict[str, int] | None, before: dict[str, int] | None) -> dict[str, int] | None:
        if after is None or before is None:
            return None
        return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}

    def _share_delta(self, before: dict[str, Any] | None) -> dict[str, Any]:
        """FUSE requests the emulated share answered since `before` (each waited the profile's latency):
        `share_requests` (lookup/getattr/readdir/open as the share counts them) and `share_calls` (its
        syscalls on the source by operation: lstat, readdir, read, ...)."""
        after = self._emu_snapshot()
        if before is None or after is None:
            return {}
        return {"share_requests": self._delta(after["requests"], before["requests"]),
                "share_calls": self._delta(after["calls"], before["calls"])}

    def run_metadata(self, variant: str, workload: str, rnd: int, warmup: bool) -> dict[str, Any]:
        record: dict[str, Any] = {"phase": "metadata", "variant": variant, "workload": workload, "round": rnd,
                                  "warmup": warmup}
        emu_before = self._emu_snapshot() if variant != "local" else None
        emu_cpu = cpu_seconds(self.emu_pid) if variant != "local" else None
        daemon = None
        stats_before = None
        if variant == "cold":
            daemon = self.mount(self.cold_mnt, self.emu)
        elif variant == "warm":
            daemon = self.warm_pid
            stats_before = self.stats(self.warm_mnt)
        daemon_cpu = cpu_seconds(daemon)
        try:
            result = self.metadata_workload(workload, self.roots(variant))
            record.update(result)
            if daemon is not None:
                record["daemon_cpu_s"] = (cpu_seconds(daemon) or 0) - (daemon_cpu or 0)
                record["daemon_vmhwm_bytes"] = proc_status(daemon).get("VmHWM")
            if variant == "warm":
                after = self.stats(self.warm_mnt)
                record["backing_calls"] = after["backing_calls_total"] - stats_before["backing_calls_total"]
                record["backing_calls_by_op"] = self._delta(after["backing_calls"], stats_before["backing_calls"])
                record["mount_requests"] = self._delta(after.get("requests", {}), stats_before.get("requests", {}))
            elif variant == "cold":
                after = self.stats(self.cold_mnt)
                record["backing_calls"] = after["backing_calls_total"]
                record["backing_calls_by_op"] = after["backing_calls"]
                record["mount_requests"] = after.get("requests")
                record["inodes"] = after.get("inodes")
        finally:
            if variant == "cold":
                self.umount(self.cold_mnt)
        if variant != "local":
            # what reached the share: FUSE requests the emulator answered (each one waited its latency)
            record.update(self._share_delta(emu_before))
            record["emulator_cpu_s"] = (cpu_seconds(self.emu_pid) or 0) - (emu_cpu or 0)
        self.runs.append(record)
        extra = f", {record['backing_calls']} backing calls" if "backing_calls" in record else ""
        log(f"  {'warm-up ' if warmup else ''}r{rnd} {workload:8s} {variant:5s} {record['elapsed_s']:8.3f} s"
            f"{extra}")
        return record

    def phase_metadata(self) -> None:
        a = self.args
        ttl = LONG_TTL if a.warm_ttl is None else a.warm_ttl
        log(f"metadata: warm mount with TTLs of {ttl:g} s, primed by one walk")
        self.warm_pid = self.mount(self.warm_mnt, self.emu, ttl=ttl)
        prime = self.metadata_workload("walk", self.roots("warm"))
        prime_stats = self.stats(self.warm_mnt)
        self.runs.append({"phase": "metadata", "variant": "warm-prime", "workload": "walk", "round": -1,
                          "warmup": True, **prime, "backing_calls": prime_stats["backing_calls_total"],
                          "backing_calls_by_op": prime_stats["backing_calls"]})
        log(f"  primed in {prime['elapsed_s']:.2f} s ({prime_stats['backing_calls_total']} backing calls)")
        variants = ["local", "raw", "cold", "warm"]
        workloads = ["statlist", "walk"]
        for rnd in range(-a.warmup, a.repeat):
            warm_up = rnd < 0
            for w_index, workload in enumerate(workloads):
                shift = (rnd + w_index) % len(variants)
                order = variants[shift:] + variants[:shift]
                for variant in order:
                    if warm_up and variant in ("raw", "cold") and not a.full_warmup:
                        continue  # nothing of theirs to warm: the priming walk went through the share
                    if workload == "statlist" and variant in ("raw", "cold"):
                        if variant == "cold" and not a.cold_statlist:
                            continue
                        if not warm_up and rnd >= a.raw_statlist_rounds:
                            continue
                    self.run_metadata(variant, workload, rnd, warm_up)
        self.warm_final = self.stats(self.warm_mnt)
        self.warm_vmhwm = proc_status(self.warm_pid) if self.warm_pid else {}
        self.umount(self.warm_mnt)

    def phase_read(self) -> None:
        a = self.args
        rel = Path("big") / "blob.bin"
        raw_file = self.emu / rel
        mnt_file = self.cold_mnt / HOST_PREFIX.strip("/") / rel
        log(f"read: {a.read_mib} MiB sequential, raw share vs cold mount (+ re-read)")
        for rnd in range(-a.warmup, a.read_repeat):
            order = ["raw", "cold"] if rnd % 2 == 0 else ["cold", "raw"]
            for variant in order:
                base = {"phase": "read", "round": rnd, "warmup": rnd < 0}
                if variant == "raw":
                    dropped = drop_caches() if a.drop_caches else False
                    emu_before = self._emu_snapshot()
                    cpu0 = cpu_seconds(self.emu_pid)
                    result = self.workload("read", str(raw_file))
                    cpu1 = cpu_seconds(self.emu_pid)
                    self.runs.append({**base, "variant": "raw", "workload": "read", "caches_dropped": dropped,
                                      **result, "emulator_cpu_s": (cpu1 or 0) - (cpu0 or 0),
                                      **self._share_delta(emu_before)})
                    log(f"  r{rnd} read   raw   {result['mib_per_s']:8.1f} MiB/s")
                    continue
                daemon = self.mount(self.cold_mnt, self.emu)
                try:
                    dropped = drop_caches() if a.drop_caches else False
                    before = self.stats(self.cold_mnt)
                    emu_before = self._emu_snapshot()
                    cpu0, ecpu0 = cpu_seconds(daemon), cpu_seconds(self.emu_pid)
                    result = self.workload("read", str(mnt_file))
                    cpu1, ecpu1 = cpu_seconds(daemon), cpu_seconds(self.emu_pid)
                    mid = self.stats(self.cold_mnt)
                    self.runs.append({**base, "variant": "cold", "workload": "read", "caches_dropped": dropped,
                                      **result, "daemon_cpu_s": (cpu1 or 0) - (cpu0 or 0),
                                      "emulator_cpu_s": (ecpu1 or 0) - (ecpu0 or 0),
                                      "backing_calls_by_op": self._delta(mid["backing_calls"],
                                                                         before["backing_calls"]),
                                      **self._share_delta(emu_before)})
                    reread = self.workload("read", str(mnt_file))
                    after = self.stats(self.cold_mnt)
                    by_op = self._delta(after["backing_calls"], mid["backing_calls"]) or {}
                    self.runs.append({**base, "variant": "reread", "workload": "read", **reread,
                                      "backing_calls_by_op": by_op,
                                      "backing_read_calls": by_op.get("read", 0)})
                    log(f"  r{rnd} read   cold  {result['mib_per_s']:8.1f} MiB/s; re-read "
                        f"{reread['mib_per_s']:8.1f} MiB/s with {by_op.get('read', 0)} backing reads")
                finally:
                    self.umount(self.cold_mnt)

    def phase_memory(self) -> None:
        a = self.args
        entries = a.mem_entries
        dirs = max(1, entries // 20)
        files = entries - dirs
        t0 = time.monotonic()
        log(f"memory: generating {entries} entries ({files} empty files in {dirs} folders)")
        make_tree(self.mem_src, files, dirs, seed=2, sized=False)
        log(f"  generated in {time.monotonic() - t0:.1f} s; mounting over the local disk (default TTLs)")
        pid = self.mount(self.mem_mnt, self.mem_src)
        if pid is None:
            raise BenchError("could not learn the mount daemon's pid from `fsbridge mount`")
        samples: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            proc = psutil.Process(pid)
            while not stop.is_set():
                try:
                    samples.append(proc.memory_info().rss)
                except psutil.Error:
                    return
                stop.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        try:
            start = proc_status(pid)
            sampler.start()
            root = self.mem_mnt / HOST_PREFIX.strip("/")
            walks = []
            for i in range(self.args.mem_walks):
                result = self.workload("walk", str(root))
                status = proc_status(pid)
                st = self.stats(self.mem_mnt)
                walks.append({**result, "vmrss_bytes": status.get("VmRSS"), "vmhwm_bytes": status.get("VmHWM"),
                              "inodes": st.get("inodes"),
                              "cache_sizes": {k: v.get("size") for k, v in st.get("cache", {}).items()},
                              "cache_evictions": {k: v.get("evictions") for k, v in st.get("cache", {}).items()},
                              "backing_calls_total": st.get("backing_calls_total")})
                log(f"  walk {i + 1}: {result['elapsed_s']:.1f} s, {result['files'] + result['dirs']} entries; "
                    f"daemon VmRSS {status.get('VmRSS', 0) / 2**20:.1f} MiB, "
                    f"VmHWM {status.get('VmHWM', 0) / 2**20:.1f} MiB")
        finally:
            stop.set()
            if sampler.is_alive():
                sampler.join(timeout=2)
            self.umount(self.mem_mnt)
        self.memory = {"entries": entries, "files": files, "dirs": dirs, "start": start, "walks": walks,
                       "rss_samples_max_bytes": max(samples) if samples else None,
                       "rss_samples": len(samples), "backing": "local disk (no emulator)",
                       "ttls": "defaults"}
        self.runs.append({"phase": "memory", **self.memory})

    # -- cleanup -------------------------------------------------------------------------------------

    def cleanup(self) -> None:
        for point, pid in reversed(list(self.mounted)):
            try:
                if pid is None:  # started late, after its command had given up
                    pid = self._daemon_serving(point)
                    self.mounted = [(pt, p if pt != point else pid) for pt, p in self.mounted]
                self.umount(point)
            except Exception as e:  # noqa: BLE001 - keep cleaning whatever went wrong
                log(f"cleanup: could not unmount {point}: {e}")
        for point in sorted(mounts_under(str(self.work)), reverse=True):  # anything else of ours, deepest first
            self.umount(point)
        left = mounts_under(str(self.work))
        if left:
            log(f"cleanup: {', '.join(left)} still mounted; leaving {self.work} in place")
            return
        if self.args.keep_workdir:
            log(f"keeping {self.work}")
            return
        shutil.rmtree(self.work, ignore_errors=True)


# --- summary and report ------------------------------------------------------------------------------------


def disturbed(r: dict[str, Any]) -> bool:
    """Another process dropped the kernel's caches while this run was timed (see cache_drops), and the run
    measures something those caches hold: the local disk's dentries, the warm mount's kernel entries, the
    page cache of a read through the mount. The raw share and the cold mount's walk keep no kernel cache to
    lose (the share runs with every timeout at 0), so a drop does not change what they measure."""
    if (r.get("variant") == "reread" and r.get("backing_read_calls")
            and (r.get("page_refaults") or 0) >= r["backing_read_calls"]):
        return True  # the machine's reclaim evicted pages between the read and the re-read (file_refaults)
    if not r.get("external_cache_drops"):
        return False
    if r.get("phase") == "memory" or "workload" not in r:
        return True
    return r["variant"] in ("local", "warm", "warm-prime", "reread") or (r["workload"] == "read"
                                                                         and r["variant"] == "cold")


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians and ranges per workload/variant over the timed runs that no outside cache drop disturbed."""
    timed = [r for r in runs if not r.get("warmup") and r["phase"] in ("metadata", "read")]
    left_out: dict[str, int] = {}
    table: dict[str, dict[str, Any]] = {}
    for r in timed:
        key = f"{r['workload']}/{r['variant']}"
        if disturbed(r):
            left_out[key] = left_out.get(key, 0) + 1
            continue
        table.setdefault(key, {"workload": r["workload"], "variant": r["variant"], "elapsed_s": [],
                               "mib_per_s": [], "backing_calls": [], "share_requests": [], "share_calls": [],
                               "share_reads": [], "mount_reads": [], "mount_requests": [],
                               "daemon_cpu_s": [], "emulator_cpu_s": []})
        row = table[key]
        row["elapsed_s"].append(r["elapsed_s"])
        if r.get("mib_per_s") is not None:
            row["mib_per_s"].append(r["mib_per_s"])
        if "backing_calls" in r:
            row["backing_calls"].append(r["backing_calls"])
        if "backing_read_calls" in r:
            row["backing_calls"].append(r["backing_read_calls"])
        if r.get("share_requests") is not None:
            row["share_requests"].append(sum(r["share_requests"].values()))
        if r.get("share_calls") is not None:
            row["share_calls"].append(sum(r["share_calls"].values()))
            if r["workload"] == "read":
                row["share_reads"].append(r["share_calls"].get("read", 0))
        if r.get("mount_requests") is not None:
            row["mount_requests"].append(sum(r["mount_requests"].values()))
        if r["workload"] == "read" and r.get("backing_calls_by_op") is not None:
            row["mount_reads"].append(r["backing_calls_by_op"].get("read", 0))
        for k in ("daemon_cpu_s", "emulator_cpu_s"):
            if r.get(k) is not None:
                row[k].append(r[k])
    out = {}
    for key, row in table.items():
        s = {"workload": row["workload"], "variant": row["variant"], "n": len(row["elapsed_s"])}
        for k in ("elapsed_s", "mib_per_s", "backing_calls", "share_requests", "share_calls", "share_reads",
                  "mount_reads", "mount_requests", "daemon_cpu_s", "emulator_cpu_s"):
            if row[k]:
                s[k] = {"median": median(row[k]), "min": min(row[k]), "max": max(row[k])}
        if row["backing_calls"]:
            s["backing_calls_sum"] = sum(row["backing_calls"])
        s["disturbed_left_out"] = left_out.get(key, 0)
        out[key] = s
    return out


def paired_ratios(runs: list[dict[str, Any]], workload: str, num: str, den: str,
                  field: str = "elapsed_s") -> list[float]:
    """Per-round ratios num/den (runs of one round are adjacent in time)."""
    by_round: dict[int, dict[str, float]] = {}
    for r in runs:
        if r.get("warmup") or r.get("workload") != workload or r.get("phase") not in ("metadata", "read"):
            continue
        if disturbed(r):
            continue
        by_round.setdefault(r["round"], {})[r["variant"]] = r[field]
    return [v[num] / v[den] for v in by_round.values() if num in v and den in v and v[den]]


def evaluate(summary: dict[str, Any], runs: list[dict[str, Any]], memory: dict[str, Any] | None,
             rss_bound_mib: float) -> list[dict[str, Any]]:
    goals = []

    def med(key: str, field: str = "elapsed_s") -> float | None:
        s = summary.get(key, {}).get(field)
        return s["median"] if s else None

    def ratio_goal(name: str, text: str, workload: str, num: str, den: str, target: float, *, at_most: bool,
                   field: str = "elapsed_s") -> None:
        n, d = med(f"{workload}/{num}", field), med(f"{workload}/{den}", field)
        if n is None or d is None or not d:
            goals.append({"goal": name, "text": text, "status": "NOT RUN"})
            return
        ratio = n / d
        paired = paired_ratios(runs, workload, num, den, field)
        ok = ratio <= target if at_most else ratio >= target
        goals.append({"goal": name, "text": text, "ratio": ratio, "target": target,
                      "paired_min": min(paired) if paired else None, "paired_max": max(paired) if paired else None,
                      "status": "PASS" if ok else "FAIL"})

    ratio_goal("warm_statlist", "warm stat of every known path vs local disk", "statlist", "warm", "local",
               GOALS["warm_statlist"], at_most=True)
    ratio_goal("warm_walk", "warm full walk vs local disk", "walk", "warm", "local", GOALS["warm_walk"],
               at_most=True)
    warm_calls = sum(summary.get(k, {}).get("backing_calls_sum", 0) for k in ("statlist/warm", "walk/warm"))
    have_warm = any(k in summary for k in ("statlist/warm", "walk/warm"))
    goals.append({"goal": "warm_no_backing", "text": "warm runs make no backing call", "value": warm_calls,
                  "target": 0, "status": ("PASS" if warm_calls == 0 else "FAIL") if have_warm else "NOT RUN"})
    ratio_goal("cold_walk", "cold full walk vs the raw emulated share", "walk", "cold", "raw", GOALS["cold_walk"],
               at_most=True)
    ratio_goal("read", "cold sequential read throughput vs the raw emulated share", "read", "cold", "raw",
               GOALS["read"], at_most=False, field="mib_per_s")
    if "read/reread" in summary:
        calls = summary["read/reread"].get("backing_calls_sum", 0)
        goals.append({"goal": "reread_page_cache", "text": "re-read of an unchanged file makes no backing read",
                      "value": calls, "target": 0, "status": "PASS" if calls == 0 else "FAIL"})
    for g in goals:
        keys = {"warm_statlist": ["statlist/warm", "statlist/local"], "warm_walk": ["walk/warm", "walk/local"],
                "warm_no_backing": ["statlist/warm", "walk/warm"], "cold_walk": ["walk/cold", "walk/raw"],
                "read": ["read/cold", "read/raw"], "reread_page_cache": ["read/reread"]}.get(g["goal"], [])
        n = sum(summary.get(k, {}).get("disturbed_left_out", 0) for k in keys)
        if n:
            g["disturbed_left_out"] = n
    if memory:
        walks = memory["walks"]
        peak = max(w["vmhwm_bytes"] or 0 for w in walks)
        first = walks[0]["vmhwm_bytes"] or 0
        growth = (peak - first) / first if first else None
        goals.append({"goal": "memory", "text": f"mount daemon peak RSS after walking {memory['entries']} entries "
                      f"({len(walks)} walks) <= {rss_bound_mib:g} MiB", "value": peak / 2**20,
                      "target": rss_bound_mib, "growth_after_first_walk": growth,
                      "status": "PASS" if peak / 2**20 <= rss_bound_mib else "FAIL"})
    return goals


def fmt_time(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 10 else f"{s:.1f} s"


REPORT_ORDER = ["statlist/local", "statlist/raw", "statlist/cold", "statlist/warm", "walk/local", "walk/raw",
                "walk/cold", "walk/warm", "read/raw", "read/cold", "read/reread"]


def _label(variant: str) -> str:
    return VARIANT_LABELS.get(variant, "cached mount, re-read (same mount)")


def _median_of(s: dict[str, Any], field: str, fmt: str = "{:.0f}") -> str:
    v = s.get(field)
    return fmt.format(v["median"]) if v else "-"


def _report_header(doc: dict[str, Any]) -> list[str]:
    p, m = doc["parameters"], doc["machine"]
    return [
        "# Cached mount over an emulated 9p-like share",
        "",
        (f"Date {doc['started']}; run time {doc['duration_s'] / 60:.1f} min. Machine: {m['cpu_model']}, "
         f"{m['cores']} cores, {m['memory_bytes'] / 2**30:.1f} GiB, Linux {m['kernel']}, Python {m['python']}, "
         f"fsbridge {m['fsbridge_version']}; working folder on {m['workdir_fstype']}."),
        "",
        (f"Tree: {p['files']} files (0-4 KiB) in {p['dirs']} folders. Share: `fsbridge emulate --profile "
         f"{p['profile']}` (a model, not a real share: see docs/benchmarks.md). {p['repeat']} timed rounds after "
         f"{p['warmup']} warm-up round(s), variants interleaved with the order rotating each round; medians with "
         "min-max. Every workload runs in its own process (fsbridge.bench.workloads) and only the workload is timed."),
        "",
        (f"The warm mount runs with TTLs of {p['warm_ttl_s']:g} s (`--entry-ttl/--attr-ttl/--dir-ttl/"
         "--negative-ttl`): the slow raw-share runs interleaved between warm runs take longer than the default "
         "30 s TTLs, so with the defaults the facts primed before the round would expire before being measured. "
         "The cold mounts use the default TTLs and are a fresh `fsbridge mount` process per run."),
    ]


def _report_results(summary: dict[str, Any]) -> list[str]:
    lines = ["", "## Results", "",
             "| workload | variant | median | min-max | runs | backing calls of the mount |",
             "|---|---|---:|---:|---:|---:|"]
    for key in REPORT_ORDER:
        s = summary.get(key)
        if not s:
            continue
        if s["workload"] == "read":
            v = s["mib_per_s"]
            med, rng = f"{v['median']:.0f} MiB/s", f"{v['min']:.0f}-{v['max']:.0f} MiB/s"
        else:
            v = s["elapsed_s"]
            med, rng = fmt_time(v["median"]), f"{fmt_time(v['min'])} - {fmt_time(v['max'])}"
        calls = s.get("backing_calls")
        calls_txt = f"{calls['median']:.0f} (max {calls['max']:.0f})" if calls else "-"
        runs = f"{s['n']}" + (f" (+{s['disturbed_left_out']} left out)" if s.get("disturbed_left_out") else "")
        lines.append(f"| {s['workload']} | {_label(s['variant'])} | {med} | {rng} | {runs} | {calls_txt} |")
    lines += ["", ("Backing calls: from `fsbridge stats` on the cached mount (warm: difference before/after each "
                   "run; cold: the whole fresh mount; re-read: backing *read* calls during the re-read). Runs "
                   "\"left out\": another process dropped the kernel's caches while they ran (see Notes); they "
                   "stay in results.json.")]
    return lines


def _report_time(doc: dict[str, Any]) -> list[str]:
    summary = doc["summary"]
    lines = ["", "## Where the time goes", "",
             ("Per run, medians. Share calls: the emulated share's own calls on the source folder, one per FUSE "
              "request it answered that reaches the source (lookup, getattr, readdir, read, open...); each of "
              "those requests waited the profile's latency. From `fsbridge stats` on the emulator. Mount "
              "requests: lookup/getattr/readdir/open requests the cached mount's daemon answered. CPU: "
              "user+system seconds of the emulator and of the mount daemon during the run."),
             "",
             "| workload | variant | share calls | mount requests | emulator CPU | mount daemon CPU | wall |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for key in REPORT_ORDER:
        s = summary.get(key)
        if not s or s["variant"] == "local":
            continue
        lines.append(f"| {s['workload']} | {_label(s['variant'])} | {_median_of(s, 'share_calls')} | "
                     f"{_median_of(s, 'mount_requests')} | {_median_of(s, 'emulator_cpu_s', '{:.2f} s')} | "
                     f"{_median_of(s, 'daemon_cpu_s', '{:.2f} s')} | {fmt_time(s['elapsed_s']['median'])} |")
    for key in ("read/raw", "read/cold"):
        s = summary.get(key)
        n = s.get("share_reads") if s else None
        if not s or not n or not n["median"]:
            continue
        size = doc["parameters"]["read_mib"] * 1024 / n["median"]
        extra = ""
        mr = s.get("mount_reads")
        if mr and mr["median"]:
            extra = (f"; the kernel sent the mount {mr['median']:.0f} reads "
                     f"(about {doc['parameters']['read_mib'] * 1024 / mr['median']:.0f} KiB each)")
        lines += ["", (f"{_label(s['variant'])} read: {n['median']:.0f} read requests reached the share "
                       f"(about {size:.0f} KiB each){extra}.")]
    return lines


def _report_goals(goals: list[dict[str, Any]]) -> list[str]:
    lines = ["", "## Goals", "", "| goal | measured | target | per-round range | result |",
             "|---|---:|---:|---:|---|"]
    for g in goals:
        if g.get("disturbed_left_out"):
            g = {**g, "text": f"{g['text']} ({g['disturbed_left_out']} disturbed run(s) left out)"}
        if g["status"] == "NOT RUN":
            lines.append(f"| {g['text']} | - | - | - | NOT RUN |")
        elif "ratio" in g:
            op = ">=" if g["goal"] == "read" else "<="
            rng = f"{g['paired_min']:.2f}-{g['paired_max']:.2f}" if g.get("paired_min") is not None else "-"
            lines.append(f"| {g['text']} | {g['ratio']:.2f}x | {op} {g['target']}x | {rng} | **{g['status']}** |")
        elif g["goal"] == "memory":
            lines.append(f"| {g['text']} | {g['value']:.0f} MiB | <= {g['target']:g} MiB | - | **{g['status']}** |")
        else:
            lines.append(f"| {g['text']} | {g['value']} | {g['target']} | - | **{g['status']}** |")
    return lines


def _report_memory(doc: dict[str, Any]) -> list[str]:
    mem = doc.get("memory")
    if not mem:
        return []
    mib = 2**20
    w = mem["walks"]
    head = " | ".join(f"after walk {i + 1}" for i in range(len(w)))
    lines = ["", "## Memory", "",
             (f"{mem['entries']} entries ({mem['files']} empty files, {mem['dirs']} folders) on the local disk "
              "(no emulator: the share's speed does not change what the daemon keeps), one fresh mount with the "
              f"default TTLs (30 s), walked {len(w)} times in a row. A walk that takes longer than the TTLs finds "
              "the facts of the previous one expired and fetches them again."),
             "",
             f"| | after mount | {head} |",
             "|---|---:|" + "---:|" * len(w),
             f"| VmRSS | {mem['start'].get('VmRSS', 0) / mib:.1f} MiB | "
             + " | ".join(f"{(x['vmrss_bytes'] or 0) / mib:.1f} MiB" for x in w) + " |",
             f"| VmHWM (peak) | {mem['start'].get('VmHWM', 0) / mib:.1f} MiB | "
             + " | ".join(f"{(x['vmhwm_bytes'] or 0) / mib:.1f} MiB" for x in w) + " |",
             "| inodes known | - | " + " | ".join(str(x["inodes"]) for x in w) + " |",
             "| backing calls so far | - | " + " | ".join(str(x["backing_calls_total"]) for x in w) + " |",
             "| walk time | - | " + " | ".join(f"{x['elapsed_s']:.1f} s" for x in w) + " |"]
    sizes = ", ".join(f"{k} {v}" for k, v in w[-1]["cache_sizes"].items())
    lines += ["", (f"Cache sizes after the last walk: {sizes}. Peak of 0.1 s RSS samples: "
                   f"{(mem['rss_samples_max_bytes'] or 0) / mib:.1f} MiB.")]
    start = mem["start"].get("VmRSS", 0)
    peak = max(x["vmhwm_bytes"] or 0 for x in w)
    first = w[0]["vmhwm_bytes"] or 0
    entries = w[0]["files"] + w[0]["dirs"]
    if entries and first > start:
        lines.append(f"After the first walk: about {(first - start) / entries / 1024:.1f} KiB per entry above the "
                     f"{start / mib:.0f} MiB the daemon uses at start; the peak over all walks is "
                     f"{peak / mib:.0f} MiB.")
    disturbed_walks = [i + 1 for i, x in enumerate(w) if disturbed(x)]
    if disturbed_walks:
        lines.append(f"Walk(s) {', '.join(map(str, disturbed_walks))}: another process dropped the kernel's "
                     "caches meanwhile, so the kernel forgot its inodes and looked every entry up again.")
    cold = doc.get("cold_mount_vmhwm_bytes")
    if cold:
        p = doc["parameters"]
        lines.append(f"For scale: a cold mount after walking the {p['files'] + p['dirs']}-entry tree above "
                     f"peaked at {cold / mib:.1f} MiB.")
    return lines


def _report_notes(doc: dict[str, Any]) -> list[str]:
    busy = [r["others_cpu_pct"] for r in doc["runs"] if r.get("others_cpu_pct") is not None]
    loads = [r["loadavg_1m"] for r in doc["runs"] if r.get("loadavg_1m") is not None]
    notes = list(doc.get("notes") or [])
    src = doc.get("source") or {}
    if src:
        start, end = src.get("start", {}), src.get("end", {})
        changed = start.get("fsbridge_changed_since_head") or []
        head = (start.get("git_head") or "?")[:10]
        line = f"Code under test: fsbridge at git {head}"
        line += f" with local changes to {', '.join(c.split()[-1] for c in changed)}." if changed else "."
        if start.get("fsbridge_sha256") != end.get("fsbridge_sha256"):
            line += (" The fsbridge source changed while the bench ran (its digest differs between start and "
                     "end): mounts started late in the run may have run newer code.")
        notes.append(line)
    timed = [r for r in doc["runs"] if r.get("phase") in ("metadata", "read") and not r.get("warmup")]
    hit = [r for r in timed if disturbed(r) and r.get("external_cache_drops")]
    reclaimed = [r for r in timed if disturbed(r) and not r.get("external_cache_drops")]
    kept = [r for r in timed if r.get("external_cache_drops") and not disturbed(r)]
    if hit:
        listed = "; ".join(f"{r['workload']}/{r['variant']} round {r['round']}" for r in hit)
        notes.append(f"{len(hit)} run(s) were left out of the medians because another process wrote to "
                     f"/proc/sys/vm/drop_caches while they ran (drop counters in /proc/vmstat rose; this bench "
                     f"never drops caches during a run): {listed}. They remain in results.json "
                     "(`external_cache_drops`).")
    for r in reclaimed:
        notes.append(f"Re-read of round {r['round']} left out: it made {r['backing_read_calls']} backing reads "
                     f"while {r['page_refaults']} page-cache pages were refaulted (/proc/vmstat "
                     "workingset_refault_file): the machine's reclaim had evicted part of the file between the "
                     "read and the re-read. The mount does not evict pages; a file it invalidates itself "
                     "leaves no refaults.")
    if kept:
        listed = "; ".join(f"{r['workload']}/{r['variant']} round {r['round']}" for r in kept)
        notes.append(f"Another process also dropped the caches during {listed}. These runs are kept: the raw "
                     "share and the cold mount's walk hold nothing in the kernel's caches (the share runs with "
                     "every timeout at 0), so the drop does not change what they measure.")
    warm_rereads = [r for r in doc["runs"] if r.get("variant") == "reread" and r.get("warmup")
                     and r.get("backing_read_calls")]
    for r in warm_rereads:
        why = (f"{r['page_refaults']} pages refaulted meanwhile" if r.get("page_refaults")
               else "no outside cache drop or refault recorded")
        notes.append(f"The warm-up round's re-read (not timed, not counted) made {r['backing_read_calls']} backing "
                     f"read calls ({why}).")
    damon = doc["machine"].get("damon_pageout")
    if damon:
        ages = ", ".join(f"{d['min_age_s']:.0f} s" for d in damon)
        notes.append(f"This machine runs DAMON proactive reclaim (`pageout` of memory regions idle for at least "
                     f"{ages}, on physical address ranges). Its regions are coarse, so page cache a few seconds "
                     "old can be paged out with an idle region; a re-read may then fetch a few blocks again. "
                     "That is the machine, not the mount.")
    if busy:
        notes.append(f"Other processes on the machine (not this bench) used {median(busy):.0f}% of a core during "
                     f"the median run (max {max(busy):.0f}%); 1-minute load average {min(loads):.1f}-"
                     f"{max(loads):.1f} on {doc['machine']['cores']} cores. Per-run figures are in results.json "
                     "(`others_cpu_pct`, `loadavg_1m`); interleaving spreads such disturbance over all variants, "
                     "but it widens the min-max ranges.")
    return ["", "## Notes", ""] + [f"- {n}" for n in notes] if notes else []


def write_report(out: Path, doc: dict[str, Any]) -> None:
    lines = (_report_header(doc) + _report_results(doc["summary"]) + _report_time(doc) + _report_goals(doc["goals"])
             + _report_memory(doc) + _report_notes(doc)
             + ["", "Raw runs, machine and parameters: results.json. Reproduce: see README.md.", ""])
    (out / "report.md").write_text("\n".join(lines))


def write_chart(out: Path, doc: dict[str, Any]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001 - no chart without a working matplotlib
        return
    summary = doc["summary"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, workload in zip(axes[:2], ("statlist", "walk")):
        keys = [k for k in (f"{workload}/{v}" for v in ("local", "raw", "cold", "warm")) if k in summary]
        meds = [summary[k]["elapsed_s"]["median"] for k in keys]
        lo = [m - summary[k]["elapsed_s"]["min"] for k, m in zip(keys, meds)]
        hi = [summary[k]["elapsed_s"]["max"] - m for k, m in zip(keys, meds)]
        short = {"local": "local disk", "raw": "raw share", "cold": "mount cold", "warm": "mount warm"}
        ax.bar([short[summary[k]["variant"]] for k in keys], meds,
               yerr=[lo, hi], capsize=3)
        ax.set_yscale("log")
        ax.set_ylabel("seconds (log)")
        ax.set_title(workload)
        ax.tick_params(axis="x", labelsize=7)
    keys = [k for k in ("read/raw", "read/cold", "read/reread") if k in summary]
    if keys:
        meds = [summary[k]["mib_per_s"]["median"] for k in keys]
        axes[2].bar(["raw share", "mount cold", "mount re-read"], meds)
        axes[2].set_yscale("log")
        axes[2].set_ylabel("MiB/s (log)")
        axes[2].set_title("sequential read")
    fig.suptitle(f"fsbridge mount over `emulate --profile {doc['parameters']['profile']}` "
                 f"({doc['parameters']['files']} files)")
    fig.tight_layout()
    fig.savefig(out / "report.png", dpi=100)
    plt.close(fig)


# --- main --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=20000, help="files in the metadata tree (default 20000)")
    p.add_argument("--dirs", type=int, default=1000, help="folders in the metadata tree (default 1000)")
    p.add_argument("--profile", default="9p-virtio", help="`fsbridge emulate` profile (default 9p-virtio)")
    p.add_argument("--repeat", type=int, default=5, help="timed rounds of the metadata workloads (default 5)")
    p.add_argument("--read-repeat", type=int, default=None, help="timed rounds of the read (default: --repeat)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds (default 1)")
    p.add_argument("--read-mib", type=int, default=1024, help="size of the sequential-read file; 0 skips it")
    p.add_argument("--mem-entries", type=int, default=200000,
                   help="entries of the memory tree (default 200000); 0 skips the memory measurement")
    p.add_argument("--mem-walks", type=int, default=3,
                   help="walks of the memory tree through one mount (default 3: the RSS should level off)")
    p.add_argument("--rss-bound-mib", type=float, default=512.0,
                   help="the stated bound on the mount daemon's peak RSS at --mem-entries (default 512)")
    p.add_argument("--warm-ttl", type=float, default=None,
                   help=f"TTLs of the warm mount in seconds (default {LONG_TTL:g}; see report.md)")
    p.add_argument("--raw-statlist-rounds", type=int, default=None,
                   help="timed rounds in which statlist also runs on the raw share (default: all); it has "
                   "no goal and is the slowest run")
    p.add_argument("--full-warmup", action="store_true",
                   help="also run the raw share and cold mounts in the warm-up round (by default only local "
                   "and warm are warmed up: the others keep no cache, and the priming walk of the warm mount "
                   "already went through the share)")
    p.add_argument("--cold-statlist", action="store_true",
                   help="also time the statlist workload on cold mounts (no goal; slow)")
    p.add_argument("--no-drop-caches", dest="drop_caches", action="store_false",
                   help="do not drop the page cache before cold reads")
    p.add_argument("--skip", action="append", default=[], choices=["metadata", "read", "memory"],
                   help="skip a phase (repeatable)")
    p.add_argument("--quick", action="store_true",
                   help="a small smoke run: 2000 files, 100 folders, 2 rounds, 64 MiB, 20000 entries")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default bench/results/DATE-<cores>core-<arch>/mount)")
    p.add_argument("--workdir", default=None, help="where to build the trees (default /var/tmp)")
    p.add_argument("--keep-workdir", action="store_true", help="leave the generated trees in place")
    p.add_argument("--fsbridge", default=None, help="the fsbridge command (default: the one beside this Python)")
    p.add_argument("--report-only", type=Path, metavar="RESULTS_JSON",
                   help="measure nothing: rewrite report.md and report.png beside RESULTS_JSON from it")
    args = p.parse_args(argv)
    if args.quick:
        args.files, args.dirs, args.repeat = 2000, 100, 2
        args.read_mib = min(args.read_mib, 64)
        args.mem_entries = min(args.mem_entries, 20000)
    if args.read_repeat is None:
        args.read_repeat = args.repeat
    if args.raw_statlist_rounds is None:
        args.raw_statlist_rounds = args.repeat
    if args.skip:
        if "read" in args.skip:
            args.read_mib = 0
        if "memory" in args.skip:
            args.mem_entries = 0
    return args


def rerender(results: Path) -> int:
    doc = json.loads(results.read_text())
    args_like = doc["parameters"]
    doc["summary"] = summarize(doc["runs"])
    doc["goals"] = evaluate(doc["summary"], doc["runs"], doc.get("memory"), args_like["rss_bound_mib"])
    results.write_text(json.dumps(doc, indent=1) + "\n")
    write_report(results.parent, doc)
    write_chart(results.parent, doc)
    return 0 if all(g["status"] in ("PASS", "NOT RUN") for g in doc["goals"]) else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_only:
        return rerender(args.report_only)
    out: Path = args.out or default_out()
    command = " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable, os.getcwd())
                                                if sys.executable.startswith(os.getcwd()) else sys.executable,
                                                *sys.argv])

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored (nohup, &)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    bench = Bench(args)
    doc: dict[str, Any] = {}
    try:
        machine = machine_info(bench.fsbridge, str(bench.work))
        source_start = source_state()
        log(f"fsbridge {machine['fsbridge_version']} at {bench.fsbridge}; working in {bench.work}")
        bench.setup()
        if "metadata" not in args.skip:
            bench.phase_metadata()
        if args.read_mib:
            bench.phase_read()
        memory = None
        if args.mem_entries:
            bench.phase_memory()
            memory = bench.memory
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    finally:
        bench.cleanup()
    duration = time.monotonic() - t0
    summary = summarize(bench.runs)
    cold_hwm = [r["daemon_vmhwm_bytes"] for r in bench.runs
                if r.get("variant") == "cold" and r.get("workload") == "walk" and r.get("daemon_vmhwm_bytes")]
    if args.read_mib and not any(r.get("caches_dropped") for r in bench.runs if r.get("phase") == "read"):
        bench.notes.append("The page cache could not be dropped (not root?): cold reads were cold only in the "
                           "mount's own page cache (a fresh mount has none); the source file was in the host's "
                           "page cache for both the raw and the mounted read.")
    doc = {
        "started": started.isoformat(timespec="seconds"),
        "duration_s": duration,
        "command": command,
        "machine": machine,
        "source": {"start": source_start, "end": source_state()},
        "parameters": {"files": args.files, "dirs": args.dirs, "profile": args.profile, "repeat": args.repeat,
                       "read_repeat": args.read_repeat, "warmup": args.warmup, "read_mib": args.read_mib,
                       "mem_entries": args.mem_entries, "mem_walks": args.mem_walks,
                       "rss_bound_mib": args.rss_bound_mib,
                       "warm_ttl_s": LONG_TTL if args.warm_ttl is None else args.warm_ttl,
                       "cold_ttl": "defaults", "cold_statlist": args.cold_statlist,
                       "raw_statlist_rounds": args.raw_statlist_rounds, "full_warmup": args.full_warmup,
                       "drop_caches": args.drop_caches, "quick": args.quick, "host_prefix": HOST_PREFIX},
        "summary": summary,
        "goals": evaluate(summary, bench.runs, memory, args.rss_bound_mib),
        "memory": memory,
        "cold_mount_vmhwm_bytes": max(cold_hwm) if cold_hwm else None,
        "warm_mount_final_stats": getattr(bench, "warm_final", None),
        "notes": bench.notes,
        "runs": bench.runs,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    write_report(out, doc)
    write_chart(out, doc)
    log(f"done in {duration / 60:.1f} min: {out / 'report.md'}")
    for g in doc["goals"]:
        shown = f"{g['ratio']:.2f}x" if "ratio" in g else g.get("value", "")
        if isinstance(shown, float):
            shown = f"{shown:.1f}"
        log(f"  {g['status']:7s} {g['text']}: {shown}")
    return 0 if all(g["status"] in ("PASS", "NOT RUN") for g in doc["goals"]) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
