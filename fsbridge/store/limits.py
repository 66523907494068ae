"""The bounds a load works within, in one place, so that hostile archives cost bounded memory,
disk and time, and so that tests (and operators) can tighten them."""

from __future__ import annotations

from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


@dataclass(frozen=True)
class Limits:
    """Caps applied while an archive is read.

    Decompressed bytes are allowed up to ``ratio_floor`` regardless of the compressed size; past
    that, a stream may not grow beyond ``max_ratio`` times the compressed bytes consumed so far
    (a layer of zeros compresses about 1000:1 with gzip and far more with zstd; real layers stay
    well under 100:1). The absolute caps stop what the ratio lets through.
    """

    #: manifest.json, index.json, oci-layout, image manifests and configs
    max_json_bytes: int = 4 * MiB
    #: tar members in one archive (each costs a little memory until the load ends)
    max_members: int = 100_000
    #: a member's path or link target, in bytes
    max_name_bytes: int = 4096
    #: pax extended headers and GNU long names, which tarfile reads into memory whole
    max_header_bytes: int = 1 * MiB
    #: decompressed / compressed, enforced once a stream is past ``ratio_floor``
    max_ratio: int = 1000
    #: decompressed bytes always allowed, whatever the ratio
    ratio_floor: int = 256 * MiB
    #: one layer, uncompressed (only hashed, never stored uncompressed)
    max_layer_bytes: int = 64 * GiB
    #: an archive as read, and a whole gzip/zstd-compressed archive uncompressed (members are staged on disk)
    max_archive_bytes: int = 256 * GiB
    #: symbolic and hard links followed to reach a regular member
    max_link_hops: int = 8

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"limit {name} must be a positive integer, not {value!r}")
