"""The on-disk OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256/…``) and the rules
that keep it consistent when loads run in several threads and processes, or die half-way.

- Blobs only ever appear under ``blobs/sha256`` complete and verified: a load stages them in a
  private directory on the same file system, fsyncs them and links them into place; an existing
  blob is never rewritten.
- ``index.json`` is replaced atomically (temp file, fsync, ``os.replace``, fsync of the folder)
  under an exclusive lock, so readers need no lock and every index they see is whole.
- Loads hold ``gc.lock`` shared from their first byte to their commit; garbage collection holds
  it exclusively, so it never deletes a blob a load in flight is counting on.
- A staging directory is locked by its load; one whose lock is free belongs to a dead process and
  is removed at the next open. Blobs linked in by a load that died before its index commit are
  never in the index; garbage collection removes them.

The state fsbridge needs beside the layout (locks, staging) lives in ``.fsbridge/``, which OCI
readers such as skopeo ignore.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from fsbridge.errors import ArchiveError, StoreError
from fsbridge.store.formats import (
    CONFIGS,
    IMAGE_MANIFESTS,
    OCI_INDEX,
    OCI_LAYOUT_VERSION,
    Descriptor,
    canonical_json,
    expect_dict,
    expect_list,
    hex_of,
    is_hex64,
    parse_json,
)

STATE_DIR = ".fsbridge"
CHUNK = 1024 * 1024
#: blobs are read back only for manifests and configs, never for layers
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
#: a "new-" staging directory this old was abandoned between mkdtemp and its rename
_ABANDONED_AFTER_S = 3600

_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


def _thread_lock(key: str) -> threading.Lock:
    with _THREAD_LOCKS_GUARD:
        return _THREAD_LOCKS.setdefault(key, threading.Lock())


def store_failure(action: str, exc: OSError) -> StoreError:
    return StoreError(f"the image store could not {action}: {exc.strerror or exc}")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def empty_index() -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}


class Staging:
    """One load's private directory: members stream into temp files here, are renamed to their
    digest once hashed, and the ones the images need are linked into the store at commit."""

    def __init__(self, layout: Layout, path: Path) -> None:
        self.layout = layout
        self.path = path

    def temp_file(self) -> tuple[BinaryIO, Path]:
        try:
            fd, name = tempfile.mkstemp(prefix="part-", dir=self.path)
        except OSError as exc:
            raise store_failure("create a staging file", exc) from None
        return os.fdopen(fd, "wb", buffering=0), Path(name)  # chunks arrive 1 MiB at a time

    def staged(self, hex_digest: str) -> Path | None:
        path = self.path / hex_digest
        return path if path.exists() else None

    def locate(self, hex_digest: str) -> Path | None:
        """Where the bytes of a blob can be read: staged by this load, or already in the store."""
        return self.staged(hex_digest) or self.layout.existing_blob(hex_digest)

    def adopt(self, temp: Path, hex_digest: str) -> Path:
        """Name a hashed temp file after its digest (dropping it if those bytes are staged already)."""
        target = self.path / hex_digest
        try:
            if target.exists():
                temp.unlink()
            else:
                os.replace(temp, target)
        except OSError as exc:
            raise store_failure("stage a blob", exc) from None
        return target

    def add_bytes(self, data: bytes) -> tuple[str, Path]:
        """Stage a blob made here (a manifest written for a docker-archive image)."""
        hex_digest = hashlib.sha256(data).hexdigest()
        existing = self.locate(hex_digest)
        if existing is not None:
            return "sha256:" + hex_digest, existing
        handle, temp = self.temp_file()
        try:
            with handle:
                handle.write(data)
        except OSError as exc:
            raise store_failure("write a staging file", exc) from None
        return "sha256:" + hex_digest, self.adopt(temp, hex_digest)

    def read_document(self, hex_digest: str, cap: int, what: str) -> bytes:
        """The bytes of a staged or stored JSON blob, refused past ``cap``."""
        path = self.locate(hex_digest)
        if path is None:
            raise ArchiveError(f"{what} (sha256:{hex_digest}) is missing from the archive")
        try:
            size = path.stat().st_size
            if size > cap:
                raise ArchiveError(f"{what} is {size} bytes; documents over {cap} bytes are refused")
            return path.read_bytes()
        except OSError as exc:
            raise store_failure("read a staged blob", exc) from None


class Layout:
    """The layout folder: blob paths, the index file, locks, staging, commit, GC and fsck."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        self.blobs = self.root / "blobs" / "sha256"
        self.index_path = self.root / "index.json"
        self.layout_path = self.root / "oci-layout"
        self.state = self.root / STATE_DIR
        self.tmp = self.state / "tmp"
        self._key = str(self.root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if not self.layout_path.exists():
                foreign = {p.name for p in self.root.iterdir()} - {
                    "blobs",
                    "index.json",
                    "oci-layout",
                    STATE_DIR,
                }
                if foreign:
                    raise StoreError(
                        f"{self.root} is not empty and is not an OCI image layout; "
                        "choose an empty folder for the image store"
                    )
            self.blobs.mkdir(parents=True, exist_ok=True)
            self.tmp.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise store_failure(f"create its folders under {self.root}", exc) from None
        with self.index_lock():
            self._initialise()
        self.clean_stale_staging()

    # ----------------------------------------------------------------- paths and blobs

    def blob_path(self, hex_digest: str) -> Path:
        return self.blobs / hex_digest

    def existing_blob(self, hex_digest: str) -> Path | None:
        path = self.blobs / hex_digest
        return path if path.is_file() else None

    def read_blob(self, digest: str, cap: int = MAX_DOCUMENT_BYTES) -> bytes:
        """A stored blob's bytes (a manifest or config), refused past ``cap``; StoreError if absent."""
        path = self.blobs / hex_of(digest)
        try:
            with open(path, "rb") as handle:
                data = handle.read(cap + 1)
        except FileNotFoundError:
            raise StoreError(
                f"blob {digest} is missing from the image store", reason="store-corrupt"
            ) from None
        except OSError as exc:
            raise store_failure(f"read blob {digest}", exc) from None
        if len(data) > cap:
            raise StoreError(f"blob {digest} is larger than {cap} bytes", reason="store-corrupt")
        return data

    def read_document(self, digest: str) -> Any:
        try:
            return parse_json(self.read_blob(digest), f"blob {digest}")
        except ArchiveError as exc:
            raise StoreError(exc.message, reason="store-corrupt") from None

    # ----------------------------------------------------------------- locks

    @contextlib.contextmanager
    def _flock(self, name: str, operation: int) -> Iterator[None]:
        try:
            fd = os.open(self.state / name, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise store_failure(f"open its lock file {name}", exc) from None
        try:
            fcntl.flock(fd, operation)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    @contextlib.contextmanager
    def index_lock(self) -> Iterator[None]:
        """Exclusive, short: held to read-modify-write index.json (threads, then processes)."""
        with _thread_lock(self._key), self._flock("index.lock", fcntl.LOCK_EX):
            yield

    @contextlib.contextmanager
    def load_guard(self) -> Iterator[None]:
        """Shared: held by a load from its first byte to its commit, so GC waits for it."""
        with self._flock("gc.lock", fcntl.LOCK_SH):
            yield

    @contextlib.contextmanager
    def gc_guard(self) -> Iterator[None]:
        with self._flock("gc.lock", fcntl.LOCK_EX):
            yield

    # ----------------------------------------------------------------- staging

    @contextlib.contextmanager
    def staging(self) -> Iterator[Staging]:
        """A locked private directory, removed (with whatever it holds) when the load ends."""
        try:
            fresh = Path(tempfile.mkdtemp(prefix="new-", dir=self.tmp))
            lock_fd = os.open(fresh / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise store_failure("create a staging folder", exc) from None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            path = self.tmp / ("load-" + fresh.name[len("new-") :])
            os.rename(fresh, path)  # only a locked directory is ever called load-*
            try:
                yield Staging(self, path)
            finally:
                shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(lock_fd)
            shutil.rmtree(fresh, ignore_errors=True)

    def clean_stale_staging(self) -> list[str]:
        """Remove what dead loads left behind; a live load's directory is locked and kept."""
        removed: list[str] = []
        try:
            entries = list(os.scandir(self.tmp))
        except OSError:
            return removed
        for entry in entries:
            if entry.name.startswith("load-"):
                try:
                    fd = os.open(os.path.join(entry.path, ".lock"), os.O_RDWR)
                except FileNotFoundError:
                    shutil.rmtree(entry.path, ignore_errors=True)
                    removed.append(entry.name)
                    continue
                except OSError:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    continue  # a load in progress holds it
                try:
                    shutil.rmtree(entry.path, ignore_errors=True)
                    removed.append(entry.name)
                finally:
                    os.close(fd)
            elif entry.name.startswith("new-"):
                with contextlib.suppress(OSError):
                    if time.time() - entry.stat().st_mtime > _ABANDONED_AFTER_S:
                        shutil.rmtree(entry.path, ignore_errors=True)
                        removed.append(entry.name)
        return removed

    # ----------------------------------------------------------------- commit

    def commit_blobs(self, blobs: dict[str, Path]) -> tuple[int, int]:
        """Put each ``hex digest -> staged path`` in place; returns (written, reused).

        A blob already in the store is kept as it is; a new one is fsynced, made read-only and
        hard-linked into ``blobs/sha256`` (a link never replaces an existing name)."""
        written = reused = 0
        try:
            for hex_digest, source in blobs.items():
                target = self.blobs / hex_digest
                if target.exists():
                    reused += 1
                    continue
                _fsync_file(source)
                os.chmod(source, 0o444)
                try:
                    os.link(source, target)
                except FileExistsError:
                    reused += 1
                    continue
                except OSError as exc:
                    if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EMLINK, errno.EXDEV):
                        raise
                    if target.exists():
                        reused += 1
                        continue
                    os.replace(source, target)  # no hard links here: same bytes either way
                written += 1
            if written:
                fsync_dir(self.blobs)
        except OSError as exc:
            raise store_failure("commit blobs", exc) from None
        return written, reused

    # ----------------------------------------------------------------- index

    def _initialise(self) -> None:
        try:
            if self.layout_path.exists():
                try:
                    marker = parse_json(self.layout_path.read_bytes(), "oci-layout")
                except ArchiveError as exc:
                    raise StoreError(f"{self.layout_path}: {exc.message}", reason="store-corrupt") from None
                version = marker.get("imageLayoutVersion") if isinstance(marker, dict) else None
                if version != OCI_LAYOUT_VERSION:
                    raise StoreError(
                        f"{self.layout_path} declares layout version {version!r}; "
                        f"this store handles {OCI_LAYOUT_VERSION}",
                        reason="store-corrupt",
                    )
            else:
                self._replace(self.layout_path, canonical_json({"imageLayoutVersion": OCI_LAYOUT_VERSION}))
            if not self.index_path.exists():
                self._replace(self.index_path, canonical_json(empty_index()))
            os.close(os.open(self.state / "gc.lock", os.O_RDWR | os.O_CREAT, 0o600))
            for entry in os.scandir(self.tmp):
                if entry.name.startswith("index-"):  # only ever present inside index_lock
                    os.unlink(entry.path)
        except OSError as exc:
            raise store_failure(f"initialise the layout at {self.root}", exc) from None

    def _replace(self, target: Path, data: bytes) -> None:
        fd, name = tempfile.mkstemp(prefix="index-", dir=self.tmp)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(name, 0o644)
            os.replace(name, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name)
            raise
        fsync_dir(target.parent)

    def read_index_bytes(self) -> bytes:
        try:
            return self.index_path.read_bytes()
        except OSError as exc:
            raise store_failure("read index.json", exc) from None

    def read_index(self) -> dict[str, Any]:
        """index.json, validated enough to be walked; StoreError if it is damaged."""
        try:
            index = expect_dict(parse_json(self.read_index_bytes(), "index.json"), "index.json")
            expect_list(index.get("manifests", []), "index.json manifests")
        except ArchiveError as exc:
            raise StoreError(f"the image store's {exc.message}", reason="store-corrupt") from None
        index.setdefault("manifests", [])
        return index

    def write_index(self, index: dict[str, Any]) -> bool:
        """Replace index.json atomically (caller holds index_lock); False if nothing changed."""
        data = canonical_json(index)
        if data == self.read_index_bytes():
            return False
        try:
            self._replace(self.index_path, data)
        except OSError as exc:
            raise store_failure("write index.json", exc) from None
        return True

    # ----------------------------------------------------------------- GC and fsck

    def image_blobs(self, manifest: Descriptor) -> list[Descriptor]:
        """The config and layer descriptors of a stored image manifest (StoreError if unreadable)."""
        document = self.read_document(manifest.digest)
        try:
            document = expect_dict(document, f"manifest {manifest.digest}")
            config = Descriptor.parse(document.get("config"), f"manifest {manifest.digest} config")
            layers = [
                Descriptor.parse(item, f"manifest {manifest.digest} layer {i}")
                for i, item in enumerate(
                    expect_list(document.get("layers"), f"manifest {manifest.digest} layers")
                )
            ]
        except ArchiveError as exc:
            raise StoreError(exc.message, reason="store-corrupt") from None
        return [config, *layers]

    def index_descriptors(self, index: dict[str, Any]) -> list[Descriptor]:
        try:
            return [
                Descriptor.parse(item, f"index.json manifest {i}")
                for i, item in enumerate(index["manifests"])
            ]
        except ArchiveError as exc:
            raise StoreError(f"the image store's {exc.message}", reason="store-corrupt") from None

    def referenced(self, index: dict[str, Any]) -> set[str]:
        """Hex digests of every blob the index reaches; StoreError if any part cannot be read,
        because then nothing can safely be called garbage."""
        keep: set[str] = set()
        for descriptor in self.index_descriptors(index):
            keep.add(hex_of(descriptor.digest))
            if descriptor.media_type not in IMAGE_MANIFESTS:
                raise StoreError(
                    f"index.json lists {descriptor.digest} of type {descriptor.media_type}, "
                    "which this store does not manage",
                    reason="store-corrupt",
                )
            keep.update(hex_of(d.digest) for d in self.image_blobs(descriptor))
        return keep

    def collect_garbage(self) -> list[str]:
        """Delete blobs no index entry reaches; returns their digests."""
        removed: list[str] = []
        with self.gc_guard():
            keep = self.referenced(self.read_index())
            try:
                for entry in os.scandir(self.blobs):
                    if entry.name not in keep:
                        os.unlink(entry.path)
                        removed.append("sha256:" + entry.name)
                if removed:
                    fsync_dir(self.blobs)
            except OSError as exc:
                raise store_failure("remove unreferenced blobs", exc) from None
        return sorted(removed)

    def check(self) -> list[str]:
        """Problems found, as sentences; [] when the layout is healthy."""
        problems: list[str] = []
        with self.load_guard():
            try:
                marker = parse_json(self.layout_path.read_bytes(), "oci-layout")
                if not isinstance(marker, dict) or marker.get("imageLayoutVersion") != OCI_LAYOUT_VERSION:
                    problems.append(f"oci-layout does not declare imageLayoutVersion {OCI_LAYOUT_VERSION}")
            except (OSError, ArchiveError) as exc:
                problems.append(f"oci-layout is unreadable: {exc}")
            sizes: dict[str, int] = {}
            try:
                entries = sorted(os.scandir(self.blobs), key=lambda e: e.name)
            except OSError as exc:
                problems.append(f"blobs/sha256 is unreadable: {exc}")
                entries = []
            for entry in entries:
                if not is_hex64(entry.name) or not entry.is_file(follow_symlinks=False):
                    problems.append(f"blobs/sha256/{entry.name} is not a blob")
                    continue
                try:
                    actual, size = _hash_file(Path(entry.path))
                except OSError as exc:
                    problems.append(f"blob sha256:{entry.name} is unreadable: {exc}")
                    continue
                sizes[entry.name] = size
                if actual != entry.name:
                    problems.append(
                        f"blob sha256:{entry.name} is corrupt: its content hashes to sha256:{actual}"
                    )
            try:
                index = self.read_index()
                descriptors = self.index_descriptors(index)
            except StoreError as exc:
                problems.append(exc.message)
                return problems
            for descriptor in descriptors:
                problems.extend(self._check_image(descriptor, sizes))
        return problems

    def _check_image(self, manifest: Descriptor, sizes: dict[str, int]) -> list[str]:
        name = manifest.annotations.get("org.opencontainers.image.ref.name") or manifest.digest
        if manifest.media_type not in IMAGE_MANIFESTS:
            return [f"index entry {name} has unsupported media type {manifest.media_type}"]
        problems = _size_problems(manifest, sizes, f"index entry {name}")
        if problems:
            return problems
        try:
            parts = self.image_blobs(manifest)
        except StoreError as exc:
            return [f"index entry {name}: {exc.message}"]
        for part in parts:
            problems.extend(_size_problems(part, sizes, f"image {name}"))
        if not problems and parts[0].media_type not in CONFIGS:
            problems.append(f"image {name} has a config of type {parts[0].media_type}")
        return problems


def _size_problems(descriptor: Descriptor, sizes: dict[str, int], where: str) -> list[str]:
    actual = sizes.get(hex_of(descriptor.digest))
    if actual is None:
        return [f"{where} needs blob {descriptor.digest}, which is missing"]
    if actual != descriptor.size:
        return [f"{where} declares {descriptor.digest} as {descriptor.size} bytes; it has {actual}"]
    return []


def _hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size
