"""`fsbridge bench` end to end, through the installed script, on tiny scenarios over the emulator.

The report's numbers are checked against the raw runs in results.json, recomputed here independently; a
failing variant must show as failed with no time and exit 1; `--compare` must tell what changed; a bad
scenario file must give a one-line error; and whatever happens (success, failure, Ctrl-C) no mount, process
or temporary folder of the bench may remain.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import signal
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import FSBRIDGE, REPO, needs_fuse

SHARE = "emulate:virtiofs,latency-us=20"  # the emulator with a small latency: quick, and still a FUSE share

WALK_TINY = """
title = "a tiny walk"
workload = "walk"
variants = ["local", "raw", "cold", "warm"]
baseline = "local"
ratios = ["cold/raw"]
runs = 3
warmup = 1
run_timeout_s = 60
time_bound_s = 120
[params]
files = 60
files_per_dir = 10
"""

BROKEN_SINK = """
title = "the upload floor, with a curl that cannot connect"
workload = "load"
variants = ["floor", "sink"]
runs = 2
warmup = 0
[params]
size_mib = 1
layers = 1
"""

SLOW_WALK = """
title = "a walk long enough to interrupt"
workload = "walk"
variants = ["raw", "cold", "warm"]
runs = 20
warmup = 0
[params]
files = 400
files_per_dir = 20
"""


def bench_mounts(under: Path) -> list[str]:
    """FUSE mounts (fsbridge's and the emulator's) at or below `under`."""
    found = []
    root = os.path.realpath(under)
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split()
            point = fields[4].decode("unicode_escape").encode("latin-1").decode(errors="replace")
            fstype = fields[fields.index(b"-") + 1].decode()
            if fstype.startswith("fuse") and (point == root or point.startswith(root + "/")):
                found.append(point)
    return found


def processes_mentioning(text: str) -> list[str]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmd and state != "Z":
            out.append(f"{pid}: {cmd}")
    return out


def run_bench(
    tmp: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FSBRIDGE, "bench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or bench_env(tmp),
        stdin=subprocess.DEVNULL,
    )


def bench_env(tmp: Path) -> dict[str, str]:
    """The bench makes its temporary folder in TMPDIR: a private one, so the test can see what is left."""
    (tmp / "tmp").mkdir(exist_ok=True)
    return dict(os.environ, TMPDIR=str(tmp / "tmp"))


def assert_clean(tmp: Path) -> None:
    assert bench_mounts(tmp) == []
    assert sorted(p.name for p in (tmp / "tmp").iterdir()) == []
    assert processes_mentioning(str(tmp / "tmp")) == []


# --- recomputing the report from the raw runs -----------------------------------------------------------


def parse_time(text: str) -> float:
    value, unit = text.strip().split()
    return float(value) * {"µs": 1e-6, "ms": 1e-3, "s": 1.0}[unit]


def parse_ratio(text: str) -> tuple[float, float | None, float | None]:
    m = re.fullmatch(r"×([\d.]+)(?: \(([\d.]+)–([\d.]+)\))?", text.strip())
    assert m, text
    return float(m[1]), float(m[2]) if m[2] else None, float(m[3]) if m[3] else None


def table_rows(report: str, case: str) -> dict[str, list[str]]:
    """The main table of a case's section in report.md: variant -> its cells."""
    section = report.split(f"## {case}:", 1)[1].split("\n## ", 1)[0]
    rows = {}
    in_table = False
    for line in section.splitlines():
        if line.startswith("| variant | median"):
            in_table = True
            continue
        if in_table and line.startswith("|---"):
            continue
        if in_table and line.startswith("| "):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells
        elif in_table:
            break
    return rows


def close(shown: float, exact: float) -> bool:
    """`shown` is `exact` printed with three significant digits."""
    return math.isclose(shown, exact, rel_tol=6e-3, abs_tol=1e-9)


def p95(values: list[float]) -> float:
    xs = sorted(values)
    pos = (len(xs) - 1) * 0.95
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("bench")
    scenarios = tmp / "scenarios"
    scenarios.mkdir()
    (scenarios / "walk-tiny.toml").write_text(WALK_TINY)
    out = tmp / "out"
    started = time.monotonic()
    result = run_bench(
        tmp,
        "--scenarios",
        str(scenarios),
        "--runs",
        "2",
        "--warmup",
        "0",
        "--share",
        SHARE,
        "--out",
        str(out),
    )
    yield {"tmp": tmp, "out": out, "result": result, "seconds": time.monotonic() - started}


@needs_fuse
def test_end_to_end_report_matches_raw_runs(tiny_run: dict[str, Any]) -> None:
    result, out = tiny_run["result"], tiny_run["out"]
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "walk-tiny" in result.stderr and "round 2/2" in result.stderr  # the progress display
    doc = json.loads((out / "results.json").read_text())
    report = (out / "report.md").read_text()
    for key in ("machine", "started", "finished", "command", "share", "cases", "runs", "summary"):
        assert key in doc
    assert doc["machine"]["kernel"] and doc["machine"]["versions"]["fsbridge_cli"]
    definition = doc["cases"][0]["definition"]
    assert definition["runs"] == 2 and definition["warmup"] == 0 and definition["params"]["files"] == 60

    runs = [r for r in doc["runs"] if r["case"] == "walk-tiny"]
    counted: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(runs, key=lambda r: r["seq"]):
        assert r["status"] == "ok", r
        if r["kind"] == "counted":
            counted.setdefault(r["variant"], []).append(r)
            assert r["result"]["files"] == 60 and r["result"]["errors"] == 0
    assert sorted(counted) == ["cold", "local", "raw", "warm"]
    assert all(len(v) == 2 for v in counted.values())
    assert [r["variant"] for r in runs if r["kind"] == "prime"] == ["warm"]  # warmed once, not counted
    # interleaved: every round holds one run of each variant, and the order rotates
    rounds = [
        [
            r["variant"]
            for r in sorted(runs, key=lambda r: r["seq"])
            if r["kind"] == "counted" and r["round"] == k
        ]
        for k in (0, 1)
    ]
    assert sorted(rounds[0]) == sorted(rounds[1]) and rounds[0] != rounds[1]

    rows = table_rows(report, "walk-tiny")
    assert sorted(rows) == ["cold", "local", "raw", "warm"]
    base = statistics.median(r["elapsed_s"] for r in counted["local"])
    for variant, mine in counted.items():
        times = [r["elapsed_s"] for r in mine]
        cells = rows[variant]
        assert close(parse_time(cells[1]), statistics.median(times)), (variant, cells)
        assert close(parse_time(cells[2]), p95(times)), (variant, cells)
        low, high = cells[3].split("–")
        assert close(parse_time(low), min(times)) and close(parse_time(high), max(times))
        assert close(parse_time(cells[4]), abs(times[1] - times[0]))  # jitter of two runs
        assert cells[5] == "2"
        if variant == "local":
            assert cells[6] == "baseline"
            continue
        ratio, lo, hi = parse_ratio(cells[6])
        assert close(ratio, statistics.median(times) / base)
        by_round = {r["round"]: r["elapsed_s"] for r in counted["local"]}
        pairs = [r["elapsed_s"] / by_round[r["round"]] for r in mine]
        assert lo is not None and hi is not None
        assert close(lo, min(pairs)) and close(hi, max(pairs))
    # the summary in results.json names the runs behind each row
    summary = {row["variant"]: row for row in doc["summary"][0]["variants"]}
    assert summary["raw"]["run_ids"] == [r["id"] for r in counted["raw"]]
    # what the mount and the share counted (`fsbridge stats`): a warm mount answers from its cache
    warm, cold = counted["warm"][0]["counters"], counted["cold"][0]["counters"]
    assert warm["mount"]["cache_hits"] > 0
    assert cold["mount"]["backing_calls"] > warm["mount"]["backing_calls"]
    assert counted["raw"][0]["counters"]["share"]["requests"] > 60
    # resources sampled for every process involved
    roles = counted["cold"][0]["resources"]["roles"]
    assert {"workload", "mount", "share"} <= set(roles)
    assert roles["mount"]["peak_rss_bytes"] > 0 and roles["workload"]["peak_rss_bytes"] > 0
    try:
        import matplotlib  # noqa: F401

        assert (out / "report.png").stat().st_size > 1000
    except ImportError:
        assert "No chart: matplotlib is not installed" in report


@needs_fuse
def test_end_to_end_leaves_nothing_behind(tiny_run: dict[str, Any]) -> None:
    assert tiny_run["result"].returncode == 0, tiny_run["result"].stderr
    assert_clean(tiny_run["tmp"])


@needs_fuse
def test_compare_tells_what_changed(tiny_run: dict[str, Any], tmp_path: Path) -> None:
    old = tiny_run["out"] / "results.json"
    doc = json.loads(old.read_text())
    for r in doc["runs"]:
        if r["variant"] == "raw" and r["elapsed_s"]:
            r["elapsed_s"] *= 50
    del doc["summary"]
    new = tmp_path / "new.json"
    new.write_text(json.dumps(doc))
    result = subprocess.run(
        [FSBRIDGE, "bench", "--compare", str(old), str(new)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    lines = {
        tuple(c.strip() for c in line.strip("|").split("|")[:2]): line
        for line in result.stdout.splitlines()
        if line.startswith("| walk-tiny")
    }
    assert "slower" in lines[("walk-tiny", "raw")] and "+4900.0%" in lines[("walk-tiny", "raw")]
    assert "within noise" in lines[("walk-tiny", "local")]


@needs_fuse
def test_failing_variant_is_reported_as_failed(tmp_path: Path) -> None:
    scenarios = tmp_path / "scenarios"
    scenarios.mkdir()
    (scenarios / "broken-sink.toml").write_text(BROKEN_SINK)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "curl").write_text('#!/bin/sh\necho "curl: (7) Couldn\'t connect to server" >&2\nexit 7\n')
    (fake / "curl").chmod(0o755)
    env = bench_env(tmp_path)
    env["PATH"] = f"{fake}:{env['PATH']}"
    out = tmp_path / "out"
    result = run_bench(tmp_path, "--scenarios", str(scenarios), "--share", SHARE, "--out", str(out), env=env)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    doc = json.loads((out / "results.json").read_text())
    sink = [r for r in doc["runs"] if r["variant"] == "sink"]
    assert sink and all(r["status"] == "failed" and r["elapsed_s"] is None for r in sink)
    assert "Couldn't connect" in sink[0]["error"]
    floor = [r for r in doc["runs"] if r["variant"] == "floor" and r["kind"] == "counted"]
    assert len(floor) == 2 and all(r["status"] == "ok" for r in floor)
    row = table_rows((out / "report.md").read_text(), "broken-sink")["sink"]
    assert row[1] == "**FAILED**" and not re.search(r"\d+(\.\d+)? (µs|ms|s)\b", " ".join(row[1:5]))
    assert "FAILED" in (out / "report.md").read_text().split("## Overview")[0]
    assert_clean(tmp_path)


@pytest.mark.parametrize(
    "text, words",
    [
        ("runz = 3\n" + WALK_TINY, ["runz", "unknown key"]),
        (WALK_TINY.replace("files_per_dir = 10", "filez = 10"), ["params", "filez", "walk"]),
        (WALK_TINY.replace('"warm"]', '"tepid"]'), ["variants", "tepid"]),
    ],
)
def test_bad_scenario_file_gives_a_clear_error(tmp_path: Path, text: str, words: list[str]) -> None:
    scenarios = tmp_path / "scenarios"
    scenarios.mkdir()
    (scenarios / "bad.toml").write_text(text)
    result = run_bench(tmp_path, "--scenarios", str(scenarios), "--out", str(tmp_path / "out"), timeout=60)
    assert result.returncode in (1, 2)
    assert "Traceback" not in result.stderr
    assert str(scenarios / "bad.toml") in result.stderr
    for word in words:
        assert word in result.stderr
    assert not (tmp_path / "out").exists()
    assert_clean(tmp_path)


@needs_fuse
def test_ctrl_c_cleans_up_every_mount(tmp_path: Path) -> None:
    scenarios = tmp_path / "scenarios"
    scenarios.mkdir()
    (scenarios / "slow-walk.toml").write_text(SLOW_WALK)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [FSBRIDGE, "bench", "--scenarios", str(scenarios), "--share", "emulate:9p-virtio", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=bench_env(tmp_path),
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while len(bench_mounts(tmp_path)) < 2:  # the emulator and the warm mount are up: mid-run
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the bench did not get going"
            time.sleep(0.1)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    doc = json.loads((out / "results.json").read_text())
    assert doc["interrupted"] is True
    assert_clean(tmp_path)


def test_bench_imports_none_of_what_it_measures() -> None:
    """The orchestrator drives fsbridge through its command line: it may import its own modules and the
    error classes, nothing of the mount, the server, the store or the client."""
    for path in sorted((REPO / "fsbridge" / "bench").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name.startswith("fsbridge"):
                    assert name.startswith("fsbridge.bench") or name == "fsbridge.errors", (path.name, name)


def test_repository_scenarios_are_the_packaged_ones() -> None:
    link = REPO / "bench" / "scenarios"
    assert link.is_symlink() and os.readlink(link) == "../fsbridge/bench/scenarios"
    names = sorted(p.stem for p in link.glob("*.toml"))
    for expected in (
        "metadata-walk",
        "git-status",
        "small-files-read",
        "large-read",
        "write-tree",
        "load-image",
        "peer-podman-load",
    ):
        assert expected in names
    listed = subprocess.run([FSBRIDGE, "bench", "--list"], capture_output=True, text=True)
    assert listed.returncode == 0 and all(n in listed.stdout for n in names)
