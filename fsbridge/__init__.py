"""fsbridge: make host folders and image loads fast inside a container VM.

Public names are re-exported here; the implementation lives in modules named for their concern.
"""

from fsbridge.errors import (
    ArchiveError,
    ConfigError,
    FsbridgeError,
    MappingError,
    MountError,
    RemoteError,
    StoreError,
)

__version__ = "0.1.0"

__all__ = [
    "ArchiveError",
    "ConfigError",
    "FsbridgeError",
    "MappingError",
    "MountError",
    "RemoteError",
    "StoreError",
    "__version__",
]
