"""`fsbridge bench --share qemu-9p:none` end to end, across a real qemu guest.

One tiny walk runs inside the guest (the orchestrator itself, over the guest's real 9p mount), one tiny load
runs from this host against `fsbridge serve` in a second guest (upload across the virtual NIC, a path
reference read over 9p). Checked: both halves land in one results.json and report, the report says which
accelerator ran, the loads went the way their variant says, the report's medians are the raw runs', and
nothing (guest, mount, temporary folder) is left behind.

Skipped only where the guest cannot be prepared (qemu or Debian's kernel cannot be installed here).
"""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import FSBRIDGE, needs_fuse
from test_bench import assert_clean, bench_env, close, parse_time, processes_mentioning, run_bench, table_rows

from fsbridge.bench.guest_assets import GuestUnavailable, ensure_guest_assets

pytestmark = [pytest.mark.slow, needs_fuse]

WALK = """
title = "a tiny walk in the guest"
workload = "walk"
variants = ["local", "raw", "cold", "warm"]
ratios = ["cold/raw", "warm/raw"]
runs = 2
warmup = 0
run_timeout_s = 120
time_bound_s = 120
[params]
files = 40
files_per_dir = 10
"""

LOAD = """
title = "a tiny load across the guest boundary"
workload = "load"
variants = ["floor", "sink", "upload", "path-raw", "path-mount"]
ratios = ["path-raw/upload"]
runs = 2
warmup = 0
run_timeout_s = 120
time_bound_s = 120
[params]
size_mib = 2
layers = 2
"""


@pytest.fixture(scope="module")
def guest_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    try:
        ensure_guest_assets()
    except GuestUnavailable as e:
        pytest.skip(f"no qemu guest on this machine: {e.message}")
    tmp = tmp_path_factory.mktemp("bench-guest")
    scenarios = tmp / "scenarios"
    scenarios.mkdir()
    (scenarios / "walk-guest.toml").write_text(WALK)
    (scenarios / "load-guest.toml").write_text(LOAD)
    out = tmp / "out"
    result = run_bench(tmp, "--scenarios", str(scenarios), "--share", "qemu-9p:none,memory-mb=1536",
                       "--out", str(out), timeout=500)
    yield {"tmp": tmp, "out": out, "result": result}


def _doc(run: dict[str, Any]) -> dict[str, Any]:
    assert run["result"].returncode == 0, run["result"].stderr[-3000:]
    return json.loads((run["out"] / "results.json").read_text())


def test_both_halves_land_in_one_report(guest_run: dict[str, Any]) -> None:
    doc = _doc(guest_run)
    stderr = guest_run["result"].stderr
    assert "Traceback" not in stderr
    assert "guest | " in stderr and "walk-guest round 2/2" in stderr  # the guest's progress, passed on
    cases = {c["key"]: c for c in doc["cases"]}
    assert cases["walk-guest"]["where"] == "guest"
    assert "where" not in cases["load-guest"]
    assert doc["guest"]["accel"] in ("kvm", "tcg") and doc["guest"]["exit_code"] == 0
    assert doc["guest"]["share_in_guest"]["kind"] == "path"
    assert doc["share"]["kind"] == "qemu" and doc["share"]["share"] == "qemu-9p:none"
    assert doc["share"]["accel"] in ("kvm", "tcg")
    report = (guest_run["out"] / "report.md").read_text()
    assert f"accelerator **{doc['guest']['accel']}**" in report
    assert "## walk-guest: a tiny walk in the guest *(in the guest)*" in report
    # the load variants with no form across the boundary are left out, and the case says so
    assert cases["load-guest"]["definition"]["variants"] == ["floor", "upload", "path-raw"]
    assert any("sink: not run across the guest boundary" in n for n in cases["load-guest"]["notes"])


def test_loads_cross_the_boundary_the_way_their_variant_says(guest_run: dict[str, Any]) -> None:
    doc = _doc(guest_run)
    counted = [r for r in doc["runs"] if r["case"] == "load-guest" and r["kind"] == "counted"]
    via: dict[str, set[str]] = {}
    for r in counted:
        if r["variant"] != "floor":
            via.setdefault(r["variant"], set()).add(r["result"]["via"])
    assert via == {"upload": {"upload"}, "path-raw": {"path"}}
    ids = {tuple(r["result"]["images"]) for r in counted if r["variant"] != "floor"}
    assert len(ids) == 1  # the same image, whichever way it went
    # the client ran here, the server in the guest: the guest's processes are what the sampler watched
    assert all("guest" in r["resources"]["roles"] for r in counted if r["variant"] != "floor")


def test_report_medians_are_the_raw_runs(guest_run: dict[str, Any]) -> None:
    doc = _doc(guest_run)
    report = (guest_run["out"] / "report.md").read_text()
    for case in ("walk-guest", "load-guest"):
        rows = table_rows(report, case)
        variants = {r["variant"] for r in doc["runs"] if r["case"] == case}
        assert set(rows) == variants
        for variant in variants:
            times = [r["elapsed_s"] for r in doc["runs"]
                     if r["case"] == case and r["variant"] == variant and r["kind"] == "counted"]
            assert len(times) == 2, (case, variant)
            assert close(parse_time(rows[variant][1]), statistics.median(times)), (case, variant)


def test_nothing_is_left_behind(guest_run: dict[str, Any]) -> None:
    _doc(guest_run)
    tmp: Path = guest_run["tmp"]
    assert_clean(tmp)
    assert processes_mentioning("qemu-system") == []


SLOW_WALK = """
title = "a walk long enough to interrupt in the guest"
workload = "walk"
variants = ["raw", "cold", "warm"]
runs = 50
warmup = 0
[params]
files = 200
files_per_dir = 20
"""

SLOW_LOAD = """
title = "loads long enough to interrupt"
workload = "load"
variants = ["upload", "path-raw"]
runs = 50
warmup = 0
[params]
size_mib = 8
layers = 2
"""


def _interrupt_when(tmp: Path, scenario: str, text: str, marker: str) -> tuple[int, str, dict[str, Any]]:
    """Start a guest bench on `scenario`, send Ctrl-C once stderr shows `marker`, return (status, stderr, doc)."""
    scenarios = tmp / "scenarios"
    scenarios.mkdir()
    (scenarios / f"{scenario}.toml").write_text(text)
    out = tmp / "out"
    proc = subprocess.Popen(
        [FSBRIDGE, "bench", "--scenarios", str(scenarios), "--share", "qemu-9p:none,memory-mb=1024",
         "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=bench_env(tmp), stdin=subprocess.DEVNULL,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while not any(marker in line for line in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "the guest bench did not get going:\n" + "".join(lines)
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()
    return proc.returncode, "".join(lines), json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("where", ["in the guest", "against the guest's server"])
def test_ctrl_c_stops_the_guest_and_leaves_nothing(tmp_path: Path, where: str) -> None:
    try:
        ensure_guest_assets()
    except GuestUnavailable as e:
        pytest.skip(f"no qemu guest on this machine: {e.message}")
    if where == "in the guest":
        status, stderr, doc = _interrupt_when(tmp_path, "slow-walk", SLOW_WALK, "slow-walk round 2/50")
    else:
        status, stderr, doc = _interrupt_when(tmp_path, "slow-load", SLOW_LOAD, "slow-load round 2/50")
    assert status == 130, stderr[-2000:]
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert doc["interrupted"] is True
    assert_clean(tmp_path)
    assert processes_mentioning("qemu-system") == []
