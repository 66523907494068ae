"""Reading an image archive (docker-archive or oci-archive; plain, or gzip/zstd-compressed as a
whole) in one sequential pass, because an upload body cannot seek and tar members come in any
order (docker-archive may put manifest.json last).

Every regular member streams into the load's staging area as it comes, hashed while written;
compressed members (gzip/zstd layers) are also decompressed on the fly, bounded, to learn their
uncompressed digest (the ``diff_id``). Nothing is interpreted here: the result maps member names
to staged blobs, and ``images.py`` reads the manifests from it once the whole archive is in.

Refused with ArchiveError: names that leave the archive (absolute, ``..``), links to anything but
a regular member inside the archive, devices/fifos/sparse files, a member given twice with
different content, a member named after a digest its bytes do not have, corrupt or truncated
data, and anything past the Limits.
"""

from __future__ import annotations

import contextlib
import hashlib
import posixpath
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsbridge.errors import ArchiveError
from fsbridge.store.compression import (
    GZIP,
    SNIFF_BYTES,
    ZSTD,
    ObservedReader,
    PrefixedReader,
    RatioBudget,
    Reader,
    decompressing,
    read_exactly,
    sniff,
)
from fsbridge.store.layout import Staging, store_failure
from fsbridge.store.limits import Limits

CHUNK = 1024 * 1024

#: members that are always JSON documents, refused as soon as their header shows them too large
_DOCUMENTS = frozenset({"manifest.json", "index.json", "oci-layout", "repositories"})

#: members whose name states their sha256: OCI blobs, and podman's docker-archive layers/configs
_DIGEST_NAMED = re.compile(r"(?:.*/)?blobs/sha256/(?P<a>[0-9a-f]{64})|(?P<b>[0-9a-f]{64})\.(?:tar|json)")


@dataclass(frozen=True)
class StagedBlob:
    """A regular member's bytes, staged: digest and size as stored; for a compressed member the
    compression and the digest/size of its uncompressed content (diff_id), else the same."""

    digest: str
    size: int
    compression: str | None
    diff_id: str
    uncompressed_size: int
    path: Path


@dataclass
class StagedArchive:
    """What one pass over an archive left in staging."""

    staging: Staging
    members: dict[str, StagedBlob] = field(default_factory=dict)
    #: the whole-archive compression, if any
    compression: str | None = None
    #: bytes read from the source (compressed, as given)
    source_bytes: int = 0

    def get(self, name: str) -> StagedBlob | None:
        return self.members.get(normalize_member_name(name))


def normalize_member_name(name: str) -> str:
    """``./a//b/`` -> ``a/b``; "" for the archive root."""
    parts = [part for part in name.split("/") if part not in ("", ".")]
    return "/".join(parts)


def _safe_name(raw: str, limits: Limits, what: str) -> str:
    if len(raw.encode("utf-8", "surrogateescape")) > limits.max_name_bytes:
        raise ArchiveError(f"{what} has a name longer than {limits.max_name_bytes} bytes")
    if "\x00" in raw:
        raise ArchiveError(f"{what} has a NUL byte in its name")
    if raw.startswith("/"):
        raise ArchiveError(f"archive entry {raw!r} has an absolute name, pointing outside the archive")
    name = normalize_member_name(raw)
    if ".." in name.split("/"):
        raise ArchiveError(f"archive entry {raw!r} climbs out of the archive with '..'")
    return name


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile reads pax headers and GNU long names into memory whole; cap them first, and refuse
    sparse members (never found in image archives)."""

    limits: Limits = Limits()

    def _proc_member(self, tarfile_: tarfile.TarFile) -> Any:
        if self.type in (
            tarfile.GNUTYPE_LONGNAME,
            tarfile.GNUTYPE_LONGLINK,
            tarfile.XHDTYPE,
            tarfile.XGLTYPE,
            tarfile.SOLARIS_XHDTYPE,
        ):
            if self.size > self.limits.max_header_bytes:
                raise ArchiveError(
                    f"the archive has an extended tar header of {self.size} bytes "
                    f"(more than {self.limits.max_header_bytes}); refusing it"
                )
        elif self.type == tarfile.GNUTYPE_SPARSE:
            raise ArchiveError(
                f"archive entry {self.name!r} is a sparse file, which image archives never hold"
            )
        return super()._proc_member(tarfile_)  # type: ignore[misc]


def read_archive(
    source: Reader,
    staging: Staging,
    limits: Limits,
    progress: Callable[[int], None] | None = None,
) -> StagedArchive:
    """Stage every member of the archive read from ``source`` (read to its very end)."""
    raw = ObservedReader(source, _source_observer(limits, progress))
    head = read_exactly(raw, SNIFF_BYTES)
    if not head:
        raise ArchiveError("the archive is empty")
    kind = sniff(head)
    result = StagedArchive(staging, compression=kind)
    layers_budget = RatioBudget(limits, raw, "the archive's layers together")
    stream: Reader
    if kind is None:
        stream = PrefixedReader(head, raw)
    elif kind in (GZIP, ZSTD):
        stream = decompressing(
            kind, raw, prefix=head, limits=limits, max_bytes=limits.max_archive_bytes, what="the archive"
        )
    else:
        raise ArchiveError(f"the archive is {kind}-compressed; fsbridge reads plain, gzip or zstd archives")

    _read_tar(stream, result, limits, layers_budget)
    # Read to the very end: compressed streams check their trailers there, and a caller hashing
    # the source (identity) must see every byte.
    while stream.read(CHUNK):
        pass
    while raw.read(CHUNK):
        pass
    result.source_bytes = raw.count
    return result


def _source_observer(limits: Limits, progress: Callable[[int], None] | None) -> Callable[[bytes], None]:
    """Counts the bytes as given (an upload may be endless), and reports progress."""
    total = 0

    def observe(chunk: bytes) -> None:
        nonlocal total
        total += len(chunk)
        if total > limits.max_archive_bytes:
            raise ArchiveError(f"the archive is larger than {limits.max_archive_bytes} bytes; refusing it")
        if progress is not None:
            progress(total)

    return observe


def _read_tar(stream: Reader, result: StagedArchive, limits: Limits, budget: RatioBudget) -> None:
    tarinfo = type("BoundedTarInfo", (_BoundedTarInfo,), {"limits": limits})
    entries = _Entries(result, limits, budget)
    try:
        # 1 MiB reads: tarfile's default 10 KiB records cost a Python call per 10 KiB of a layer
        with tarfile.open(fileobj=stream, mode="r|", tarinfo=tarinfo,  # type: ignore[call-overload]
                          bufsize=CHUNK) as archive:
            while (member := archive.next()) is not None:
                archive.members.clear()  # tarfile keeps every header otherwise
                entries.add(archive, member)
    except tarfile.TarError as exc:
        if "unexpected end of data" in str(exc):
            raise ArchiveError("the archive is truncated: it ends inside an entry") from None
        raise ArchiveError(f"the archive is not a readable tar file ({exc})") from None
    entries.finish()


class _Entries:
    """The entries seen so far: regular members go to staging as they come; links are recorded and
    resolved once every member is known (a link may precede its target)."""

    def __init__(self, result: StagedArchive, limits: Limits, budget: RatioBudget) -> None:
        self.result = result
        self.limits = limits
        self.budget = budget
        self.links: dict[str, tuple[str, str]] = {}  # name -> (target, "symlink" | "hard link")
        self.directories: set[str] = set()
        self.count = 0

    def add(self, archive: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.count += 1
        if self.count > self.limits.max_members:
            raise ArchiveError(f"the archive has more than {self.limits.max_members} entries; refusing it")
        name = _safe_name(member.name, self.limits, f"archive entry {member.name!r}")
        if getattr(member, "sparse", None) is not None:
            # tarfile would make up the holes: a few bytes could claim terabytes of zeros
            raise ArchiveError(f"archive entry {name!r} is a sparse file, which image archives never hold")
        if member.isdir():
            if name in self.result.members or name in self.links:
                raise ArchiveError(f"archive entry {name!r} is both a folder and a file")
            self.directories.add(name)
        elif member.isreg():
            self._regular(archive, member, name)
        elif member.issym() or member.islnk():
            kind = "symlink" if member.issym() else "hard link"
            target = _link_target(name, member, self.limits)
            if name in self.result.members or name in self.directories:
                raise ArchiveError(f"archive entry {name!r} appears twice, as different kinds")
            if self.links.setdefault(name, (target, kind)) != (target, kind):
                raise ArchiveError(f"archive entry {name!r} appears twice, pointing to different places")
        else:
            raise ArchiveError(
                f"archive entry {name!r} is a device, fifo or other special file; image archives hold none"
            )

    def _regular(self, archive: tarfile.TarFile, member: tarfile.TarInfo, name: str) -> None:
        if not name:
            raise ArchiveError("the archive has a file entry without a name")
        if name in _DOCUMENTS and member.size > self.limits.max_json_bytes:
            raise ArchiveError(
                f"{name} is {member.size} bytes; "
                f"documents over {self.limits.max_json_bytes} bytes are refused"
            )
        if name in self.directories or name in self.links:
            raise ArchiveError(f"archive entry {name!r} appears twice, as different kinds")
        fileobj = archive.extractfile(member)
        if fileobj is None:
            raise ArchiveError(f"archive entry {name!r} cannot be read")
        blob = _stage_member(fileobj, member.size, name, self.result.staging, self.limits, self.budget)
        previous = self.result.members.setdefault(name, blob)
        if previous.digest != blob.digest:
            raise ArchiveError(f"archive entry {name!r} appears twice with different content")

    def finish(self) -> None:
        if self.count == 0:
            raise ArchiveError("the archive holds no entries")
        _resolve_links(self.links, self.result, self.limits)


def _link_target(name: str, member: tarfile.TarInfo, limits: Limits) -> str:
    raw = member.linkname
    what = f"{'symlink' if member.issym() else 'hard link'} {name!r} -> {raw!r}"
    if len(raw.encode("utf-8", "surrogateescape")) > limits.max_name_bytes or "\x00" in raw or not raw:
        raise ArchiveError(f"{what} has an unusable target")
    if raw.startswith("/"):
        raise ArchiveError(f"{what} points outside the archive (absolute target)")
    if member.issym():
        joined = posixpath.normpath(posixpath.join(posixpath.dirname(name), raw))
    else:
        joined = posixpath.normpath(raw)  # hard link targets are archive paths
    if joined == ".." or joined.startswith(("../", "/")):
        raise ArchiveError(f"{what} points outside the archive")
    return normalize_member_name(joined)


def _resolve_links(links: dict[str, tuple[str, str]], result: StagedArchive, limits: Limits) -> None:
    """Make each link an alias of the regular member it reaches (podman links duplicate layers)."""
    for name, (target, kind) in links.items():
        seen = target
        for _ in range(limits.max_link_hops):
            if seen in result.members:
                result.members[name] = result.members[seen]
                break
            if seen not in links:
                raise ArchiveError(
                    f"{kind} {name!r} points to {target!r}, which is not a regular file in the archive"
                )
            seen = links[seen][0]
        else:
            raise ArchiveError(f"{kind} {name!r} goes through more than {limits.max_link_hops} links")


def _declared_digest(name: str) -> str | None:
    match = _DIGEST_NAMED.fullmatch(name)
    if match is None:
        return None
    return match.group("a") or match.group("b")


def _stage_member(
    fileobj: Reader, size: int, name: str, staging: Staging, limits: Limits, budget: RatioBudget
) -> StagedBlob:
    """Copy one member into staging, hashing it (and its decompressed content) on the way.

    A member named after its digest whose blob is already staged or stored is only hashed, not
    written again; its bytes must still hash to that name."""
    declared = _declared_digest(name)
    existing = staging.locate(declared) if declared else None
    digest = hashlib.sha256()
    sink = None
    temp: Path | None = None
    if existing is None:
        sink, temp = staging.temp_file()

    def observe(chunk: bytes) -> None:
        digest.update(chunk)
        if sink is not None:
            try:
                sink.write(chunk)
            except OSError as exc:
                raise store_failure("write a staging file", exc) from None

    what = f"archive entry {name!r}"
    try:
        member = ObservedReader(fileobj, observe)
        head = read_exactly(member, SNIFF_BYTES)
        kind = sniff(head)
        if kind in (GZIP, ZSTD):
            content = hashlib.sha256()
            reader = decompressing(
                kind,
                member,
                prefix=head,
                limits=limits,
                max_bytes=limits.max_layer_bytes,
                what=what,
                shared=budget,
            )
            while chunk := reader.read(CHUNK):
                content.update(chunk)
            uncompressed_size = reader.count
        else:
            kind = None
        while member.read(CHUNK):
            pass
        if member.count != size:
            raise ArchiveError(f"{what} is truncated ({member.count} of {size} bytes)")
        if sink is not None:
            try:
                sink.close()
            except OSError as exc:
                raise store_failure("write a staging file", exc) from None
    except BaseException:
        if sink is not None:
            with contextlib.suppress(OSError):
                sink.close()
            if temp is not None:
                temp.unlink(missing_ok=True)
        raise
    hex_digest = digest.hexdigest()
    if declared is not None and declared != hex_digest:
        if temp is not None:
            temp.unlink(missing_ok=True)
        raise ArchiveError(
            f"{what} is named after sha256:{declared} but its content hashes to sha256:{hex_digest}"
        )
    if temp is not None:
        path = staging.adopt(temp, hex_digest)
    else:
        assert existing is not None
        path = existing
    if kind is None:
        return StagedBlob("sha256:" + hex_digest, size, None, "sha256:" + hex_digest, size, path)
    return StagedBlob(
        "sha256:" + hex_digest, size, kind, "sha256:" + content.hexdigest(), uncompressed_size, path
    )
