"""Where loaded images land: the embedded OCI store (`builtin`) or the VM's real podman (`podman`).

Both take an archive as a readable stream (an upload body) or as an opened path reference, and answer
with plain JSON-able image records ({"id": "sha256:…", "names": […]}, …). All methods block; the
server calls them in worker threads.

The podman backend hands podman the very descriptor the server checked (`podman load -i /proc/self/fd/N`)
after verifying the file's identity in one read (which leaves the file in the page cache for podman's
own read); uploads are staged to a temporary file first, because podman reads archives by path.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
from typing import Any, BinaryIO, Protocol

from fsbridge.errors import ArchiveError, FsbridgeError, StoreError
from fsbridge.identity import Identity, IdentityVerifier
from fsbridge.server.resolve import OpenedReference

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024

# Words in podman's load errors that blame the archive rather than podman or its storage.
_ARCHIVE_HINTS = ("payload does not match", "unexpected eof", "invalid", "not a tar", "archive/tar", "manifest",
                  "digest", "unsupported", "unrecognized", "does not match any of the supported image formats")


class Backend(Protocol):
    name: str

    def load_stream(self, stream: BinaryIO | Any) -> dict[str, Any]: ...

    def load_reference(self, ref: OpenedReference, identity: Identity) -> dict[str, Any]: ...

    def images(self) -> list[dict[str, Any]]: ...

    def inspect(self, ref: str) -> dict[str, Any]: ...

    def remove(self, ref: str) -> list[str]: ...

    def describe(self) -> dict[str, Any]: ...


class _FdReader:
    """A read-only file object over a descriptor we own (read(n) only)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def read(self, n: int = -1, /) -> bytes:
        if n is None or n < 0:
            parts = []
            while chunk := os.read(self.fd, CHUNK):
                parts.append(chunk)
            return b"".join(parts)
        return os.read(self.fd, n)


def _finish_verifying(verifier: IdentityVerifier, identity: Identity) -> None:
    """Read what is left of the file (no more than one byte past the expected size) and verify it:
    FsbridgeError "identity-mismatch" unless the whole file is the one the client described."""
    while verifier.bytes_read <= identity.size:
        if not verifier.read(min(CHUNK, identity.size + 1 - verifier.bytes_read)):
            break
    verifier.verify(identity)


class BuiltinBackend:
    """The embedded image store (fsbridge.store): an OCI image layout on the VM's disk."""

    name = "builtin"

    def __init__(self, root: str) -> None:
        from fsbridge.store import ImageStore

        self.store = ImageStore(root)

    def load_stream(self, stream: BinaryIO | Any) -> dict[str, Any]:
        return self.store.load(stream).to_json()

    def load_reference(self, ref: OpenedReference, identity: Identity) -> dict[str, Any]:
        verifier = IdentityVerifier(_FdReader(ref.fd))
        try:
            return self.store.load(verifier, check_source=lambda: verifier.verify(identity)).to_json()
        except ArchiveError:
            # A bad archive is only the client's problem if it is the client's file: a different file
            # at that path in the VM (a share lagging behind, a half-copied file) is a refusal, and
            # the client uploads instead.
            _finish_verifying(verifier, identity)
            raise

    def images(self) -> list[dict[str, Any]]:
        return [image.to_json() for image in self.store.images()]

    def inspect(self, ref: str) -> dict[str, Any]:
        return self.store.inspect(ref).to_json()

    def remove(self, ref: str) -> list[str]:
        return self.store.remove(ref)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "store": self.store.root}


class PodmanBackend:
    """The VM's real podman: `podman load -i`, `podman images`, `podman rmi`.

    `command` is how to run podman (FSBRIDGE_PODMAN, e.g. "podman --storage-driver vfs").
    """

    name = "podman"

    def __init__(self, command: str | None = None, staging_dir: str | None = None) -> None:
        self.argv = shlex.split(command or os.environ.get("FSBRIDGE_PODMAN", "podman"))
        if not self.argv or shutil.which(self.argv[0]) is None:
            raise StoreError(f"podman is not installed here ({self.argv[0] if self.argv else 'empty command'} "
                             "not found); use --backend builtin", reason="no-podman")
        self.staging_dir = staging_dir

    def _run(self, *args: str, pass_fds: tuple[int, ...] = ()) -> str:
        result = subprocess.run([*self.argv, *args], capture_output=True, text=True, pass_fds=pass_fds)
        if result.returncode != 0:
            message = (result.stderr or result.stdout).strip().splitlines()
            text = message[-1] if message else f"exit status {result.returncode}"
            if "no space left on device" in text.lower():
                raise OSError(errno.ENOSPC, f"podman {args[0]}: {text}")
            if args and args[0] == "load":
                if any(hint in text.lower() for hint in _ARCHIVE_HINTS):
                    raise ArchiveError(f"podman could not load the archive: {text}", reason="bad-archive")
                raise StoreError(f"podman load failed: {text}", reason="podman-failed")
            if "image not known" in text or "no such image" in text.lower():
                raise StoreError(f"no image {args[-1]!r}: {text}", reason="image-unknown")
            raise StoreError(f"podman {args[0]} failed: {text}", reason="podman-failed")
        return result.stdout

    def _load_file(self, path: str, pass_fds: tuple[int, ...] = ()) -> dict[str, Any]:
        out = self._run("load", "-i", path, pass_fds=pass_fds)
        loaded: list[str] = []
        for line in out.splitlines():
            if line.startswith("Loaded image"):
                for name in line.split(":", 1)[1].split(","):
                    if name.strip():
                        loaded.append(name.strip())
        images: dict[str, dict[str, Any]] = {}
        for name in loaded:
            info = json.loads(self._run("image", "inspect", name))[0]
            image_id = info["Id"] if info["Id"].startswith("sha256:") else "sha256:" + info["Id"]
            record = images.setdefault(image_id, {"id": image_id, "names": []})
            if not name.startswith("sha256:") and name not in record["names"]:
                record["names"].append(name)
        return {"images": list(images.values())}

    def load_stream(self, stream: BinaryIO | Any) -> dict[str, Any]:
        if self.staging_dir:
            os.makedirs(self.staging_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(prefix="fsbridge-upload-", suffix=".tar", dir=self.staging_dir) as tmp:
            while chunk := stream.read(CHUNK):
                tmp.write(chunk)
            tmp.flush()
            return self._load_file(tmp.name)

    def load_reference(self, ref: OpenedReference, identity: Identity) -> dict[str, Any]:
        verifier = IdentityVerifier(_FdReader(ref.fd))
        while verifier.read(CHUNK):
            pass
        verifier.verify(identity)
        before = os.fstat(ref.fd)
        result = self._load_file(f"/proc/self/fd/{ref.fd}", pass_fds=(ref.fd,))
        after = os.fstat(ref.fd)
        if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
            for image in result["images"]:
                self.remove(image["id"])
            raise FsbridgeError("the file changed while podman loaded it", reason="identity-mismatch")
        return result

    def images(self) -> list[dict[str, Any]]:
        listed = json.loads(self._run("images", "--format", "json") or "[]")
        out = []
        for item in listed:
            image_id = item["Id"] if str(item["Id"]).startswith("sha256:") else "sha256:" + item["Id"]
            out.append({"id": image_id, "names": list(item.get("Names") or []), "size": item.get("Size"),
                        "created": item.get("CreatedAt")})
        return out

    def inspect(self, ref: str) -> dict[str, Any]:
        info = json.loads(self._run("image", "inspect", ref))[0]
        image_id = info["Id"] if info["Id"].startswith("sha256:") else "sha256:" + info["Id"]
        return {"id": image_id, "names": list(info.get("RepoTags") or []), "size": info.get("Size"),
                "created": info.get("Created")}

    def remove(self, ref: str) -> list[str]:
        image_id = self.inspect(ref)["id"]
        self._run("rmi", "--force", image_id)
        return [image_id]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "command": self.argv}


def make_backend(name: str, *, store: str | None, podman: str | None = None) -> Backend:
    if name == "builtin":
        if not store:
            raise StoreError("the builtin backend needs --store DIR", reason="no-store")
        return BuiltinBackend(store)
    if name == "podman":
        return PodmanBackend(podman, staging_dir=store)
    raise StoreError(f"unknown backend {name!r}: use builtin or podman", reason="bad-backend")

