"""What the store reports about images and loads: plain records with a JSON form, so that the
server and the CLI print the same fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ImageRecord:
    """An image as podman would list it.

    ``id`` is the config digest (podman's image id); ``names`` are normalised podman names;
    ``manifest_digest`` is the image's primary manifest (a named one first), ``manifest_digests``
    every manifest of that id the store holds (an image loaded from archives with differently
    compressed layers has several); ``size`` is the bytes stored for config and layers (layers as
    stored, compressed or not); ``created`` is the config's creation time, if it has one.
    """

    id: str
    names: list[str]
    manifest_digest: str
    size: int
    created: str | None
    manifest_digests: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "names": list(self.names),
            "manifest_digest": self.manifest_digest,
            "manifest_digests": list(self.manifest_digests or [self.manifest_digest]),
            "size": self.size,
            "created": self.created,
        }


@dataclass
class LoadResult:
    """One load: the images it brought (their names as this archive gave them), how many blobs
    were written and how many were already in the store."""

    images: list[ImageRecord]
    blobs_written: int
    blobs_reused: int
    #: "docker-archive" or "oci-archive"
    format: str = ""
    #: compression of the archive as a whole: None, "gzip" or "zstd"
    compression: str | None = None
    #: bytes read from the source, as given (compressed)
    bytes_read: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "images": [image.to_json() for image in self.images],
            "blobs_written": self.blobs_written,
            "blobs_reused": self.blobs_reused,
            "format": self.format,
            "compression": self.compression,
            "bytes_read": self.bytes_read,
        }
