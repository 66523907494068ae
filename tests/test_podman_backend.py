"""`fsbridge serve --backend podman`: loads land in the VM's real podman (Debian's podman, as root, with the
vfs driver and its own --root/--runroot under tmp_path, so the machine's images are not touched)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_helpers import (
    FIXTURES,
    Servers,
    as_table,
    check_failed,
    cli,
    cli_json,
    expected_images,
    needs_fixtures,
    running_servers,
    short_dir,
    spec_validator,
)

from fsbridge.client import ApiClient

pytestmark = [
    pytest.mark.podman,
    needs_fixtures,
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed"),
]


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    yield from running_servers(tmp_path)


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[str]:
    runroot = short_dir("fsb-podman-")  # podman wants a runroot path under 50 characters
    command = (
        f"podman --root {tmp_path}/podman-root --runroot {runroot} --storage-driver vfs --events-backend file"
    )
    try:
        yield command
    finally:
        # vfs layers are plain folders: nothing is mounted; drop what this podman made
        subprocess.run(
            [*command.split(), "rmi", "--all", "--force"], check=False, capture_output=True, timeout=60
        )
        shutil.rmtree(tmp_path / "podman-root", ignore_errors=True)
        shutil.rmtree(runroot, ignore_errors=True)


def podman_images(command: str) -> dict[str, set[str]]:
    out = subprocess.run(
        [*command.split(), "images", "--format", "json"], capture_output=True, text=True, check=True
    ).stdout
    return {
        "sha256:" + i["Id"].removeprefix("sha256:"): set(i.get("Names") or [])
        for i in json.loads(out or "[]")
    }


def test_podman_backend_loads_by_path_and_upload(servers, podman: str, tmp_path: Path) -> None:
    server = servers.start(
        "--backend",
        "podman",
        store=tmp_path / "staging",
        maps={FIXTURES: FIXTURES},
        env={"FSBRIDGE_PODMAN": podman},
    )
    expected = expected_images()

    assert cli_json("images", url=server.url) == []

    by_path = cli_json("load", str(FIXTURES / "app-docker.tar"), url=server.url)
    assert by_path["via"] == "path"
    assert as_table(by_path["images"]) == expected["app-docker.tar"]

    app_upload = cli_json("load", "--upload", str(FIXTURES / "app-docker.tar"), url=server.url)
    assert app_upload["via"] == "upload"
    assert as_table(app_upload["images"]) == expected["app-docker.tar"]

    by_upload = cli_json("load", "--upload", str(FIXTURES / "two-images-docker.tar"), url=server.url)
    assert by_upload["via"] == "upload"
    assert as_table(by_upload["images"]) == expected["two-images-docker.tar"]
    assert list((tmp_path / "staging").iterdir()) == []  # the staged upload is gone

    again = cli("load", str(FIXTURES / "two-images-docker.tar"), url=server.url)  # by path, plain output
    assert again.returncode == 0, again.stderr
    assert sorted(again.stdout.splitlines()) == [
        "Loaded image: localhost/fx-app:shared",
        "Loaded image: localhost/fx-base:shared",
        "via path",
    ]

    everything = expected["two-images-docker.tar"]
    listed = cli_json("images", url=server.url)
    assert as_table(listed) == everything
    assert podman_images(podman) == everything  # what podman itself says

    # The podman backend's answers follow the same contract as the builtin store's.
    with ApiClient(server.url) as client:
        spec_validator("ImageList").validate({"images": listed})
        spec_validator("Image").validate(client.inspect("fx-app:shared"))
        result = client.upload(str(FIXTURES / "app-docker.tar"))
        spec_validator("LoadResult").validate(result)
        info = client.info()
        spec_validator("Info").validate(info)
    assert info["backend"]["name"] == "podman"

    base_id = next(i for i, names in everything.items() if "localhost/fx-base:shared" in names)
    removed = cli("rmi", "localhost/fx-base:shared", url=server.url)
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.strip() == f"Untagged and removed: {base_id}"
    assert base_id not in podman_images(podman)
    check_failed(cli("rmi", "localhost/fx-base:shared", url=server.url), "[image-unknown]")

    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"not an archive" * 100)
    check_failed(cli("load", "--upload", str(garbage), url=server.url), "[bad-archive]")
