"""Helpers for the API tests: real `fsbridge serve` processes on real sockets, the CLI in subprocesses,
and the fixture archives with the ids podman reports for them.

A server is started with the installed console script, as a user would; `start` returns once its socket
accepts connections (failing at once if the process died), and teardown stops it with SIGTERM and checks
that it removed its unix socket and logged no traceback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

FSBRIDGE = str(Path(sys.executable).with_name("fsbridge"))
FIXTURES = Path("/work/shared/fixtures/images")
if not FIXTURES.is_dir():  # the fixtures next to the checkout
    FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "images"

needs_fixtures = pytest.mark.skipif(
    not (FIXTURES / "EXPECTED.tsv").is_file(),
    reason=f"the podman-made fixture archives are not at {FIXTURES}",
)


def expected_images() -> dict[str, dict[str, set[str]]]:
    """EXPECTED.tsv as {archive file name: {image id: {names}}}."""
    table: dict[str, dict[str, set[str]]] = {}
    for line in (FIXTURES / "EXPECTED.tsv").read_text().splitlines():
        if not line.strip():
            continue
        name, pairs = line.split("\t", 1)
        images: dict[str, set[str]] = {}
        for pair in pairs.split(";"):
            if pair.strip():
                image_id, image_name = pair.split()
                images.setdefault(image_id, set()).add(image_name)
        table[name] = images
    return table


def as_table(images: list[dict]) -> dict[str, set[str]]:
    """[{"id", "names"}, ...] as {id: {names}}."""
    out: dict[str, set[str]] = {}
    for image in images:
        out.setdefault(image["id"], set()).update(image["names"])
    return out


def short_dir(prefix: str = "fsb-") -> Path:
    """A short folder under /tmp: a unix socket path must stay under 108 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


class Server:
    """One `fsbridge serve` process."""

    def __init__(
        self, argv: list[str], log: Path, socket_path: Path | None, env: dict[str, str] | None
    ) -> None:
        self.argv = argv
        self.log_path = log
        self.socket_path = socket_path
        self.url = f"unix:{socket_path}" if socket_path else ""
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop() or kill()
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        self._wait_ready()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                self._log.close()
                raise RuntimeError(f"fsbridge serve exited with {self.proc.returncode}:\n{self.log()}")
            if self.socket_path is not None:
                probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    probe.connect(str(self.socket_path))
                    return
                except OSError:
                    pass
                finally:
                    probe.close()
            else:
                found = re.search(r"serving on tcp:([^ ]+):(\d+)", self.log())
                if found:
                    host, port = found.group(1), int(found.group(2))
                    with socket.create_connection((host, port), timeout=5):
                        pass
                    self.url = f"http://{host}:{port}"
                    return
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"fsbridge serve did not listen within 20 s:\n{self.log()}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: the server dies without cleaning up (its socket file stays)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._log.close()

    def stop(self) -> None:
        """SIGTERM, then check the clean exit: socket removed, no traceback."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"fsbridge serve ignored SIGTERM:\n{self.log()}") from None
            self._log.close()
            assert self.proc.returncode == 0, self.log()
            if self.socket_path is not None:
                assert not os.path.lexists(self.socket_path), "the server left its socket file behind"
        if not self._log.closed:
            self._log.close()
        assert "Traceback" not in self.log(), self.log()


class Servers:
    """Starts servers for one test and stops them all in teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.sockets = short_dir()
        self.started: list[Server] = []
        self._n = 0

    def start(
        self,
        *args: str,
        store: Path | None = None,
        maps: dict[Path | str, Path | str] | None = None,
        listen: str | None = None,
        env: dict[str, str] | None = None,
        socket_name: str | None = None,
    ) -> Server:
        """`fsbridge serve` with --store (default tmp_path/store) and --map HOST=BACKING for each of maps;
        on a fresh unix socket unless `listen` is given."""
        self._n += 1
        socket_path = None
        if listen is None:
            socket_path = self.sockets / (socket_name or f"s{self._n}.sock")
            listen = f"unix:{socket_path}"
        elif listen.startswith("unix:"):
            socket_path = Path(listen[len("unix:") :])
        argv = [FSBRIDGE, "serve", "--listen", listen, "--store", str(store or self.tmp_path / "store")]
        for host, backing in (maps or {}).items():
            argv += ["--map", f"{host}={backing}"]
        argv += list(args)
        server = Server(
            argv, self.tmp_path / f"serve{self._n}.log", socket_path, {**os.environ, **(env or {})}
        )
        self.started.append(server)
        return server

    def close(self) -> None:
        errors = []
        for server in reversed(self.started):
            try:
                server.stop()
            except AssertionError as e:
                errors.append(e)
        shutil.rmtree(self.sockets, ignore_errors=True)
        if errors:
            raise errors[0]


def running_servers(tmp_path: Path) -> Iterator[Servers]:
    """The body of each test module's `servers` fixture: a Servers, all stopped (and checked) at the end."""
    s = Servers(tmp_path)
    try:
        yield s
    finally:
        s.close()


def cli(
    *args: str, url: str | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `fsbridge ARGS...` (with --url URL appended when given)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FSBRIDGE_")}
    full_env.update(env or {})
    argv = [FSBRIDGE, *args]
    if url is not None:
        argv += ["--url", url]
    return subprocess.run(argv, check=False, capture_output=True, text=True, env=full_env, timeout=timeout)


def cli_parallel(*calls: tuple[list[str], str | None]) -> list[subprocess.CompletedProcess[str]]:
    """Run independent `fsbridge` commands, each (args, url), at the same time; results in order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(calls) or 1) as pool:
        return list(pool.map(lambda call: cli(*call[0], url=call[1]), calls))


def cli_json(*args: str, url: str | None = None, env: dict[str, str] | None = None) -> object:
    result = cli(*args, "--json", url=url, env=env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


def check_failed(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit status 1, a one-line error naming each fragment, and no traceback."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


def store_images(store: Path) -> dict[str, set[str]]:
    """What the store at `store` holds, read directly (not through a server)."""
    from fsbridge.store import ImageStore

    return {image.id: set(image.names) for image in ImageStore(store).images()}


def store_problems(store: Path) -> list[str]:
    from fsbridge.store import ImageStore

    return ImageStore(store).check()


Waiter = Callable[[], bool]


def wait_for(condition: Waiter, timeout: float = 10, what: str = "a condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


# ----------------------------------------------------------------------------------------------- the spec

SPEC_PATH = Path(__file__).resolve().parents[1] / "api" / "openapi.yaml"


def _strict(node: object) -> object:
    """The spec with `unevaluatedProperties: false` on every object schema that lists its properties:
    a field the server sends must be documented."""
    if isinstance(node, dict):
        out = {key: _strict(value) for key, value in node.items()}
        if (
            out.get("type") == "object"
            and isinstance(out.get("properties"), dict)
            and "additionalProperties" not in out
        ):
            out["unevaluatedProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(item) for item in node]
    return node


def load_spec() -> tuple[dict, object]:
    """(api/openapi.yaml, a referencing.Registry holding it as urn:fsbridge:openapi and its strict
    variant as urn:fsbridge:openapi-strict)."""
    import yaml
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    spec = yaml.safe_load(SPEC_PATH.read_text())
    registry = Registry().with_resources(
        [
            ("urn:fsbridge:openapi", Resource.from_contents(spec, default_specification=DRAFT202012)),
            (
                "urn:fsbridge:openapi-strict",
                Resource.from_contents(_strict(spec), default_specification=DRAFT202012),
            ),
        ]
    )
    return spec, registry


def spec_validator(schema_name: str, *, strict: bool = True):
    """A validator for components/schemas/NAME of api/openapi.yaml (strict: no undocumented property)."""
    from jsonschema import Draft202012Validator

    base = "urn:fsbridge:openapi-strict" if strict else "urn:fsbridge:openapi"
    return Draft202012Validator(
        {"$ref": f"{base}#/components/schemas/{schema_name}"}, registry=load_spec()[1]
    )
