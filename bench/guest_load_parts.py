"""Where a path-reference load's time goes inside the qemu guest: the parts that cannot be skipped.

    .venv/bin/python bench/guest_load_parts.py --size-mib 1024 [--cache none] [--out DIR]

Boots one guest that sees a folder holding a generated archive over 9p, and times in it, each on its own:
reading the archive over 9p (1 MiB reads), sha256 and xxh3-128 of the same bytes from the guest's memory,
and writing them to the guest's tmpfs (where the bench's store lives). `fsbridge load` by path reference
does all four (the server reads over the share, hashes each blob, checks the identity, stores the blobs);
an upload replaces the 9p read with the virtual NIC. Prints one JSON object (and writes it to --out).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from fsbridge.bench.fixtures import make_archive
from fsbridge.bench.guest import Share, run_in_guest

PARTS = r"""
import hashlib, json, os, sys, time, xxhash
path = sys.argv[1]
out = {}
t = time.perf_counter(); chunks = []
with open(path, "rb", buffering=0) as f:
    while b := f.read(1 << 20):
        chunks.append(b)
out["read_over_share_s"] = time.perf_counter() - t
t = time.perf_counter(); h = hashlib.sha256()
for b in chunks: h.update(b)
out["sha256_s"] = time.perf_counter() - t
t = time.perf_counter(); x = xxhash.xxh3_128()
for b in chunks: x.update(b)
out["xxh3_128_s"] = time.perf_counter() - t
t = time.perf_counter()
with open("/tmp/parts.tmp", "wb", buffering=0) as f:
    for b in chunks: f.write(b)
out["write_tmpfs_s"] = time.perf_counter() - t
out["bytes"] = sum(len(b) for b in chunks)
print("RESULT " + json.dumps(out))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--cache", default="none")
    parser.add_argument("--memory-mb", type=int, default=3072)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="fsbridge-parts-", dir="/var/tmp"))
    try:
        archive = folder / "image.tar"
        make_archive(archive, args.size_mib, 4)
        run = run_in_guest([sys.executable, "-c", PARTS, str(archive)], [Share(str(folder), cache=args.cache)],
                           deadline_s=1800, memory_mb=args.memory_mb)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    lines = [line for line in run.output.splitlines() if line.startswith("RESULT ")]
    if run.exit_code != 0 or not lines:
        print(f"the measurement failed in the guest (exit {run.exit_code}): {run.output[-500:]}", file=sys.stderr)
        return 1
    result = json.loads(lines[-1][len("RESULT "):])
    result.update(share=f"9p cache={args.cache}", size_mib=args.size_mib, accel=run.accel,
                  accel_notes=run.accel_notes,
                  command=f".venv/bin/python bench/guest_load_parts.py --size-mib {args.size_mib} --cache {args.cache}")
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "load-parts.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
