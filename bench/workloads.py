"""The timed workloads of bench/mount_bench.py, each run in its own Python process.

Every mode does its setup (reading the path list, opening nothing yet) before the clock starts and prints
one JSON object on stdout, so the timing covers the workload alone, not interpreter start-up:

    python bench/workloads.py walk ROOT            # list every folder, lstat every entry (find / an IDE index)
    python bench/workloads.py statlist ROOT LIST   # lstat every path in LIST, relative to ROOT (git status)
    python bench/workloads.py read FILE [--bs N]   # read FILE sequentially in N-byte blocks (default 1 MiB)

This file imports nothing from fsbridge: it measures what any program sees on the mount.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import time


def walk(root: str) -> dict:
    dirs = files = errors = 0
    t0 = time.perf_counter()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                names = [entry.name for entry in it]
        except OSError:
            errors += 1
            continue
        dirs += 1
        for name in names:
            path = folder + "/" + name
            try:
                st = os.lstat(path)
            except OSError:
                errors += 1
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append(path)
            else:
                files += 1
    elapsed = time.perf_counter() - t0
    return {"mode": "walk", "elapsed_s": elapsed, "dirs": dirs, "files": files, "errors": errors}


def statlist(root: str, list_file: str) -> dict:
    with open(list_file, encoding="utf-8") as f:
        paths = [root + "/" + line.rstrip("\n") for line in f if line.strip()]
    errors = 0
    lstat = os.lstat
    t0 = time.perf_counter()
    for path in paths:
        try:
            lstat(path)
        except OSError:
            errors += 1
    elapsed = time.perf_counter() - t0
    return {"mode": "statlist", "elapsed_s": elapsed, "paths": len(paths), "errors": errors}


def read(path: str, block: int) -> dict:
    buf = bytearray(block)
    view = memoryview(buf)
    total = 0
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        while True:
            n = os.readv(fd, [view])
            if n == 0:
                break
            total += n
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - t0
    return {"mode": "read", "elapsed_s": elapsed, "bytes": total, "block": block,
            "mib_per_s": total / (1024 * 1024) / elapsed if elapsed > 0 else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("walk", help="list every folder under ROOT and lstat every entry")
    p.add_argument("root")
    p = sub.add_parser("statlist", help="lstat every path listed in LIST (one per line, relative to ROOT)")
    p.add_argument("root")
    p.add_argument("list_file")
    p = sub.add_parser("read", help="read FILE sequentially")
    p.add_argument("file")
    p.add_argument("--bs", type=int, default=1024 * 1024, help="block size in bytes (default 1 MiB)")
    args = parser.parse_args(argv)
    if args.mode == "walk":
        result = walk(args.root.rstrip("/") or "/")
    elif args.mode == "statlist":
        result = statlist(args.root.rstrip("/") or "/", args.list_file)
    else:
        result = read(args.file, args.bs)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
