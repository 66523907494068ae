"""Load a large two-layer image by path reference and by upload, against the work that cannot be skipped.

    python bench/load_bench.py [--size-mib 1024] [--repeat 3] [--out bench/results/DATE-MACHINE/load]

Variants, run interleaved (A B C D, A B C D, …) so that drift on the machine hits all alike:

- floor:        read the archive and compute its sha256 (what any loader must do at least)
- sink:         curl sends the archive over a unix socket to a server that discards it
- write:        copy the archive into a file beside the store and fsync it (what storing the blobs costs
                on this disk, however the bytes arrive)
- path:         `fsbridge load` (path reference; the server reads the file itself)
- upload:       `fsbridge load --upload` (the bytes travel over the unix socket)

Goals (issue "path references"): path ≤ 1.3 × floor; upload ≤ 1.3 × (sink + floor); peak RSS of the
server and of the client < 200 MiB whatever the archive's size. The store is emptied (rmi + garbage
collection) between runs, untimed, so that every load really writes its blobs.

fsbridge is driven through its command line only, as a user would.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import os
import platform
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

FSBRIDGE = str(Path(sys.executable).with_name("fsbridge"))
MiB = 1024 * 1024


def make_layer(path: Path, size: int, seed: int) -> str:
    """A layer tar holding one incompressible file; returns its sha256 (the diff_id)."""
    rng = random.Random(seed)
    info = tarfile.TarInfo("data.bin")
    info.size = size
    info.mode = 0o644
    h = hashlib.sha256()

    class Hashing(io.RawIOBase):
        def __init__(self, f: io.BufferedWriter) -> None:
            self.f = f

        def writable(self) -> bool:
            return True

        def write(self, b: bytes) -> int:  # type: ignore[override]
            h.update(b)
            return self.f.write(b)

    class Source(io.RawIOBase):
        left = size

        def readable(self) -> bool:
            return True

        def readinto(self, b: bytearray) -> int:  # type: ignore[override]
            n = min(len(b), self.left, MiB)
            b[:n] = rng.randbytes(n)
            self.left -= n
            return n

    with open(path, "wb") as raw:
        with tarfile.open(fileobj=Hashing(raw), mode="w|", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(info, io.BufferedReader(Source(), MiB))
    return "sha256:" + h.hexdigest()


def make_archive(path: Path, total: int) -> None:
    work = path.parent / "layers"
    work.mkdir(exist_ok=True)
    layers = []
    for i in range(2):
        layer = work / f"layer{i}.tar"
        layers.append((layer, make_layer(layer, total // 2 - 4096, seed=i)))
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]},
        "history": [{"created": "2026-01-01T00:00:00Z"}, {"created": "2026-01-01T00:00:00Z"}],
    }).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": ["localhost/bench:large"],
                            "Layers": [f"{d[7:]}/layer.tar" for _, d in layers]}]).encode()
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in ((config_name, config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for layer, digest in layers:
            tar.add(layer, arcname=f"{digest[7:]}/layer.tar")
    shutil.rmtree(work)


def floor(path: Path) -> float:
    code = ("import hashlib,sys,time\nt=time.perf_counter();h=hashlib.sha256()\n"
            "with open(sys.argv[1],'rb',buffering=0) as f:\n"
            "    while b:=f.read(1<<20): h.update(b)\n"
            "print(time.perf_counter()-t)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    return float(out.stdout)


def write_floor(path: Path, dest_dir: Path) -> float:
    """Copy the archive into dest_dir and fsync it: the disk's cost of storing that many bytes."""
    code = ("import os,sys,time\nt=time.perf_counter()\n"
            "with open(sys.argv[1],'rb',buffering=0) as f, open(sys.argv[2],'wb',buffering=0) as o:\n"
            "    while b:=f.read(1<<20): o.write(b)\n"
            "    os.fsync(o.fileno())\n"
            "print(time.perf_counter()-t)")
    dest = dest_dir / "write-floor.tmp"
    try:
        out = subprocess.run([sys.executable, "-c", code, str(path), str(dest)], capture_output=True, text=True,
                             check=True)
    finally:
        dest.unlink(missing_ok=True)
    return float(out.stdout)


class Sink:
    """A unix-socket HTTP server that reads every byte sent and throws it away."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(4)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                buf = bytearray(MiB)
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    head += chunk
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                got = len(head.split(b"\r\n\r\n", 1)[1]) if b"\r\n\r\n" in head else 0
                if b"100-continue" in head.lower():
                    conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                while got < length:
                    n = conn.recv_into(buf)
                    if not n:
                        break
                    got += n
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")

    def close(self) -> None:
        self.sock.close()


def sink_time(path: Path, sock: str) -> float:
    t = time.perf_counter()
    subprocess.run(["curl", "-sS", "-o", "/dev/null", "-T", str(path), "--unix-socket", sock, "http://sink/"],
                   check=True)
    return time.perf_counter() - t


def timed_load(path: Path, env: dict[str, str], upload: bool) -> tuple[float, dict, int]:
    args = [FSBRIDGE, "load", str(path), "--json"] + (["--upload"] if upload else [])
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - t
    if out.returncode != 0:
        raise RuntimeError(f"fsbridge load failed: {out.stderr}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return elapsed, json.loads(out.stdout), peak_kib if peak_kib > before else -1


def server_peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return -1


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


def summarize(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "runs": xs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--workdir", type=Path, default=None, help="where the archive and store go (a local disk)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fsbridge-loadbench-", dir=args.workdir))
    server = None
    sink = None
    try:
        host = work / "host"
        host.mkdir()
        archive = host / "large.tar"
        print(f"making a {args.size_mib} MiB two-layer archive ...", file=sys.stderr)
        make_archive(archive, args.size_mib * MiB)
        size = archive.stat().st_size
        sock = str(work / "api.sock")
        server = subprocess.Popen([FSBRIDGE, "serve", "--listen", f"unix:{sock}", "--store", str(work / "store"),
                                   "--map", f"{host}={host}"], stderr=open(work / "serve.log", "wb"))
        for _ in range(200):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        sink = Sink(str(work / "sink.sock"))
        env = dict(os.environ, FSBRIDGE_URL=f"unix:{sock}")

        def empty_store() -> None:
            subprocess.run([FSBRIDGE, "rmi", "localhost/bench:large"], env=env, capture_output=True)

        floor(archive)  # warm-up: the archive is in the page cache for every variant
        runs: dict[str, list[float]] = {"floor": [], "write": [], "sink": [], "path": [], "upload": []}
        client_rss: list[int] = []
        vias: dict[str, set] = {"path": set(), "upload": set()}
        for i in range(args.repeat):
            print(f"round {i + 1}/{args.repeat}", file=sys.stderr)
            runs["floor"].append(floor(archive))
            runs["write"].append(write_floor(archive, work))
            runs["sink"].append(sink_time(archive, sink.path))
            empty_store()
            t, result, rss = timed_load(archive, env, upload=False)
            runs["path"].append(t)
            vias["path"].add(result["via"])
            client_rss.append(rss)
            empty_store()
            t, result, rss = timed_load(archive, env, upload=True)
            runs["upload"].append(t)
            vias["upload"].add(result["via"])
            client_rss.append(rss)
        server_rss = server_peak_rss_kib(server.pid)

        med = {k: statistics.median(v) for k, v in runs.items()}
        path_ratio = med["path"] / med["floor"]
        upload_ratio = med["upload"] / (med["sink"] + med["floor"])
        write_bound = max(med["floor"], med["write"])
        results = {
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(),
            "archive_bytes": size,
            "repeat": args.repeat,
            "runs": {k: summarize(v) for k, v in runs.items()},
            "via": {k: sorted(v) for k, v in vias.items()},
            "ratios": {"path/floor": path_ratio, "upload/(sink+floor)": upload_ratio,
                       "path/max(floor,write)": med["path"] / write_bound,
                       "upload/(sink+max(floor,write))": med["upload"] / (med["sink"] + write_bound)},
            "peak_rss_mib": {"server": server_rss / 1024, "client_max": max(client_rss) / 1024},
            "command": " ".join([os.path.relpath(sys.executable), "bench/load_bench.py", f"--size-mib {args.size_mib}",
                                 f"--repeat {args.repeat}"]),
        }
        lines = [
            f"# Load of a {size / MiB:.0f} MiB two-layer image: path reference vs upload",
            "",
            f"{results['date']} — {results['machine']['cpu']}, {results['machine']['cores']} cores, "
            f"kernel {results['machine']['kernel']}, Python {results['machine']['python']}",
            "",
            f"Reproduce: `{results['command']}`",
            "",
            "| variant | median s | min–max s | MiB/s |",
            "| --- | ---: | ---: | ---: |",
        ]
        for k, v in runs.items():
            lines.append(f"| {k} | {med[k]:.2f} | {min(v):.2f}–{max(v):.2f} | {size / MiB / med[k]:.0f} |")
        ok = lambda cond: "PASS" if cond else "FAIL"  # noqa: E731
        lines += [
            "",
            "| goal | measured | |",
            "| --- | ---: | --- |",
            f"| path ≤ 1.3 × floor | {path_ratio:.2f} × | {ok(path_ratio <= 1.3)} |",
            f"| upload ≤ 1.3 × (sink + floor) | {upload_ratio:.2f} × | {ok(upload_ratio <= 1.3)} |",
            f"| (context) path / max(floor, write) | {med['path'] / write_bound:.2f} × | |",
            f"| (context) upload / (sink + max(floor, write)) | {med['upload'] / (med['sink'] + write_bound):.2f} × | |",
            f"| server peak RSS < 200 MiB | {server_rss / 1024:.0f} MiB | {ok(server_rss / 1024 < 200)} |",
            f"| client peak RSS < 200 MiB | {max(client_rss) / 1024:.0f} MiB | {ok(max(client_rss) / 1024 < 200)} |",
            "",
            "floor: read + sha256 of the archive (page cache warm); write: copy of the archive onto the store's disk "
            "with fsync; sink: curl -T to a discarding unix-socket "
            "server; path: `fsbridge load` (client xxh3 pass + server read, sha256, xxh3, blob writes with fsync); "
            "upload: `fsbridge load --upload`. The store is emptied between runs (untimed).",
        ]
        report = "\n".join(lines) + "\n"
        print(report)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
            (args.out / "report.md").write_text(report)
        return 0
    finally:
        if sink is not None:
            sink.close()
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
