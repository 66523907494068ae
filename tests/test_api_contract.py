"""api/openapi.yaml against the code: a running server's real answers on every route (successes and
errors) validate against the spec's schemas, strictly (no undocumented field), and every status, reason
code and route the server code can produce is documented."""

from __future__ import annotations

import io
import json
import re
import shutil
import socket
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import xxhash
from api_helpers import FIXTURES, SPEC_PATH, Servers, load_spec, needs_fixtures, running_servers
from jsonschema import Draft202012Validator

REPO = Path(__file__).resolve().parents[1]
SERVER_CODE = sorted((REPO / "fsbridge" / "server").glob("*.py"))
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


SPEC, REGISTRY = load_spec()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    yield from running_servers(tmp_path)


def _pointer(*parts: str) -> str:
    return "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)


def _resolve(node: dict[str, Any], pointer: str) -> tuple[dict[str, Any], str]:
    """Follow an OpenAPI-level $ref (responses); returns the node and its JSON pointer."""
    while "$ref" in node:
        pointer = node["$ref"].lstrip("#")
        node = SPEC
        for part in pointer.strip("/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return node, pointer


def response_schema_pointer(method: str, route: str, status: int) -> str:
    operation = SPEC["paths"][route][method.lower()]
    responses = operation["responses"]
    assert str(status) in responses, f"{method} {route} answered {status}, which the spec does not list"
    response, pointer = _resolve(
        responses[str(status)], "/" + _pointer("paths", route, method.lower(), "responses", str(status))
    )
    assert "application/json" in response.get("content", {}), (
        f"{method} {route} {status}: no JSON body in the spec"
    )
    return pointer + "/" + _pointer("content", "application/json", "schema")


def check(answer: httpx.Response, method: str, route: str, status: int, reason: str | None = None) -> Any:
    """`answer` has `status`, a JSON body valid (strictly) against the schema the spec gives for `status`
    on the operation `method route`, and `reason`."""
    assert answer.status_code == status, (method, route, answer.status_code, answer.text)
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    pointer = response_schema_pointer(method, route, status)
    for base in ("urn:fsbridge:openapi", "urn:fsbridge:openapi-strict"):
        validator = Draft202012Validator({"$ref": f"{base}#{pointer}"}, registry=REGISTRY)
        errors = sorted(validator.iter_errors(body), key=str)
        assert not errors, (
            f"{method} {route} {status} ({base}): {errors[0].message}\n{json.dumps(body, indent=1)}"
        )
    if status >= 400:
        assert body["error"]["message"], body
        if reason is not None:
            assert body["error"]["reason"] == reason, body
        else:
            Draft202012Validator(
                {"$ref": "urn:fsbridge:openapi#/components/schemas/Error"}, registry=REGISTRY
            ).validate(body)
    return body


def validate_schema(instance: Any, name: str) -> None:
    Draft202012Validator(
        {"$ref": f"urn:fsbridge:openapi-strict#/components/schemas/{name}"}, registry=REGISTRY
    ).validate(instance)


def identity_of(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    return {
        "size": len(data),
        "mtime_ns": path.stat().st_mtime_ns,
        "xxh3_128": xxhash.xxh3_128(data).hexdigest(),
    }


def _renamed(source: Path, dest: Path, names: dict[str, list[str]]) -> None:
    """A copy of a docker-archive whose images (by config file name prefix) get other names."""
    with tarfile.open(source) as src, tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as out:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None
            if member.name == "manifest.json":
                manifest = json.loads(data)
                for entry in manifest:
                    entry["RepoTags"] = next(v for k, v in names.items() if entry["Config"].startswith(k))
                data = json.dumps(manifest).encode()
                member.size = len(data)
            out.addfile(member, io.BytesIO(data) if data is not None else None)


# ------------------------------------------------------------------------------- the spec itself


def test_the_spec_is_openapi_31_and_its_schemas_are_valid() -> None:
    assert SPEC["openapi"].startswith("3.1")
    for schema in SPEC["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    # every $ref points somewhere
    text = SPEC_PATH.read_text()
    for ref in set(re.findall(r'\$ref: "#/([^"]+)"', text)):
        node = SPEC
        for part in ref.split("/"):
            assert part in node, f"dangling $ref #/{ref}"
            node = node[part]
    assert set(SPEC["paths"]) == {"/v1/info", "/v1/images/load", "/v1/images", "/v1/images/{ref}"}
    assert "bearer" in SPEC["components"]["securitySchemes"]
    assert SPEC["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def _error_reasons_by_status() -> dict[int, set[str]]:
    """For every status the spec documents anywhere, the reason codes its error schemas allow."""
    out: dict[int, set[str]] = {}
    for route, item in SPEC["paths"].items():
        for method in METHODS:
            if method not in item:
                continue
            for status in item[method]["responses"]:
                node: Any = SPEC
                for part in response_schema_pointer(method, route, int(status)).strip("/").split("/"):
                    node = node[part.replace("~1", "/").replace("~0", "~")]
                out.setdefault(int(status), set()).update(_reasons_of(node))
    return out


def _reasons_of(schema: dict[str, Any]) -> set[str]:
    if "$ref" in schema:
        node = SPEC
        for part in schema["$ref"].lstrip("#").strip("/").split("/"):
            node = node[part]
        return _reasons_of(node)
    try:
        return set(schema["properties"]["error"]["properties"]["reason"]["enum"])
    except KeyError:
        return set()


SPEC_REASONS = _error_reasons_by_status()
ALL_REASONS = set(SPEC["components"]["schemas"]["ErrorReason"]["enum"])


def _code(path: Path) -> str:
    return path.read_text()


def _reasons_raised(paths: list[Path], exception: str) -> set[str]:
    """reason="..." of every `exception(...)` call in `paths` (a call spans to its closing parenthesis)."""
    found: set[str] = set()
    for path in paths:
        text = _code(path)
        for match in re.finditer(rf"\b{exception}\(", text):
            depth, i = 1, match.end()
            while depth and i < len(text):
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            call = text[match.end() : i]
            reason = re.search(r'reason="([a-z0-9-]+)"', call)
            if reason:
                found.add(reason.group(1))
    return found


def test_every_status_and_reason_in_the_server_code_is_documented() -> None:
    from fsbridge.errors import ArchiveError, MappingError, StoreError
    from fsbridge.server import app

    app_code = _code(REPO / "fsbridge" / "server" / "app.py")
    # Literal problem(STATUS, "reason", ...) answers in the server package.
    literal = set()
    for path in SERVER_CODE:
        literal |= {(int(s), r) for s, r in re.findall(r'problem\(\s*(\d{3}),\s*"([a-z0-9-]+)"', _code(path))}
    assert literal, "no problem(...) answers found: the pattern no longer matches the code"
    for status, reason in literal:
        assert reason in SPEC_REASONS.get(status, set()), f"{status} {reason} is not documented"

    # Every status written in app.py is documented somewhere.
    statuses = {int(s) for s in re.findall(r"(?<![\w.])([2-5]\d\d)(?![\w.])", app_code)}
    assert {200, 400, 401, 404, 405, 409, 415, 422, 500, 507} <= statuses
    assert statuses <= set(SPEC_REASONS), statuses - set(SPEC_REASONS)

    # Path refusals: every reason the mapping and the resolver raise is a documented 409 and answered 409.
    mapping_reasons = set(re.findall(r'_refuse\(\s*"([a-z0-9-]+)"', _code(REPO / "fsbridge" / "mapping.py")))
    mapping_reasons |= _reasons_raised([REPO / "fsbridge" / "mapping.py"], "MappingError") | {
        MappingError.reason
    }
    resolver_reasons = _reasons_raised(
        [
            REPO / "fsbridge" / "server" / "resolve.py",
            REPO / "fsbridge" / "server" / "backends.py",
            REPO / "fsbridge" / "identity.py",
        ],
        "FsbridgeError",
    )
    resolver_reasons.discard("file-changed")  # compute_identity's, on the client: never sent by a server
    assert {
        "not-mapped",
        "outside-export",
        "identity-mismatch",
        "not-found",
    } <= mapping_reasons | resolver_reasons
    for reason in mapping_reasons | resolver_reasons:
        assert reason in SPEC_REASONS[409], f"path refusal {reason} is not a documented 409"
    for reason in resolver_reasons:  # plain FsbridgeErrors are 409 only if listed, else 400
        assert reason in app.PATH_REFUSALS, reason
    assert app.PATH_REFUSALS <= SPEC_REASONS[409]

    # Archive errors are 422; their reasons (the default, and any other) are documented there.
    store_code = sorted((REPO / "fsbridge" / "store").glob("*.py"))
    archive_reasons = _reasons_raised(store_code + SERVER_CODE, "ArchiveError") | {ArchiveError.reason}
    assert archive_reasons <= SPEC_REASONS[422], archive_reasons - SPEC_REASONS[422]

    # Store errors: image-unknown 404, ambiguous 409, the rest 500 (or 507 for a full disk).
    store_reasons = _reasons_raised(store_code + [REPO / "fsbridge" / "server" / "backends.py"], "StoreError")
    store_reasons.add(StoreError.reason)
    startup_only = {"no-podman", "no-store", "bad-backend"}  # make_backend / constructors, before serving
    for reason in store_reasons - startup_only:
        status = 404 if reason == "image-unknown" else 409 if reason == "ambiguous" else 500
        assert reason in SPEC_REASONS[status], f"store reason {reason} is not a documented {status}"
    assert "no-space" in SPEC_REASONS[507]

    # The spec documents no reason the code cannot produce.
    sources = "".join(_code(p) for p in (REPO / "fsbridge").rglob("*.py"))
    for reason in ALL_REASONS:
        assert f'"{reason}"' in sources, f"the spec documents {reason}, which no code sends"
    assert set().union(*SPEC_REASONS.values()) <= ALL_REASONS


def test_every_route_in_the_code_is_documented() -> None:
    app_code = _code(REPO / "fsbridge" / "server" / "app.py")
    routes = set(re.findall(r'"(/v\d+/[a-z/]*)"', app_code))
    assert routes == {"/v1/info", "/v1/images/load", "/v1/images", "/v1/images/"}, routes
    documented = {r.replace("{ref}", "") for r in SPEC["paths"]}
    assert routes == documented
    assert "API_VERSION = 1" in app_code
    for route in SPEC["paths"]:
        assert route.startswith("/v1/")


def test_client_requests_match_the_spec(tmp_path: Path) -> None:
    from fsbridge.client import ApiClient, load_archive

    archive = tmp_path / "a.tar"
    archive.write_bytes(b"x" * 1000)
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        sent.append(request)
        if request.headers["content-type"] == "application/json":
            return httpx.Response(409, json={"error": {"reason": "not-mapped", "message": "no"}})
        return httpx.Response(
            200, json={"via": "upload", "images": [{"id": "sha256:" + "0" * 64, "names": []}]}
        )

    with ApiClient("unix:/x.sock", transport=httpx.MockTransport(handler)) as client:
        load_archive(client, str(archive))
    reference, upload = sent
    validate_schema(json.loads(reference.content), "PathReference")
    body = SPEC["paths"]["/v1/images/load"]["post"]["requestBody"]["content"]
    assert reference.headers["content-type"] in body
    assert upload.headers["content-type"] in body
    assert upload.content == archive.read_bytes()


# ------------------------------------------------------------------------------- a live server


@pytest.fixture
def live(servers: Servers, tmp_path: Path) -> Iterator[tuple[Any, httpx.Client, Path]]:
    if not (FIXTURES / "EXPECTED.tsv").is_file():
        pytest.skip(f"the fixture archives are not at {FIXTURES}")
    host = tmp_path / "host"
    host.mkdir()
    shutil.copyfile(FIXTURES / "app-docker.tar", host / "app.tar")
    _renamed(
        FIXTURES / "two-images-docker.tar",
        host / "twins.tar",
        {"1a7b": ["example.com/x:1"], "1f12": ["quay.io/x:1"]},
    )
    store = tmp_path / "store"
    server = servers.start(store=store, maps={host: host})
    with httpx.Client(
        transport=httpx.HTTPTransport(uds=str(server.socket_path)), base_url="http://fsbridge", timeout=30
    ) as http:
        yield server, http, host


@needs_fixtures
def test_live_successes_match_the_spec(live) -> None:
    _, http, host = live
    info = check(http.get("/v1/info"), "GET", "/v1/info", 200)
    assert info["api_version"] == 1 and info["backend"]["name"] == "builtin"
    assert info["mappings"][0]["host"] == str(host)
    assert check(http.get("/v1/images"), "GET", "/v1/images", 200) == {"images": []}

    app = host / "app.tar"
    by_path = check(
        http.post("/v1/images/load", json={"path": str(app), "identity": identity_of(app)}),
        "POST",
        "/v1/images/load",
        200,
    )
    assert by_path["via"] == "path" and by_path["path"] == str(app) and by_path["vm_path"] == str(app)
    by_upload = check(
        http.post("/v1/images/load", content=app.read_bytes(), headers={"content-type": "application/x-tar"}),
        "POST",
        "/v1/images/load",
        200,
    )
    assert by_upload["via"] == "upload" and by_upload["bytes_received"] == app.stat().st_size
    gz = FIXTURES / "app-docker.tar.gz"
    chunked = check(
        http.post(
            "/v1/images/load",
            content=iter([gz.read_bytes()[:1000], gz.read_bytes()[1000:]]),
            headers={"content-type": "application/gzip"},
        ),
        "POST",
        "/v1/images/load",
        200,
    )
    assert chunked["compression"] == "gzip"
    untyped = check(
        http.post("/v1/images/load", content=(FIXTURES / "app-oci.tar").read_bytes()),
        "POST",
        "/v1/images/load",
        200,
    )
    assert untyped["format"] == "oci-archive"
    twins = check(
        http.post(
            "/v1/images/load",
            json={"path": str(host / "twins.tar"), "identity": identity_of(host / "twins.tar")},
        ),
        "POST",
        "/v1/images/load",
        200,
    )
    assert len(twins["images"]) == 2

    listed = check(http.get("/v1/images"), "GET", "/v1/images", 200)
    assert len(listed["images"]) == 2
    app_id = by_path["images"][0]["id"]
    for ref in (app_id, app_id[7:19], "quay.io/x:1"):
        image = check(http.get(f"/v1/images/{ref}"), "GET", "/v1/images/{ref}", 200)
        assert image["id"] == app_id
    removed = check(http.delete("/v1/images/quay.io/x:1"), "DELETE", "/v1/images/{ref}", 200)
    assert removed == {"removed": [app_id]}


@needs_fixtures
def test_live_errors_match_the_spec(live, tmp_path: Path) -> None:
    server, http, host = live
    app = host / "app.tar"
    good = identity_of(app)
    load = "/v1/images/load"

    # 400: not a valid path reference
    for content in (b"{not json", b'"just a string"', b'{"identity": {}}', b"x" * (65 * 1024)):
        check(
            http.post(load, content=content, headers={"content-type": "application/json"}),
            "POST",
            load,
            400,
            "bad-request",
        )
    for identity in (
        {**good, "size": -1},
        {**good, "xxh3_128": "XYZ"},
        {**good, "extra": 1},
        {"size": 1},
        {**good, "size": True},
        None,
    ):
        check(
            http.post(load, json={"path": str(app), "identity": identity}), "POST", load, 400, "bad-request"
        )

    # 409: every way a path reference is refused
    (host / "folder").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copyfile(app, outside / "app.tar")
    (host / "link.tar").symlink_to(outside / "app.tar")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(host / "a.sock"))  # a socket file cannot be opened: unreadable
    try:
        refusals = {
            str(outside / "app.tar"): "not-mapped",
            str(host / "nope.tar"): "not-found",
            str(host / "folder"): "not-a-file",
            str(host / "link.tar"): "outside-export",
            f"{host}/folder/../../outside/app.tar": "outside-export",
            str(host / "a.sock"): "unreadable",
            "relative/app.tar": "not-absolute",
            "\\\\server\\share\\app.tar": "unc-unsupported",
            "": "invalid-path",
            f"{host}/a\u0000b": "invalid-path",
        }
        for path, reason in refusals.items():
            check(http.post(load, json={"path": path, "identity": good}), "POST", load, 409, reason)
    finally:
        sock.close()
    check(
        http.post(load, json={"path": str(app), "identity": {**good, "size": good["size"] + 1}}),
        "POST",
        load,
        409,
        "identity-mismatch",
    )
    check(
        http.post(load, json={"path": str(app), "identity": {**good, "xxh3_128": "0" * 32}}),
        "POST",
        load,
        409,
        "identity-mismatch",
    )

    # 415, 422
    check(
        http.post(load, content=b"hello", headers={"content-type": "text/plain"}),
        "POST",
        load,
        415,
        "unsupported-media-type",
    )
    for content in (b"", b"\x00" * 10, b"garbage" * 1000, app.read_bytes()[:100_000]):
        check(
            http.post(load, content=content, headers={"content-type": "application/x-tar"}),
            "POST",
            load,
            422,
            "bad-archive",
        )

    # 404, 405, 409 ambiguous
    for path in ("/v1/nothing", "/v2/images/load", "/"):  # as the load route documents it for older servers
        check(http.get(path), "POST", load, 404, "no-route")
    check(http.get("/v1/images/sha256:" + "0" * 64), "GET", "/v1/images/{ref}", 404, "image-unknown")
    check(http.delete("/v1/images/localhost/none:1"), "DELETE", "/v1/images/{ref}", 404, "image-unknown")
    check(http.post("/v1/info"), "GET", "/v1/info", 405, "method-not-allowed")
    check(http.get(load), "POST", load, 405, "method-not-allowed")
    check(http.delete("/v1/images"), "GET", "/v1/images", 405, "method-not-allowed")
    check(http.put("/v1/images/x"), "GET", "/v1/images/{ref}", 405, "method-not-allowed")
    check(
        http.post(load, json={"path": str(host / "twins.tar"), "identity": identity_of(host / "twins.tar")}),
        "POST",
        load,
        200,
    )
    check(http.get("/v1/images/x:1"), "GET", "/v1/images/{ref}", 409, "ambiguous")
    check(http.delete("/v1/images/x:1"), "DELETE", "/v1/images/{ref}", 409, "ambiguous")

    # 500: a damaged store
    index = Path(server.argv[server.argv.index("--store") + 1]) / "index.json"
    saved = index.read_bytes()
    index.write_text("{damaged")
    try:
        check(http.get("/v1/images"), "GET", "/v1/images", 500, "store-corrupt")
        check(http.get("/v1/images/x:1"), "GET", "/v1/images/{ref}", 500, "store-corrupt")
    finally:
        index.write_bytes(saved)


@needs_fixtures
def test_tcp_401_matches_the_spec(servers: Servers, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("the-right-token-0123456789\n")
    token.chmod(0o600)
    server = servers.start("--token-file", str(token), listen="tcp:127.0.0.1:0")
    with httpx.Client(
        base_url=server.url, headers={"authorization": "Bearer wrong-token-0123456789"}
    ) as http:
        check(http.get("/v1/info"), "GET", "/v1/info", 401, "unauthorized")
        check(http.get("/v1/images"), "GET", "/v1/images", 401, "unauthorized")
        check(http.get("/v1/images/x"), "GET", "/v1/images/{ref}", 401, "unauthorized")
        check(http.delete("/v1/images/x"), "DELETE", "/v1/images/{ref}", 401, "unauthorized")
        check(http.post("/v1/images/load", json={}), "POST", "/v1/images/load", 401, "unauthorized")
    with httpx.Client(
        base_url=server.url, headers={"authorization": "Bearer the-right-token-0123456789"}
    ) as http:
        check(http.get("/v1/info"), "GET", "/v1/info", 200)


@needs_fixtures
def test_full_disk_is_507_matching_the_spec(servers: Servers, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(small)],
        check=False,
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill: {mounted.stderr.strip()}")
    try:
        server = servers.start(store=small / "store")
        with httpx.Client(
            transport=httpx.HTTPTransport(uds=str(server.socket_path)), base_url="http://fsbridge"
        ) as http:
            archive = (FIXTURES / "app-docker.tar").read_bytes()  # 227 KiB: more than the disk holds
            check(
                http.post("/v1/images/load", content=archive, headers={"content-type": "application/x-tar"}),
                "POST",
                "/v1/images/load",
                507,
                "no-space",
            )
            assert check(http.get("/v1/images"), "GET", "/v1/images", 200) == {"images": []}
        server.stop()
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False, capture_output=True)
