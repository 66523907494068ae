"""Errors that fsbridge raises on purpose, each with a machine-readable reason.

The tree::

    FsbridgeError                 base: .reason (a short code) and a sentence for the user
    ├── ConfigError               bad --map / config file / option values
    ├── MappingError              a host path cannot be served: not-mapped, outside-export,
    │                             unc-unsupported, not-absolute, not-found, ...
    ├── MountError                mount point missing, busy, not empty, already mounted, ...
    ├── ArchiveError              an image archive is malformed or hostile (never partially stored)
    ├── StoreError                the image store itself failed (disk full, corrupt, unknown image)
    └── RemoteError               the fsbridge server refused or failed a request (client side)

Errors are translated at one boundary each: the FUSE adapter maps OSError to errno, the HTTP
server maps FsbridgeError to a problem response, the CLI to a message and exit status 1.
"""

from __future__ import annotations


class FsbridgeError(Exception):
    """Base of every deliberate fsbridge error."""

    reason = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.reason


class ConfigError(FsbridgeError):
    reason = "bad-config"


class MappingError(FsbridgeError):
    reason = "not-mapped"


class MountError(FsbridgeError):
    reason = "mount-failed"


class ArchiveError(FsbridgeError):
    reason = "bad-archive"


class StoreError(FsbridgeError):
    reason = "store-failed"


class RemoteError(FsbridgeError):
    reason = "remote-failed"

    def __init__(self, message: str, *, reason: str | None = None, status: int | None = None) -> None:
        super().__init__(message, reason=reason)
        self.status = status
