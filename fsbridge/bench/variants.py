"""The variants a scenario compares: how each is set up, what each run executes, and how it is torn down.

Everything here goes through command lines: `fsbridge emulate`, `fsbridge mount`, `fsbridge serve`,
`fsbridge load`, `fsbridge stats`, `podman`, `curl`, and the workloads module in a fresh interpreter.

    the share   the "host" folder (fixtures on the local disk) as the VM would see it over 9p/virtiofs:
                `fsbridge emulate SRC SHARE --profile P`, or a real share given by path (the fixtures
                are copied into a temporary folder on it)
    local       the fixtures on the local disk                                   (the floor)
    raw         the fixtures through the share
    cold        a fresh `fsbridge mount MNT --map /bench=SHARE` for every run, unmounted after it
    warm        one `fsbridge mount` kept for the scenario (TTLs of a day, so that the slow runs of other
                variants interleaved with it do not expire its facts), warmed by an untimed run of the
                workload before its first run and again after anything dropped the page cache
    load-image  floor (sha256 of the archive), sink (curl to a discarding unix-socket server), upload,
                path-raw, path-mount (`fsbridge load` against `fsbridge serve`, builtin store)
    peer-podman podman-local, podman-remote (`podman --remote load`, the REST upload), fsbridge-path and
                fsbridge-path-mount (`fsbridge serve --backend podman`), all on one podman storage
                (vfs driver, its own --root/--runroot, `podman system service` on a unix socket)
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsbridge.bench.fixtures import ARCHIVE_TAG, FIXED_MTIME, make_archive, make_big_file, make_tree, tree_key
from fsbridge.bench.guest_share import GuestServer, GuestShareSpec, parse_guest_share
from fsbridge.bench.procs import BenchError, Finished, Fsbridge, Mounted, Registry, Service
from fsbridge.bench.sampler import vm_hwm_bytes
from fsbridge.bench.scenarios import Case

WARM_TTL_S = 86400.0
WORKLOADS_MODULE = "fsbridge.bench.workloads"


# --- the bench's surroundings ---------------------------------------------------------------------------


@dataclass
class Bench:
    """What every variant shares: the fsbridge command, the work folder, the share, the registry."""

    fsbridge: Fsbridge
    registry: Registry
    work: Path  # the bench's temporary folder; everything it makes is below it
    src: Path  # the "host" folder: fixtures on the local disk
    share: "Share"
    env: dict[str, str]  # environment of every child (TMPDIR inside the work folder)
    python: str = sys.executable
    drop_generation: int = 0  # how many times the page cache was dropped
    drop_permitted: bool | None = None
    podman_storage: "PodmanStorage | None" = None
    counter: int = 0

    def scratch(self, name: str) -> Path:
        self.counter += 1
        path = self.work / f"{name}-{self.counter}"
        path.mkdir(parents=True)
        return path

    def drop_caches(self) -> bool:
        """Write back and drop the page cache, dentries and inodes (needs root); False where not permitted."""
        if self.drop_permitted is False:
            return False
        try:
            os.sync()
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        except OSError:
            self.drop_permitted = False
            return False
        self.drop_permitted = True
        self.drop_generation += 1
        return True

    def workload_argv(self, *args: str) -> list[str]:
        return [self.python, "-m", WORKLOADS_MODULE, *args]


class Share:
    """The slow share: `root` shows the fixtures of `bench.src`."""

    kind = "share"
    root: Path
    pid: int | None = None
    mounted: Mounted | None = None

    def start(self, bench: Bench) -> None:
        raise NotImplementedError

    def publish(self, bench: Bench, rel: str) -> None:
        """Make `bench.src / rel` visible under `root`."""

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError


class EmulatedShare(Share):
    kind = "emulate"

    def __init__(self, spec: str) -> None:
        name, _, extra = spec.partition(",")
        self.profile = name or "9p-virtio"
        self.options: list[str] = []
        for item in filter(None, extra.split(",")):
            key, sep, value = item.partition("=")
            if key not in ("latency-us", "bandwidth-mib") or not sep:
                raise BenchError(
                    f"--share emulate:{spec}: unknown option {item!r} (latency-us=N, bandwidth-mib=N)"
                )
            self.options += [f"--{key}", value]

    def start(self, bench: Bench) -> None:
        self.root = bench.work / "share"
        self.mounted = bench.fsbridge.mount(
            "emulate", self.root, str(bench.src), "--profile", self.profile, *self.options
        )
        self.pid = self.mounted.pid

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "emulate",
            "profile": self.profile,
            "options": self.options,
            "command": " ".join(["fsbridge emulate SRC SHARE --profile", self.profile, *self.options]),
        }


class PathShare(Share):
    """A real share (9p, virtiofs, drvfs) given by path: the fixtures are copied into a temporary folder."""

    kind = "path"

    def __init__(self, path: str) -> None:
        self.given = Path(path)
        if not self.given.is_dir():
            raise BenchError(f"--share path:{path}: no such folder")

    def start(self, bench: Bench) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="fsbridge-bench-", dir=self.given))
        bench.registry.push(f"folder {self.root}", lambda: shutil.rmtree(self.root, ignore_errors=True))

    def publish(self, bench: Bench, rel: str) -> None:
        source, target = bench.src / rel, self.root / rel
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
            os.utime(target, (FIXED_MTIME, FIXED_MTIME))

    def describe(self) -> dict[str, Any]:
        return {"kind": "path", "path": str(self.given), "folder": str(getattr(self, "root", ""))}


class GuestServeShare(Share):
    """A qemu guest's real 9p or virtiofs share of `bench.src` (seen in the guest at the same path), for the
    load scenarios run from the host; the file-system scenarios run inside a guest of their own
    (fsbridge/bench/guest_share.py). The guest with `fsbridge serve` boots when a variant first needs it."""

    kind = "qemu"

    def __init__(self, spec: GuestShareSpec) -> None:
        self.spec = spec
        self.server: GuestServer | None = None
        self.failed: str | None = None
        self.deadline_s = 3600.0

    def start(self, bench: Bench) -> None:
        self.root = bench.src
        self.bench = bench

    def guest_server(self) -> GuestServer:
        if self.failed is not None:  # one guest that did not come up is enough: later variants fail at once
            raise BenchError(self.failed)
        if self.server is None:
            bench = self.bench
            try:
                self.server = GuestServer(self.spec, bench.src, bench.scratch("guest-serve"), bench.registry,
                                          bench.env, bench.fsbridge.argv, self.deadline_s)
            except (BenchError, OSError) as e:
                self.failed = f"the guest with fsbridge serve did not come up: {e}"
                raise BenchError(self.failed) from None
        return self.server

    def describe(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"kind": "qemu", "share": self.spec.label, "memory_mb": self.spec.memory_mb}
        if self.server is not None:
            facts.update(self.server.describe())
        return facts


def make_share(spec: str) -> Share:
    guest = parse_guest_share(spec)
    if guest is not None:
        return GuestServeShare(guest)
    kind, sep, rest = spec.partition(":")
    if kind == "emulate":
        return EmulatedShare(rest)
    if kind == "path" and rest:
        return PathShare(rest)
    raise BenchError(
        f"--share {spec}: expected emulate:PROFILE[,latency-us=N,bandwidth-mib=N], path:/mnt/share, "
        "qemu-9p:MODE or qemu-virtiofs[:MODE]"
    )


# --- fixtures on the share ---------------------------------------------------------------------------------


@dataclass
class Fixture:
    rel: str  # relative to bench.src (and share.root)
    list_file: Path | None = None  # the tree's sorted file list (local)
    facts: dict[str, Any] = field(default_factory=dict)


class Fixtures:
    """Generated once per parameter set and bench run, shared by every scenario that needs the same."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.made: dict[str, Fixture] = {}  # fixture key -> fixture

    def for_case(self, case: Case) -> Fixture:
        spec, p = case.scenario.spec, case.params
        if spec.fixture == "tree":
            files = p["files"]
            dirs = max(1, files // max(1, p["files_per_dir"]))
            return self._get(
                tree_key(files, dirs, p["mean_file_bytes"]),
                lambda path: self._tree(path, files, dirs, p["mean_file_bytes"]),
            )
        if spec.fixture == "bigfile":
            return self._get(f"big-{p['size_mib']}m", lambda path: self._big(path, p["size_mib"]), file=True)
        if spec.fixture == "archive":
            return self._get(
                f"archive-{p['size_mib']}m-{p['layers']}l.tar",
                lambda path: make_archive(path, p["size_mib"], p["layers"]),
                file=True,
            )
        return self._get("scratch", lambda path: path.mkdir(parents=True, exist_ok=True) or {})

    def _tree(self, path: Path, files: int, dirs: int, mean: int) -> dict[str, Any]:
        paths = make_tree(path, files, dirs, mean)
        list_file = self.bench.work / "lists" / (path.name + ".txt")
        list_file.parent.mkdir(exist_ok=True)
        list_file.write_text("".join(p + "\n" for p in paths))
        return {"files": files, "dirs": dirs, "mean_file_bytes": mean, "list_file": str(list_file)}

    @staticmethod
    def _big(path: Path, mib: int) -> dict[str, Any]:
        make_big_file(path, mib)
        return {"bytes": mib * 1024 * 1024}

    def _get(self, key: str, make: Any, file: bool = False) -> Fixture:
        if key in self.made:
            return self.made[key]
        path = self.bench.src / key
        facts = make(path) or {}
        self.bench.share.publish(self.bench, key)
        list_file = Path(facts["list_file"]) if "list_file" in facts else None
        fixture = Fixture(key, list_file, facts)
        self.made[key] = fixture
        return fixture


# --- variants ----------------------------------------------------------------------------------------------


@dataclass
class Observation:
    """`fsbridge stats` of the mounts a run touches, before it."""

    mount: dict[str, Any] | None = None
    share: dict[str, Any] | None = None


def _counters(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any] | None:
    """The difference of two `fsbridge stats --json` answers (before None: everything since the mount)."""
    if after is None:
        return None
    b = before or {}

    def delta(key: str) -> dict[str, int]:
        now, then = after.get(key) or {}, b.get(key) or {}
        return {k: v - then.get(k, 0) for k, v in now.items() if v - then.get(k, 0)}

    hits = sum(c.get("hits", 0) for c in (after.get("cache") or {}).values())
    misses = sum(c.get("misses", 0) for c in (after.get("cache") or {}).values())
    hits -= sum(c.get("hits", 0) for c in (b.get("cache") or {}).values())
    misses -= sum(c.get("misses", 0) for c in (b.get("cache") or {}).values())
    requests = delta("requests")
    return {
        "backing_calls": after.get("backing_calls_total", 0) - b.get("backing_calls_total", 0),
        "backing_calls_by_op": delta("backing_calls"),
        "requests": sum(requests.values()),
        "requests_by_op": requests,
        "cache_hits": hits,
        "cache_misses": misses,
        "inodes": after.get("inodes"),
    }


class Variant:
    """One way of running a scenario's workload. Subclasses fill in the hooks."""

    timing = "workload"  # "workload": the workload's own clock; "wall": the command's wall time
    drops_caches = True  # the scenario's drop_caches applies to it
    warm = False

    def __init__(self, name: str, case: Case, bench: Bench, fixture: Fixture) -> None:
        self.name = name
        self.case = case
        self.bench = bench
        self.fixture = fixture
        self.error: str | None = None  # set when setup failed or a run failed

    def setup(self) -> None:
        """Once per case, untimed."""

    def before_run(self) -> dict[str, Any]:
        """Before every run, untimed: what was prepared (a fresh mount, an emptied store)."""
        return {}

    def needs_priming(self) -> bool:
        return False

    def primed(self) -> None:
        pass

    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return self.bench.env

    def pids(self) -> dict[str, int | None]:
        return {}

    def observe(self) -> Observation:
        return Observation()

    def counters(self, before: Observation) -> dict[str, Any]:
        return {}

    def after_run(self) -> dict[str, Any]:
        """After every run, untimed (a cold mount's peak memory, then its unmount)."""
        return {}

    def check(self, finished: Finished) -> dict[str, Any]:
        """The run's own figures from its output; raise BenchError when the output shows it failed."""
        if self.timing == "wall":
            return {"elapsed_s": finished.wall_s}
        try:
            result = json.loads(finished.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise BenchError(f"the workload printed no result: {finished.error_text()}") from None
        if not isinstance(result, dict) or not isinstance(result.get("elapsed_s"), (int, float)):
            raise BenchError(f"the workload printed no time: {finished.stdout.strip()[-200:]}")
        if result.get("errors"):
            raise BenchError(f"the workload met {result['errors']} errors")
        return result

    def teardown(self) -> None:
        """Once per case."""


class FsVariant(Variant):
    """local / raw / cold / warm: the workload module run against `root()`."""

    def root(self) -> Path:
        raise NotImplementedError

    def argv(self) -> list[str]:
        p, w, root = self.case.params, self.case.scenario.workload, self.root()
        target = root / self.fixture.rel
        if w == "walk":
            return self.bench.workload_argv("walk", str(target))
        if w in ("statlist", "readtree"):
            assert self.fixture.list_file is not None
            return self.bench.workload_argv(w, str(target), str(self.fixture.list_file))
        if w == "read":
            return self.bench.workload_argv("read", str(target))
        if w == "writetree":
            dirs = max(1, p["files"] // max(1, p["files_per_dir"]))
            return self.bench.workload_argv(
                "writetree",
                str(target),
                "--files",
                str(p["files"]),
                "--dirs",
                str(dirs),
                "--bytes",
                str(p["file_bytes"]),
            )
        raise BenchError(f"workload {w} has no file-system form")

    def share_pid(self) -> dict[str, int | None]:
        return {"share": self.bench.share.pid} if self.bench.share.pid else {}


class LocalVariant(FsVariant):
    def root(self) -> Path:
        return self.bench.src


class RawVariant(FsVariant):
    def root(self) -> Path:
        return self.bench.share.root

    def pids(self) -> dict[str, int | None]:
        return self.share_pid()

    def observe(self) -> Observation:
        share = self.bench.share.mounted
        if share is None:
            return Observation()
        return Observation(share=self.bench.fsbridge.stats(share.path)[0])

    def counters(self, before: Observation) -> dict[str, Any]:
        share = self.bench.share.mounted
        if share is None:
            return {}
        return {"share": _counters(before.share, self.bench.fsbridge.stats(share.path)[0])}


class MountVariant(FsVariant):
    """An fsbridge mount over the share: fresh for every run (cold) or kept and warmed (warm)."""

    def __init__(self, name: str, case: Case, bench: Bench, fixture: Fixture) -> None:
        super().__init__(name, case, bench, fixture)
        self.warm = name == "warm"
        self.drops_caches = not self.warm
        self.mountpoint = bench.work / "mnt" / f"{case.scenario.name}-{name}-{bench.counter}"
        bench.counter += 1
        self.mounted: Mounted | None = None
        self.primed_generation = -1

    def _mount(self) -> None:
        options = ["--map", f"/bench={self.bench.share.root}"]
        if self.warm:
            ttl = f"{WARM_TTL_S:g}"
            options += ["--entry-ttl", ttl, "--attr-ttl", ttl, "--dir-ttl", ttl, "--negative-ttl", ttl]
        self.mounted = self.bench.fsbridge.mount("mount", self.mountpoint, *options)

    def root(self) -> Path:
        return self.mountpoint / "bench"

    def setup(self) -> None:
        if self.warm:
            self._mount()

    def needs_priming(self) -> bool:
        return self.warm and self.primed_generation != self.bench.drop_generation

    def primed(self) -> None:
        self.primed_generation = self.bench.drop_generation

    def before_run(self) -> dict[str, Any]:
        if self.warm:
            return {}
        self._mount()
        return {"fresh_mount": True}

    def pids(self) -> dict[str, int | None]:
        return {"mount": self.mounted.pid if self.mounted else None, **self.share_pid()}

    def observe(self) -> Observation:
        share = self.bench.share.mounted
        points = [self.mountpoint] + ([share.path] if share else [])
        if not self.warm:  # a fresh mount: everything it counts is this run's
            return Observation(share=self.bench.fsbridge.stats(share.path)[0] if share else None)
        got = self.bench.fsbridge.stats(*points)
        return Observation(mount=got[0], share=got[1] if share else None)

    def counters(self, before: Observation) -> dict[str, Any]:
        share = self.bench.share.mounted
        points = [self.mountpoint] + ([share.path] if share else [])
        got = self.bench.fsbridge.stats(*points)
        out = {"mount": _counters(before.mount, got[0])}
        if share:
            out["share"] = _counters(before.share, got[1])
        return out

    def after_run(self) -> dict[str, Any]:
        facts = {"mount_vmhwm_bytes": vm_hwm_bytes(self.mounted.pid if self.mounted else None)}
        if not self.warm and self.mounted is not None:
            self.mounted.unmount()
            self.mounted = None
        return facts

    def teardown(self) -> None:
        if self.mounted is not None:
            self.mounted.unmount()
            self.mounted = None


# --- image loads -------------------------------------------------------------------------------------------


class ArchiveVariant(Variant):
    timing = "wall"

    @property
    def archive(self) -> Path:
        return self.bench.src / self.fixture.rel

    def host_map(self) -> str:
        return f"{self.bench.src}={self.bench.share.root}"

    def fresh_mount(self, mountpoint: Path) -> Mounted:
        return self.bench.fsbridge.mount("mount", mountpoint, "--map", self.host_map())


class FloorVariant(ArchiveVariant):
    timing = "workload"

    def argv(self) -> list[str]:
        return self.bench.workload_argv("hash", str(self.archive))


class SinkVariant(ArchiveVariant):
    def setup(self) -> None:
        folder = self.bench.scratch("sink")
        self.socket = folder / "sink.sock"
        self.service = Service(
            "the upload sink",
            self.bench.workload_argv("sink", str(self.socket)),
            registry=self.bench.registry,
            log_path=folder / "sink.log",
            env=self.bench.env,
        )
        self.service.wait_ready(lambda: _connectable(self.socket))

    def argv(self) -> list[str]:
        curl = shutil.which("curl") or "curl"
        return [
            curl,
            "-sS",
            "--fail",
            "-o",
            "/dev/null",
            "-T",
            str(self.archive),
            "--unix-socket",
            str(self.socket),
            "http://sink/",
        ]

    def pids(self) -> dict[str, int | None]:
        return {"server": self.service.pid}

    def teardown(self) -> None:
        self.service.close()


def _connectable(path: Path) -> bool:
    import socket

    if not path.exists():
        return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


class ServerVariant(ArchiveVariant):
    """`fsbridge load` against its own `fsbridge serve`: upload, path-raw, path-mount, fsbridge-path*."""

    backend = "builtin"

    def __init__(self, name: str, case: Case, bench: Bench, fixture: Fixture) -> None:
        super().__init__(name, case, bench, fixture)
        self.upload = name == "upload"
        self.through_mount = name.endswith("-mount")
        self.mounted: Mounted | None = None

    def server_env(self) -> dict[str, str]:
        return self.bench.env

    def setup(self) -> None:
        folder = self.bench.scratch(f"serve-{self.name}")
        self.socket = folder / "api.sock"
        self.mountpoint = folder / "mnt"
        self.mountpoint.mkdir()
        argv = [
            *self.bench.fsbridge.argv,
            "serve",
            "--listen",
            f"unix:{self.socket}",
            "--store",
            str(folder / "store"),
            "--backend",
            self.backend,
            "--map",
            self.host_map(),
        ]
        if self.through_mount:
            argv += ["--mount", str(self.mountpoint)]
        self.service = Service(
            f"fsbridge serve ({self.name})",
            argv,
            registry=self.bench.registry,
            log_path=folder / "serve.log",
            env=self.server_env(),
        )
        self.service.wait_ready(lambda: _connectable(self.socket))
        self.client_env = dict(self.bench.env, FSBRIDGE_URL=f"unix:{self.socket}")

    def env(self) -> dict[str, str]:
        return self.client_env

    def remove_image(self) -> None:
        try:
            self.bench.fsbridge.run("rmi", ARCHIVE_TAG, env=self.client_env, timeout=120)
        except BenchError as e:
            if "image-unknown" not in str(e):  # not there: nothing to empty
                raise

    def before_run(self) -> dict[str, Any]:
        self.remove_image()
        facts: dict[str, Any] = {"image_removed": True}
        if self.through_mount:
            self.mounted = self.fresh_mount(self.mountpoint)
            facts["fresh_mount"] = True
        return facts

    def argv(self) -> list[str]:
        return [*self.bench.fsbridge.argv, "load", str(self.archive), "--json"] + (
            ["--upload"] if self.upload else []
        )

    def check(self, finished: Finished) -> dict[str, Any]:
        try:
            outcome = json.loads(finished.stdout)
        except ValueError:
            raise BenchError(f"fsbridge load printed no JSON: {finished.error_text()}") from None
        expected = "upload" if self.upload else "path"
        if outcome.get("via") != expected:
            why = outcome.get("refused") or outcome.get("path_refused") or ""
            raise BenchError(f"expected a load via {expected}, got via {outcome.get('via')} {why}".strip())
        return {
            "elapsed_s": finished.wall_s,
            "via": outcome.get("via"),
            "images": [i.get("id") for i in outcome.get("images", [])],
        }

    def pids(self) -> dict[str, int | None]:
        pids: dict[str, int | None] = {"server": self.service.pid}
        if not self.upload:
            pids.update({"share": self.bench.share.pid} if self.bench.share.pid else {})
        if self.mounted is not None:
            pids["mount"] = self.mounted.pid
        return pids

    def observe(self) -> Observation:
        share = self.bench.share.mounted
        if share is None or self.upload:
            return Observation()
        return Observation(share=self.bench.fsbridge.stats(share.path)[0])

    def counters(self, before: Observation) -> dict[str, Any]:
        share = self.bench.share.mounted
        points = ([self.mountpoint] if self.mounted else []) + (
            [share.path] if share and not self.upload else []
        )
        if not points:
            return {}
        got = self.bench.fsbridge.stats(*points)
        out: dict[str, Any] = {}
        if self.mounted:
            out["mount"] = _counters(None, got.pop(0))
        if share and not self.upload:
            out["share"] = _counters(before.share, got[0])
        return out

    def after_run(self) -> dict[str, Any]:
        facts = {"server_vmhwm_bytes": vm_hwm_bytes(self.service.pid)}
        if self.mounted is not None:
            facts["mount_vmhwm_bytes"] = vm_hwm_bytes(self.mounted.pid)
            self.mounted.unmount()
            self.mounted = None
        return facts

    def teardown(self) -> None:
        if self.mounted is not None:
            self.mounted.unmount()
            self.mounted = None
        service = getattr(self, "service", None)
        if service is not None:
            service.close()


# --- podman ------------------------------------------------------------------------------------------------


class PodmanStorage:
    """One isolated podman storage (vfs driver) for the bench, and its API service when a variant needs it."""

    def __init__(self, bench: Bench) -> None:
        podman = shutil.which("podman")
        if podman is None:
            raise BenchError("podman is not installed")
        folder = bench.scratch("podman")
        self.bench = bench
        self.argv = [
            podman,
            "--root",
            str(folder / "root"),
            "--runroot",
            str(folder / "run"),
            "--storage-driver",
            "vfs",
        ]
        self.folder = folder
        self.service: Service | None = None
        bench.registry.push("podman storage", self._reset)

    def _reset(self) -> None:
        import subprocess

        subprocess.run(
            [*self.argv, "system", "reset", "--force"],
            capture_output=True,
            timeout=120,
            env=self.bench.env,
            stdin=subprocess.DEVNULL,
        )

    def socket(self) -> Path:
        if self.service is None:
            sock = self.folder / "podman.sock"
            self.service = Service(
                "podman system service",
                [*self.argv, "system", "service", "--time", "0", f"unix://{sock}"],
                registry=self.bench.registry,
                log_path=self.folder / "service.log",
                env=self.bench.env,
            )
            self.service.wait_ready(lambda: _connectable(sock))
            self.sock = sock
        return self.sock

    def remove_image(self) -> None:
        import subprocess

        subprocess.run(
            [*self.argv, "rmi", "--force", ARCHIVE_TAG],
            capture_output=True,
            timeout=120,
            env=self.bench.env,
            stdin=subprocess.DEVNULL,
        )

    def version(self) -> str | None:
        import subprocess

        try:
            out = subprocess.run([self.argv[0], "--version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() or None


class PodmanVariant(ArchiveVariant):
    def setup(self) -> None:
        if self.bench.podman_storage is None:
            self.bench.podman_storage = PodmanStorage(self.bench)
        self.podman = self.bench.podman_storage
        if self.name == "podman-remote":
            self.sock = self.podman.socket()

    def before_run(self) -> dict[str, Any]:
        self.podman.remove_image()
        return {"image_removed": True}

    def argv(self) -> list[str]:
        if self.name == "podman-remote":
            return [
                self.podman.argv[0],
                "--remote",
                "--url",
                f"unix://{self.sock}",
                "load",
                "-i",
                str(self.archive),
            ]
        return [*self.podman.argv, "load", "-i", str(self.archive)]

    def check(self, finished: Finished) -> dict[str, Any]:
        if "Loaded image" not in finished.stdout + finished.stderr:
            raise BenchError(f"podman load reported no loaded image: {finished.error_text()}")
        return {"elapsed_s": finished.wall_s}

    def pids(self) -> dict[str, int | None]:
        if self.name == "podman-remote" and self.podman.service is not None:
            return {"podman-service": self.podman.service.pid}
        return {}


class GuestServerVariant(ServerVariant):
    """upload / path-raw against `fsbridge serve` in a qemu guest: the client here, the server across the
    virtual NIC, reading a path reference over the guest's real share."""

    def setup(self) -> None:
        share = self.bench.share
        assert isinstance(share, GuestServeShare)
        self.guest = share.guest_server()
        self.client_env = dict(self.bench.env, FSBRIDGE_URL=self.guest.url,
                               FSBRIDGE_TOKEN_FILE=str(self.guest.token_file))

    def before_run(self) -> dict[str, Any]:
        self.remove_image()
        return {"image_removed": True}

    def pids(self) -> dict[str, int | None]:
        return {"guest": self.guest.pid}  # the guest runner and its qemu (the server runs inside)

    # a plain variant's: no share or mount stats to read here, and the server's process is in the guest
    observe = Variant.observe
    counters = Variant.counters
    after_run = Variant.after_run

    def teardown(self) -> None:
        pass  # the guest serves every load case; the registry ends it with the bench


class FsbridgePodmanVariant(ServerVariant):
    backend = "podman"

    def setup(self) -> None:
        if self.bench.podman_storage is None:
            self.bench.podman_storage = PodmanStorage(self.bench)
        self.podman = self.bench.podman_storage
        super().setup()

    def server_env(self) -> dict[str, str]:
        return dict(self.bench.env, FSBRIDGE_PODMAN=shlex.join(self.podman.argv))

    def remove_image(self) -> None:
        self.podman.remove_image()


def make_variant(name: str, case: Case, bench: Bench, fixture: Fixture) -> Variant:
    family = case.scenario.spec.family
    if family == "fs":
        cls: type[Variant] = {"local": LocalVariant, "raw": RawVariant}.get(name, MountVariant)
    elif family == "load" and isinstance(bench.share, GuestServeShare):
        cls = FloorVariant if name == "floor" else GuestServerVariant
    elif family == "load":
        cls = {"floor": FloorVariant, "sink": SinkVariant}.get(name, ServerVariant)
    else:
        cls = PodmanVariant if name.startswith("podman-") else FsbridgePodmanVariant
    return cls(name, case, bench, fixture)
