"""Turning a staged archive into images ready to commit: which format it is, what its manifests
say, whether every digest, size and ``diff_id`` agrees with the bytes, and which name podman would
give each image.

- oci-archive: ``index.json`` lists image manifests, each stored as-is (its digest is kept); the
  name comes from the ``org.opencontainers.image.ref.name`` annotation (or, if present, the full
  name docker writes in ``io.containerd.image.name``), normalised as podman does.
- docker-archive: ``manifest.json`` lists ``Config``, ``RepoTags`` and ``Layers``; the config is
  stored as-is and an OCI manifest is written for it, layers kept as they came (compressed or not)
  with the matching media type; names are the RepoTags, normalised as podman does.

Either way the image id is the config digest, which is what podman reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsbridge.errors import ArchiveError
from fsbridge.store.archive import StagedArchive, StagedBlob
from fsbridge.store.formats import (
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME,
    CONFIGS,
    IMAGE_MANIFESTS,
    INDEXES,
    LAYER_COMPRESSION,
    OCI_CONFIG,
    OCI_LAYER_FOR,
    OCI_LAYOUT_VERSION,
    OCI_MANIFEST,
    Descriptor,
    canonical_json,
    expect_dict,
    expect_list,
    expect_str,
    hex_of,
    parse_json,
)
from fsbridge.store.limits import Limits
from fsbridge.store.names import normalize_name

DOCKER_ARCHIVE = "docker-archive"
OCI_ARCHIVE = "oci-archive"


@dataclass
class PendingImage:
    """An image read from the archive, verified, not yet committed."""

    id: str
    manifest: Descriptor
    names: list[str]
    created: str | None
    size: int
    #: hex digest -> where its verified bytes are (staging or the store): manifest, config, layers
    blobs: dict[str, Path] = field(default_factory=dict)


def interpret(archive: StagedArchive, limits: Limits) -> tuple[str, list[PendingImage]]:
    """The archive's format and its images, in archive order (one per distinct manifest)."""
    has_index = archive.get("index.json") is not None
    has_docker_manifest = archive.get("manifest.json") is not None
    if has_index and (archive.get("oci-layout") is not None or not has_docker_manifest):
        return OCI_ARCHIVE, _merge(_oci_images(archive, limits))
    if has_docker_manifest:
        return DOCKER_ARCHIVE, _merge(_docker_images(archive, limits))
    if archive.get("repositories") is not None:
        raise ArchiveError(
            "this docker-archive has no manifest.json (the format of docker before 1.10); "
            "save it again with a current docker or podman"
        )
    raise ArchiveError(
        "this is neither a docker-archive (no manifest.json) nor an oci-archive (no index.json)"
    )


def _merge(images: list[PendingImage]) -> list[PendingImage]:
    merged: dict[str, PendingImage] = {}
    for image in images:
        known = merged.get(image.manifest.digest)
        if known is None:
            merged[image.manifest.digest] = image
        else:
            known.names.extend(n for n in image.names if n not in known.names)
    return list(merged.values())


def _document(blob: StagedBlob, limits: Limits, what: str) -> Any:
    if blob.size > limits.max_json_bytes:
        raise ArchiveError(
            f"{what} is {blob.size} bytes; documents over {limits.max_json_bytes} bytes are refused"
        )
    if blob.compression is not None:
        raise ArchiveError(f"{what} is {blob.compression}-compressed, not JSON")
    try:
        data = blob.path.read_bytes()
    except OSError as exc:
        raise ArchiveError(f"{what} could not be read back from staging: {exc}") from None
    return parse_json(data, what)


def _member(archive: StagedArchive, name: str, what: str) -> StagedBlob:
    blob = archive.get(name)
    if blob is None:
        raise ArchiveError(f"{what} {name!r} is missing from the archive")
    return blob


def _names(raw: list[str], what: str) -> list[str]:
    names: list[str] = []
    for item in raw:
        try:
            name = normalize_name(item)
        except ValueError as exc:
            raise ArchiveError(f"{what}: {exc}") from None
        if name not in names:
            names.append(name)
    return names


def _check_layers(config: Any, layers: list[StagedBlob], what: str) -> str | None:
    """Every layer must unpack to the diff_id the config lists; returns the config's creation time."""
    config = expect_dict(config, what)
    rootfs = expect_dict(config.get("rootfs"), f"{what} rootfs")
    if rootfs.get("type") != "layers":
        raise ArchiveError(f"{what} rootfs.type must be 'layers'")
    diff_ids = expect_list(rootfs.get("diff_ids"), f"{what} rootfs.diff_ids")
    if len(diff_ids) != len(layers):
        raise ArchiveError(f"{what} lists {len(diff_ids)} diff_ids for {len(layers)} layers")
    for position, (expected, layer) in enumerate(zip(diff_ids, layers, strict=True)):
        if expected != layer.diff_id:
            raise ArchiveError(
                f"layer {position + 1} ({layer.digest}) unpacks to {layer.diff_id}, "
                f"but {what} says {expected!r}"
            )
    created = config.get("created")
    return created if isinstance(created, str) else None


# --------------------------------------------------------------------------- oci-archive


def _oci_blob(archive: StagedArchive, descriptor: Descriptor, what: str) -> StagedBlob:
    blob = archive.get("blobs/sha256/" + hex_of(descriptor.digest))
    if blob is None:
        raise ArchiveError(f"{what} {descriptor.digest} is missing from the archive")
    if blob.digest != descriptor.digest:  # members are checked against their names when staged
        raise ArchiveError(f"{what} {descriptor.digest} does not match its content ({blob.digest})")
    if blob.size != descriptor.size:
        raise ArchiveError(
            f"{what} {descriptor.digest} is declared as {descriptor.size} bytes, "
            f"but the archive holds {blob.size}"
        )
    return blob


def _oci_images(archive: StagedArchive, limits: Limits) -> list[PendingImage]:
    marker_blob = archive.get("oci-layout")
    if marker_blob is not None:
        marker = expect_dict(_document(marker_blob, limits, "oci-layout"), "oci-layout")
        version = marker.get("imageLayoutVersion")
        if version != OCI_LAYOUT_VERSION:
            raise ArchiveError(
                f"oci-layout declares version {version!r}; fsbridge reads {OCI_LAYOUT_VERSION}"
            )
    index = expect_dict(
        _document(_member(archive, "index.json", "the index"), limits, "index.json"), "index.json"
    )
    if index.get("schemaVersion") != 2:
        raise ArchiveError("index.json must have schemaVersion 2")
    entries = expect_list(index.get("manifests"), "index.json manifests")
    if not entries:
        raise ArchiveError("index.json lists no images")
    images: list[PendingImage] = []
    for position, raw in enumerate(entries):
        what = f"index.json manifests[{position}]"
        descriptor = Descriptor.parse(raw, what)
        if descriptor.media_type in INDEXES:
            raise ArchiveError(
                f"{what} is a multi-platform image index; fsbridge loads single-platform image archives"
            )
        if descriptor.media_type not in IMAGE_MANIFESTS:
            raise ArchiveError(
                f"{what} has media type {descriptor.media_type!r}, which is not an image manifest"
            )
        images.append(_oci_image(archive, descriptor, limits, what))
    return images


def _oci_image(archive: StagedArchive, descriptor: Descriptor, limits: Limits, what: str) -> PendingImage:
    manifest_blob = _oci_blob(archive, descriptor, "image manifest")
    what = f"manifest {descriptor.digest}"
    manifest = expect_dict(_document(manifest_blob, limits, what), what)
    if manifest.get("schemaVersion") != 2:
        raise ArchiveError(f"{what} must have schemaVersion 2")
    declared_type = manifest.get("mediaType")
    if declared_type is not None and declared_type != descriptor.media_type:
        raise ArchiveError(
            f"{what} says it is {declared_type!r} but the index says {descriptor.media_type!r}"
        )
    config_descriptor = Descriptor.parse(manifest.get("config"), f"{what} config")
    if config_descriptor.media_type not in CONFIGS:
        raise ArchiveError(
            f"{what} has a config of type {config_descriptor.media_type!r}: it is not a container image"
        )
    config_blob = _oci_blob(archive, config_descriptor, "image config")
    layers: list[StagedBlob] = []
    for position, raw in enumerate(expect_list(manifest.get("layers"), f"{what} layers")):
        layer = Descriptor.parse(raw, f"{what} layers[{position}]")
        if layer.media_type not in LAYER_COMPRESSION:
            raise ArchiveError(f"{what} layer {position + 1} has unsupported media type {layer.media_type!r}")
        blob = _oci_blob(archive, layer, "layer")
        expected = LAYER_COMPRESSION[layer.media_type]
        if blob.compression != expected:
            raise ArchiveError(
                f"layer {layer.digest} is declared as {layer.media_type} "
                f"but its bytes are {blob.compression or 'uncompressed'}"
            )
        layers.append(blob)
    config = _document(config_blob, limits, f"image config {config_descriptor.digest}")
    created = _check_layers(config, layers, f"image config {config_descriptor.digest}")
    annotations = descriptor.annotations
    name = annotations.get(ANNOTATION_IMAGE_NAME) or annotations.get(ANNOTATION_REF_NAME)
    names = _names([name], what) if name else []
    return PendingImage(
        id=config_descriptor.digest,
        manifest=Descriptor(descriptor.media_type, descriptor.digest, descriptor.size, {}),
        names=names,
        created=created,
        size=config_blob.size + sum(layer.size for layer in layers),
        blobs=_blob_paths([manifest_blob, config_blob, *layers]),
    )


def _blob_paths(blobs: list[StagedBlob]) -> dict[str, Path]:
    return {hex_of(blob.digest): blob.path for blob in blobs}


# --------------------------------------------------------------------------- docker-archive


def _docker_images(archive: StagedArchive, limits: Limits) -> list[PendingImage]:
    document = _document(_member(archive, "manifest.json", "the manifest"), limits, "manifest.json")
    entries = expect_list(document, "manifest.json")
    if not entries:
        raise ArchiveError("manifest.json lists no images")
    return [_docker_image(archive, entry, limits, f"manifest.json[{i}]") for i, entry in enumerate(entries)]


def _docker_image(archive: StagedArchive, entry: Any, limits: Limits, what: str) -> PendingImage:
    entry = expect_dict(entry, what)
    config_name = expect_str(entry.get("Config"), f"{what}.Config")
    tags = entry.get("RepoTags") or []
    tags = [expect_str(tag, f"{what}.RepoTags item") for tag in expect_list(tags, f"{what}.RepoTags")]
    layer_names = [
        expect_str(n, f"{what}.Layers item") for n in expect_list(entry.get("Layers"), f"{what}.Layers")
    ]
    config_blob = _member(archive, config_name, "image config")
    config = _document(config_blob, limits, f"image config {config_name!r}")
    layers = [_member(archive, name, "layer") for name in layer_names]
    created = _check_layers(config, layers, f"image config {config_name!r}")
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_blob.digest, "size": config_blob.size},
        "layers": [
            {"mediaType": OCI_LAYER_FOR[layer.compression], "digest": layer.digest, "size": layer.size}
            for layer in layers
        ],
    }
    data = canonical_json(manifest)
    digest, path = archive.staging.add_bytes(data)
    blobs = _blob_paths([config_blob, *layers])
    blobs[hex_of(digest)] = path
    return PendingImage(
        id=config_blob.digest,
        manifest=Descriptor(OCI_MANIFEST, digest, len(data), {}),
        names=_names(tags, what),
        created=created,
        size=config_blob.size + sum(layer.size for layer in layers),
        blobs=blobs,
    )
