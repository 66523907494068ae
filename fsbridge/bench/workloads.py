"""The timed workloads of `fsbridge bench`, each run in its own Python process.

Every mode does its setup (reading the path list, allocating buffers) before the clock starts and prints
one JSON object on stdout, so the timing covers the workload alone, not interpreter start-up:

    python -m fsbridge.bench.workloads MODE ARGS...

    walk ROOT               list every folder, lstat every entry (find, an IDE's indexer)
    statlist ROOT LIST      lstat every path in LIST, relative to ROOT (git status)
    readtree ROOT LIST      open and read every file in LIST (a build, grep -r)
    read FILE [--bs N]      read FILE sequentially in N-byte blocks (default 1 MiB)
    hash FILE               read FILE and compute its sha256 (what any image loader must do)
    writetree ROOT --files N --dirs D --bytes B
                            create a tree of small files in a fresh folder under ROOT, then delete it
    sink SOCKET             an HTTP server on a unix socket that discards every request body (the upload
                            floor for curl)

Reads use 1 MiB blocks: smaller reads through FUSE measure the per-request cost, not the share's throughput.
This module imports nothing else from fsbridge: it measures what any program sees on a file system.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import stat
import sys
import threading
import time
from typing import Any

MiB = 1024 * 1024


def walk(root: str) -> dict[str, Any]:
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


def _read_list(root: str, list_file: str) -> list[str]:
    with open(list_file, encoding="utf-8") as f:
        return [root + "/" + line.rstrip("\n") for line in f if line.strip()]


def statlist(root: str, list_file: str) -> dict[str, Any]:
    paths = _read_list(root, list_file)
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


def readtree(root: str, list_file: str) -> dict[str, Any]:
    paths = _read_list(root, list_file)
    buf = bytearray(MiB)
    view = memoryview(buf)
    errors = total = 0
    t0 = time.perf_counter()
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            errors += 1
            continue
        try:
            while n := os.readv(fd, [view]):
                total += n
        except OSError:
            errors += 1
        finally:
            os.close(fd)
    elapsed = time.perf_counter() - t0
    return {"mode": "readtree", "elapsed_s": elapsed, "files": len(paths), "bytes": total, "errors": errors}


def read(path: str, block: int) -> dict[str, Any]:
    buf = bytearray(block)
    view = memoryview(buf)
    total = 0
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        while n := os.readv(fd, [view]):
            total += n
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - t0
    return {
        "mode": "read",
        "elapsed_s": elapsed,
        "bytes": total,
        "block": block,
        "mib_per_s": total / MiB / elapsed if elapsed > 0 else None,
        "errors": 0,
    }


def sha256(path: str) -> dict[str, Any]:
    h = hashlib.sha256()
    buf = bytearray(MiB)
    view = memoryview(buf)
    total = 0
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        while n := os.readv(fd, [view]):
            h.update(view[:n])
            total += n
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - t0
    return {
        "mode": "hash",
        "elapsed_s": elapsed,
        "bytes": total,
        "sha256": h.hexdigest(),
        "mib_per_s": total / MiB / elapsed if elapsed > 0 else None,
        "errors": 0,
    }


def writetree(root: str, files: int, dirs: int, nbytes: int) -> dict[str, Any]:
    """Create `files` files of `nbytes` bytes spread over `dirs` folders in a fresh folder under ROOT (the
    `npm install` pattern: many small creates), then delete all of it (`rm -rf node_modules`)."""
    top = os.path.join(root, f"writetree-{os.getpid()}-{time.time_ns()}")
    payload = bytes(range(256)) * (nbytes // 256 + 1)
    payload = payload[:nbytes]
    folders = [f"{top}/d{i:05d}" for i in range(max(1, dirs))]
    t0 = time.perf_counter()
    os.mkdir(top)
    for folder in folders:
        os.mkdir(folder)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for k in range(files):
        fd = os.open(f"{folders[k % len(folders)]}/f{k:06d}.js", flags, 0o644)
        try:
            if payload:
                os.write(fd, payload)
        finally:
            os.close(fd)
    t1 = time.perf_counter()
    for k in range(files):
        os.unlink(f"{folders[k % len(folders)]}/f{k:06d}.js")
    for folder in folders:
        os.rmdir(folder)
    os.rmdir(top)
    t2 = time.perf_counter()
    return {
        "mode": "writetree",
        "elapsed_s": t2 - t0,
        "create_s": t1 - t0,
        "delete_s": t2 - t1,
        "files": files,
        "dirs": len(folders),
        "bytes_written": files * nbytes,
        "errors": 0,
    }


def sink(path: str) -> None:
    """Serve HTTP on a unix socket: read each request body in full and throw it away, then answer 200."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    print(json.dumps({"mode": "sink", "listening": path}), flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=_drain, args=(conn,), daemon=True).start()


def _drain(conn: socket.socket) -> None:
    with conn:
        buf = bytearray(MiB)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                return
            head += chunk
        header, _, rest = head.partition(b"\r\n\r\n")
        length = 0
        for line in header.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        got = len(rest)
        if b"100-continue" in header.lower():
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        while got < length:
            n = conn.recv_into(buf)
            if not n:
                return
            got += n
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fsbridge.bench.workloads",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("walk", help="list every folder under ROOT and lstat every entry")
    p.add_argument("root")
    for mode, text in (("statlist", "lstat"), ("readtree", "open and read")):
        p = sub.add_parser(mode, help=f"{text} every path listed in LIST (one per line, relative to ROOT)")
        p.add_argument("root")
        p.add_argument("list_file")
    p = sub.add_parser("read", help="read FILE sequentially")
    p.add_argument("file")
    p.add_argument("--bs", type=int, default=MiB, help="block size in bytes (default 1 MiB)")
    p = sub.add_parser("hash", help="read FILE and compute its sha256")
    p.add_argument("file")
    p = sub.add_parser("writetree", help="create a tree of small files under ROOT, then delete it")
    p.add_argument("root")
    p.add_argument("--files", type=int, required=True)
    p.add_argument("--dirs", type=int, required=True)
    p.add_argument("--bytes", type=int, default=2048)
    p = sub.add_parser("sink", help="an HTTP server on a unix socket that discards request bodies")
    p.add_argument("socket")
    args = parser.parse_args(argv)
    if args.mode == "sink":
        sink(args.socket)
        return 0
    if args.mode == "walk":
        result = walk(args.root.rstrip("/") or "/")
    elif args.mode in ("statlist", "readtree"):
        fn = statlist if args.mode == "statlist" else readtree
        result = fn(args.root.rstrip("/") or "/", args.list_file)
    elif args.mode == "read":
        result = read(args.file, args.bs)
    elif args.mode == "hash":
        result = sha256(args.file)
    else:
        result = writetree(args.root, args.files, args.dirs, args.bytes)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
