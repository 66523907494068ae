"""`fsbridge serve` as a process: its sockets and their modes, TCP tokens, concurrent clients, and a server
killed in the middle of an upload."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import stat
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_helpers import (
    FIXTURES,
    FSBRIDGE,
    Servers,
    as_table,
    check_failed,
    cli,
    cli_parallel,
    expected_images,
    needs_fixtures,
    running_servers,
    store_images,
    store_problems,
    wait_for,
)

from fsbridge.client import ApiClient, load_archive
from fsbridge.store import ImageStore

pytestmark = needs_fixtures

EXPECTED = expected_images() if (FIXTURES / "EXPECTED.tsv").is_file() else {}
APP_ID = "sha256:1f1291d3c9920b196f1819700aaa3771bae7ed4e010a5000f5323075bd3829e8"
BASE_ID = "sha256:1a7b31b3575cf52815b063aee8cd96fa92b4ceafab50ec8ddc7a2e7a373b486a"


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    yield from running_servers(tmp_path)


def serve_fails(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run `fsbridge serve ARGS` expecting it to refuse to start."""
    try:
        return subprocess.run(
            [FSBRIDGE, "serve", *args], check=False, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(f"fsbridge serve {' '.join(args)} started instead of refusing") from None


def token_file(path: Path, token: str = "s3cret-token-0123456789abcdef", mode: int = 0o600) -> Path:
    path.write_text(token + "\n")
    path.chmod(mode)
    return path


# ------------------------------------------------------------------------------- unix socket


def test_unix_socket_is_0600_and_removed_on_exit(servers, tmp_path: Path) -> None:
    server = servers.start()
    st = os.lstat(server.socket_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    with ApiClient(server.url) as client:
        info = client.info()
    assert info["api_version"] == 1
    assert info["backend"] == {"name": "builtin", "store": str(tmp_path / "store")}
    server.stop()
    assert not os.path.lexists(server.socket_path)


def test_stale_socket_is_replaced(servers) -> None:
    path = servers.sockets / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays; nothing listens: what a killed server leaves
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    server = servers.start(socket_name="stale.sock")
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    with ApiClient(server.url) as client:
        assert client.images() == []


def test_a_file_in_the_way_is_refused_and_kept(servers, tmp_path: Path) -> None:
    path = servers.sockets / "file.sock"
    path.write_text("not a socket")
    result = serve_fails("--listen", f"unix:{path}", "--store", str(tmp_path / "store"))
    check_failed(result, str(path), "is not a socket", "[address-in-use]")
    assert path.read_text() == "not a socket"  # neither replaced nor removed on the way out


def test_a_live_servers_socket_is_refused_and_kept(servers, tmp_path: Path) -> None:
    first = servers.start()
    result = serve_fails("--listen", first.url, "--store", str(tmp_path / "store2"))
    check_failed(result, "already listening", "[address-in-use]")
    with ApiClient(first.url) as client:  # the first server's socket is still there and still serves
        assert client.info()["api_version"] == 1


# ------------------------------------------------------------------------------- TCP


def test_tcp_without_a_token_refuses_to_start(tmp_path: Path) -> None:
    result = serve_fails("--listen", "tcp:127.0.0.1:0", "--store", str(tmp_path / "store"))
    check_failed(result, "TCP needs a bearer token", "--token-file", "[no-token]")


def test_tcp_token_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    token = token_file(tmp_path / "token", mode=0o644)
    result = serve_fails(
        "--listen", "tcp:127.0.0.1:0", "--token-file", str(token), "--store", str(tmp_path / "s")
    )
    check_failed(result, "readable by others", "chmod 600", "[token-exposed]")


def test_tcp_token_file_is_created_0600_when_missing(servers, tmp_path: Path) -> None:
    token = tmp_path / "conf" / "token"
    server = servers.start("--token-file", str(token), listen="tcp:127.0.0.1:0")
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert len(token.read_text().strip()) >= 32
    with ApiClient(server.url, token_file=str(token)) as client:
        assert client.info()["api_version"] == 1


def test_tcp_requests_need_the_bearer_token(servers, tmp_path: Path) -> None:
    token = token_file(tmp_path / "token")
    wrong = token_file(tmp_path / "wrong", token="not-the-token-0123456789")
    store = tmp_path / "store"
    server = servers.start(
        "--token-file", str(token), store=store, maps={FIXTURES: FIXTURES}, listen="tcp:127.0.0.1:0"
    )
    assert server.url.startswith("http://127.0.0.1:")
    archive = FIXTURES / "app-docker.tar"
    reference = {
        "path": str(archive),
        "identity": {"size": archive.stat().st_size, "mtime_ns": 0, "xxh3_128": "0" * 32},
    }

    for headers in (
        {},
        {"authorization": "Bearer not-the-token-0123456789"},
        {"authorization": "Basic eDp5"},
        {"authorization": "Bearer"},
    ):
        with httpx.Client(base_url=server.url, headers=headers, timeout=10) as http:
            for method, path, kwargs in [
                ("GET", "/v1/info", {}),
                ("GET", "/v1/images", {}),
                ("GET", f"/v1/images/{APP_ID}", {}),
                ("DELETE", f"/v1/images/{APP_ID}", {}),
                ("POST", "/v1/images/load", {"json": reference}),
                (
                    "POST",
                    "/v1/images/load",
                    {"content": archive.read_bytes(), "headers": {"content-type": "application/x-tar"}},
                ),
            ]:
                answer = http.request(method, path, **kwargs)
                assert answer.status_code == 401, (headers, method, path, answer.text)
                assert answer.json()["error"]["reason"] == "unauthorized"

    # The CLI: no token, a wrong token, then the right one.
    for result in cli_parallel(
        (["load", str(archive)], server.url),
        (["load", "--upload", str(archive)], server.url),
        (["load", str(archive), "--token-file", str(wrong)], server.url),
        (["images", "--token-file", str(wrong)], server.url),
    ):
        check_failed(result, "[unauthorized]")
    assert store_images(store) == {}  # nothing was loaded
    assert os.listdir(store / "blobs" / "sha256") == []

    by_path = cli("load", "--json", str(archive), "--token-file", str(token), url=server.url)
    assert by_path.returncode == 0, by_path.stderr
    assert json.loads(by_path.stdout)["via"] == "path"
    by_upload = cli(
        "load",
        "--json",
        "--upload",
        str(FIXTURES / "two-images-docker.tar"),
        env={"FSBRIDGE_TOKEN_FILE": str(token), "FSBRIDGE_URL": server.url},
    )
    assert by_upload.returncode == 0, by_upload.stderr
    assert json.loads(by_upload.stdout)["via"] == "upload"
    assert store_images(store) == EXPECTED["two-images-docker.tar"]


def test_tcp_big_upload_with_a_wrong_token_gets_401(servers, tmp_path: Path) -> None:
    """The server answers 401 before reading the body; the client gets that answer, not a broken pipe."""
    token = token_file(tmp_path / "token")
    big = tmp_path / "big.tar"
    big.write_bytes(b"\0" * (8 << 20))
    store = tmp_path / "store"
    server = servers.start("--token-file", str(token), store=store, listen="tcp:127.0.0.1:0")
    result = cli("load", "--upload", str(big), url=server.url)
    check_failed(result, "[unauthorized]")
    assert store_images(store) == {}


# ------------------------------------------------------------------------------- concurrency


def test_eight_concurrent_clients(servers, tmp_path: Path) -> None:
    store = tmp_path / "store"
    server = servers.start(store=store, maps={FIXTURES: FIXTURES})
    jobs = [
        ("app-docker.tar", False),
        ("app-oci.tar", True),
        ("two-images-docker.tar", False),
        ("app-docker.tar.gz", True),
        ("app-oci-gzip-layers.tar", False),
        ("app-oci-zstd-layers.tar", True),
        ("two-images-docker.tar", True),
        ("app-oci.tar", False),
    ]
    results: dict[int, object] = {}
    barrier = threading.Barrier(len(jobs))

    def run(n: int, archive: str, upload: bool) -> None:
        try:
            barrier.wait(10)
            if n % 2:  # half through the CLI in a subprocess, half through ApiClient in this process
                result = cli(
                    "load",
                    "--json",
                    *(["--upload"] if upload else []),
                    str(FIXTURES / archive),
                    url=server.url,
                )
                assert result.returncode == 0, result.stderr
                results[n] = json.loads(result.stdout)
            else:
                with ApiClient(server.url) as client:
                    results[n] = load_archive(client, str(FIXTURES / archive), force_upload=upload).to_json()
        except BaseException as e:  # noqa: BLE001 - reported below
            results[n] = e

    threads = [
        threading.Thread(target=run, args=(n, archive, upload)) for n, (archive, upload) in enumerate(jobs)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for n, (archive, upload) in enumerate(jobs):
        outcome = results[n]
        assert isinstance(outcome, dict), (archive, outcome)
        assert outcome["via"] == ("upload" if upload else "path"), (archive, outcome)
        assert as_table(outcome["images"]) == EXPECTED[archive], archive

    assert ImageStore(store).check() == []
    assert store_images(store) == {
        APP_ID: {"localhost/fx-app:shared", "localhost/fx-app:gzip", "localhost/fx-app:zstd"},
        BASE_ID: {"localhost/fx-base:shared"},
    }
    assert not [p for p in (store / ".fsbridge" / "tmp").iterdir() if p.name.startswith("load-")]


# ------------------------------------------------------------------------------- a killed server


def _big_docker_archive(path: Path, layer_mib: int) -> str:
    """A docker-archive with one layer holding a file of `layer_mib` MiB; returns the image id."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("big.bin")
        info.size = layer_mib << 20
        info.mode = 0o644
        block = bytes(range(256)) * 4096  # 1 MiB, not all zeros
        tar.addfile(info, io.BytesIO(block * layer_mib))
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "2024-01-01T00:00:00Z",
            "config": {"Cmd": ["/big.bin"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "test"}],
        }
    ).encode()
    config_hex = hashlib.sha256(config).hexdigest()
    manifest = json.dumps(
        [{"Config": f"{config_hex}.json", "RepoTags": ["localhost/big:1"], "Layers": [f"{diff_id[7:]}.tar"]}]
    ).encode()
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (
            (f"{diff_id[7:]}.tar", layer_bytes),
            (f"{config_hex}.json", config),
            ("manifest.json", manifest),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return "sha256:" + config_hex


# `fsbridge load` with its reads of the archive held at a gate: after GATE bytes it signals `reached` and
# waits for `go`, so a test can kill the server while the upload is certainly in the middle.
GATED_CLI = """
import builtins, os, sys, time
import fsbridge.client.api as api

GATE, reached, go = int(sys.argv[1]), sys.argv[2], sys.argv[3]

class Gated:
    def __init__(self, f):
        self.f, self.done = f, 0
    def read(self, n=-1):
        if self.done >= GATE and not os.path.exists(go):
            open(reached, "w").close()
            while not os.path.exists(go):
                time.sleep(0.01)
        data = self.f.read(n)
        self.done += len(data)
        return data
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.f.close()

api.open = lambda path, mode="r", *a, **k: Gated(builtins.open(path, mode, *a, **k))
sys.argv = ["fsbridge", *sys.argv[4:]]
from fsbridge.cli import main
main()
"""


def test_server_killed_in_the_middle_of_an_upload(servers, tmp_path: Path) -> None:
    archive = tmp_path / "big.tar"
    image_id = _big_docker_archive(archive, 24)
    store = tmp_path / "store"
    server = servers.start(store=store, socket_name="api.sock")
    staging = store / ".fsbridge" / "tmp"
    reached, go = tmp_path / "reached", tmp_path / "go"

    def staging_started() -> bool:
        return any(p.name.startswith("load-") and any(p.iterdir()) for p in staging.iterdir())

    client = subprocess.Popen(
        [
            sys.executable,
            "-c",
            GATED_CLI,
            str(8 << 20),
            str(reached),
            str(go),
            "load",
            "--upload",
            str(archive),
            "--url",
            server.url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(reached.exists, timeout=20, what="the client to send 8 MiB")
        wait_for(staging_started, timeout=20, what="the upload to reach the store")
        server.kill()  # in the middle of the upload: 8 of 24 MiB sent
        go.touch()
        out, err = client.communicate(timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 1, (out, err)
    assert out == ""
    assert "Traceback" not in err, err
    assert err.startswith("Error: the upload stopped after "), err
    assert f"of {archive.stat().st_size} bytes" in err, err
    assert "run the command again" in err and "[upload-interrupted]" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert any(p.name.startswith("load-") for p in staging.iterdir())  # what the killed load left
    assert store_images(store) == {}

    # The same socket again: the stale socket is replaced, the leftovers of the dead load are cleaned.
    again = servers.start(store=store, socket_name="api.sock")
    assert not [p for p in staging.iterdir() if p.name.startswith("load-")]
    retry = cli("load", "--upload", str(archive), url=again.url)
    assert retry.returncode == 0, retry.stderr
    assert retry.stdout.splitlines() == ["Loaded image: localhost/big:1", "via upload"]
    assert store_problems(store) == []
    assert store_images(store) == {image_id: {"localhost/big:1"}}


# ------------------------------------------------------------------------------- HTTP details


def _raw(sock_path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(sock_path))
    return s


def test_expect_100_continue(servers, tmp_path: Path) -> None:
    """curl sends `Expect: 100-continue` before bodies over 1 MiB and waits for the go-ahead."""
    store = tmp_path / "store"
    server = servers.start(store=store)
    archive = (FIXTURES / "app-oci.tar").read_bytes()
    head = (
        f"POST /v1/images/load HTTP/1.1\r\nHost: fsbridge\r\nContent-Type: application/x-tar\r\n"
        f"Content-Length: {len(archive)}\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    with _raw(server.socket_path) as s:
        s.sendall(head)
        assert s.recv(4096).startswith(b"HTTP/1.1 100 ")  # before any byte of the body was sent
        s.sendall(archive)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            answer += s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["via"] == "upload"

    # A refusal is answered at once, without asking for the body, and the connection closes.
    with _raw(server.socket_path) as s:
        s.sendall(head.replace(b"application/x-tar", b"text/plain"))
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 415 ")
    assert b"unsupported-media-type" in answer
    assert store_images(store) == EXPECTED["app-oci.tar"]
