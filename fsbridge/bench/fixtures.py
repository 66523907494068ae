"""The data the benchmarks work on, generated on the spot and the same every time for the same parameters.

- a tree of small files (a source checkout): folders in two levels, files spread over them round-robin,
  sizes drawn from an exponential distribution (most files small, a few larger), plus the sorted list of
  its files (the "index" that `git status` stats and a build reads);
- one large file of incompressible data (sequential reads);
- an image archive in docker-archive format with several layers of incompressible data, tagged
  `localhost/bench:large`, that the builtin store and podman both load.

Generation is untimed and cached by parameters, so scenarios that use the same tree share it.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
import tarfile
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
ARCHIVE_TAG = "localhost/bench:large"
FIXED_MTIME = 1_767_225_600  # 2026-01-01T00:00:00Z: both copies of a fixture (local, share) agree on it


def tree_key(files: int, dirs: int, mean_bytes: int, seed: int = 1) -> str:
    return f"tree-f{files}-d{dirs}-b{mean_bytes}-s{seed}"


def make_tree(root: Path, files: int, dirs: int, mean_bytes: int, seed: int = 1) -> list[str]:
    """`dirs` folders (about sqrt(dirs) top-level groups holding the rest) and `files` files spread over them.
    File sizes follow an exponential distribution of mean `mean_bytes`, capped at 4 x the mean (0: empty
    files). Returns the sorted relative paths of the files."""
    rng = random.Random(seed)
    dirs = max(1, dirs)
    top = max(1, min(dirs, round(math.sqrt(dirs))))
    folders = [f"g{i:03d}" for i in range(top)]
    folders += [f"g{j % top:03d}/d{j:05d}" for j in range(dirs - top)]
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
    cap = 4 * mean_bytes
    payload = rng.randbytes(cap) if cap else b""
    paths = []
    for k in range(files):
        rel = f"{folders[k % len(folders)]}/f{k:06d}.txt"
        fd = os.open(root / rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            if mean_bytes:
                size = min(cap, int(rng.expovariate(1 / mean_bytes)))
                if size:
                    os.write(fd, payload[:size])
        finally:
            os.close(fd)
        paths.append(rel)
    paths.sort()
    return paths


def make_big_file(path: Path, mib: int) -> None:
    """`mib` MiB of incompressible data, each MiB distinct (no block repeats for a deduplicating layer)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    block = random.Random(7).randbytes(MiB)
    with open(path, "wb") as f:
        for i in range(mib):
            f.write(i.to_bytes(8, "little") + block[8:])
    os.utime(path, (FIXED_MTIME, FIXED_MTIME))


class _Counted(io.RawIOBase):
    """`size` bytes of incompressible data made from one random MiB and a counter (fast to produce)."""

    def __init__(self, size: int, seed: int) -> None:
        self.left = size
        self.block = random.Random(seed).randbytes(MiB)
        self.counter = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = min(len(b), self.left, MiB)
        if n <= 0:
            return 0
        chunk = (self.counter.to_bytes(8, "little") + self.block[8:])[:n]
        self.counter += 1
        b[:n] = chunk
        self.left -= n
        return n


def _make_layer(path: Path, size: int, seed: int) -> str:
    """A layer tar holding one file of `size` bytes; returns its sha256 (the diff_id)."""
    info = tarfile.TarInfo("data.bin")
    info.size = size
    info.mode = 0o644
    info.mtime = FIXED_MTIME
    with open(path, "wb") as raw:
        with tarfile.open(fileobj=raw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(info, io.BufferedReader(_Counted(size, seed), MiB))
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def make_archive(path: Path, total_mib: int, layers: int) -> dict[str, Any]:
    """A docker-archive of about `total_mib` MiB in `layers` layers, tagged ARCHIVE_TAG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    work = path.parent / (path.name + ".layers")
    work.mkdir(exist_ok=True)
    layers = max(1, layers)
    each = max(1, total_mib * MiB // layers - 4096)
    made = []
    for i in range(layers):
        layer = work / f"layer{i}.tar"
        made.append((layer, _make_layer(layer, each, seed=100 + i)))
    created = "2026-01-01T00:00:00Z"
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": [d for _, d in made]},
            "history": [{"created": created} for _ in made],
        }
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps(
        [
            {
                "Config": config_name,
                "RepoTags": [ARCHIVE_TAG],
                "Layers": [f"{d[7:]}/layer.tar" for _, d in made],
            }
        ]
    ).encode()
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in ((config_name, config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = FIXED_MTIME
            tar.addfile(info, io.BytesIO(data))
        for layer, digest in made:
            tar.add(layer, arcname=f"{digest[7:]}/layer.tar")
    for layer, _ in made:
        layer.unlink()
    work.rmdir()
    os.utime(path, (FIXED_MTIME, FIXED_MTIME))
    return {"image_id": "sha256:" + config_name[:-5], "bytes": path.stat().st_size, "layers": layers}
