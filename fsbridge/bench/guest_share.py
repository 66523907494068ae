"""`fsbridge bench --share qemu-9p:MODE | qemu-virtiofs[:MODE]`: the suite across a real VM boundary.

The emulator is a model of a share; this runs the same scenarios against the real thing, a throw-away qemu
guest (fsbridge/bench/guest.py) that sees a host folder over the kernel's own 9p client (any cache mode) or
virtiofs, as podman machine, Lima and WSL2 do. Two halves, because the two families of scenarios sit on
different sides of the boundary:

- **File-system and podman scenarios run inside one guest.** The guest runs this very orchestrator,
  `fsbridge bench NAMES --share path:SHARE`, SHARE being a host folder mounted in the guest over the share:
  local is the guest's own tmpfs, raw the real 9p/virtiofs mount, cold/warm an fsbridge mount over it. Its
  results.json is merged into this run's: its cases and runs as they are, its machine under `guest`.
- **Load scenarios run here, on the host**, against `fsbridge serve` in a guest (TCP with a bearer token,
  forwarded from the host's 127.0.0.1 by qemu's user-mode network): `upload` sends the archive across the
  virtual NIC, `path-raw` sends a path reference and the guest reads the archive over the share. `floor` is
  the host's own read and sha256 of the archive. `sink` and `path-mount` have no form across the boundary
  yet and are left out, with a note in the case.

Under TCG (no usable KVM) the guest's CPU is emulated, several times slower than the host's for kernel
work: its figures are relative only, and every report says which accelerator ran.
"""

from __future__ import annotations

import copy
import json
import os
import re
import secrets
import shlex
import socket
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fsbridge.bench.guest import CACHE_MODES_9P, GuestError, GuestTimeout, Share, run_in_guest
from fsbridge.bench.guest_assets import ensure_guest_assets
from fsbridge.bench.procs import BenchError, Service, tail_lines
from fsbridge.bench.scenarios import Scenario

VIRTIOFS_CACHE_MODES = ("none", "auto", "always")
GUEST_API_PORT = 7780
GUEST_MEMORY_MB = 3072  # the guest's tmpfs holds the fixtures (and the store) of the scenarios run in it
BOOT_TIMEOUT_S = 240  # a first boot may probe KVM (20 s) before TCG, and python starts slowly under TCG
# load variants that have a form across the guest boundary (the others are left out, with a note)
ACROSS_THE_BOUNDARY = ("floor", "upload", "path-raw")
_BOOTED = re.compile(r"guest: booted \((?P<accel>kvm|tcg)\) in (?P<boot>[\d.]+) s(?: \((?P<notes>.*)\))?")


@dataclass(frozen=True)
class GuestShareSpec:
    """A parsed `--share qemu-9p:MODE[,memory-mb=N]` or `--share qemu-virtiofs[:MODE][,memory-mb=N]`."""

    kind: str  # "9p" or "virtiofs"
    cache: str
    memory_mb: int = GUEST_MEMORY_MB

    @property
    def label(self) -> str:
        return f"qemu-{self.kind}:{self.cache}"

    def guest_share(self, path: Path) -> Share:
        return Share(str(path), kind=self.kind, cache=self.cache)

    def runner_share_options(self, path: Path) -> list[str]:
        """The `python -m fsbridge.bench.guest` options that share `path` this way."""
        if self.kind == "9p":
            return ["--share", str(path), "--cache", self.cache]
        return ["--virtiofs", str(path), "--virtiofs-cache", self.cache]


def parse_guest_share(spec: str) -> GuestShareSpec | None:
    """The guest share a `--share` value names, or None when it names another kind of share."""
    head, _, rest = spec.partition(":")
    if head not in ("qemu-9p", "qemu-virtiofs"):
        return None
    kind = head.removeprefix("qemu-")
    mode, *options = rest.split(",") if rest else [""]
    modes = CACHE_MODES_9P if kind == "9p" else VIRTIOFS_CACHE_MODES
    mode = mode or ("none" if kind == "9p" else "auto")
    if mode not in modes:
        raise BenchError(f"--share {spec}: unknown {kind} cache mode {mode!r} (one of {', '.join(modes)})")
    memory = GUEST_MEMORY_MB
    for item in options:
        key, sep, value = item.partition("=")
        if key != "memory-mb" or not sep or not value.isdigit() or int(value) < 256:
            raise BenchError(f"--share {spec}: unknown option {item!r} (memory-mb=N, N >= 256)")
        memory = int(value)
    return GuestShareSpec(kind, mode, memory)


# --- the file-system half: the whole orchestrator inside one guest -------------------------------------------


def deadline_for(scenarios: list[Scenario]) -> float:
    """A deadline for running `scenarios` in the guest: a round that starts just before a case's time bound
    may still run every variant to its run bound (and prime one), and fixtures are made under TCG too."""
    total = 300.0
    for scenario in scenarios:
        for _case in scenario.cases():
            total += scenario.time_bound_s + 2 * len(scenario.variants) * scenario.run_timeout_s + 300
    return total


INTERRUPT_MARGIN_S = 120  # the nested bench gets Ctrl-C this long before the guest's deadline, to write its results


def run_nested(
    spec: GuestShareSpec,
    names: list[str],
    passthrough: list[str],
    folder: Path,
    fsbridge: list[str],
    deadline_s: float,
    say: Callable[[str], None],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run `fsbridge bench NAMES --share path:FOLDER` in a guest that sees FOLDER over the share.

    Returns the guest bench's results.json and how the guest ran. Raises BenchError when the guest could
    not run it or wrote no results (a guest bench that ran with failed variants still returns them)."""
    folder.mkdir(parents=True, exist_ok=True)
    out, log = folder / "out", folder / "progress.log"
    inner = [*fsbridge, "bench", *names, *passthrough, "--share", f"path:{folder}", "--out", str(out)]
    # interrupted (as by Ctrl-C) before the deadline, it still writes the runs it made, marked interrupted
    bound = max(60, int(deadline_s - INTERRUPT_MARGIN_S))
    command = f"timeout -s INT {bound} {shlex.join(inner)} 2>{shlex.quote(str(log))}"
    tail = _Tail(log, lambda line: say(f"  guest | {line}"))
    say(f"booting a guest ({spec.label}, {spec.memory_mb} MiB) to run: {shlex.join(inner[len(fsbridge):])}")
    try:
        run = run_in_guest(command, [spec.guest_share(folder)], deadline_s=deadline_s, memory_mb=spec.memory_mb,
                           env={"MPLCONFIGDIR": "/tmp/matplotlib"}, while_running=tail.poll,
                           assets=ensure_guest_assets())
    except GuestTimeout as e:
        tail.poll()
        raise BenchError(f"the guest bench did not finish within {deadline_s:.0f} s ({e.run.accel})") from None
    except GuestError as e:
        raise BenchError(f"the guest could not run the bench: {e.message}") from None
    tail.poll()
    facts = {
        "share": spec.label,
        "accel": run.accel,
        "accel_notes": run.accel_notes,
        "boot_s": round(run.boot_s, 3),
        "command_s": round(run.command_s, 3),
        "memory_mb": spec.memory_mb,
        "exit_code": run.exit_code,
        "command": shlex.join(["fsbridge", *inner[len(fsbridge):]]),
    }
    try:
        inner_doc = json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        raise BenchError(f"the guest bench wrote no results (exit {run.exit_code}): "
                         f"{run.output[-400:] or tail_lines(log)}") from None
    return inner_doc, facts


def merge_nested(doc: dict[str, Any], inner: dict[str, Any], facts: dict[str, Any]) -> None:
    """Add the guest bench's cases and runs to `doc`, and what it knew of its machine under doc["guest"]."""
    offset = max((r["seq"] for r in doc["runs"]), default=0)  # the host's runs so far (and its own come after)
    for run in inner.get("runs", []):
        run["seq"] += offset
        run["where"] = "guest"
    doc["runs"] += inner.get("runs", [])
    for case in inner.get("cases", []):
        case["where"] = "guest"
    doc["cases"] += inner.get("cases", [])
    doc.setdefault("guest", {}).update(
        {**facts, "machine": inner.get("machine"), "share_in_guest": inner.get("share")}
    )
    doc["notes"] += [f"in the guest: {n}" for n in inner.get("notes", [])]
    if facts.get("exit_code") == 124:  # `timeout` stopped it before the guest's deadline
        doc["error"] = "in the guest: the bench ran out of time; the runs it made before are kept"
    elif inner.get("interrupted"):
        doc["interrupted"] = True
    if inner.get("error"):
        doc["error"] = f"in the guest: {inner['error']}"


class _Tail:
    """Passes on the new lines of a growing file (the guest bench's progress, written over the share)."""

    def __init__(self, path: Path, emit: Callable[[str], None]) -> None:
        self.path, self.emit, self.seen, self.partial = path, emit, 0, ""

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.seen)
                chunk = f.read()
        except OSError:
            return
        self.seen += len(chunk)
        text = self.partial + chunk.decode(errors="replace").replace("\r", "\n")
        *lines, self.partial = text.split("\n")
        for line in lines:
            line = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", line).strip()
            if line and not line.endswith(" ..."):
                self.emit(line)


# --- the load half: fsbridge serve in a guest, the client here ------------------------------------------------


def across_the_boundary(scenario: Scenario, spec: GuestShareSpec) -> tuple[Scenario, list[str]]:
    """The load scenario with only the variants that cross the guest boundary, and notes on what was left out
    (and on a share that caches data in the guest)."""
    kept = [v for v in scenario.variants if v in ACROSS_THE_BOUNDARY]
    left = [v for v in scenario.variants if v not in ACROSS_THE_BOUNDARY]
    if not kept:
        raise BenchError(f"scenario {scenario.name}: none of its variants ({', '.join(scenario.variants)}) "
                         f"runs across a guest boundary; those that do: {', '.join(ACROSS_THE_BOUNDARY)}")
    changed = copy.deepcopy(scenario)
    changed.variants = kept
    changed.ratios = [(a, b) for a, b in scenario.ratios if a in kept and b in kept]
    if ("path-raw", "upload") not in changed.ratios and {"path-raw", "upload"} <= set(kept):
        changed.ratios.append(("path-raw", "upload"))
    if changed.baseline not in kept:
        changed.baseline = kept[0]
    notes = [f"{v}: not run across the guest boundary (no form of it crosses qemu's network yet)" for v in left]
    if spec.cache != "none":
        notes.append(f"the guest's share caches data ({spec.label}): after the first path-raw run the guest may "
                     "serve the archive from its page cache, not over the share")
    return changed, notes


class GuestServer:
    """A guest that sees `folder` over the share and runs `fsbridge serve` on TCP with a token, forwarded to
    127.0.0.1 on the host. The guest runner is a Service: the registry ends it (and so qemu) on any exit."""

    def __init__(self, spec: GuestShareSpec, folder: Path, scratch: Path, registry: Any, env: dict[str, str],
                 fsbridge: list[str], deadline_s: float) -> None:
        self.spec = spec
        self.token_file = scratch / "token"
        self.token = secrets.token_hex(32)
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.token + "\n")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        serve = [*fsbridge, "serve", "--listen", f"tcp:0.0.0.0:{GUEST_API_PORT}", "--token-file",
                 str(self.token_file), "--store", "/tmp/fsbridge-store", "--map", f"{folder}={folder}"]
        argv = [sys.executable, "-m", "fsbridge.bench.guest", *spec.runner_share_options(folder),
                "--share", str(scratch), "--forward", f"{self.port}:{GUEST_API_PORT}",
                "--memory-mb", str(spec.memory_mb), "--deadline", f"{deadline_s:.0f}", "--", *serve]
        self.service = Service(f"the guest running fsbridge serve ({spec.label})", argv, registry=registry,
                               log_path=scratch / "guest.log", env=env)
        try:
            self.service.wait_ready(self._answers, timeout=BOOT_TIMEOUT_S)
        except BaseException:
            self.service.close()  # a guest that never answered must not hold its memory until the end
            raise

    @property
    def pid(self) -> int:
        return self.service.pid

    def _answers(self) -> bool:
        request = urllib.request.Request(self.url + "/v1/info", headers={"authorization": "Bearer " + self.token})
        try:
            with urllib.request.urlopen(request, timeout=3) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def describe(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"share": self.spec.label, "memory_mb": self.spec.memory_mb,
                                 "api": f"tcp:0.0.0.0:{GUEST_API_PORT} in the guest, {self.url} on the host"}
        m = _BOOTED.search(self.service.log_tail(50))
        if m:
            facts.update(accel=m["accel"], boot_s=float(m["boot"]), accel_notes=m["notes"] or "")
        return facts

    def close(self) -> None:
        self.service.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

