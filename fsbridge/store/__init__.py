"""The embedded image store: an OCI image layout on the VM's disk, loaded from docker-archive and
oci-archive tarballs (plain or gzip/zstd-compressed; gzip/zstd layers inside) in one verified
streaming pass, committed atomically.

Modules, one concern each: ``store`` (the ImageStore entry point), ``archive`` (streaming tar
reading into staging), ``images`` (manifests, verification, names), ``layout`` (the on-disk
layout: blobs, index, locks, GC, fsck), ``compression`` (bounded gzip/zstd), ``names`` (podman's
name normalisation), ``formats`` (media types, digests, strict JSON), ``limits``, ``records``.
"""

from fsbridge.store.limits import Limits
from fsbridge.store.records import ImageRecord, LoadResult
from fsbridge.store.store import ImageStore

__all__ = ["ImageRecord", "ImageStore", "Limits", "LoadResult"]
