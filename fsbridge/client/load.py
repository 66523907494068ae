"""`fsbridge load` on the host: send a path reference first, upload only when the path cannot serve.

The identity (size, mtime, xxh3-128) is computed in one streaming pass before asking, so the server can
prove it reads the very file the user named. The server may refuse for many reasons (not mapped, not
there yet, a different file, outside an export) or be too old to know path references (404/405): all of
these fall back to an upload of exactly the file the user named. A bad archive (422), a refused token
(401) or an unreachable server are errors: uploading would not help.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

from fsbridge.errors import FsbridgeError, RemoteError
from fsbridge.identity import compute_identity

from fsbridge.client.api import ApiClient

# Answers to a path reference after which an upload is still worth trying.
NO_FALLBACK_STATUSES = {401, 422, 507}

ProgressFactory = Callable[[str, int], Any]  # (label, total bytes) -> context manager with .update(n)


@dataclass
class LoadOutcome:
    via: str  # "path" or "upload"
    images: list[dict[str, Any]]
    refused: dict[str, str] | None = None  # why the path reference was not used: {"reason", "message"}
    raw: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {"via": self.via, "images": [{"id": i["id"], "names": list(i.get("names") or [])}
                                           for i in self.images]}
        if self.refused:
            out["path_refused"] = self.refused
        for key in ("blobs_written", "blobs_reused", "format", "compression", "vm_path", "bytes_received"):
            if key in self.raw:
                out[key] = self.raw[key]
        return out


class _NoProgress:
    def __enter__(self) -> "_NoProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None


def load_archive(client: ApiClient, path: str, *, force_upload: bool = False,
                 progress: ProgressFactory | None = None) -> LoadOutcome:
    bar = progress or (lambda label, total: _NoProgress())
    host_path = os.path.abspath(path)
    if not os.path.isfile(host_path):
        raise FsbridgeError(f"{path} is not a file", reason="not-found")
    size = os.path.getsize(host_path)
    refused = None
    if not force_upload:
        with bar("Hashing ", size) as b:
            done = 0

            def hashed(total: int) -> None:
                nonlocal done
                b.update(total - done)
                done = total

            identity = compute_identity(host_path, progress=hashed)
        try:
            result = client.load_reference(host_path, identity)
            return LoadOutcome("path", result.get("images", []), raw=result)
        except RemoteError as e:
            if e.status is None or e.status in NO_FALLBACK_STATUSES:
                raise
            refused = {"reason": e.reason, "message": e.message}
    with bar("Uploading", size) as b:
        result = client.upload(host_path, progress=b.update)
    return LoadOutcome("upload", result.get("images", []), refused=refused, raw=result)
