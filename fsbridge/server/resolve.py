"""Turning a client's path reference into an open file the server may read — or a refusal.

A path reference names a host path and the file's identity. The server
1. maps the host path through the mapping rules (not-mapped, outside-export, unc-unsupported, ...),
2. resolves symbolic links on the share and refuses anything that leaves the export (outside-export),
3. opens the file — through the fsbridge mount when one runs (cached metadata, page cache), else on the
   raw share — and checks again, on the open descriptor, that it lies inside the export (a link swapped
   in between the check and the open cannot lead out),
4. compares the size with the identity at once (identity-mismatch); the digest is checked while the load
   streams the file, by the caller.

Every refusal is a MappingError / FsbridgeError with a reason code; the API answers it with 409 so that the
client uploads instead. Nothing outside an export is ever opened for reading.
"""

from __future__ import annotations

import errno
import os
import stat as stat_mod
from dataclasses import dataclass

from fsbridge.errors import FsbridgeError, MappingError
from fsbridge.identity import Identity
from fsbridge.mapping import MappingTable, Resolution


@dataclass
class OpenedReference:
    fd: int  # an open, read-only descriptor of the very file that was checked
    vm_path: str  # where it was opened in the VM
    resolution: Resolution
    size: int
    via_mount: bool

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _within(path: str, root: str) -> bool:
    root = root.rstrip("/") or "/"
    return path == root or path.startswith(root + "/") or root == "/"


def open_reference(table: MappingTable, host_path: str, identity: Identity,
                   mount: str | None = None) -> OpenedReference:
    """Resolve and open `host_path` for reading, or raise with the reason the client must upload."""
    if not table.mappings:
        raise MappingError("this server has no mapped host folders", reason="not-mapped")
    resolution = table.resolve(host_path, check=True)
    assert resolution.real_path is not None
    mapping = resolution.mapping
    real_root = os.path.realpath(mapping.backing)
    relative = os.path.relpath(resolution.real_path, real_root)
    if mount is not None:
        allowed_root = os.path.realpath(mount.rstrip("/") + mapping.exposed)
        vm_path = os.path.normpath(os.path.join(allowed_root, relative))
    else:
        allowed_root = real_root
        vm_path = resolution.real_path
    try:
        fd = os.open(vm_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            raise FsbridgeError(f"{host_path} does not exist in the VM", reason="not-found") from None
        if e.errno == errno.ELOOP:
            raise FsbridgeError(f"{host_path} is a symbolic link that changed while it was opened",
                                reason="outside-export") from None
        raise FsbridgeError(f"{host_path} cannot be read in the VM: {e.strerror}", reason="unreadable") from None
    try:
        opened = os.readlink(f"/proc/self/fd/{fd}")
        if not _within(opened, allowed_root):
            raise FsbridgeError(f"{host_path} leads to {opened}, outside the shared folder", reason="outside-export")
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            raise FsbridgeError(f"{host_path} is not a regular file", reason="not-a-file")
        if st.st_size != identity.size:
            raise FsbridgeError(
                f"{host_path} has {st.st_size} bytes in the VM where the client sees {identity.size}: "
                "not the same file (the share may lag behind the host)", reason="identity-mismatch")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return OpenedReference(fd, vm_path, resolution, st.st_size, mount is not None)
