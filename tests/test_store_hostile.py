"""Hostile and broken archives: each is refused with a clear ArchiveError (never another exception),
leaves the store exactly as it was, and costs bounded memory and time."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import tarfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from fsbridge.errors import ArchiveError, FsbridgeError
from fsbridge.store import ImageStore, Limits
from fsbridge.store.limits import MiB

FIXTURES = Path(
    os.environ.get("FSBRIDGE_FIXTURES") or Path(__file__).resolve().parents[2] / "shared/fixtures/images"
)
HAVE_FIXTURES = (FIXTURES / "EXPECTED.tsv").is_file()
needs_fixtures = pytest.mark.skipif(
    not HAVE_FIXTURES,
    reason=f"image fixtures not found at {FIXTURES} (set FSBRIDGE_FIXTURES to their folder)",
)

# --------------------------------------------------------------------------- building archives


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


Entry = tuple[tarfile.TarInfo, "bytes | None"]


def reg(name: str, data: bytes) -> Entry:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> Entry:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def special(name: str, kind: bytes) -> Entry:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info, None


def build(entries: list[Entry], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as archive:
        for info, data in entries:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def layer_tar(content: bytes = b"hello\n") -> bytes:
    return build([reg("hello.txt", content)])


def docker_entries(
    layers: list[bytes] | None = None,
    *,
    stored: Callable[[bytes], bytes] = lambda b: b,
    tags: list[str] | None = None,
    diff_ids: list[str] | None = None,
) -> list[Entry]:
    """A small valid docker-archive, podman style (files named after their digests)."""
    layers = layers if layers is not None else [layer_tar()]
    blobs = [stored(layer) for layer in layers]
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {
                "type": "layers",
                "diff_ids": diff_ids or ["sha256:" + sha(layer) for layer in layers],
            },
        }
    ).encode()
    names = [sha(blob) + ".tar" for blob in blobs]
    manifest = [{"Config": sha(config) + ".json", "RepoTags": tags or ["example.com/t:1"], "Layers": names}]
    return [
        *(reg(n, b) for n, b in zip(names, blobs, strict=True)),
        reg(sha(config) + ".json", config),
        reg("manifest.json", json.dumps(manifest).encode()),
    ]


OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def oci_entries(
    blobs: list[tuple[bytes, str, bytes]] | None = None,
    *,
    manifest_edit: Callable[[dict], None] | None = None,
    index_edit: Callable[[dict], None] | None = None,
    config_bytes: bytes | None = None,
) -> list[Entry]:
    """A small valid oci-archive; ``blobs`` are (stored bytes, media type, uncompressed bytes)."""
    if blobs is None:
        layer = layer_tar()
        blobs = [(layer, OCI_LAYER, layer)]
    config = (
        config_bytes
        or json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": ["sha256:" + sha(raw) for _, _, raw in blobs]},
            }
        ).encode()
    )
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": "sha256:" + sha(config),
            "size": len(config),
        },
        "layers": [{"mediaType": mt, "digest": "sha256:" + sha(b), "size": len(b)} for b, mt, _ in blobs],
    }
    if manifest_edit:
        manifest_edit(manifest_doc)
    manifest = json.dumps(manifest_doc).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": "sha256:" + sha(manifest),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": "example.com/t:oci"},
            }
        ],
    }
    if index_edit:
        index_edit(index)
    entries = [
        reg("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'),
        reg("index.json", json.dumps(index).encode()),
    ]
    for data in [config, manifest, *(b for b, _, _ in blobs)]:
        entries.append(reg("blobs/sha256/" + sha(data), data))
    return entries


def gzip_members(chunk: bytes, count: int) -> bytes:
    """``count`` copies of ``chunk`` as a multi-member gzip stream: cheap to build however large."""
    return gzip.compress(chunk, compresslevel=9, mtime=0) * count


# --------------------------------------------------------------------------- the store under attack


def snapshot(root: Path) -> dict[str, object]:
    tree: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        tree[rel] = None if path.is_dir() else sha(path.read_bytes())
    return tree


@pytest.fixture
def store(tmp_path) -> ImageStore:
    """A store already holding an image, so that 'no trace' is checked against real content."""
    store = ImageStore(tmp_path / "store")
    store.load(io.BytesIO(build(docker_entries(tags=["example.com/existing:1"]))))
    if HAVE_FIXTURES:
        store.load_path(FIXTURES / "app-docker.tar")
    return store


def refused(store: ImageStore, data: bytes, words: str, limits: Limits | None = None) -> ArchiveError:
    target = ImageStore(store.root, limits=limits) if limits else store
    before = snapshot(store.layout.root)
    with pytest.raises(ArchiveError) as caught:
        target.load(io.BytesIO(data))
    assert words.lower() in caught.value.message.lower(), caught.value.message
    assert caught.value.reason == "bad-archive"
    assert snapshot(store.layout.root) == before
    return caught.value


def test_builders_make_loadable_archives(store):
    for entries in (docker_entries(tags=["example.com/b:1"]), oci_entries()):
        result = store.load(io.BytesIO(build(entries)))
        assert len(result.images) == 1
    assert store.check() == []


# --------------------------------------------------------------------------- names and links


def _docker_plus(*extra: Entry) -> bytes:
    return build([*docker_entries(), *extra])


@pytest.mark.parametrize(
    "entries, words",
    [
        ([reg("../evil", b"x")], "climbs out"),
        ([reg("a/../../evil", b"x")], "climbs out"),
        ([reg("/etc/evil", b"x")], "absolute name"),
        ([link("escape", "../../etc/passwd")], "points outside"),
        ([link("sub/escape", "../../x")], "points outside"),
        ([link("escape", "/etc/passwd")], "absolute target"),
        ([link("hard", "../etc/passwd", tarfile.LNKTYPE)], "points outside"),
        ([link("hard", "/etc/passwd", tarfile.LNKTYPE)], "absolute target"),
        ([link("dangling", "nothing-here")], "not a regular file"),
        ([special("d", tarfile.DIRTYPE), link("to-dir", "d")], "not a regular file"),
        ([link("a", "b"), link("b", "a")], "more than 8 links"),
        ([special("pipe", tarfile.FIFOTYPE)], "fifo"),
        ([special("tty", tarfile.CHRTYPE)], "device"),
        ([special("disk", tarfile.BLKTYPE)], "device"),
        ([reg("manifest.json", b"[]")], "appears twice with different content"),
        ([special("manifest.json", tarfile.DIRTYPE)], "both a folder and a file"),
        ([link("manifest.json", "x")], "appears twice"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_entries_that_leave_the_archive_or_are_not_files_are_refused(store, entries, words):
    refused(store, _docker_plus(*entries), words)


def test_a_sparse_member_is_refused(store):
    info = tarfile.TarInfo("sparse")
    info.type = tarfile.GNUTYPE_SPARSE
    refused(store, build([*docker_entries(), (info, None)], fmt=tarfile.GNU_FORMAT), "sparse")


def test_a_pax_sparse_member_claiming_a_terabyte_is_refused_at_once(store):
    info, data = reg("sparse", b"hello")
    info.pax_headers = {
        "GNU.sparse.map": "0,5",
        "GNU.sparse.realsize": str(2**40),
        "GNU.sparse.name": "sparse",
    }
    started = time.perf_counter()
    refused(store, _docker_plus((info, data)), "sparse")
    assert time.perf_counter() - started < 5


def test_links_inside_the_archive_to_regular_members_are_followed(store):
    layer = layer_tar(b"linked\n")
    entries = docker_entries([layer], tags=["example.com/linked:1"])
    manifest = json.loads(entries[-1][1])
    manifest[0]["Layers"] = ["layer/layer.tar"]
    entries[-1] = reg("manifest.json", json.dumps(manifest).encode())
    entries += [
        link("layer/layer.tar", "../hop.tar"),
        link("hop.tar", sha(layer) + ".tar", tarfile.LNKTYPE),
        reg("./" + sha(layer) + ".tar", layer),
    ]  # duplicate, same bytes, ./-prefixed: fine
    result = store.load(io.BytesIO(build(entries)))
    assert result.images[0].names == ["example.com/linked:1"]
    assert store.check() == []


def test_trailing_bytes_after_the_tar_are_read_and_ignored(store):
    data = build(docker_entries(tags=["example.com/trailing:1"])) + b"\0" * 10_000 + b"junk"
    seen: list[int] = []
    store.load(io.BytesIO(data), progress=seen.append)
    assert seen[-1] == len(data)  # read to the end, so a verifier sees every byte


def test_long_names_and_headers_are_capped(store):
    refused(store, _docker_plus(reg("n" * 5000, b"x")), "longer than 4096")
    info, data = reg("commented", b"x")
    info.pax_headers = {"comment": "x" * (2 * MiB)}
    refused(store, _docker_plus((info, data)), "extended tar header")
    refused(
        store,
        build([*docker_entries(), reg("g/" * (600 * 1024), b"x")], fmt=tarfile.GNU_FORMAT),
        "extended tar header",
    )


def test_too_many_members_is_refused(store):
    entries = [special(f"d{i}", tarfile.DIRTYPE) for i in range(60)]
    refused(store, _docker_plus(*entries), "more than 50 entries", Limits(max_members=50))


# --------------------------------------------------------------------------- digests, sizes, missing parts


def _edit_manifest(edit: Callable[[list], None]) -> bytes:
    entries = docker_entries()
    manifest = json.loads(entries[-1][1])
    edit(manifest)
    entries[-1] = reg("manifest.json", json.dumps(manifest).encode())
    return build(entries)


def _oci_without_blob(position: int) -> bytes:
    """Drop one blob: 0 the config, 1 the manifest, 2 the layer."""
    entries = oci_entries()
    del entries[2 + position]
    return build(entries)


def _oci_with_blob_named_wrongly() -> bytes:
    entries = oci_entries()
    info, data = entries[-1]
    entries[-1] = reg(info.name, data + b"tampered")
    return build(entries)


def _zstd_truncated_layer() -> bytes:
    raw = os.urandom(300_000)
    layer = build([reg("big", raw)])
    compressed = zstandard.ZstdCompressor().compress(layer)
    cut = compressed[: len(compressed) * 2 // 3]
    # what the zstd stream reader yields before the input runs out: a config naming this prefix
    # would pass if truncation went unnoticed
    prefix = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(cut)).read()
    return build(oci_entries([(cut, OCI_LAYER + "+zstd", prefix)]))


def _bad_layer(stored: bytes, media_type: str, raw: bytes | None = None) -> bytes:
    return build(oci_entries([(stored, media_type, raw if raw is not None else layer_tar())]))


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: build(docker_entries(diff_ids=["sha256:" + "0" * 64])), "unpacks to"),
        (
            lambda: build(docker_entries(diff_ids=["sha256:" + "0" * 64, "sha256:" + "1" * 64])),
            "2 diff_ids for 1 layers",
        ),
        (lambda: _edit_manifest(lambda m: m[0]["Layers"].append("missing.tar")), "'missing.tar' is missing"),
        (lambda: _edit_manifest(lambda m: m[0].update(Config="nope.json")), "is missing"),
        (lambda: _edit_manifest(lambda m: m[0].update(Layers="x")), "must be a JSON array"),
        (lambda: _edit_manifest(lambda m: m[0].update(RepoTags=["UPPER/Case:1"])), "lower case"),
        (lambda: _edit_manifest(lambda m: m.clear()), "lists no images"),
        (_oci_with_blob_named_wrongly, "is named after"),
        (lambda: _oci_without_blob(0), "image config sha256:"),
        (lambda: _oci_without_blob(1), "image manifest sha256:"),
        (lambda: _oci_without_blob(2), "layer sha256:"),
        (
            lambda: build(
                oci_entries(manifest_edit=lambda m: m["layers"][0].update(size=m["layers"][0]["size"] + 1))
            ),
            "declared as",
        ),
        (
            lambda: build(oci_entries(index_edit=lambda i: i["manifests"][0].update(size=1))),
            "declared as 1 bytes",
        ),
        (
            lambda: build(
                oci_entries(index_edit=lambda i: i["manifests"][0].update(digest="sha512:" + "0" * 128))
            ),
            "only sha256",
        ),
        (
            lambda: build(
                oci_entries(
                    index_edit=lambda i: i["manifests"][0].update(
                        mediaType="application/vnd.oci.image.index.v1+json"
                    )
                )
            ),
            "multi-platform",
        ),
        (lambda: build(oci_entries(index_edit=lambda i: i["manifests"].clear())), "lists no images"),
        (
            lambda: build(
                oci_entries(
                    manifest_edit=lambda m: m["config"].update(
                        mediaType="application/vnd.cncf.helm.config.v1+json"
                    )
                )
            ),
            "not a container image",
        ),
        (
            lambda: build(
                oci_entries(
                    manifest_edit=lambda m: m["layers"][0].update(
                        mediaType="application/vnd.oci.image.layer.v1.tar+encrypted"
                    )
                )
            ),
            "unsupported media type",
        ),
        (lambda: _bad_layer(layer_tar(), OCI_LAYER + "+gzip"), "bytes are uncompressed"),
        (lambda: _bad_layer(gzip.compress(layer_tar()), OCI_LAYER), "bytes are gzip"),
        (lambda: _bad_layer(gzip.compress(layer_tar())[:-6], OCI_LAYER + "+gzip"), "corrupt or truncated"),
        (
            lambda: _bad_layer(gzip.compress(layer_tar()) + b"garbage!", OCI_LAYER + "+gzip"),
            "corrupt or truncated",
        ),
        (_zstd_truncated_layer, "truncated"),
        (
            lambda: _bad_layer(
                zstandard.ZstdCompressor().compress(layer_tar()) + b"garbage!", OCI_LAYER + "+zstd"
            ),
            "corrupt",
        ),
        (
            lambda: build(
                [reg("repositories", b"{}"), reg("abc/json", b"{}"), reg("abc/layer.tar", layer_tar())]
            ),
            "before 1.10",
        ),
        (lambda: build([reg("hello.txt", b"hi")]), "neither a docker-archive"),
        (
            lambda: build([reg("oci-layout", b'{"imageLayoutVersion": "9"}'), *oci_entries()[1:]]),
            "declares version",
        ),
    ],
)
def test_inconsistent_archives_are_refused(store, make, words):
    refused(store, make(), words)


# --------------------------------------------------------------------------- JSON members


def _with_manifest_bytes(data: bytes) -> bytes:
    entries = docker_entries()
    entries[-1] = reg("manifest.json", data)
    return build(entries)


@pytest.mark.parametrize(
    "data, words",
    [
        (b"[" + b" " * (5 * MiB) + b"]", "documents over 4194304 bytes"),
        (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
        (b'[{"Config": "a.json", "Config": "b.json", "Layers": []}]', "duplicate key"),
        (b"[NaN]", "not json"),
        (b"\xff\xfe[]", "not valid json"),
        (b'[{"Config": 5, "Layers": []}]', "must be a string"),
        (b"{}", "must be a json array"),
        (b"", "not valid json"),
    ],
    ids=["huge", "deep", "duplicate-keys", "nan", "not-utf8", "wrong-type", "wrong-shape", "empty"],
)
def test_hostile_json_is_refused(store, data, words):
    refused(store, _with_manifest_bytes(data), words)


def test_json_cap_is_configurable(store):
    refused(store, build(docker_entries()), "documents over 64 bytes", Limits(max_json_bytes=64))


# --------------------------------------------------------------------------- not archives at all


@pytest.mark.parametrize(
    "data, words",
    [
        (b"", "empty"),
        (random.Random(1).randbytes(65536), "not a readable tar"),
        (b"\x1f\x8b" + random.Random(2).randbytes(65536), "gzip data is corrupt"),
        (b"\x28\xb5\x2f\xfd" + random.Random(3).randbytes(65536), "zstd data is corrupt"),
        (b"\xfd7zXZ\x00" + bytes(100), "xz-compressed"),
        (b"BZh91AY&SY" + bytes(100), "bzip2-compressed"),
        (bytes(10240), "holds no entries"),
    ],
    ids=["empty", "random", "gzip-random", "zstd-random", "xz", "bzip2", "zeros"],
)
def test_non_archives_are_refused(store, data, words):
    refused(store, data, words)


def test_truncated_archives_are_refused(store):
    plain = build(docker_entries([layer_tar(os.urandom(20_000))], tags=["example.com/cut:1"]))
    refused(store, plain[:5000], "truncated")
    refused(store, gzip.compress(plain)[:-10], "gzip data is corrupt or truncated")
    refused(store, zstandard.ZstdCompressor().compress(plain)[:-10], "zstd data is truncated")


@needs_fixtures
def test_every_truncation_of_the_fixtures_is_refused_or_complete(tmp_path):
    """Cut each fixture at many points: a load either fails with ArchiveError or (cut only in the
    end-of-archive padding) loads the right image; never another exception, never partial state."""
    rng = random.Random(7)
    for path in sorted(FIXTURES.glob("*.tar*")):
        data = path.read_bytes()
        store = ImageStore(tmp_path / path.name)
        for cut in sorted(
            {0, 1, 511, 512, 513, len(data) - 1, *(rng.randrange(len(data)) for _ in range(25))}
        ):
            before = snapshot(store.layout.root)
            try:
                result = store.load(io.BytesIO(data[:cut]))
            except ArchiveError:
                assert snapshot(store.layout.root) == before, (path.name, cut)
            else:
                assert result.images and all(image.id.startswith("sha256:1") for image in result.images)
        assert store.check() == []


@needs_fixtures
def test_random_corruption_of_a_fixture_never_escapes_as_another_error(tmp_path):
    data = (FIXTURES / "app-docker.tar").read_bytes()
    store = ImageStore(tmp_path / "store")
    rng = random.Random(11)
    outcomes = {"loaded": 0, "refused": 0}
    for _ in range(150):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        try:
            store.load(io.BytesIO(bytes(mutated)))
            outcomes["loaded"] += 1
        except ArchiveError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0
    assert store.check() == []
    for image in store.images():
        assert image.id == "sha256:1f1291d3c9920b196f1819700aaa3771bae7ed4e010a5000f5323075bd3829e8"


# --------------------------------------------------------------------------- decompression bombs


def _measure(load: Callable[[], None]) -> tuple[ArchiveError, float, int]:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ArchiveError) as caught:
            load()
        return caught.value, time.perf_counter() - started, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_gzip_layer_bomb_is_refused_quickly_in_bounded_memory(store):
    bomb = gzip_members(bytes(MiB), 1024)  # 1 GiB of zeros in about 1 MiB
    data = build(docker_entries([layer_tar()], stored=lambda _: bomb))
    before = snapshot(store.layout.root)
    bounded = ImageStore(store.root, limits=Limits(max_ratio=100, ratio_floor=4 * MiB))
    error, seconds, peak = _measure(lambda: bounded.load(io.BytesIO(data)))
    assert "decompression bomb" in error.message
    assert seconds < 10 and peak < 64 * MiB, (seconds, peak)
    assert snapshot(store.layout.root) == before


def test_zstd_layer_bomb_is_refused_with_default_limits(store):
    frame = zstandard.ZstdCompressor(level=1).compress(bytes(64 * MiB))
    bomb = frame * 16  # 1 GiB of zeros in a few KiB
    data = build(oci_entries([(bomb, OCI_LAYER + "+zstd", layer_tar())]))
    before = snapshot(store.layout.root)
    error, seconds, peak = _measure(lambda: store.load(io.BytesIO(data)))
    assert "decompression bomb" in error.message
    assert seconds < 20 and peak < 64 * MiB, (seconds, peak)
    assert snapshot(store.layout.root) == before


def test_whole_archive_bomb_is_refused(store):
    frames = zstandard.ZstdCompressor(level=1).compress(build(docker_entries(tags=["example.com/z:1"])))
    frames += zstandard.ZstdCompressor(level=1).compress(bytes(64 * MiB)) * 8
    before = snapshot(store.layout.root)
    bounded = ImageStore(store.root, limits=Limits(ratio_floor=8 * MiB, max_ratio=500))
    error, seconds, peak = _measure(lambda: bounded.load(io.BytesIO(frames)))
    assert "decompression bomb" in error.message
    assert seconds < 10 and peak < 64 * MiB, (seconds, peak)
    assert snapshot(store.layout.root) == before


def test_many_small_bombs_share_one_budget(store):
    """Each layer stays under the per-stream floor; together they are refused."""
    small = zstandard.ZstdCompressor(level=1).compress(bytes(MiB - 4096))
    layers = [layer_tar(str(i).encode()) for i in range(12)]
    stored = iter([small] * 12)
    data = build(docker_entries(layers, stored=lambda _: next(stored)))
    error = refused(store, data, "decompression bomb", Limits(ratio_floor=MiB, max_ratio=100))
    assert "layers together" in error.message


def test_absolute_layer_cap(store):
    layer = layer_tar(os.urandom(2 * MiB))
    data = build(docker_entries([layer], stored=lambda b: gzip.compress(b, compresslevel=1)))
    refused(store, data, "more than 1048576 bytes", Limits(max_layer_bytes=MiB))


# --------------------------------------------------------------------------- failing sources


class _Failing:
    def __init__(self, data: bytes, after: int, error: BaseException) -> None:
        self._data = io.BytesIO(data)
        self._after = after
        self._error = error

    def read(self, n: int = -1) -> bytes:
        if self._data.tell() >= self._after:
            raise self._error
        return self._data.read(min(n, 4096))


@pytest.mark.parametrize(
    "error",
    [OSError(104, "Connection reset by peer"), FsbridgeError("client went away", reason="upload-aborted")],
)
def test_errors_of_the_source_pass_through_and_leave_no_trace(store, error):
    data = gzip.compress(build(docker_entries([layer_tar(os.urandom(100_000))], tags=["example.com/f:1"])))
    before = snapshot(store.layout.root)
    with pytest.raises(type(error)) as caught:
        store.load(_Failing(data, len(data) // 2, error))
    assert caught.value is error
    assert snapshot(store.layout.root) == before


def test_a_failing_check_source_aborts_the_load(store):
    before = snapshot(store.layout.root)

    def mismatch() -> None:
        raise FsbridgeError("not the file the client meant", reason="identity-mismatch")

    with pytest.raises(FsbridgeError) as caught:
        store.load(io.BytesIO(build(docker_entries(tags=["example.com/x:1"]))), check_source=mismatch)
    assert caught.value.reason == "identity-mismatch"
    assert snapshot(store.layout.root) == before


def test_a_full_disk_is_a_store_error_and_leaves_no_trace(store, monkeypatch):
    from fsbridge.errors import StoreError
    from fsbridge.store import layout

    class Full:
        def __init__(self, handle):
            self._handle = handle

        def write(self, data):
            raise OSError(28, "No space left on device")

        def close(self):
            self._handle.close()

    original = layout.Staging.temp_file

    def full_temp_file(self):
        handle, path = original(self)
        return Full(handle), path

    before = snapshot(store.layout.root)
    monkeypatch.setattr(layout.Staging, "temp_file", full_temp_file)
    with pytest.raises(StoreError) as caught:
        store.load(io.BytesIO(build(docker_entries(tags=["example.com/full:1"]))))
    assert "No space left on device" in caught.value.message
    monkeypatch.undo()
    assert snapshot(store.layout.root) == before


def test_an_endless_source_is_cut_off(store):
    data = build(docker_entries(tags=["example.com/endless:1"])) + bytes(2 * MiB)
    refused(store, data, "larger than 1048576 bytes", Limits(max_archive_bytes=MiB))


# --------------------------------------------------------------------------- the zstd frame walker


def _zstd_streams() -> list[list[tuple[bytes, bool]]]:
    """Streams as (frame bytes, is a zstd frame rather than a skippable one) parts."""
    payload = os.urandom(50_000) + bytes(300_000)
    plain = zstandard.ZstdCompressor(write_checksum=False, write_content_size=False)
    checked = zstandard.ZstdCompressor(level=5, write_checksum=True)
    streamed = io.BytesIO()
    with zstandard.ZstdCompressor().stream_writer(streamed, closefd=False) as writer:  # no content size
        writer.write(payload)
    skippable = ((0x184D2A5A).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"12345", False)
    return [
        [(plain.compress(payload), True)],
        [(checked.compress(payload), True)],
        [(streamed.getvalue(), True)],
        [(checked.compress(b""), True), (plain.compress(b"x"), True)],
        [skippable, (checked.compress(payload), True), skippable, (plain.compress(payload[:1000]), True)],
    ]


@pytest.mark.parametrize(
    "parts", _zstd_streams(), ids=["plain", "checksum", "streamed", "two-frames", "skippable"]
)
def test_zstd_frame_checker_accepts_complete_streams_only(parts):
    from fsbridge.store.compression import ZstdFrameChecker

    stream = b"".join(part for part, _ in parts)
    complete_at, offset, frames = set(), 0, 0
    for part, is_frame in parts:
        offset += len(part)
        frames += is_frame
        if frames:
            complete_at.add(offset)
    whole = ZstdFrameChecker("t")
    for start in range(0, len(stream), 777):  # fed in odd chunks
        whole.feed(stream[start : start + 777])
    whole.finish()
    rng = random.Random(len(stream))
    for cut in {
        1,
        4,
        5,
        8,
        len(stream) - 1,
        *complete_at,
        *(rng.randrange(1, len(stream)) for _ in range(60)),
    }:
        checker = ZstdFrameChecker("t")
        checker.feed(stream[:cut])
        if cut in complete_at:
            checker.finish()
        else:
            with pytest.raises(ArchiveError):
                checker.finish()
