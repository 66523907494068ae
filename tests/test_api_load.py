"""`fsbridge load` / `images` / `rmi` / `check-store` against a real `fsbridge serve` (builtin store).

Every fixture archive made by podman loads by path reference and by upload with exactly the ids and
names podman reports (EXPECTED.tsv). Path references that cannot serve fall back to an upload and say
why; files outside the mapping are never opened; hostile uploads leave the store as it was.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import xxhash
from api_helpers import (
    FIXTURES,
    Servers,
    as_table,
    check_failed,
    cli,
    cli_json,
    cli_parallel,
    expected_images,
    needs_fixtures,
    running_servers,
    store_images,
    store_problems,
)

from fsbridge.client import ApiClient, load_archive

pytestmark = needs_fixtures

EXPECTED = expected_images() if (FIXTURES / "EXPECTED.tsv").is_file() else {}
APP_ID = "sha256:1f1291d3c9920b196f1819700aaa3771bae7ed4e010a5000f5323075bd3829e8"
BASE_ID = "sha256:1a7b31b3575cf52815b063aee8cd96fa92b4ceafab50ec8ddc7a2e7a373b486a"


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    yield from running_servers(tmp_path)


def identity_of(path: Path) -> dict:
    data = path.read_bytes()
    return {
        "size": len(data),
        "mtime_ns": path.stat().st_mtime_ns,
        "xxh3_128": xxhash.xxh3_128(data).hexdigest(),
    }


def store_state(store: Path) -> tuple[bytes, list[str]]:
    """index.json and the blob names: what a failed load must not change."""
    return (store / "index.json").read_bytes(), sorted(os.listdir(store / "blobs" / "sha256"))


def copy_fixtures(dest: Path, *names: str) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(FIXTURES / name, dest / name)
    return dest


@pytest.mark.parametrize("archive", sorted(EXPECTED))
def test_fixture_loads_via_path_and_via_upload_with_podmans_ids(
    archive: str, servers, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    server = servers.start(store=store, maps={FIXTURES: FIXTURES})
    expected = EXPECTED[archive]

    by_path = cli_json("load", str(FIXTURES / archive), url=server.url)
    assert by_path["via"] == "path"
    assert "path_refused" not in by_path
    assert as_table(by_path["images"]) == expected
    assert all(set(image) == {"id", "names"} for image in by_path["images"])  # DESIGN's --json shape

    by_upload = cli_json("load", "--upload", str(FIXTURES / archive), url=server.url)
    assert by_upload["via"] == "upload"
    assert as_table(by_upload["images"]) == expected
    assert by_upload["bytes_received"] == (FIXTURES / archive).stat().st_size

    # Both ways stored the same images, once, and the store is sound.
    assert store_images(store) == expected
    with ApiClient(server.url) as client:
        assert as_table(client.images()) == expected
    assert store_problems(store) == []


def test_plain_output_reload_is_idempotent(servers, tmp_path: Path) -> None:
    store = tmp_path / "store"
    server = servers.start(store=store, maps={FIXTURES: FIXTURES})
    archive = str(FIXTURES / "two-images-docker.tar")

    first = cli("load", archive, url=server.url)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert sorted(lines[:-1]) == [
        "Loaded image: localhost/fx-app:shared",
        "Loaded image: localhost/fx-base:shared",
    ]
    assert lines[-1] == "via path"
    before = store_state(store)

    again = cli("load", archive, url=server.url)
    assert again.returncode == 0, again.stderr
    assert sorted(again.stdout.splitlines()) == sorted(lines)
    with ApiClient(server.url) as client:
        again_json = load_archive(client, archive).to_json()
    assert again_json["via"] == "path"
    assert again_json["blobs_written"] == 0 and again_json["blobs_reused"] > 0
    uploaded = cli("load", "--upload", archive, url=server.url)
    assert uploaded.returncode == 0, uploaded.stderr
    assert uploaded.stdout.splitlines()[-1] == "via upload"
    assert store_state(store) == before  # nothing new, nothing lost
    assert store_images(store) == EXPECTED["two-images-docker.tar"]
    assert store_problems(store) == []


def _unnamed_copy(source: Path, dest: Path) -> None:
    """The docker-archive at `source` with its names removed from manifest.json."""
    with tarfile.open(source) as src, tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as out:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None
            if member.name == "manifest.json":
                manifest = json.loads(data)
                for entry in manifest:
                    entry["RepoTags"] = None
                data = json.dumps(manifest).encode()
                member.size = len(data)
            out.addfile(member, io.BytesIO(data) if data is not None else None)


def test_unnamed_image_prints_its_id(servers, tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    _unnamed_copy(FIXTURES / "app-docker.tar", host / "unnamed.tar")
    server = servers.start(maps={host: host})
    result = cli("load", str(host / "unnamed.tar"), url=server.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"Loaded image ID: {APP_ID}", "via path"]
    assert cli_json("images", url=server.url)[0]["names"] == []


def test_images_and_rmi(servers, tmp_path: Path) -> None:
    store = tmp_path / "store"
    server = servers.start(store=store, maps={FIXTURES: FIXTURES})
    with ApiClient(server.url) as client:
        assert client.images() == []
        load_archive(client, str(FIXTURES / "two-images-docker.tar"))

    listed = cli_json("images", url=server.url)
    assert isinstance(listed, list)
    assert as_table(listed) == EXPECTED["two-images-docker.tar"]
    for image in listed:
        assert image["id"].startswith("sha256:") and isinstance(image["names"], list)
    table = cli("images", url=server.url)
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split()[:2] == ["IMAGE", "ID"]
    assert any(
        line.startswith(BASE_ID[7:19]) and "localhost/fx-base:shared" in line
        for line in table.stdout.splitlines()
    )

    removed = cli("rmi", "fx-base:shared", url=server.url)  # a short name, as podman resolves it
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.strip() == f"Untagged and removed: {BASE_ID}"
    assert store_images(store) == {APP_ID: {"localhost/fx-app:shared"}}

    check_failed(cli("rmi", "localhost/fx-base:shared", url=server.url), "[image-unknown]")
    removed = cli("rmi", APP_ID[:19], url=server.url)  # an id prefix
    assert removed.returncode == 0, removed.stderr
    after = cli_json("images", url=server.url)
    assert after == []
    assert os.listdir(store / "blobs" / "sha256") == []  # every blob collected
    healthy = cli("check-store", str(store))
    assert healthy.returncode == 0, healthy.stderr
    assert healthy.stdout.strip() == f"{store}: healthy"


def test_not_mapped_falls_back_to_upload(servers, tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    elsewhere = copy_fixtures(tmp_path / "elsewhere", "app-docker.tar")
    server = servers.start(maps={host: host})

    result = cli_json("load", str(elsewhere / "app-docker.tar"), url=server.url)
    assert result["via"] == "upload"
    assert result["path_refused"]["reason"] == "not-mapped"
    assert as_table(result["images"]) == EXPECTED["app-docker.tar"]

    plain = cli("load", str(elsewhere / "app-docker.tar"), url=server.url)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.splitlines() == ["Loaded image: localhost/fx-app:shared", "via upload"]
    assert "path refused (not-mapped)" in plain.stderr


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("vm_file", ["other-archive", "corrupt-layer", "changed-padding"])
def test_identity_mismatch_falls_back_to_upload(vm_file: str, servers, tmp_path: Path) -> None:
    """HOSTDIR is mapped to a VM folder that holds a different file under the same name: the server must
    not load the VM's file, and the client uploads its own."""
    host = copy_fixtures(tmp_path / "host", "app-docker.tar")
    vm = tmp_path / "vm"
    vm.mkdir()
    target = vm / "app-docker.tar"
    if vm_file == "other-archive":  # another size
        shutil.copyfile(FIXTURES / "two-images-docker.tar", target)
    else:  # the same size, other bytes
        shutil.copyfile(FIXTURES / "app-docker.tar", target)
        with tarfile.open(target) as tar:
            layer = max(tar.getmembers(), key=lambda m: m.size)
        # a byte inside the biggest layer (the archive is bad), or in the end-of-archive padding
        _flip(
            target,
            layer.offset_data + layer.size // 2 if vm_file == "corrupt-layer" else target.stat().st_size - 1,
        )
    store = tmp_path / "store"
    server = servers.start(store=store, maps={host: vm})

    result = cli_json("load", str(host / "app-docker.tar"), url=server.url)
    assert result["via"] == "upload", result
    assert result["path_refused"]["reason"] == "identity-mismatch"
    assert as_table(result["images"]) == EXPECTED["app-docker.tar"]
    assert store_images(store) == EXPECTED["app-docker.tar"]  # nothing of the VM's file
    assert store_problems(store) == []


def test_symlink_out_of_the_export_falls_back_to_upload(servers, tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    outside = copy_fixtures(tmp_path / "outside", "app-oci.tar")
    (host / "link.tar").symlink_to(outside / "app-oci.tar")
    server = servers.start(maps={host: host})

    result = cli_json("load", str(host / "link.tar"), url=server.url)
    assert result["via"] == "upload"
    assert result["path_refused"]["reason"] == "outside-export"
    assert as_table(result["images"]) == EXPECTED["app-oci.tar"]

    # A link that stays inside the export is followed.
    (host / "real.tar").write_bytes((FIXTURES / "app-oci.tar").read_bytes())
    (host / "inner-link.tar").symlink_to("real.tar")
    inside = cli_json("load", str(host / "inner-link.tar"), url=server.url)
    assert inside["via"] == "path"


def test_dotdot_is_normalised_by_the_client_and_refused_by_the_server(servers, tmp_path: Path) -> None:
    host = tmp_path / "host"
    (host / "sub").mkdir(parents=True)
    copy_fixtures(tmp_path / "outside", "app-docker.tar")
    server = servers.start(maps={host: host})
    sneaky = f"{host}/sub/../../outside/app-docker.tar"

    # The client resolves '..' on the host before it asks: the path is simply not mapped.
    result = cli_json("load", sneaky, url=server.url)
    assert result["via"] == "upload"
    assert result["path_refused"]["reason"] == "not-mapped"

    # Sent as is, the server refuses it as leaving the export.
    with httpx.Client(
        transport=httpx.HTTPTransport(uds=str(server.socket_path)), base_url="http://fsbridge"
    ) as http:
        answer = http.post(
            "/v1/images/load", json={"path": sneaky, "identity": identity_of(FIXTURES / "app-docker.tar")}
        )
    assert answer.status_code == 409
    assert answer.json()["error"]["reason"] == "outside-export"


class _FifoWatch:
    """A FIFO with a writer blocked until some process opens it for reading: tells whether anyone did."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        self.opened = threading.Event()
        self.thread = threading.Thread(target=self._wait, daemon=True)
        self.thread.start()

    def _wait(self) -> None:
        fd = os.open(self.path, os.O_WRONLY)  # blocks until a reader opens the FIFO
        self.opened.set()
        os.close(fd)

    def release(self) -> None:
        if not self.opened.is_set():
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            self.thread.join(5)
            os.close(fd)


def test_files_outside_the_mapping_are_refused_unread(servers, tmp_path: Path) -> None:
    host = copy_fixtures(tmp_path / "host", "app-docker.tar")
    secret_dir = tmp_path / "etc"
    secret_dir.mkdir()
    shadow = _FifoWatch(secret_dir / "shadow")
    (host / "shadow-link").symlink_to(secret_dir / "shadow")
    (host / "dir-link").symlink_to(secret_dir)
    server = servers.start(maps={host: host})
    fake = {"size": 1234, "mtime_ns": 0, "xxh3_128": "0" * 32}
    try:
        with httpx.Client(
            transport=httpx.HTTPTransport(uds=str(server.socket_path)), base_url="http://fsbridge", timeout=10
        ) as http:
            refusals = {
                str(secret_dir / "shadow"): "not-mapped",
                "/etc/shadow": "not-mapped",
                str(host / "shadow-link"): "outside-export",
                str(host / "dir-link" / "shadow"): "outside-export",
                f"{host}/../etc/shadow": "outside-export",
            }
            for path, reason in refusals.items():
                answer = http.post("/v1/images/load", json={"path": path, "identity": fake})
                assert answer.status_code == 409, (path, answer.text)
                assert answer.json()["error"]["reason"] == reason, (path, answer.text)
            assert http.get("/v1/images").json() == {"images": []}
        assert not shadow.opened.is_set(), "the server opened a file outside the export"
    finally:
        shadow.release()


def test_hostile_uploads_are_refused_and_leave_the_store_unchanged(servers, tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    bad = {
        "random": hashlib.sha256(b"seed").digest() * 4096,
        "empty": b"",
        "truncated": (FIXTURES / "app-docker.tar").read_bytes()[:150_000],
        "text": b"this is not an image archive\n" * 100,
    }
    for kind, data in bad.items():
        (host / f"{kind}.tar").write_bytes(data)
    store = tmp_path / "store"
    server = servers.start(store=store, maps={host: host})
    with ApiClient(server.url) as client:
        client.upload(str(FIXTURES / "app-docker.tar"))
    before = store_state(store)

    # By upload, and by path (the file is mapped: its identity matches, so the archive is at fault).
    attempts = [(kind, args) for kind in bad for args in (["--upload"], [])]
    results = cli_parallel(
        *[(["load", *args, str(host / f"{kind}.tar")], server.url) for kind, args in attempts]
    )
    for (kind, args), result in zip(attempts, results):
        check_failed(result, "[bad-archive]")
        assert result.stdout == "", (kind, args)
    assert store_state(store) == before

    healthy = cli("check-store", str(store))
    assert healthy.returncode == 0, healthy.stderr
    assert store_images(store) == EXPECTED["app-docker.tar"]
    assert not [p for p in (store / ".fsbridge" / "tmp").iterdir() if p.name.startswith("load-")]


def test_missing_archive_and_unreachable_server(tmp_path: Path) -> None:
    result = cli("load", str(tmp_path / "nope.tar"), url=f"unix:{tmp_path}/none.sock")
    assert result.returncode == 2  # click: the argument must exist
    archive = FIXTURES / "app-docker.tar"
    check_failed(
        cli("load", str(archive), url=f"unix:{tmp_path}/none.sock"),
        f"unix:{tmp_path}/none.sock",
        "[unreachable]",
    )
    check_failed(cli("load", "--upload", str(archive), url=f"unix:{tmp_path}/none.sock"), "[unreachable]")
    check_failed(cli("images", url=f"unix:{tmp_path}/none.sock"), "[unreachable]")
