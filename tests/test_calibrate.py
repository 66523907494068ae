"""The emulator's calibration against a real share (fsbridge.bench.calibrate): its arithmetic, and one tiny
run end to end across a real qemu guest (skipped only where the guest cannot be prepared)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import needs_fuse

from fsbridge.bench.calibrate import OPS, derive
from fsbridge.bench.guest_assets import GuestUnavailable, ensure_guest_assets


def test_derive_bounds_the_per_request_latency() -> None:
    measured = {"guest_tmpfs_us": {op: 20.0 for op in OPS}, "on_share_us": {op: 620.0 for op in OPS}}
    native = {op: 1.0 for op in OPS}
    requests = {op: 3.0 for op in OPS}
    rows = derive(measured, native, requests)
    stat = rows["stat_at"]
    assert stat["slowdown"] == 20.0
    assert stat["extra_us"] == 600.0
    assert stat["per_request_high_us"] == 200.0  # none of the extra cost slowed down by the guest
    assert stat["per_request_low_us"] == 10.0  # all of it slowed down 20x
    # a share faster than the guest's tmpfs (a warm cache) costs nothing extra, never less than nothing
    rows = derive({"guest_tmpfs_us": {op: 20.0 for op in OPS}, "on_share_us": {op: 19.0 for op in OPS}},
                  native, requests)
    assert rows["stat_at"]["extra_us"] == 0.0 and rows["stat_at"]["per_request_low_us"] == 0.0


@pytest.mark.slow
@needs_fuse
def test_a_tiny_calibration_across_a_guest(tmp_path: Path) -> None:
    try:
        ensure_guest_assets()
    except GuestUnavailable as e:
        pytest.skip(f"no qemu guest on this machine: {e.message}")
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "fsbridge.bench.calibrate", "--out", str(out), "--files", "20",
                             "--rounds", "1", "--share", "9p:none"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    doc = json.loads((out / "calibration.json").read_text())
    assert [m["share"] for m in doc["shares"]] == ["9p:none"]
    m = doc["shares"][0]
    assert m["accel"] in ("kvm", "tcg")
    # the emulator counts its requests per operation: a stat of a name in an open folder is a lookup,
    # a getattr of the name and one of the folder (docs/benchmarks.md)
    assert doc["emulator_requests"]["stat_at"] == pytest.approx(3, abs=0.2)
    for op in OPS:
        assert m["on_share_us"][op] > 0 and m["guest_tmpfs_us"][op] > 0 and doc["host_tmpfs_us"][op] > 0
    # 9p with cache=none makes a round trip per stat: dearer than the guest's own tmpfs
    assert m["on_share_us"]["stat_at"] > m["guest_tmpfs_us"]["stat_at"]
    assert "## 9p:none" in (out / "calibration.md").read_text()
