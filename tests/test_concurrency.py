"""Several processes work in one tree through the mount at once, and nothing is lost.

Each worker process creates, writes, fsyncs, renames and deletes files and folders of its own, appends
lines to one shared log with O_APPEND, and increments a lock-free counter made of separate files: an
increment claims the next free slot with O_CREAT | O_EXCL, so two workers claiming the same slot (a stale
negative entry, a non-atomic exclusive create) would show up as a lost or doubled increment. A lister
process walks the tree meanwhile. At the end every expected file has its expected content, on the backing
and through the mount, and the mount shows exactly what the backing has.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Mounted
from mount_helpers import daemon_healthy, diff_snapshots, snapshot

pytestmark = pytest.mark.fuse

WORKERS = 4
ROUNDS = 60

WORKER = r"""
import errno, json, os, sys
root, me, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
mine = os.path.join(root, f"w{me}")
os.mkdir(mine)
claimed = []
slot = 0
log = os.open(os.path.join(root, "shared.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
for i in range(rounds):
    body = f"worker {me} round {i} ".encode() * (1 + i % 7)
    tmp, final = os.path.join(mine, f"f{i}.tmp"), os.path.join(mine, f"f{i}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, body)
    if i % 5 == 0:
        os.fsync(fd)
    os.close(fd)
    os.rename(tmp, final)  # the atomic-replace pattern editors and package managers use
    if i % 3 == 0:
        os.unlink(final)
    if i % 4 == 1:  # a folder that is filled, renamed, and sometimes emptied and removed again
        sub = os.path.join(mine, f"sub{i}")
        os.mkdir(sub)
        with open(os.path.join(sub, "inside"), "wb") as f:
            f.write(body)
        os.rename(sub, os.path.join(mine, f"dir{i}"))
        if i % 8 == 1:
            os.unlink(os.path.join(mine, f"dir{i}", "inside"))
            os.rmdir(os.path.join(mine, f"dir{i}"))
    os.write(log, f"{me} {i} {'x' * (i % 50)}\n".encode())  # one write per line
    while True:  # the counter: claim the next free slot
        try:
            fd = os.open(os.path.join(root, "counter", str(slot)), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            slot += 1
            continue
        os.write(fd, f"{me} {i}".encode())
        os.close(fd)
        claimed.append([slot, i])
        slot += 1
        break
os.close(log)
print(json.dumps(claimed))
"""

LISTER = r"""
import os, sys
root, stop = sys.argv[1], sys.argv[2]
walks = 0
while not os.path.exists(stop):
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            try:
                os.lstat(os.path.join(top, name))
            except FileNotFoundError:  # removed since listed: allowed
                pass
    walks += 1
print(walks)
"""


CHURN = r"""
import os, sys
root, me, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
mine = os.path.join(root, f"c{me}")
os.mkdir(mine)
for i in range(rounds):
    d = os.path.join(mine, f"d{i}")
    os.mkdir(d)
    with open(os.path.join(d, "f"), "wb") as f:
        f.write(b"%d" % i)
    os.rename(d, d + "x")
    assert os.stat(d + "x").st_nlink == 2
    with open(os.path.join(d + "x", "f"), "rb") as f:
        assert f.read() == b"%d" % i
    os.unlink(os.path.join(d + "x", "f"))
    os.rmdir(d + "x")
"""


def expected_files(me: int) -> dict[str, bytes]:
    """What worker `me` leaves behind, relative to its folder."""
    out = {}
    for i in range(ROUNDS):
        body = f"worker {me} round {i} ".encode() * (1 + i % 7)
        if i % 3:
            out[f"f{i}"] = body
        if i % 4 == 1 and i % 8 != 1:
            out[f"dir{i}/inside"] = body
    return out


def files_below(folder: Path) -> dict[str, bytes]:
    out = {}
    for top, _, files in os.walk(folder):
        for name in files:
            path = Path(top) / name
            out[str(path.relative_to(folder))] = path.read_bytes()
    return out


def test_workers_in_one_tree_lose_nothing(bridge: tuple[Path, Path, Mounted], tmp_path: Path) -> None:
    backing, view, m = bridge
    (view / "counter").mkdir()
    stop = tmp_path / "stop"
    lister = subprocess.Popen([sys.executable, "-c", LISTER, str(view), str(stop)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(view), str(me), str(ROUNDS)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for me in range(WORKERS)]
    counter: dict[int, str] = {}  # slot -> what its worker wrote there, as the workers report it
    try:
        for me, proc in enumerate(workers):
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"worker {me} failed:\n{err}"
            counter.update({slot: f"{me} {i}" for slot, i in json.loads(out)})
    finally:
        stop.touch()
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        out, err = lister.communicate(timeout=60)
    assert lister.returncode == 0, f"the lister failed:\n{err}"
    assert int(out) >= 1
    daemon_healthy(m)

    for root in (backing, view):
        # every worker's own files, with their content, and nothing else
        for me in range(WORKERS):
            assert files_below(root / f"w{me}") == expected_files(me), (root, me)
        # every appended line, whole, exactly once
        lines = (root / "shared.log").read_bytes().decode().splitlines()
        assert sorted(lines) == sorted(f"{me} {i} {'x' * (i % 50)}" for me in range(WORKERS) for i in range(ROUNDS))
        # the counter: slots 0..N-1, each claimed by exactly one worker and holding what it wrote
        assert sorted(counter) == list(range(WORKERS * ROUNDS))
        slots = {int(name): (root / "counter" / name).read_text() for name in os.listdir(root / "counter")}
        wrong = {slot: (slots.get(slot), text, (backing / "counter" / str(slot)).read_text())
                 for slot, text in counter.items() if slots.get(slot) != text}
        assert not wrong and len(slots) == len(counter), f"{root}: slot: (found, written, on the backing) {wrong}"
    problems = diff_snapshots(snapshot(backing), snapshot(view))
    assert not problems, "\n".join(problems)


def test_inode_numbers_reused_at_once(bridge: tuple[Path, Path, Mounted]) -> None:
    """Folders and files removed by one worker while another creates them: the backing hands the freed
    inode numbers out again at once, while the mount may not have finished recording the removal. A new
    file must never be taken for the removed one (that showed as EEXIST, ESTALE or EIO on a fresh name)."""
    backing, view, m = bridge
    workers = [subprocess.Popen([sys.executable, "-c", CHURN, str(view), str(me), "150"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for me in range(WORKERS)]
    try:
        for me, proc in enumerate(workers):
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"worker {me} failed:\n{err}"
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    daemon_healthy(m)
    for me in range(WORKERS):
        assert os.listdir(view / f"c{me}") == os.listdir(backing / f"c{me}") == []
