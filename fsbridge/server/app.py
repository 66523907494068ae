"""The API of `fsbridge serve` (contract: api/openapi.yaml, api/README.md): routes, auth, error mapping.

Errors are translated here and only here: a refused path reference is 409 with its reason (the client
then uploads), a bad archive 422, an unknown image 404, a full disk 507, anything else 500. Every error
body is {"error": {"reason": CODE, "message": SENTENCE}}.
"""

from __future__ import annotations

import errno
import hmac
import logging
from typing import Any

import trio

from fsbridge import __version__
from fsbridge.errors import ArchiveError, FsbridgeError, MappingError, StoreError
from fsbridge.identity import Identity
from fsbridge.mapping import MappingTable
from fsbridge.server.backends import Backend
from fsbridge.server.http import BodyReader, ClientGone, Request
from fsbridge.server.resolve import open_reference

log = logging.getLogger(__name__)

API_VERSION = 1
MAX_JSON_BODY = 64 * 1024
UPLOAD_TYPES = {"application/x-tar", "application/octet-stream", "application/gzip", "application/x-gzip",
                "application/zstd", "application/tar"}


def _out_of_space(exc: BaseException | None) -> bool:
    """Whether `exc`, or an error it was raised from or while handling, is a full disk or quota."""
    for _ in range(8):
        if exc is None:
            return False
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def problem(status: int, reason: str, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"reason": reason, "message": message}}


class Api:
    def __init__(self, backend: Backend, table: MappingTable, *, mount: str | None = None,
                 token: str | None = None) -> None:
        self.backend = backend
        self.table = table
        self.mount = mount
        self.token = token
        self.loads_in_progress = 0

    async def handle(self, request: Request) -> tuple[int, Any]:
        if self.token is not None and not self._authorized(request):
            return problem(401, "unauthorized", "missing or wrong bearer token")
        try:
            return await self._route(request)
        except ClientGone:
            raise
        except MappingError as e:
            return problem(409, e.reason, e.message)
        except ArchiveError as e:
            return problem(422, e.reason, e.message)
        except StoreError as e:
            if _out_of_space(e):
                return problem(507, "no-space",
                               f"the server's disk is full; nothing was stored ({e.message})")
            status = 404 if e.reason == "image-unknown" else 409 if e.reason == "ambiguous" else 500
            return problem(status, e.reason, e.message)
        except FsbridgeError as e:
            return problem(409 if e.reason in PATH_REFUSALS else 400, e.reason, e.message)
        except OSError as e:
            if _out_of_space(e):
                return problem(507, "no-space", "the server's disk is full; nothing was stored")
            log.exception("I/O error")
            return problem(500, "io-error", f"the server failed: {e.strerror or e}")
        except Exception:  # a bug: keep serving, tell the client
            log.exception("unexpected error on %s %s", request.method, request.path)
            return problem(500, "internal", "the server failed unexpectedly; see its log")

    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self.token.encode())

    async def _route(self, request: Request) -> tuple[int, Any]:
        method, path = request.method, request.path.rstrip("/") or "/"
        if path == "/v1/info":
            return (200, self.info()) if method == "GET" else problem(405, "method-not-allowed", "use GET")
        if path == "/v1/images/load":
            if method != "POST":
                return problem(405, "method-not-allowed", "use POST")
            if request.content_type == "application/json":
                return await self.load_reference(request)
            if request.content_type in UPLOAD_TYPES or not request.content_type:
                return await self.load_upload(request)
            return problem(415, "unsupported-media-type",
                           f"send a path reference as application/json or the archive as application/x-tar, "
                           f"not {request.content_type}")
        if path == "/v1/images":
            if method != "GET":
                return problem(405, "method-not-allowed", "use GET")
            images = await trio.to_thread.run_sync(self.backend.images)
            return 200, {"images": images}
        if path.startswith("/v1/images/"):
            ref = path[len("/v1/images/"):]
            if method == "GET":
                return 200, await trio.to_thread.run_sync(self.backend.inspect, ref)
            if method == "DELETE":
                return 200, {"removed": await trio.to_thread.run_sync(self.backend.remove, ref)}
            return problem(405, "method-not-allowed", "use GET or DELETE")
        return problem(404, "no-route", f"no route {method} {request.path}; this server speaks API v{API_VERSION}")

    def info(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "api_version": API_VERSION,
            "backend": self.backend.describe(),
            "backends": ["builtin", "podman"],
            "mount": self.mount,
            "mappings": [
                {"host": m.host, "backing": m.backing, "exposed": m.exposed,
                 "case_insensitive": m.case_insensitive, "unicode_insensitive": m.unicode_insensitive}
                for m in self.table.mappings
            ],
        }

    async def load_reference(self, request: Request) -> tuple[int, Any]:
        import json

        try:
            raw = await request.read_body(MAX_JSON_BODY)
        except ValueError:
            return problem(400, "bad-request", f"a path reference is at most {MAX_JSON_BODY} bytes of JSON")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            return problem(400, "bad-request", f"the path reference is not valid JSON: {e}")
        if not isinstance(body, dict) or not isinstance(body.get("path"), str):
            return problem(400, "bad-request", 'expected {"path": HOST_PATH, "identity": {...}}')
        try:
            identity = Identity.from_json(body.get("identity"))
        except ValueError as e:
            return problem(400, "bad-request", f"bad identity: {e}")
        host_path = body["path"]
        ref = await trio.to_thread.run_sync(open_reference, self.table, host_path, identity, self.mount)
        try:
            result = await self._load(self.backend.load_reference, ref, identity)
        finally:
            ref.close()
        log.info("loaded %s via path (%s)", host_path, ref.vm_path)
        return 200, {"via": "path", "path": host_path, "vm_path": ref.vm_path, **result}

    async def load_upload(self, request: Request) -> tuple[int, Any]:
        reader = BodyReader(request)
        result = await self._load(self.backend.load_stream, reader)
        return 200, {"via": "upload", "bytes_received": reader.bytes_read, **result}

    async def _load(self, fn: Any, *args: Any) -> dict[str, Any]:
        self.loads_in_progress += 1
        try:
            return await trio.to_thread.run_sync(fn, *args)
        finally:
            self.loads_in_progress -= 1


# Reasons that mean "this path cannot serve: upload instead" (answered 409).
PATH_REFUSALS = {"not-mapped", "not-found", "outside-export", "identity-mismatch", "unreadable", "not-a-file",
                 "unc-unsupported", "not-absolute", "invalid-path"}
