"""The host-side decision, path reference or upload, against scripted answers (httpx.MockTransport): no
server runs here."""

from __future__ import annotations

import gc
import json
import os
import socket
import warnings
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import xxhash

from fsbridge.client import ApiClient, load_archive
from fsbridge.client.load import LoadOutcome
from fsbridge.errors import RemoteError

APP = {"id": "sha256:" + "ab" * 32, "names": ["localhost/app:1"], "size": 10, "created": None}


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    path = tmp_path / "img.tar"
    path.write_bytes(os.urandom(3 * 1024 * 1024 + 17))  # more than one 1 MiB chunk
    return path


class Script:
    """A fake server: answers a path reference with `reference` and an upload with `upload`."""

    def __init__(
        self,
        reference: Callable[[httpx.Request], httpx.Response],
        upload: Callable[[httpx.Request], httpx.Response] | None = None,
    ) -> None:
        self.reference = reference
        self.upload = upload or (
            lambda request: httpx.Response(
                200, json={"via": "upload", "bytes_received": len(request.content), "images": [APP]}
            )
        )
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        assert request.url.path == "/v1/images/load" and request.method == "POST"
        if request.headers["content-type"] == "application/json":
            return self.reference(request)
        return self.upload(request)

    def kinds(self) -> list[str]:
        return [
            "reference" if r.headers["content-type"] == "application/json" else "upload"
            for r in self.requests
        ]

    def client(self, url: str = "unix:/run/test.sock") -> ApiClient:
        return ApiClient(url, transport=httpx.MockTransport(self))


def error(status: int, reason: str, message: str = "because") -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(status, json={"error": {"reason": reason, "message": message}})


def test_path_reference_accepted_no_upload(archive: Path) -> None:
    script = Script(
        lambda request: httpx.Response(200, json={"via": "path", "images": [APP], "vm_path": "/x"})
    )
    outcome = load_archive(script.client(), str(archive))
    assert outcome.via == "path"
    assert outcome.refused is None
    assert script.kinds() == ["reference"]


def test_the_reference_names_the_file_and_its_identity(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = Script(lambda request: httpx.Response(200, json={"via": "path", "images": [APP]}))
    monkeypatch.chdir(tmp_path)
    load_archive(script.client(), "img.tar")  # a relative path is sent absolute
    body = json.loads(script.requests[0].content)
    data = archive.read_bytes()
    assert body == {
        "path": str(archive),
        "identity": {
            "size": len(data),
            "mtime_ns": archive.stat().st_mtime_ns,
            "xxh3_128": xxhash.xxh3_128(data).hexdigest(),
        },
    }


@pytest.mark.parametrize(
    "reason",
    [
        "not-mapped",
        "not-found",
        "identity-mismatch",
        "outside-export",
        "not-a-file",
        "unreadable",
        "something-new",
    ],
)
def test_every_409_uploads(archive: Path, reason: str) -> None:
    script = Script(error(409, reason, "the path cannot serve"))
    outcome = load_archive(script.client(), str(archive))
    assert script.kinds() == ["reference", "upload"]
    assert outcome.via == "upload"
    assert outcome.refused == {"reason": reason, "message": "the path cannot serve"}
    upload = script.requests[1]
    assert upload.headers["content-type"] == "application/x-tar"
    assert upload.headers["content-length"] == str(archive.stat().st_size)
    assert upload.content == archive.read_bytes()  # exactly the file the user named


@pytest.mark.parametrize(
    "answer",
    [
        lambda request: httpx.Response(404, json={"error": {"reason": "no-route", "message": "no route"}}),
        lambda request: httpx.Response(404, text="404 page not found"),  # not even fsbridge's error body
        lambda request: httpx.Response(
            405, json={"error": {"reason": "method-not-allowed", "message": "use GET"}}
        ),
        lambda request: httpx.Response(405),
    ],
    ids=["404-json", "404-text", "405-json", "405-empty"],
)
def test_an_older_server_without_the_route_gets_an_upload(archive: Path, answer) -> None:
    script = Script(answer)
    outcome = load_archive(script.client(), str(archive))
    assert script.kinds() == ["reference", "upload"]
    assert outcome.via == "upload"
    assert outcome.refused is not None and outcome.refused["reason"] in (
        "no-route",
        "method-not-allowed",
        "http-404",
        "http-405",
    )


@pytest.mark.parametrize(
    "status,reason", [(400, "bad-request"), (415, "unsupported-media-type"), (500, "io-error")]
)
def test_other_failures_of_the_reference_still_upload(archive: Path, status: int, reason: str) -> None:
    script = Script(error(status, reason))
    assert load_archive(script.client(), str(archive)).via == "upload"
    assert script.kinds() == ["reference", "upload"]


@pytest.mark.parametrize("status,reason", [(401, "unauthorized"), (422, "bad-archive"), (507, "no-space")])
def test_no_upload_after_401_422_507(archive: Path, status: int, reason: str) -> None:
    script = Script(error(status, reason, "no"))
    with pytest.raises(RemoteError) as caught:
        load_archive(script.client(), str(archive))
    assert caught.value.status == status
    assert caught.value.reason == reason
    assert script.kinds() == ["reference"]  # no upload


def test_upload_errors_are_reported(archive: Path) -> None:
    script = Script(error(409, "not-mapped"), upload=error(422, "bad-archive", "the archive is empty"))
    with pytest.raises(RemoteError) as caught:
        load_archive(script.client(), str(archive))
    assert (caught.value.status, caught.value.reason, caught.value.message) == (
        422,
        "bad-archive",
        "the archive is empty",
    )


def test_force_upload_skips_the_reference(archive: Path) -> None:
    script = Script(lambda request: pytest.fail("a path reference was sent"))
    outcome = load_archive(script.client(), str(archive), force_upload=True)
    assert outcome.via == "upload"
    assert script.kinds() == ["upload"]


def test_unreachable_server_is_an_error_naming_the_url(archive: Path, tmp_path: Path) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    for url in ("http://127.0.0.1:9", "unix:/run/nowhere.sock"):
        client = ApiClient(url, transport=httpx.MockTransport(refuse))
        with pytest.raises(RemoteError) as caught:
            load_archive(client, str(archive))
        assert caught.value.reason == "unreachable" and caught.value.status is None
        assert url in caught.value.message
        with pytest.raises(RemoteError) as caught:  # not disguised as an interrupted upload either
            load_archive(client, str(archive), force_upload=True)
        assert caught.value.reason == "unreachable"

    # The real transports, with nothing listening.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections are refused
    for url in (f"http://127.0.0.1:{port}", f"unix:{tmp_path}/none.sock"):
        with ApiClient(url) as client, pytest.raises(RemoteError) as caught:
            load_archive(client, str(archive))
        assert caught.value.reason == "unreachable" and url in caught.value.message
    with warnings.catch_warnings():  # httpcore does not close a unix socket whose connect failed
        warnings.simplefilter("ignore", ResourceWarning)
        del caught  # its traceback holds that socket
        gc.collect()


def test_connection_lost_during_upload_says_run_again(archive: Path) -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        if request.headers["content-type"] == "application/json":
            return httpx.Response(409, json={"error": {"reason": "not-mapped", "message": "no"}})
        raise httpx.WriteError("[Errno 32] Broken pipe", request=request)

    client = ApiClient("unix:/run/test.sock", transport=httpx.MockTransport(broken))
    with pytest.raises(RemoteError) as caught:
        load_archive(client, str(archive))
    assert caught.value.reason == "upload-interrupted"
    assert "run the command again" in caught.value.message
    assert "Nothing was stored" in caught.value.message


def test_a_non_fsbridge_answer_is_an_error(archive: Path) -> None:
    client = ApiClient(
        "http://127.0.0.1:9",
        transport=httpx.MockTransport(lambda request: httpx.Response(200, text="<html>hello</html>")),
    )
    with pytest.raises(RemoteError) as caught:
        client.images()
    assert caught.value.reason == "bad-response"


def test_token_is_sent_as_bearer(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("abc-0123456789-token\n")
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"images": []})

    with ApiClient(
        "http://127.0.0.1:9", token_file=str(token), transport=httpx.MockTransport(handler)
    ) as client:
        assert client.images() == []
    assert seen == ["Bearer abc-0123456789-token"]


def test_json_output_shape(archive: Path) -> None:
    """DESIGN: {"via": "path" | "upload", "images": [{"id", "names"}, ...], ...}."""
    script = Script(error(409, "not-mapped", "not shared"))
    out = load_archive(script.client(), str(archive)).to_json()
    assert out["via"] == "upload"
    assert out["images"] == [{"id": APP["id"], "names": APP["names"]}]
    assert out["path_refused"] == {"reason": "not-mapped", "message": "not shared"}
    assert out["bytes_received"] == archive.stat().st_size
    assert json.loads(json.dumps(out)) == out

    by_path = LoadOutcome(
        "path",
        [{"id": APP["id"], "names": [], "size": 3}],
        raw={"vm_path": "/mnt/x", "blobs_written": 2, "blobs_reused": 1},
    ).to_json()
    assert by_path == {
        "via": "path",
        "images": [{"id": APP["id"], "names": []}],
        "vm_path": "/mnt/x",
        "blobs_written": 2,
        "blobs_reused": 1,
    }
