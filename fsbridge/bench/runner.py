"""The orchestrator: runs the variants of every scenario interleaved, records every run, cleans up.

For each case (a scenario with its parameters fixed): generate the fixture (untimed), set up every variant,
then run rounds: `warmup` uncounted rounds, then `runs` counted ones. In each round every variant runs once,
the order rotating from round to round (A B C, B C A, C A B, ...), so that drift of the machine (other load,
thermal state, a filling page cache) hits every variant alike, and each round's runs sit next to each other
in time (the report's per-round ratios rely on that). Before each run, untimed: the variant's preparation (a
fresh mount, an emptied image store), the page cache dropped where the scenario asks for cold caches (as
root; otherwise recorded as not dropped), and a warm mount re-warmed if the cache was dropped since its last
run. During the run the sampler watches every process involved; around it, `fsbridge stats` counts what
reached the share and what the mount's caches answered.

Bounds: a run longer than the scenario's run_timeout_s is killed and recorded as timed out; no new round
starts once a case has run for time_bound_s. A variant whose setup or run fails is recorded as failed, with
the error, and not run again in that case; the other variants go on.

Cleanup: everything started is in a Registry that a `finally` empties in reverse order: on success, on
error, and on Ctrl-C (SIGINT), SIGTERM or SIGHUP, which are turned into KeyboardInterrupt; a second Ctrl-C
during cleanup is ignored (with a word), so that no mount is left half torn down.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

import psutil

from fsbridge.bench import report
from fsbridge.bench.guest_share import (
    GuestShareSpec,
    across_the_boundary,
    deadline_for,
    merge_nested,
    parse_guest_share,
    run_nested,
)
from fsbridge.bench.procs import BenchError, Fsbridge, Registry, force_unmount, mounts_under, run_timed
from fsbridge.bench.sampler import Sampler
from fsbridge.bench.scenarios import Case, Scenario
from fsbridge.bench.variants import Bench, Fixtures, GuestServeShare, Variant, make_share, make_variant

FORMAT = "fsbridge-bench/1"


@dataclass
class Options:
    scenarios: list[Scenario]
    out: Path
    share: str = "emulate:9p-virtio"
    quick: bool = False
    sets: list[str] = field(default_factory=list)
    command: str = "fsbridge bench"
    scenarios_dir: str | None = None
    runs: int | None = None
    warmup: int | None = None


def fsbridge_argv() -> list[str]:
    """The fsbridge command a user would run: beside this interpreter, on PATH, or `python -m fsbridge`."""
    beside = Path(sys.executable).with_name("fsbridge")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("fsbridge")
    return [found] if found else [sys.executable, "-m", "fsbridge"]


def default_out() -> Path:
    host = socket.gethostname().split(".")[0] or "host"
    return Path("bench") / "out" / f"{time.strftime('%Y%m%d-%H%M%S')}-{host}"


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# --- progress ----------------------------------------------------------------------------------------------


class Progress:
    """Which scenario and run is going, how many runs are left, and a rough time left, on stderr."""

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self.total = total
        self.done = 0
        self.stream = stream
        self.tty = stream.isatty()
        self.t0 = time.monotonic()
        self.run_seconds = 0.0

    def _clock(self, seconds: float) -> str:
        return f"{int(seconds // 60)}:{int(seconds % 60):02d}"

    def _head(self) -> str:
        elapsed = time.monotonic() - self.t0
        left = ""
        if self.done:
            eta = elapsed / self.done * max(0, self.total - self.done)
            left = f", ~{self._clock(eta)} left"
        return f"[{self.done:>3}/{self.total} {self._clock(elapsed)}{left}]"

    def say(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()

    def starting(self, what: str) -> None:
        if self.tty:
            self.stream.write(f"\r\033[K{self._head()} {what} ...")
            self.stream.flush()

    def finished(self, what: str, outcome: str, counts: bool) -> None:
        if counts:
            self.done += 1
        self.say(f"{self._head()} {what} {outcome}")

    def skip(self, n: int) -> None:
        self.total = max(self.done, self.total - n)


# --- one case ----------------------------------------------------------------------------------------------


class CaseRunner:
    def __init__(
        self,
        case: Case,
        bench: Bench,
        fixtures: Fixtures,
        runs: list[dict[str, Any]],
        progress: Progress,
        seq: Callable[[], int],
    ) -> None:
        self.case = case
        self.s = case.scenario
        self.bench = bench
        self.fixtures = fixtures
        self.runs = runs
        self.progress = progress
        self.seq = seq
        self.record: dict[str, Any] = {
            "key": case.key,
            "scenario": self.s.name,
            "label": case.label,
            "definition": {**self.s.definition(), "params": case.params},
            "status": "ok",
            "notes": [],
        }
        self.variants: list[Variant] = []

    def planned(self) -> int:
        return len(self.s.variants) * (self.s.warmup + self.s.runs)

    def _add(self, variant: str, kind: str, rnd: int | None, **fields: Any) -> dict[str, Any]:
        label = {
            "counted": f"r{rnd}" if rnd is not None else "not-run",
            "warmup": f"w{rnd}",
            "prime": f"prime{self.seq_peek()}",
            "setup": "setup",
        }[kind]
        run = {
            "id": f"{self.case.key}/{variant}/{label}",
            "seq": self.seq(),
            "case": self.case.key,
            "scenario": self.s.name,
            "variant": variant,
            "round": rnd,
            "kind": kind,
            "status": "ok",
            "error": None,
            "started": now_iso(),
            "elapsed_s": None,
            "wall_s": None,
        }
        run.update(fields)
        self.runs.append(run)
        return run

    def seq_peek(self) -> int:
        return sum(1 for r in self.runs if r["case"] == self.case.key)

    def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        self.record["started"] = now_iso()
        missing = [tool for tool in self.s.spec.requires if shutil.which(tool) is None]
        if missing:
            self.record.update(status="skipped", reason=f"needs {', '.join(missing)}, not installed here")
            self.progress.say(f"== {self.case.key}: skipped ({self.record['reason']})")
            self.progress.skip(self.planned())
            return self.record
        self.progress.say(
            f"== {self.case.key}: {self.s.title} ({self.s.workload}; "
            f"{', '.join(self.s.variants)}; {self.s.warmup} warm-up + {self.s.runs} runs)"
        )
        try:
            self._run(t0)
        finally:
            for variant in reversed(self.variants):
                try:
                    variant.teardown()
                except Exception as e:  # recorded; the registry still ends what is left
                    self.record["notes"].append(f"teardown of {variant.name} failed: {e}")
            self.record["duration_s"] = round(time.monotonic() - t0, 3)
        return self.record

    def _run(self, t0: float) -> None:
        try:
            fixture = self.fixtures.for_case(self.case)
        except (BenchError, OSError) as e:
            self.record.update(status="failed", reason=f"fixture: {e}")
            for name in self.s.variants:
                self._add(name, "setup", None, status="failed", error=f"fixture: {e}")
            self.progress.skip(self.planned())
            return
        self.record["fixture"] = {
            "path": fixture.rel,
            **{k: v for k, v in fixture.facts.items() if k != "list_file"},
        }
        self.record["setup_s"] = round(time.monotonic() - t0, 3)
        for name in self.s.variants:
            variant = make_variant(name, self.case, self.bench, fixture)
            self.variants.append(variant)
            try:
                variant.setup()
            except (BenchError, OSError) as e:
                variant.error = str(e)
                self._add(name, "setup", None, status="failed", error=f"setup: {e}")
                self.progress.finished(f"{self.case.key} {name}", f"FAILED in setup: {e}", counts=False)
                self.progress.skip(self.s.warmup + self.s.runs)
        rounds = list(range(-self.s.warmup, self.s.runs))
        started = time.monotonic()  # the bound counts the rounds, not the fixture or the setup
        for index, rnd in enumerate(rounds):
            if time.monotonic() - started > self.s.time_bound_s:
                counted = sum(1 for r in rounds[index:] if r >= 0)
                self.record["notes"].append(
                    f"time bound of {self.s.time_bound_s:g} s reached: {counted} of {self.s.runs} counted "
                    f"rounds not run"
                )
                self.record["truncated"] = True
                self.progress.skip(len(rounds[index:]) * sum(1 for v in self.variants if not v.error))
                for variant in self.variants:
                    done = any(r["case"] == self.case.key and r["variant"] == variant.name
                               and r["kind"] == "counted" for r in self.runs)
                    if not variant.error and not done:
                        self._add(variant.name, "counted", None, status="skipped",
                                  error=f"the case's time bound of {self.s.time_bound_s:g} s was reached "
                                        "before its first counted run")
                return
            shift = index % len(self.variants)
            for variant in self.variants[shift:] + self.variants[:shift]:
                if variant.error:
                    continue
                kind = "warmup" if rnd < 0 else "counted"
                if variant.needs_priming():
                    self.execute(variant, "prime", None)
                    if variant.error:
                        self.progress.skip(len(rounds) - index)
                        continue
                    variant.primed()
                self.execute(variant, kind, rnd)
                if variant.error:
                    self.progress.skip(len(rounds) - index - 1)

    def execute(self, variant: Variant, kind: str, rnd: int | None) -> None:
        step = f"round {rnd + 1}/{self.s.runs}" if kind == "counted" and rnd is not None else kind
        what = f"{self.case.key} {step} {variant.name}"
        self.progress.starting(what)
        run = self._add(variant.name, kind, rnd, timing=variant.timing)
        try:
            self._execute(variant, run)
        except KeyboardInterrupt:
            run.update(status="interrupted", error="interrupted")
            raise
        finally:
            if run["status"] != "ok" and not variant.error:
                variant.error = run["error"]
        if run["status"] == "ok":
            extra = ""
            share = (run.get("counters") or {}).get("share")
            if share:
                extra = f"  ({share['requests']} share requests)"
            outcome = f"{run['elapsed_s']:.3f} s{extra}"
        else:
            outcome = f"{run['status'].upper()}: {run['error']}"
        self.progress.finished(what, outcome, counts=kind != "prime")

    def _execute(self, variant: Variant, run: dict[str, Any]) -> None:
        bench = self.bench
        scratch = bench.work / "runs"
        scratch.mkdir(exist_ok=True)
        phases: dict[str, float] = {}
        run["untimed_s"] = phases  # where the time around the run went (preparation, counters, cleanup)
        mark = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal mark
            now = time.perf_counter()
            phases[name] = round(now - mark, 4)
            mark = now

        try:
            run["prep"] = variant.before_run()
            if self.s.drop_caches and variant.drops_caches:
                run["caches_dropped"] = bench.drop_caches()
            lap("prepare")
            before = variant.observe()
            lap("stats_before")
            argv = variant.argv()
            run["command"] = shlex.join(argv)
            sampler = Sampler(variant.pids())
            sampler.start()
            try:
                finished = run_timed(
                    argv,
                    timeout=self.s.run_timeout_s,
                    registry=bench.registry,
                    env=variant.env(),
                    scratch=scratch,
                    on_start=lambda pid: sampler.add("workload", pid),
                )
            finally:
                resources = sampler.stop()
            ru = finished.rusage
            sampled = resources["roles"].get("workload", {})
            resources["roles"]["workload"] = {
                "cpu_s": round(ru["user_s"] + ru["system_s"], 4),
                "peak_rss_bytes": sampled.get("peak_rss_bytes"),
                "read_bytes": ru["inblock_bytes"],
                "write_bytes": ru["oublock_bytes"],
                "wait4_maxrss_bytes": ru["maxrss_bytes"],
                "source": "CPU and I/O from wait4; peak RSS sampled after exec (wait4's maxrss also counts "
                "the moment between fork and exec, when the child is still a copy of the bench)",
            }
            run["resources"] = resources
            run["wall_s"] = round(finished.wall_s, 6)
            lap("run")
            if finished.timed_out:
                run.update(
                    status="timeout", error=f"killed after the run time bound of {self.s.run_timeout_s:g} s"
                )
            elif finished.returncode != 0:
                run.update(
                    status="failed", error=f"exit status {finished.returncode}: {finished.error_text()}"
                )
            else:
                result = variant.check(finished)
                run["result"] = result
                run["elapsed_s"] = result["elapsed_s"]
                run["counters"] = variant.counters(before)
                lap("stats_after")
        except (BenchError, OSError) as e:
            run.update(status="failed", error=str(e), elapsed_s=None)
        finally:
            try:
                run["after"] = variant.after_run()
                lap("after")
            except (BenchError, OSError) as e:
                if run["status"] == "ok":
                    run.update(status="failed", error=f"after the run: {e}", elapsed_s=None)
        if run["status"] != "ok":
            run["elapsed_s"] = None


# --- the whole bench ---------------------------------------------------------------------------------------


def _tool_version(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else None


def _git_revision() -> dict[str, Any] | None:
    here = Path(__file__).resolve().parents[2]
    if not (here / ".git").exists() or shutil.which("git") is None:
        return None
    rev = _tool_version(["git", "-C", str(here), "rev-parse", "HEAD"])
    try:
        dirty = (
            subprocess.run(
                ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.strip()
            != ""
        )
    except (OSError, subprocess.SubprocessError):
        dirty = None
    return {"commit": rev, "uncommitted_changes": dirty}


def _fstype(path: Path) -> str | None:
    real, best, kind = os.path.realpath(path), "", None
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            for line in f:
                fields = line.split()
                point = fields[4].decode("unicode_escape").encode("latin-1").decode(errors="replace")
                sep = fields.index(b"-")
                if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                    best, kind = point, fields[sep + 1].decode()
    except OSError:
        pass
    return kind


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        cpu = None
    return cpu or platform.processor()


def machine_info(fsbridge: list[str], work: Path) -> dict[str, Any]:
    distro = None
    try:
        with open("/etc/os-release") as f:
            distro = next(
                (line.split("=", 1)[1].strip().strip('"') for line in f if line.startswith("PRETTY_NAME=")),
                None,
            )
    except OSError:
        pass
    packages: dict[str, str | None] = {}
    for name in ("fsbridge", "pyfuse3", "trio", "psutil", "click", "matplotlib"):
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "kernel": platform.release(),
        "kernel_build": platform.version(),
        "os": distro or platform.platform(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "euid": os.geteuid(),
        "work_folder_fstype": _fstype(work),
        "load_average_at_start": list(os.getloadavg()),
        "versions": {
            "fsbridge_cli": _tool_version([*fsbridge, "--version"]),
            "packages": packages,
            "podman": _tool_version(["podman", "--version"]) if shutil.which("podman") else None,
            "curl": _tool_version(["curl", "--version"]) if shutil.which("curl") else None,
            "fusermount3": _tool_version(["fusermount3", "--version"])
            if shutil.which("fusermount3")
            else None,
        },
        "git": _git_revision(),
    }


class _Signals:
    """SIGTERM and SIGHUP end the bench like Ctrl-C; while cleaning up, further signals are only noted."""

    def __init__(self) -> None:
        self.saved: dict[int, Any] = {}

    def __enter__(self) -> "_Signals":
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self.saved[sig] = signal.signal(sig, self._interrupt)
        return self

    @staticmethod
    def _interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    @staticmethod
    def _cleaning(signum: int, frame: Any) -> None:
        sys.stderr.write("\nstill cleaning up (unmounting, stopping servers); please wait\n")

    def cleaning(self) -> None:
        for sig in self.saved:
            signal.signal(sig, self._cleaning)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


def _remove_work(work: Path, registry: Registry) -> None:
    for point in mounts_under(work):
        force_unmount(point)
    left = mounts_under(work)
    if left:
        registry.problems.append(f"still mounted, so {work} was left in place: {', '.join(left)}")
        return
    shutil.rmtree(work, ignore_errors=True)
    if work.exists():
        registry.problems.append(f"could not remove {work}")


def run_bench(options: Options, stream: TextIO = sys.stderr) -> int:
    """Run the chosen scenarios; write results.json, report.md and report.png to options.out.

    Returns the exit status: 0 every variant ran, 1 one failed (or the bench could not start), 130 when
    interrupted.
    """
    started = now_iso()
    t0 = time.monotonic()
    registry = Registry()
    runs: list[dict[str, Any]] = []
    cases: list[dict[str, Any]] = []
    doc: dict[str, Any] = {
        "format": FORMAT,
        "started": started,
        "command": options.command,
        "options": {
            "quick": options.quick,
            "share": options.share,
            "set": options.sets,
            "scenarios_dir": options.scenarios_dir,
            "scenarios": [s.name for s in options.scenarios],
        },
        "cases": cases,
        "runs": runs,
        "notes": [],
        "interrupted": False,
        "error": None,
    }
    guest = parse_guest_share(options.share)
    in_guest: list[Scenario] = []  # run by the orchestrator inside a guest (guest_share.py)
    here = list(options.scenarios)
    left_out: dict[str, list[str]] = {}  # scenario -> notes on variants with no form across a guest boundary
    if guest is not None:
        in_guest = [s for s in here if s.spec.family != "load"]
        here = []
        for s in options.scenarios:
            if s.spec.family == "load":
                changed, left_out[s.name] = across_the_boundary(s, guest)
                here.append(changed)
    all_cases = [case for s in here for case in s.cases()]
    progress = Progress(
        sum(len(c.scenario.variants) * (c.scenario.warmup + c.scenario.runs) for c in all_cases), stream
    )
    fsbridge_cmd = fsbridge_argv()
    work: Path | None = None  # the bench's own temporary folder, made under the signal handlers
    with _Signals() as signals:
        try:
            work = folder = Path(tempfile.mkdtemp(prefix="fsbridge-bench-"))
            registry.push(f"folder {folder}", lambda: _remove_work(folder, registry))
            env = dict(os.environ, TMPDIR=str(work / "tmp"))
            (work / "tmp").mkdir()
            (work / "src").mkdir()
            share = make_share(options.share)
            if isinstance(share, GuestServeShare):
                share.deadline_s = deadline_for(here)
            bench = Bench(Fsbridge(fsbridge_cmd, registry, env), registry, work, work / "src", share, env)
            doc["machine"] = machine_info(fsbridge_cmd, work)
            progress.say(
                f"fsbridge bench: {len(all_cases)} case(s) of {len(options.scenarios)} scenario(s), "
                f"{progress.total} runs; share {options.share}; results in {options.out}"
            )
            share.start(bench)
            doc["share"] = share.describe()
            if guest is not None and in_guest:
                _run_scenarios_in_guest(guest, in_guest, options, work / "guest-share", fsbridge_cmd, doc,
                                        progress)
            counter = iter(range(max((r["seq"] for r in runs), default=0) + 1, 1 << 30))  # after the guest's
            fixtures = Fixtures(bench)
            for case in all_cases:
                record = CaseRunner(case, bench, fixtures, runs, progress, lambda: next(counter)).run()
                record["notes"] = left_out.get(case.scenario.name, []) + record["notes"]
                cases.append(record)
            doc["share"] = share.describe()
            if bench.drop_permitted is False:
                doc["notes"].append(
                    "The page cache could not be dropped (not root?): runs marked cold were cold "
                    "only in the fsbridge mount's own caches (a fresh mount has none)."
                )
        except KeyboardInterrupt:
            doc["interrupted"] = True
            progress.say("interrupted: cleaning up every mount, server and temporary file")
        except (BenchError, OSError) as e:
            doc["error"] = str(e)
            progress.say(f"the bench could not go on: {e}")
        except Exception as e:  # a bug of the bench itself: still clean up and keep what was measured
            import traceback

            doc["error"] = f"internal error: {e!r}"
            doc["error_traceback"] = traceback.format_exc()
            progress.say(f"the bench failed (internal error, details in results.json): {e!r}")
        finally:
            signals.cleaning()
            registry.close()
            left = mounts_under(work) if work is not None else []
            if registry.problems:
                doc["notes"] += [f"cleanup: {p}" for p in registry.problems]
            if left:
                doc["notes"].append(f"cleanup: still mounted: {', '.join(left)}")
    doc["finished"] = now_iso()
    doc["duration_s"] = round(time.monotonic() - t0, 3)
    if "machine" in doc:
        doc["machine"]["load_average_at_end"] = list(os.getloadavg())
    paths = report.write_all(doc, options.out)
    progress.say(f"done in {progress._clock(doc['duration_s'])}: {', '.join(str(p) for p in paths)}")
    bad = ("failed", "timeout", "not-run")  # a variant left with no counted run did not run either
    failed = doc["error"] is not None or any(
        row["status"] in bad for case in doc["summary"] for row in case["variants"]
    )
    failed = failed or any(c.get("status") == "failed" for c in cases)
    if doc["interrupted"]:
        return 130
    return 1 if failed else 0


def _run_scenarios_in_guest(guest: GuestShareSpec, scenarios: list[Scenario], options: Options, folder: Path,
                            fsbridge_cmd: list[str], doc: dict[str, Any], progress: Progress) -> None:
    """The file-system and podman scenarios, run by this orchestrator inside a guest; merged into `doc`."""
    names = [s.name for s in scenarios]
    folder.mkdir()
    copies = folder / "scenarios"  # the guest's /tmp is its own: give it the scenario files over the share
    copies.mkdir()
    for s in scenarios:
        shutil.copyfile(s.source, copies / Path(s.source).name)
    passthrough = (
        (["--quick"] if options.quick else [])
        + (["--runs", str(options.runs)] if options.runs else [])
        + (["--warmup", str(options.warmup)] if options.warmup is not None else [])
        + [f"--set={item}" for item in options.sets if item.split(".", 1)[0] in names]
        + ["--scenarios", str(copies)]
    )
    inner, facts = run_nested(guest, names, passthrough, folder, fsbridge_cmd, deadline_for(scenarios),
                              progress.say)
    merge_nested(doc, inner, facts)


# --- the command line's entry ------------------------------------------------------------------------------


def list_scenarios(scenarios: list[Scenario]) -> str:
    lines = []
    for s in scenarios:
        params = ", ".join(f"{k}={v}" for k, v in s.params.items())
        quick = ", ".join(f"{k}={v}" for k, v in (s.quick.get("params") or {}).items())
        lines += [
            f"{s.name}: {s.title}",
            f"    workload {s.workload}: {s.spec.summary}",
            f"    variants {', '.join(s.variants)} (baseline {s.baseline}); {s.runs} runs after "
            f"{s.warmup} warm-up round(s)",
            f"    params {params}" + (f"; --quick: {quick}" if quick else ""),
            f"    {s.source}",
        ]
    return "\n".join(lines)


def command(
    *,
    names: tuple[str, ...],
    out: str | None,
    quick: bool,
    runs: int | None,
    warmup: int | None,
    share: str,
    sets: tuple[str, ...],
    scenarios_dir: str | None,
    compare: tuple[str, str] | None,
    list_only: bool,
) -> int:
    """`fsbridge bench`: list, compare, or run. Returns the exit status."""
    import json

    import click

    from fsbridge.bench.scenarios import load_scenarios, select
    from fsbridge.errors import ConfigError

    if compare:
        docs = []
        for path in compare:
            try:
                docs.append(json.loads(Path(path).read_text()))
            except (ValueError, OSError) as e:
                raise ConfigError(
                    f"{path}: not a results.json of fsbridge bench ({e})", reason="bad-results"
                ) from None
            if not isinstance(docs[-1], dict) or "runs" not in docs[-1]:
                raise ConfigError(f"{path}: not a results.json of fsbridge bench", reason="bad-results")
        click.echo(report.compare(docs[0], docs[1], compare[0], compare[1]), nl=False)
        return 0
    available = load_scenarios(Path(scenarios_dir) if scenarios_dir else None)
    if list_only:
        click.echo(list_scenarios(available))
        return 0
    chosen = select(available, names, quick=quick, sets=sets, runs=runs, warmup=warmup)
    make_share(share)  # a bad --share is a usage problem: report it before anything starts
    argv = (
        ["fsbridge", "bench", *names]
        + (["--quick"] if quick else [])
        + (["--runs", str(runs)] if runs else [])
        + (["--warmup", str(warmup)] if warmup is not None else [])
        + ["--share", share]
        + [f"--set={s}" for s in sets]
        + (["--scenarios", scenarios_dir] if scenarios_dir else [])
    )
    options = Options(
        scenarios=chosen,
        out=Path(out) if out else default_out(),
        share=share,
        quick=quick,
        sets=list(sets),
        command=shlex.join(argv),
        scenarios_dir=scenarios_dir,
        runs=runs,
        warmup=warmup,
    )
    code = run_bench(options)
    if code != 130:
        results = json.loads((options.out / "results.json").read_text())
        click.echo(headline(results))
    return code


def headline(doc: dict[str, Any]) -> str:
    """A few lines for the terminal: per case, each variant's ratio to the baseline."""
    lines = []
    for case in doc.get("summary", []):
        cells = []
        for row in case["variants"]:
            if row["status"] != "ok":
                cells.append(f"{row['variant']} {row['status'].upper()}")
            elif row["variant"] == case["baseline"]:
                cells.append(f"{row['variant']} {report.fmt_time(row['elapsed_s']['median'])}")
            else:
                r = row.get("ratio_to_baseline")
                cells.append(f"{row['variant']} {report.fmt_ratio(r['ratio']) if r else '-'}")
        lines.append(f"{case['case']}: " + ", ".join(cells))
    return "\n".join(lines)
