#!/usr/bin/env bash
# The main job end to end on one machine: a "host folder" behind a slow 9p-like share (the emulator),
# the cached fsbridge mount over it, and the difference a user feels (cold and warm walks, backing calls).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"

work=$(mktemp -d /tmp/fsbridge-demo.XXXXXX)
cleanup() {
    for m in "$work/vm/mnt/host" "$work/vm/share"; do
        mountpoint -q "$m" 2>/dev/null && fsbridge umount "$m" || true
    done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

echo "== 1. A project folder on the 'host' (2,000 files in 100 folders)"
python3 - "$work/host/Users/me/project" <<'PY'
import os, sys
root = sys.argv[1]
for d in range(100):
    os.makedirs(f"{root}/pkg{d:03}", exist_ok=True)
    for f in range(20):
        with open(f"{root}/pkg{d:03}/mod{f:02}.py", "w") as fh:
            fh.write(f"# module {d}.{f}\n")
PY

mkdir -p "$work/vm/share" "$work/vm/mnt/host"
echo "== 2. The VM sees it through a slow 9p-like share (emulated: 250 us per request, caches off)"
fsbridge emulate "$work/host" "$work/vm/share" --profile 9p-virtio

echo "== 3. fsbridge mounts a cached view of the share, host paths at their own names"
fsbridge mount "$work/vm/mnt/host" --map "/Users=$work/vm/share/Users"
fsbridge map /Users/me/project/pkg007/mod03.py --map "/Users=$work/vm/share/Users" --mount "$work/vm/mnt/host"

walk() {
    python3 - "$1" <<'PY'
import os, sys, time
t = time.perf_counter(); n = 0
for top, dirs, files in os.walk(sys.argv[1]):
    for f in files:
        os.lstat(os.path.join(top, f)); n += 1
print(f"{time.perf_counter() - t:7.3f} s  ({n} files)")
PY
}
echo "== 4. Walk the project (list every folder, stat every file)"
printf '   raw 9p share:          '; walk "$work/vm/share/Users/me/project"
printf '   fsbridge mount, cold:  '; walk "$work/vm/mnt/host/Users/me/project"
printf '   fsbridge mount, warm:  '; walk "$work/vm/mnt/host/Users/me/project"

echo "== 5. What the cache did"
fsbridge stats "$work/vm/mnt/host"

echo "== 6. A change on the host shows up at once after an invalidation"
echo "edited" > "$work/host/Users/me/project/NEW.txt"
fsbridge invalidate "$work/vm/mnt/host/Users/me/project"
cat "$work/vm/mnt/host/Users/me/project/NEW.txt"

fsbridge umount "$work/vm/mnt/host"
fsbridge umount "$work/vm/share"
echo "== done: unmounted and cleaned up"
