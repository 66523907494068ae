"""The OCI and docker vocabulary the store speaks: media types, digests, descriptors, and a strict
JSON reader, kept apart so that the archive readers and the on-disk store agree on one spelling."""

from __future__ import annotations

import json
import re
from typing import Any

from fsbridge.errors import ArchiveError

OCI_LAYOUT_VERSION = "1.0.0"

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

IMAGE_MANIFESTS = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEXES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
CONFIGS = frozenset({OCI_CONFIG, DOCKER_CONFIG})

#: layer media type -> the compression its bytes must carry (None: a plain tar)
LAYER_COMPRESSION: dict[str, str | None] = {
    OCI_LAYER: None,
    OCI_LAYER_GZIP: "gzip",
    OCI_LAYER_ZSTD: "zstd",
    DOCKER_LAYER: None,
    DOCKER_LAYER_GZIP: "gzip",
}

#: compression -> the OCI layer media type used when the store writes a manifest itself
OCI_LAYER_FOR: dict[str | None, str] = {None: OCI_LAYER, "gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD}

#: index annotations: podman and skopeo look images up by ref.name; containerd and docker by image.name
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"

_HEX64 = re.compile(r"[0-9a-f]{64}")


def is_hex64(text: str) -> bool:
    return bool(_HEX64.fullmatch(text))


def is_digest(value: object) -> bool:
    """True for a well-formed ``sha256:<64 lower-case hex>`` digest (the only algorithm stored)."""
    return isinstance(value, str) and value.startswith("sha256:") and is_hex64(value[7:])


def hex_of(digest: str) -> str:
    return digest[7:]


def canonical_json(value: Any) -> bytes:
    """Compact JSON in insertion order: stable bytes, so that writing the same thing twice yields
    the same digest."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(data: bytes, what: str) -> Any:
    """Parse ``data`` strictly: UTF-8, no duplicate keys (two readers could disagree on which one
    counts), no NaN/Infinity, bounded nesting. Raises ArchiveError naming ``what``."""
    try:
        text = data.decode("utf-8")
        return json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
    except RecursionError:
        raise ArchiveError(f"{what} is nested too deeply to be a real image document") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise ArchiveError(f"{what} is not valid JSON: {exc}") from None


def expect_dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ArchiveError(f"{what} must be a JSON object")
    return value


def expect_list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ArchiveError(f"{what} must be a JSON array")
    return value


def expect_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ArchiveError(f"{what} must be a string")
    return value


def expect_annotations(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    annotations = expect_dict(value, what)
    for key, item in annotations.items():
        if not isinstance(item, str):
            raise ArchiveError(f"{what}[{key!r}] must be a string")
    return annotations


class Descriptor:
    """A validated OCI descriptor: media type, sha256 digest, size, annotations."""

    __slots__ = ("annotations", "digest", "media_type", "size")

    def __init__(self, media_type: str, digest: str, size: int, annotations: dict[str, str]) -> None:
        self.media_type = media_type
        self.digest = digest
        self.size = size
        self.annotations = annotations

    @classmethod
    def parse(cls, value: Any, what: str) -> Descriptor:
        raw = expect_dict(value, what)
        media_type = expect_str(raw.get("mediaType"), f"{what}.mediaType")
        digest = expect_str(raw.get("digest"), f"{what}.digest")
        if not is_digest(digest):
            algorithm = digest.split(":", 1)[0] if ":" in digest else digest
            if algorithm != "sha256" and ":" in digest:
                raise ArchiveError(f"{what} uses digest algorithm {algorithm!r}; only sha256 is supported")
            raise ArchiveError(f"{what}.digest {digest!r} is not a sha256 digest")
        size = raw.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ArchiveError(f"{what}.size must be a non-negative integer")
        annotations = expect_annotations(raw.get("annotations"), f"{what}.annotations")
        return cls(media_type, digest, size, annotations)

    def to_json(self) -> dict[str, Any]:
        value: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            value["annotations"] = dict(self.annotations)
        return value
