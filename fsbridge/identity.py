"""A file's identity: size, mtime_ns and an xxh3-128 digest of its bytes.

The client computes it on the host before it sends a path reference; the server checks the file it
resolved that path to against it *while the load streams the file* (IdentityVerifier), so a path
that names a different or changed file is refused ("identity-mismatch") without a second pass over
the bytes. xxh3-128 is not a cryptographic hash: it guards against mistakes (a stale mapping, a
file replaced since), not against an adversary who controls the host file, who could as well send
any bytes by upload. The image store verifies every blob by sha256 anyway.

Host-side module: standard library and xxhash only, so that it runs on macOS and Windows.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

import xxhash

from fsbridge.errors import FsbridgeError

CHUNK = 1024 * 1024
_HEX32 = re.compile(r"[0-9a-f]{32}")
_KEYS = ("size", "mtime_ns", "xxh3_128")


@dataclass(frozen=True)
class Identity:
    size: int
    mtime_ns: int
    xxh3_128: str

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "mtime_ns": self.mtime_ns, "xxh3_128": self.xxh3_128}

    @classmethod
    def from_json(cls, value: Any) -> Identity:
        """Parse the wire form; ValueError with a sentence saying what is wrong."""
        if not isinstance(value, dict):
            raise ValueError("an identity must be a JSON object with size, mtime_ns and xxh3_128")  # noqa: TRY004
        missing = [key for key in _KEYS if key not in value]
        if missing:
            raise ValueError(f"the identity lacks {', '.join(missing)}")
        unknown = sorted(set(value) - set(_KEYS))
        if unknown:
            raise ValueError(f"the identity has unknown keys: {', '.join(map(str, unknown))}")
        size, mtime_ns, digest = value["size"], value["mtime_ns"], value["xxh3_128"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError("the identity's size must be a non-negative integer")
        if not isinstance(mtime_ns, int) or isinstance(mtime_ns, bool):
            raise ValueError("the identity's mtime_ns must be an integer (nanoseconds since the epoch)")  # noqa: TRY004
        if not isinstance(digest, str) or not _HEX32.fullmatch(digest):
            raise ValueError("the identity's xxh3_128 must be 32 lower-case hexadecimal digits")
        return cls(size, mtime_ns, digest)


def compute_identity(
    path: str | os.PathLike[str], *, progress: Callable[[int], None] | None = None
) -> Identity:
    """Hash ``path`` in one streaming pass (1 MiB reads).

    ``progress`` gets the number of bytes hashed so far after each read. The file is stat'ed
    through the open descriptor before and after reading; if its size or mtime moved meanwhile, or
    the bytes read differ from the size, FsbridgeError with reason "file-changed" is raised (an
    error of fsbridge's own rather than an OSError: nothing failed at the OS level, and the CLI
    reports it as a sentence). Opening or reading the file may raise OSError as usual.
    """
    hasher = xxhash.xxh3_128()
    with open(path, "rb") as handle:
        before = os.fstat(handle.fileno())
        total = 0
        while chunk := handle.read(CHUNK):
            hasher.update(chunk)
            total += len(chunk)
            if progress is not None:
                progress(total)
        after = os.fstat(handle.fileno())
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or total != after.st_size:
        raise FsbridgeError(
            f"{os.fspath(path)} changed while it was being hashed; "
            "try again once it is no longer being written",
            reason="file-changed",
        )
    return Identity(size=total, mtime_ns=after.st_mtime_ns, xxh3_128=hasher.hexdigest())


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class IdentityVerifier:
    """A read-only, non-seekable view of a binary file that hashes (xxh3-128) and counts every
    byte read through it, so that the reader (the image store) verifies the identity in the same
    pass that loads the file. Call ``verify`` once the file has been read to its end."""

    def __init__(self, fileobj: BinaryIO | _Readable) -> None:
        self._fileobj = fileobj
        self._hasher = xxhash.xxh3_128()
        self.bytes_read = 0

    def read(self, n: int = -1, /) -> bytes:
        data = self._fileobj.read(n)
        if data:
            self._hasher.update(data)
            self.bytes_read += len(data)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()

    def verify(self, expected: Identity) -> None:
        """FsbridgeError(reason="identity-mismatch") unless the bytes read have the expected size
        and digest (mtime is the caller's to compare: it is not in the bytes)."""
        if self.bytes_read != expected.size:
            raise FsbridgeError(
                f"the file read has {self.bytes_read} bytes where the client's identity says {expected.size}",
                reason="identity-mismatch",
            )
        actual = self.hexdigest()
        if actual != expected.xxh3_128:
            raise FsbridgeError(
                f"the file read hashes to xxh3-128 {actual} "
                f"where the client's identity says {expected.xxh3_128}",
                reason="identity-mismatch",
            )
