"""Mount lifecycle: checks before mounting, the foreground loop, background start, signals, unmount.

`fsbridge mount` without --foreground starts itself again with --foreground as a detached process and
returns once the mount is live (or reports why the child failed), so the daemon never forks after trio
and FUSE are set up. SIGINT and SIGTERM end the loop and unmount cleanly. After a crash the mount is
deliberately *not* unmounted (borg's reasoning: an empty mount point makes tools like rsync delete a
mirror); `fsbridge umount` or `fusermount3 -u` clears it.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable, Sequence

from fsbridge.errors import MountError

log = logging.getLogger(__name__)

FUSE_DEVICE = "/dev/fuse"


def _mount_entries(mountinfo: str = "/proc/self/mountinfo") -> list[tuple[str, str, str]]:
    """(mount point, fstype, source) for every mount, with octal escapes decoded."""
    return [(point, fstype, source) for point, fstype, source, _ in _mount_devices(mountinfo)]


def mount_type(path: str) -> str | None:
    """The fstype of the mount whose mount point is exactly `path`, or None."""
    real = os.path.realpath(path)
    found = None
    for point, fstype, _ in _mount_entries():
        if point == real:
            found = fstype  # the last one is the one on top
    return found


def is_fsbridge_mount(path: str) -> bool:
    return (mount_type(path) or "").startswith("fuse.fsbridge")


def check_mountpoint(mountpoint: str) -> str:
    """Refuse mount points that would surprise the user; return the absolute path."""
    if not os.path.exists(FUSE_DEVICE):
        raise MountError(f"{FUSE_DEVICE} is missing: load the fuse module (modprobe fuse) or run the "
                         "container VM with FUSE enabled", reason="no-fuse")
    path = os.path.abspath(mountpoint)
    if os.path.ismount(path) or mount_type(path):
        raise MountError(f"{path} is already a mount point; unmount it first (fsbridge umount {path})",
                         reason="already-mounted")
    if not os.path.exists(path):
        raise MountError(f"mount point {path} does not exist; create it first (mkdir -p {path})",
                         reason="no-mountpoint")
    if not os.path.isdir(path):
        raise MountError(f"mount point {path} is not a directory", reason="not-a-directory")
    try:
        if os.listdir(path):
            raise MountError(f"mount point {path} is not empty; mounting over it would hide its files",
                             reason="not-empty")
    except PermissionError:
        raise MountError(f"mount point {path} cannot be read", reason="no-permission") from None
    return path


# The kernel reads ahead 128 KiB on a FUSE mount: one or two requests in flight, so each round trip to
# the share stalls a sequential reader. 1 MiB keeps several in flight (measured over the 9p-like
# emulator: 220 MiB/s at 128 KiB, 315 MiB/s at 1 MiB, the share's own speed).
READ_AHEAD_KIB = 1024


def set_read_ahead(mountpoint: str, kib: int) -> None:
    """Set the kernel's read-ahead for the mount (its backing device info); needs root, else skipped."""
    device = None
    for point, _, _, dev in _mount_devices():
        if point == mountpoint:  # already absolute and real: a lstat here would wait on our own loop
            device = dev  # the last one is the one on top
    if device is None:
        return
    try:
        with open(f"/sys/class/bdi/{device}/read_ahead_kb", "w") as f:
            f.write(f"{kib}\n")
    except OSError as e:
        log.info("read-ahead left at the kernel's default: %s", e)


READY_FILE_ENV = "FSBRIDGE_READY_FILE"  # start_background's: created once the mount is fully set up


async def _after_init(initialized: Callable[[], bool], mountpoint: str, read_ahead_kib: int) -> None:
    """Once the kernel's INIT exchange is done: set the read-ahead, then say the mount is ready.

    The kernel sets a FUSE mount's read-ahead while it processes the INIT reply, and a file keeps the
    read-ahead it was opened with; so ours is set after INIT, and a background start returns only after
    that (a reader that opens a file at once would otherwise read in 128 KiB requests)."""
    import trio

    deadline = trio.current_time() + 30
    while not initialized() and trio.current_time() < deadline:
        await trio.sleep(0.005)
    if not initialized():
        log.error("the kernel sent no INIT within 30 s; not reporting the mount as ready")
        return
    if read_ahead_kib:
        await trio.to_thread.run_sync(set_read_ahead, mountpoint, read_ahead_kib)
    ready = os.environ.get(READY_FILE_ENV)
    if ready:
        try:
            os.close(os.open(ready, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        except OSError as e:
            log.info("could not signal readiness through %s: %s", ready, e)


def _mount_devices(mountinfo: str = "/proc/self/mountinfo") -> list[tuple[str, str, str, str]]:
    """(mount point, fstype, source, major:minor) for every mount."""
    out = []
    try:
        with open(mountinfo, "rb") as f:
            for line in f:
                fields = line.split()
                sep = fields.index(b"-")
                point = fields[4].decode("unicode_escape").encode("latin-1").decode(errors="surrogateescape")
                out.append((point, fields[sep + 1].decode(), fields[sep + 2].decode(errors="replace"),
                            fields[2].decode()))
    except OSError:
        pass
    return out


def serve_forever(ops: object, mountpoint: str, *, fsname: str, max_tasks: int = 64,
                  read_ahead_kib: int = 0) -> None:
    """Mount and serve until unmounted or signalled (runs in the foreground)."""
    import pyfuse3
    import trio

    options = set(pyfuse3.default_options)
    options |= {f"fsname={fsname}", f"subtype={fsname}"}
    if os.geteuid() == 0:
        options.add("allow_other")
    os.umask(0)  # the kernel applied the caller's umask already
    real_mountpoint = os.path.realpath(mountpoint)  # before mounting: afterwards a lstat would need our loop
    try:
        pyfuse3.init(ops, mountpoint, options)
    except RuntimeError as e:
        raise MountError(f"could not mount {mountpoint}: {e}", reason="mount-failed") from None

    initialized = False
    ops_init = ops.init  # type: ignore[attr-defined]

    def init() -> None:  # pyfuse3 calls it while answering the kernel's INIT (init must not raise)
        nonlocal initialized
        ops_init()
        initialized = True

    ops.init = init  # type: ignore[attr-defined]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signals, nursery.cancel_scope)
            nursery.start_soon(_after_init, lambda: initialized, real_mountpoint, read_ahead_kib)
            await pyfuse3.main(min_tasks=4, max_tasks=max_tasks)
            nursery.cancel_scope.cancel()

    clean = False
    try:
        trio.run(main)
        clean = True
    finally:
        if not clean:
            log.error("the filesystem loop failed; leaving %s mounted (fusermount3 -u clears it)", mountpoint)
        pyfuse3.close(unmount=clean)


async def _stop_on_signals(scope: object) -> None:
    import pyfuse3
    import trio

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("signal %d: unmounting", signum)
            pyfuse3.terminate()
            return


def log_path_for(mountpoint: str) -> str:
    folder = os.path.join(tempfile.gettempdir(), f"fsbridge-{os.getuid()}")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    name = os.path.abspath(mountpoint).strip("/").replace("/", "_") or "root"
    return os.path.join(folder, f"mount-{name}.log")


def start_background(argv: Sequence[str], mountpoint: str, *, timeout: float = 30.0) -> int:
    """Run `argv` (a --foreground mount command) detached; return its pid once the mount is live."""
    log_file = log_path_for(mountpoint)
    ready = os.path.join(os.path.dirname(log_file), f"ready-{os.getpid()}-{time.monotonic_ns()}")
    with open(log_file, "ab") as log_out:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log_out, stderr=log_out,
                                start_new_session=True, close_fds=True, env={**os.environ, READY_FILE_ENV: ready})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(ready) and os.path.ismount(mountpoint):
            os.unlink(ready)
            return proc.pid
        code = proc.poll()
        if code is not None:
            _remove_quietly(ready)
            raise MountError(_tail_error(log_file) or f"the mount process exited with status {code}",
                             reason="mount-failed")
        time.sleep(0.02)
    proc.terminate()
    _remove_quietly(ready)
    raise MountError(f"{mountpoint} was not mounted within {timeout:.0f} s; see {log_file}",
                     reason="mount-timeout")


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _tail_error(log_file: str) -> str:
    try:
        with open(log_file, encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f.readlines()[-20:] if line.strip()]
    except OSError:
        return ""
    for line in reversed(lines):
        if line.startswith("Error:"):
            return line[len("Error:"):].strip()
    return lines[-1] if lines else ""


def unmount(mountpoint: str, *, timeout: float = 10.0) -> None:
    path = os.path.abspath(mountpoint)
    if not os.path.ismount(path):
        raise MountError(f"{path} is not mounted", reason="not-mounted")
    if not (mount_type(path) or "").startswith("fuse"):
        raise MountError(f"{path} is not a FUSE mount; fsbridge did not mount it", reason="not-fsbridge")
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    cmd = [tool, "-u", path] if tool else ["umount", path]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip()
        if "busy" in message.lower():
            raise MountError(f"{path} is busy: a process has a file open or its working directory there "
                             "(see: fuser -vm " + path + ")", reason="busy")
        raise MountError(f"could not unmount {path}: {message}", reason="umount-failed")
    deadline = time.monotonic() + timeout
    while os.path.ismount(path) and time.monotonic() < deadline:
        time.sleep(0.02)


def configure_logging(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def mount_bridge(mountpoint: str, roots: list[tuple[str, str]], *, cache: object, threads: int) -> None:
    """Serve the cached bridge at `mountpoint` in the foreground until unmounted."""
    from fsbridge.fs.backing import Backing
    from fsbridge.fs.cache import CacheConfig
    from fsbridge.fs.operations import BridgeOperations, KernelInvalidator
    from fsbridge.fs.tree import BridgeTree

    assert isinstance(cache, CacheConfig)
    tree = BridgeTree(roots, cache=cache, backing=Backing(threads), kernel=KernelInvalidator())
    try:
        serve_forever(BridgeOperations(tree), mountpoint, fsname="fsbridge", read_ahead_kib=READ_AHEAD_KIB)
    finally:
        tree.close()


def mount_emulator(source: str, mountpoint: str, profile: object, *, threads: int) -> None:
    """Serve SOURCE at `mountpoint` as a slow share (see fsbridge.emulator)."""
    from fsbridge.emulator import Profile, SlowWire, emulated_operations
    from fsbridge.fs.backing import Backing
    from fsbridge.fs.cache import CacheConfig
    from fsbridge.fs.operations import BridgeOperations
    from fsbridge.fs.tree import BridgeTree

    assert isinstance(profile, Profile)
    # The source is a local folder: its syscalls are fast, so they run inline; the modelled round trip
    # is the wire's delay, which runs concurrently.
    tree = BridgeTree([("/", source)], cache=CacheConfig.disabled(), backing=Backing(threads, inline=True))
    ops_cls = emulated_operations(BridgeOperations, SlowWire(profile))
    try:
        serve_forever(ops_cls(tree, direct_io=True), mountpoint, fsname="fsbridge-emulate", max_tasks=256)
    finally:
        tree.close()


def spawn_argv(spec: dict) -> list[str]:
    """The command that serves `spec` (a JSON-able dict) in the foreground, for start_background."""
    import json

    return [sys.executable, "-m", "fsbridge.fs.mount", json.dumps(spec)]


def serve_spec(spec: dict) -> None:
    """Serve a mount described by spawn_argv's spec: {"kind": "bridge"|"emulate", ...}."""
    configure_logging(bool(spec.get("debug")))
    if spec["kind"] == "bridge":
        from fsbridge.fs.cache import CacheConfig

        roots = [(exposed, backing) for exposed, backing in spec["roots"]]
        mount_bridge(spec["mountpoint"], roots, cache=CacheConfig(**spec["cache"]), threads=spec["threads"])
    else:
        from fsbridge.emulator import Profile

        mount_emulator(spec["source"], spec["mountpoint"], Profile(**spec["profile"]), threads=spec["threads"])


if __name__ == "__main__":
    import json

    try:
        serve_spec(json.loads(sys.argv[1]))
    except MountError as e:
        print(f"Error: {e.message}", file=sys.stderr)
        sys.exit(1)
