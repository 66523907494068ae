"""ImageStore: the embedded image store's one entry point (load, list, inspect, remove, check),
tying the archive reader, the image interpreter and the on-disk layout together.

A load streams the archive once into staging, verifies everything, and only then commits: blobs
first (linked into place), then index.json (replaced atomically). It either commits whole or
leaves no trace in the index.

The index holds one entry per name (``org.opencontainers.image.ref.name`` and
``io.containerd.image.name`` both carry the full podman name, so that ``skopeo … oci:STORE:NAME``
finds it), plus one unnamed entry for an image that has no name (podman's ``<none>``). Like in
podman, a name belongs to one image: loading an image under a name another image had moves the
name, and an image left without names is kept, unnamed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from fsbridge.errors import ArchiveError, FsbridgeError, StoreError
from fsbridge.identity import Identity, IdentityVerifier
from fsbridge.store.archive import read_archive
from fsbridge.store.formats import (
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME,
    Descriptor,
    expect_dict,
    is_digest,
)
from fsbridge.store.images import PendingImage, interpret
from fsbridge.store.layout import Layout
from fsbridge.store.limits import Limits
from fsbridge.store.names import normalize_name, short_matches
from fsbridge.store.records import ImageRecord, LoadResult

_HEX_PREFIX = re.compile(r"(?:sha256:)?([0-9a-f]{4,64})")


def _entry_name(entry: dict[str, Any]) -> str | None:
    annotations = entry.get("annotations")
    if not isinstance(annotations, dict):
        return None
    name = annotations.get(ANNOTATION_IMAGE_NAME) or annotations.get(ANNOTATION_REF_NAME)
    return name if isinstance(name, str) and name else None


def _entry(manifest: Descriptor, name: str | None) -> dict[str, Any]:
    entry = {"mediaType": manifest.media_type, "digest": manifest.digest, "size": manifest.size}
    if name is not None:
        entry["annotations"] = {ANNOTATION_IMAGE_NAME: name, ANNOTATION_REF_NAME: name}
    return entry


def _unnamed(entry: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in entry.items() if key != "annotations"}


class ImageStore:
    """An OCI image layout at ``root`` (created if missing), safe to share between threads and
    processes."""

    def __init__(self, root: str | os.PathLike[str], *, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.layout = Layout(root)
        self._documents: dict[str, Any] = {}  # digest -> parsed manifest/config (blobs never change)

    @property
    def root(self) -> str:
        return str(self.layout.root)

    # ----------------------------------------------------------------- loading

    def load(
        self,
        fileobj: BinaryIO | Any,
        *,
        progress: Callable[[int], None] | None = None,
        check_source: Callable[[], None] | None = None,
    ) -> LoadResult:
        """Load every image of the archive read from ``fileobj`` (only ``read(n)`` is used: an
        upload body works). ``progress`` gets the bytes read so far. ``check_source`` runs after
        the source has been read to its end and before anything is committed; whatever it raises
        (e.g. an identity mismatch) aborts the load with no trace. Raises ArchiveError for a bad
        archive, StoreError if the store fails; exceptions from ``fileobj`` pass through."""
        with self.layout.load_guard(), self.layout.staging() as staging:
            staged = read_archive(fileobj, staging, self.limits, progress)
            archive_format, pending = interpret(staged, self.limits)
            if check_source is not None:
                check_source()
            blobs: dict[str, Path] = {}
            for image in pending:
                blobs.update(image.blobs)
            written, reused = self.layout.commit_blobs(blobs)
            with self.layout.index_lock():
                index = self.layout.read_index()
                index["manifests"] = self._assign(index["manifests"], pending)
                self.layout.write_index(index)
        return LoadResult(
            images=_loaded_records(pending),
            blobs_written=written,
            blobs_reused=reused,
            format=archive_format,
            compression=staged.compression,
            bytes_read=staged.source_bytes,
        )

    def load_path(
        self,
        path: str | os.PathLike[str],
        *,
        identity: Identity | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> LoadResult:
        """Load the archive file at ``path``. With ``identity``, the file must have that size and
        xxh3-128 digest, checked while it streams (FsbridgeError "identity-mismatch" otherwise;
        mtime is not compared here: shares round it differently)."""
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            raise FsbridgeError(f"{os.fspath(path)} does not exist", reason="not-found") from None
        except OSError as exc:
            raise FsbridgeError(
                f"{os.fspath(path)} cannot be read: {exc.strerror or exc}", reason="unreadable"
            ) from None
        with handle:
            if identity is None:
                return self.load(handle, progress=progress)
            size = os.fstat(handle.fileno()).st_size
            if size != identity.size:
                raise FsbridgeError(
                    f"{os.fspath(path)} has {size} bytes where the client's identity says {identity.size}",
                    reason="identity-mismatch",
                )
            verifier = IdentityVerifier(handle)
            return self.load(verifier, progress=progress, check_source=lambda: verifier.verify(identity))

    def _assign(self, entries: list[Any], pending: list[PendingImage]) -> list[dict[str, Any]]:
        """The index entries after giving each pending image its names (see the module docstring)."""
        named: dict[str, dict[str, Any]] = {}
        candidates: list[dict[str, Any]] = []
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            name = _entry_name(entry)
            if name is not None:
                named[name] = entry
            candidates.append(entry)
        for image in pending:
            for name in image.names:
                named[name] = _entry(image.manifest, name)
            candidates.append(_entry(image.manifest, None))
        named_ids = {self._image_id(entry) for entry in named.values()}
        unnamed: dict[str, dict[str, Any]] = {}
        for entry in candidates:  # the latest manifest of an image left without names stays
            image_id = self._image_id(entry)
            if image_id not in named_ids:
                unnamed[image_id] = _unnamed(entry)
        return [named[name] for name in sorted(named)] + sorted(
            unnamed.values(), key=lambda e: str(e.get("digest"))
        )

    # ----------------------------------------------------------------- reading

    def _document(self, digest: str) -> Any:
        document = self._documents.get(digest)
        if document is None:
            document = self.layout.read_document(digest)
            self._documents[digest] = document
        return document

    def _image_id(self, entry: dict[str, Any]) -> str:
        """The config digest an index entry's manifest names (its own digest if unreadable)."""
        digest = entry.get("digest")
        if not is_digest(digest):
            return str(digest)
        try:
            config = expect_dict(expect_dict(self._document(digest), "manifest").get("config"), "config")
        except (StoreError, ArchiveError):
            return digest
        config_digest = config.get("digest")
        return config_digest if is_digest(config_digest) else digest

    def _record(self, image_id: str, manifests: list[str], names: list[str]) -> ImageRecord:
        manifest = expect_dict(self._document(manifests[0]), "manifest")
        layers = manifest.get("layers") or []
        size = sum(
            part.get("size", 0)
            for part in [manifest.get("config") or {}, *layers]
            if isinstance(part, dict) and isinstance(part.get("size"), int)
        )
        created = None
        try:
            config = self._document(image_id)
            if isinstance(config, dict) and isinstance(config.get("created"), str):
                created = config["created"]
        except StoreError:
            pass
        return ImageRecord(
            id=image_id,
            names=names,
            manifest_digest=manifests[0],
            size=size,
            created=created,
            manifest_digests=manifests,
        )

    def images(self) -> list[ImageRecord]:
        """Every image, newest first (as ``podman images`` lists them)."""
        groups: dict[str, tuple[list[str], list[str]]] = {}
        for entry in self.layout.read_index()["manifests"]:
            if not isinstance(entry, dict) or not is_digest(entry.get("digest")):
                continue
            image_id = self._image_id(entry)
            if not is_digest(image_id) or image_id == entry["digest"]:
                continue  # unreadable manifest: check() reports it
            manifests, names = groups.setdefault(image_id, ([], []))
            if entry["digest"] not in manifests:
                manifests.append(entry["digest"])
            name = _entry_name(entry)
            if name is not None and name not in names:
                names.append(name)
        records: list[ImageRecord] = []
        for image_id, (manifests, names) in groups.items():
            try:
                records.append(self._record(image_id, manifests, names))
            except (StoreError, ArchiveError):
                continue
        records.sort(key=lambda r: r.id)
        records.sort(key=lambda r: r.created or "", reverse=True)
        return records

    def inspect(self, ref_or_id: str) -> ImageRecord:
        """The image named by a full id, an id prefix of at least 4 hex digits (with or without
        ``sha256:``), a full name, or a name podman would resolve (``fx-app:shared``)."""
        images = self.images()
        query = ref_or_id.strip()
        match = _HEX_PREFIX.fullmatch(query)
        if match is not None:
            prefix = "sha256:" + match.group(1)
            found = [image for image in images if image.id.startswith(prefix)]
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise StoreError(
                    f"{ref_or_id!r} matches {len(found)} images; give more of the id", reason="ambiguous"
                )
        for image in images:
            if query in image.names:
                return image
        try:
            normalized = normalize_name(query)
        except ValueError:
            normalized = None
        if normalized is not None:
            for image in images:
                if normalized in image.names:
                    return image
        found = [image for image in images if any(short_matches(query, name) for name in image.names)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise StoreError(
                f"{ref_or_id!r} matches {len(found)} images; give the full name", reason="ambiguous"
            )
        raise StoreError(f"no image {ref_or_id!r} in the store", reason="image-unknown")

    # ----------------------------------------------------------------- removing and checking

    def remove(self, ref_or_id: str) -> list[str]:
        """Remove the image (every name and manifest it has) and collect the blobs no image uses
        any more; returns the ids removed."""
        with self.layout.index_lock():
            image = self.inspect(ref_or_id)
            index = self.layout.read_index()
            index["manifests"] = [
                entry
                for entry in index["manifests"]
                if not (isinstance(entry, dict) and self._image_id(entry) == image.id)
            ]
            self.layout.write_index(index)
        self.collect_garbage()
        return [image.id]

    def collect_garbage(self) -> list[str]:
        """Delete blobs no index entry reaches (waits for loads in progress); returns their digests."""
        removed = self.layout.collect_garbage()
        for digest in removed:
            self._documents.pop(digest, None)
        return removed

    def check(self) -> list[str]:
        """Problems found, as sentences: blobs whose bytes do not match their digest, index entries
        naming incomplete images, a damaged index or layout marker. [] when healthy."""
        return self.layout.check()


def _loaded_records(pending: list[PendingImage]) -> list[ImageRecord]:
    records: dict[str, ImageRecord] = {}
    for image in pending:
        record = records.get(image.id)
        if record is None:
            records[image.id] = ImageRecord(
                id=image.id,
                names=list(image.names),
                manifest_digest=image.manifest.digest,
                size=image.size,
                created=image.created,
                manifest_digests=[image.manifest.digest],
            )
        else:
            record.names.extend(n for n in image.names if n not in record.names)
            if image.manifest.digest not in record.manifest_digests:
                record.manifest_digests.append(image.manifest.digest)
    return list(records.values())
