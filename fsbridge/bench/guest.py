"""Run a command inside a throw-away qemu guest that sees host folders over virtio-9p or virtiofs.

This is the real VM boundary of podman machine or Lima, on one Linux machine: the tests run the mount's
correctness checks over a real 9p share with it, and the bench can measure real shares with it.

    result = run_in_guest(["python3", "-c", "print(1)"], shares=[Share("/tmp/data")], deadline_s=120)
    result.exit_code, result.output, result.accel, result.boot_s

Each run boots a fresh guest (about 6 s under TCG), with:

- the host's `/` read-only over 9p as its userland, so every host path (python, the virtualenv, the
  project) is at the same path inside; /tmp, /run, /var/tmp, /mnt and /dev/shm are the guest's own tmpfs;
- each `Share` mounted at its guest path (by default its host path) over 9p with the given cache mode,
  or over virtiofs through the virtiofsd that qemu ships;
- optionally user-mode networking, with a host TCP port forwarded to a guest port.

KVM is tried first when /dev/kvm is usable, but only until the guest's init reports that it booted
(`kvm_probe_s`): nested or paravirtualised KVM often aborts or hangs in early boot. Then TCG (multi-threaded,
`-cpu max`) is used, and `result.accel` / `result.accel_notes` say which ran and why. A KVM failure is
remembered in the cache folder for this host kernel and qemu, so later runs do not pay the probe again.

Everything a run starts is ended in a `finally`: qemu and virtiofsd (each its own process group, and each
killed by the kernel if this process dies), their sockets and the run's temporary folder; on success, on an
exception, on Ctrl-C and at the deadline (`GuestTimeout`, which carries what the guest printed so far).
"""

from __future__ import annotations

import ctypes
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from fsbridge.bench.guest_assets import GuestAssets, GuestError, GuestUnavailable, ensure_guest_assets
from fsbridge.bench.procs import end_process_group

__all__ = ["GuestError", "GuestRun", "GuestTimeout", "GuestUnavailable", "Share", "run_in_guest"]

READY = b"FSBRIDGE-GUEST-READY"
EXIT = b"FSBRIDGE-GUEST-EXIT "
FAILED = b"FSBRIDGE-GUEST-FAILED: "
CACHE_MODES_9P = ("none", "loose", "fscache", "mmap")
_KVM_STATE_FILE = "kvm-state.json"


class GuestTimeout(GuestError):
    """The guest did not finish before its deadline; `.run` holds what it printed so far."""

    reason = "guest-timeout"

    def __init__(self, message: str, run: "GuestRun") -> None:
        super().__init__(message)
        self.run = run


@dataclass(frozen=True)
class Share:
    """A host folder seen in the guest at `guest_path` (default: the same path) over 9p or virtiofs."""

    host_path: str
    guest_path: str | None = None
    kind: str = "9p"  # "9p" or "virtiofs"
    cache: str | None = None  # 9p: none|loose|fscache|mmap (default: the run's); virtiofs: none|auto|always
    readonly: bool = False


@dataclass
class GuestRun:
    """How a guest run went. Times are host wall-clock seconds."""

    exit_code: int | None  # None: the command did not finish (deadline)
    output: str  # the command's stdout and stderr, interleaved
    accel: str  # "kvm" or "tcg"
    accel_notes: list[str] = field(default_factory=list)  # why KVM was not used, if it was not
    boot_s: float = 0.0  # qemu start -> init ready (shares mounted), for the accelerator that ran
    command_s: float = 0.0  # ready -> the command's exit
    shutdown_s: float = 0.0  # the command's exit -> qemu gone (unmount, power-off)
    total_s: float = 0.0  # run_in_guest call -> everything cleaned up (includes any KVM probe)
    console: str = ""  # the serial console (kernel messages, init's markers), for diagnostics


def run_in_guest(
    command: str | Sequence[str],
    shares: Sequence[Share | str] = (),
    *,
    cache: str = "none",
    forwards: Sequence[tuple[int, int]] = (),
    network: bool = False,
    deadline_s: float = 300.0,
    env: dict[str, str] | None = None,
    cwd: str = "/",
    accel: str | None = None,
    kvm_probe_s: float = 20.0,
    memory_mb: int = 1024,
    cpus: int = 2,
    while_running: Callable[[], None] | None = None,
    on_ready: Callable[[str, float, list[str]], None] | None = None,
    assets: GuestAssets | None = None,
) -> GuestRun:
    """Boot a guest, run `command` (a shell string, or argv) as root in it, return its status and output.

    shares: host folders (a path = a 9p share at the same path). cache: the 9p cache mode for shares that
    do not name one. forwards: (host_port, guest_port) pairs, TCP from the host's 127.0.0.1 to the guest
    (implies network; the guest is isolated otherwise: it reaches nothing outside). deadline_s: for
    the whole run, boot included; past it the guest is killed and GuestTimeout raised. accel: "kvm",
    "tcg" or None (auto; the environment variable FSBRIDGE_GUEST_ACCEL overrides). while_running: called
    about every 50 ms while the command runs, to play the host's part (e.g. change a shared file when the
    guest asks for it); an exception from it ends the run. on_ready: called once the guest has booted,
    with the accelerator, the boot time and the notes on why KVM was not used.
    """
    started = time.monotonic()
    deadline = started + deadline_s
    if cache not in CACHE_MODES_9P:
        raise GuestError(f"unknown 9p cache mode {cache!r} (one of {', '.join(CACHE_MODES_9P)})")
    shares = _shares_the_guest_needs() + [s if isinstance(s, Share) else Share(str(s)) for s in shares]
    for s in shares:
        if not os.path.isdir(s.host_path):
            raise GuestError(f"share {s.host_path} is not a folder")
        if s.kind not in ("9p", "virtiofs"):
            raise GuestError(f"share {s.host_path}: unknown kind {s.kind!r} (9p or virtiofs)")
    forwards = [(int(h), int(g)) for h, g in forwards]
    assets = assets or ensure_guest_assets()
    if any(s.kind == "virtiofs" for s in shares) and not assets.virtiofsd:
        raise GuestUnavailable("virtiofs share requested, but /usr/lib/qemu/virtiofsd is missing")
    if isinstance(command, str):
        command_line = command
    else:
        command_line = shlex.join(command)

    tmp = Path(tempfile.mkdtemp(prefix="fsbridge-guest-"))
    children: list[subprocess.Popen] = []
    try:
        ctl = tmp / "ctl"
        ctl.mkdir()
        _write_control(ctl, command_line, shares, cache, env or {}, cwd, network or bool(forwards))
        vhost = _start_virtiofsd(assets, shares, tmp, children, deadline)
        notes: list[str] = []
        for mode in _accelerators(accel, assets, notes):
            argv = _qemu_argv(assets, mode, shares, vhost, ctl, forwards, network, memory_mb, cpus)
            console = tmp / f"console-{mode}.log"
            qemu_log = tmp / f"qemu-{mode}.log"
            boot_started = time.monotonic()
            with open(qemu_log, "wb") as log:
                qemu = _spawn(argv + ["-serial", f"file:{console}"], log)
            children.append(qemu)
            probe = min(deadline, boot_started + kvm_probe_s) if mode == "kvm" else deadline
            state = _wait_for(qemu, console, probe, (READY, FAILED))
            if state == READY:
                boot_s = time.monotonic() - boot_started
                if mode == "kvm":
                    _remember_kvm(assets, ok=True, why="")
                break
            why = _why_not_booted(state, qemu, console, qemu_log, probe - boot_started)
            end_process_group(qemu.pid, grace=2)
            if mode == "kvm" and state != FAILED:
                notes.append(f"kvm: {why}; fell back to tcg")
                _remember_kvm(assets, ok=False, why=why)
                continue
            if state is None and time.monotonic() >= deadline:
                run = GuestRun(None, "", mode, notes, console=_read(console))
                raise GuestTimeout(f"the guest did not boot within {deadline_s:g} s ({mode}): {why}", run)
            raise GuestError(f"the guest did not boot ({mode}): {why}")
        else:
            raise GuestError("no accelerator left to try: " + "; ".join(notes))

        ready_at = time.monotonic()
        if on_ready is not None:
            on_ready(mode, boot_s, list(notes))
        state = _wait_for(qemu, console, deadline, (EXIT,), while_running=while_running)
        exited_at = time.monotonic()
        command_s = exited_at - ready_at
        if state is None and qemu.poll() is None:
            run = GuestRun(None, _read(ctl / "output"), mode, notes, boot_s, command_s, console=_read(console))
            raise GuestTimeout(f"the guest command did not finish within {deadline_s:g} s ({mode})", run)
        try:
            qemu.wait(timeout=max(1.0, min(15.0, deadline - time.monotonic())))  # init powers off
        except subprocess.TimeoutExpired:
            pass
        shutdown_s = time.monotonic() - exited_at
        exit_code = _exit_code(ctl, console)
        if exit_code is None:
            raise GuestError(f"the guest stopped without reporting the command's exit status ({mode}): "
                             + _tail(_read(console)) + _tail(_read(qemu_log)))
        run = GuestRun(exit_code, _read(ctl / "output"), mode, notes, boot_s, command_s,
                       shutdown_s=shutdown_s, console=_read(console))
    finally:
        for child in reversed(children):
            if child.poll() is None:
                end_process_group(child.pid, grace=2)
            else:
                child.wait()
        _remove(tmp)
    run.total_s = time.monotonic() - started
    return run


# --- what the guest reads ------------------------------------------------------------------------------


# The folders where the guest has a tmpfs of its own over the host's (guest_init.sh mounts them).
GUEST_OWN_FOLDERS = ("/dev/shm", "/tmp", "/run", "/var/tmp", "/mnt")


def _shares_the_guest_needs() -> list[Share]:
    """This interpreter's environment and fsbridge's own source, shared read-only, where they live in a folder
    the guest has its own tmpfs for (a virtualenv in a checkout under /tmp, say): elsewhere the guest sees
    them through the host's `/`. Listed first, so that the caller's shares may sit inside them."""
    package_parent = Path(__file__).resolve().parents[2]  # fsbridge/bench/guest.py: a checkout or site-packages
    needed = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.executable, package_parent)}
    needed = {p if os.path.isdir(p) else os.path.dirname(p) for p in needed}
    hidden = sorted(p for p in needed
                    if any(p == d or p.startswith(d + "/") for d in GUEST_OWN_FOLDERS) and p not in GUEST_OWN_FOLDERS)
    outer = [p for p in hidden if not any(p.startswith(q + "/") for q in hidden)]
    return [Share(p, readonly=True, cache="loose") for p in outer]


def _write_control(ctl: Path, command: str, shares: list[Share], cache: str, env: dict[str, str], cwd: str,
                   network: bool) -> None:
    lines = []
    for i, s in enumerate(shares):
        guest_path = s.guest_path or os.path.realpath(s.host_path)
        if not guest_path.startswith("/") or "\n" in guest_path:
            raise GuestError(f"share guest path must be absolute and on one line: {guest_path!r}")
        mode = "ro" if s.readonly else "rw"
        share_cache = s.cache or (cache if s.kind == "9p" else "auto")
        if s.kind == "9p" and share_cache not in CACHE_MODES_9P:
            raise GuestError(f"unknown 9p cache mode {share_cache!r}")
        lines.append(f"{s.kind} {_tag(i)} {share_cache} {mode} {guest_path}")
    (ctl / "shares").write_text("".join(line + "\n" for line in lines))
    (ctl / "config").write_text(f"FSB_NET={1 if network else 0}\n")
    script = ["set -e", f"cd {shlex.quote(cwd)}", "export HOME=/root TMPDIR=/tmp LANG=C.UTF-8"]
    script += [f"export {k}={shlex.quote(v)}" for k, v in env.items() if k.isidentifier()]
    script += ["set +e", command]
    (ctl / "command.sh").write_text("\n".join(script) + "\n")


def _tag(i: int) -> str:
    return f"share{i}"


# --- qemu and virtiofsd ---------------------------------------------------------------------------------


def _qemu_argv(assets: GuestAssets, mode: str, shares: list[Share], vhost: dict[int, Path], ctl: Path,
               forwards: list[tuple[int, int]], network: bool, memory_mb: int, cpus: int) -> list[str]:
    security = "passthrough" if os.geteuid() == 0 else "none"
    argv = [assets.qemu, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-M", "q35", "-m", str(memory_mb), "-smp", str(cpus),
            "-kernel", str(assets.kernel), "-initrd", str(assets.initrd),
            "-append", "console=ttyS0 panic=-1 quiet loglevel=4 rdinit=/init",
            "-monitor", "none"]
    if mode == "kvm":
        argv += ["-accel", "kvm", "-cpu", "host"]
    else:
        argv += ["-accel", "tcg,thread=multi", "-cpu", "max"]
    argv += ["-device", "virtio-rng-pci"]
    argv += _virtfs("hostroot", "/", readonly=True, security="none", extra=",multidevs=remap")
    argv += _virtfs("ctl", str(ctl), readonly=False, security="none")
    for i, s in enumerate(shares):
        if s.kind == "9p":
            argv += _virtfs(_tag(i), os.path.realpath(s.host_path), readonly=s.readonly, security=security)
    if vhost:
        argv += ["-object", f"memory-backend-memfd,id=mem,size={memory_mb}M,share=on", "-numa", "node,memdev=mem"]
        for i, sock in vhost.items():
            argv += ["-chardev", f"socket,id=vfs{i},path={sock}",
                     "-device", f"vhost-user-fs-pci,chardev=vfs{i},tag={_tag(i)}"]
    if network or forwards:
        # restrict=on: the guest reaches nothing outside qemu's user-mode network; forwards still work
        netdev = "user,id=n0,restrict=on"
        for host_port, guest_port in forwards:
            netdev += f",hostfwd=tcp:127.0.0.1:{int(host_port)}-:{int(guest_port)}"
        argv += ["-netdev", netdev, "-device", "virtio-net-pci,netdev=n0,romfile="]
    return argv


def _virtfs(tag: str, path: str, *, readonly: bool, security: str, extra: str = "") -> list[str]:
    if "," in path:
        path = path.replace(",", ",,")  # qemu's option syntax escapes a comma by doubling it
    ro = ",readonly=on" if readonly else ""
    return ["-fsdev", f"local,id=fs_{tag},path={path},security_model={security}{ro}{extra}",
            "-device", f"virtio-9p-pci,fsdev=fs_{tag},mount_tag={tag}"]


def _start_virtiofsd(assets: GuestAssets, shares: list[Share], tmp: Path, children: list[subprocess.Popen],
                     deadline: float) -> dict[int, Path]:
    socks: dict[int, Path] = {}
    for i, s in enumerate(shares):
        if s.kind != "virtiofs":
            continue
        sock = tmp / f"virtiofs{i}.sock"
        cache = s.cache or "auto"
        argv = [str(assets.virtiofsd), f"--socket-path={sock}", "-o", f"source={os.path.realpath(s.host_path)}",
                "-o", f"cache={cache}"]
        with open(tmp / f"virtiofsd{i}.log", "wb") as log:
            proc = _spawn(argv, log)
        children.append(proc)
        limit = min(deadline, time.monotonic() + 10)
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > limit:
                raise GuestError(f"virtiofsd did not start: {_tail(_read(tmp / f'virtiofsd{i}.log'))}")
            time.sleep(0.02)
        socks[i] = sock
    return socks


def _spawn(argv: list[str], log) -> subprocess.Popen:
    """A child in its own process group (Ctrl-C reaches only us; we end it), killed if we die."""
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=_die_with_parent)


def _die_with_parent() -> None:
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


# --- accelerator choice ---------------------------------------------------------------------------------


def _accelerators(accel: str | None, assets: GuestAssets, notes: list[str]) -> list[str]:
    wanted = accel or os.environ.get("FSBRIDGE_GUEST_ACCEL") or "auto"
    if wanted in ("kvm", "tcg"):
        return [wanted]
    if wanted != "auto":
        raise GuestError(f"unknown accelerator {wanted!r} (kvm, tcg or auto)")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        notes.append("kvm: /dev/kvm is missing or not accessible")
        return ["tcg"]
    known = _kvm_state(assets)
    if known and not known.get("ok"):
        notes.append(f"kvm: failed before on this host ({known.get('why')}); not retried "
                     f"(FSBRIDGE_GUEST_ACCEL=kvm forces it; state in {assets.cache_dir / _KVM_STATE_FILE})")
        return ["tcg"]
    return ["kvm", "tcg"]


def _kvm_key(assets: GuestAssets) -> str:
    st = os.stat(assets.qemu)
    return f"{os.uname().release} qemu:{st.st_size}:{st.st_mtime_ns} guest:{assets.kernel_release}"


def _kvm_state(assets: GuestAssets) -> dict | None:
    try:
        state = json.loads((assets.cache_dir / _KVM_STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if state.get("key") == _kvm_key(assets) else None


def _remember_kvm(assets: GuestAssets, *, ok: bool, why: str) -> None:
    path = assets.cache_dir / _KVM_STATE_FILE
    try:
        path.write_text(json.dumps({"key": _kvm_key(assets), "ok": ok, "why": why,
                                    "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
    except OSError:
        pass


# --- waiting and reporting ------------------------------------------------------------------------------


def _wait_for(qemu: subprocess.Popen, console: Path, until: float, markers: tuple[bytes, ...],
              while_running: Callable[[], None] | None = None) -> bytes | None:
    """The first of `markers` to appear on the console, or None when qemu exited or time ran out."""
    seen = 0
    text = b""
    while True:
        try:
            with open(console, "rb") as f:
                f.seek(seen)
                chunk = f.read()
        except FileNotFoundError:
            chunk = b""
        if chunk:
            # keep a little of the previous text so a marker split across two reads is found
            text = text[-64:] + chunk
            seen += len(chunk)
            for marker in markers:
                if marker in text:
                    return marker
        if qemu.poll() is not None:
            if chunk:
                continue  # read what it wrote last
            return None
        if time.monotonic() >= until:
            return None
        if while_running is not None:
            while_running()
        time.sleep(0.05)


def _why_not_booted(state: bytes | None, qemu: subprocess.Popen, console: Path, qemu_log: Path,
                    waited: float) -> str:
    text = _read(console)
    if state == FAILED:
        line = text.split(FAILED.decode(), 1)[1].splitlines()[0]
        return f"init failed: {line}"
    if qemu.poll() is not None:
        return f"qemu exited with {qemu.returncode}: {_tail(_read(qemu_log)) or _tail(text)}"
    last = _tail(text, lines=1)
    return f"no ready marker within {waited:.0f} s" + (f" (console ends: {last})" if last else "")


def _exit_code(ctl: Path, console: Path) -> int | None:
    try:
        return int((ctl / "exit_code").read_text().strip())
    except (OSError, ValueError):
        pass
    text = _read(console)
    marker = EXIT.decode()
    if marker in text:
        try:
            return int(text.split(marker, 1)[1].split()[0])
        except (IndexError, ValueError):
            return None
    return None


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _tail(text: str, lines: int = 6) -> str:
    kept = [line.strip() for line in text.replace("\r", "").splitlines() if line.strip()]
    return " | ".join(kept[-lines:])[-600:]


def _remove(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)


# --- by hand: python -m fsbridge.bench.guest [--share DIR]... -- COMMAND... -----------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command in a guest from the shell; errors are one line on stderr (exit 1), Ctrl-C exits 130."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fsbridge.bench.guest",
                                     description="Run COMMAND in a throw-away qemu guest that sees host folders.")
    parser.add_argument("--share", action="append", default=[], metavar="DIR", help="a host folder (9p)")
    parser.add_argument("--virtiofs", action="append", default=[], metavar="DIR", help="a host folder (virtiofs)")
    parser.add_argument("--cache", default="none", choices=CACHE_MODES_9P, help="9p cache mode")
    parser.add_argument("--virtiofs-cache", default="auto", choices=("none", "auto", "always"),
                        help="virtiofs cache mode")
    parser.add_argument("--forward", action="append", default=[], metavar="HOSTPORT:GUESTPORT",
                        help="forward a TCP port of the host's 127.0.0.1 into the guest (repeatable)")
    parser.add_argument("--memory-mb", type=int, default=1024, metavar="N")
    parser.add_argument("--deadline", type=float, default=300.0, metavar="S")
    parser.add_argument("--accel", choices=("kvm", "tcg"))
    parser.add_argument("command", nargs="+")
    args = parser.parse_args(argv)
    forwards = []
    for item in args.forward:
        host_port, _, guest_port = item.partition(":")
        try:
            forwards.append((int(host_port), int(guest_port)))
        except ValueError:
            parser.error(f"--forward {item}: expected HOSTPORT:GUESTPORT")
    shares = [Share(d) for d in args.share] + [Share(d, kind="virtiofs", cache=args.virtiofs_cache)
                                               for d in args.virtiofs]
    def booted(accel: str, boot_s: float, notes: list[str]) -> None:
        why = f" ({'; '.join(notes)})" if notes else ""
        print(f"guest: booted ({accel}) in {boot_s:.1f} s{why}", file=sys.stderr, flush=True)

    def terminated(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the cleanup short
        raise KeyboardInterrupt  # so that run_in_guest's cleanup runs (qemu, virtiofsd, the temporary folder)

    signal.signal(signal.SIGTERM, terminated)
    try:
        run = run_in_guest(args.command, shares, cache=args.cache, forwards=forwards, deadline_s=args.deadline,
                           accel=args.accel, memory_mb=args.memory_mb, on_ready=booted)
    except GuestTimeout as e:
        sys.stdout.write(e.run.output)
        print(f"guest: {e.message}", file=sys.stderr)
        return 1
    except GuestError as e:
        print(f"guest: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("guest: interrupted; the guest was stopped and its files removed", file=sys.stderr)
        return 130
    sys.stdout.write(run.output)
    notes = f" ({'; '.join(run.accel_notes)})" if run.accel_notes else ""
    print(f"guest: exit {run.exit_code}, {run.accel}{notes}, boot {run.boot_s:.1f} s, command {run.command_s:.1f} s, "
          f"total {run.total_s:.1f} s", file=sys.stderr)
    return run.exit_code if run.exit_code is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
