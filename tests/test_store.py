"""The embedded image store: fixtures made by podman/skopeo load with podman's ids and names, through
non-seekable streams, idempotently, atomically, concurrently; check/remove/GC; a real OCI peer
(skopeo) reads the layout."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import threading
from pathlib import Path

import pytest
import zstandard

from fsbridge.errors import FsbridgeError, StoreError
from fsbridge.identity import Identity, compute_identity
from fsbridge.store import ImageRecord, ImageStore, LoadResult
from fsbridge.store.names import normalize_name, short_matches

APP_ID = "sha256:1f1291d3c9920b196f1819700aaa3771bae7ed4e010a5000f5323075bd3829e8"
BASE_ID = "sha256:1a7b31b3575cf52815b063aee8cd96fa92b4ceafab50ec8ddc7a2e7a373b486a"


def _fixtures() -> Path:
    env = os.environ.get("FSBRIDGE_FIXTURES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared/fixtures/images"


FIXTURES = _fixtures()
needs_fixtures = pytest.mark.skipif(
    not (FIXTURES / "EXPECTED.tsv").is_file(),
    reason=f"image fixtures not found at {FIXTURES} (set FSBRIDGE_FIXTURES to their folder)",
)


def _expected() -> dict[str, set[tuple[str, str]]]:
    """EXPECTED.tsv: file <TAB> "ID NAME;" pairs, as podman load + podman images report them."""
    expected: dict[str, set[tuple[str, str]]] = {}
    if not (FIXTURES / "EXPECTED.tsv").is_file():
        return expected
    for line in (FIXTURES / "EXPECTED.tsv").read_text().splitlines():
        if not line.strip():
            continue
        name, pairs = line.split("\t", 1)
        expected[name] = {tuple(pair.split()) for pair in pairs.split(";") if pair.strip()}  # type: ignore[misc]
    return expected


EXPECTED = _expected()


def _pairs(images: list[ImageRecord]) -> set[tuple[str, str]]:
    return {(image.id, name) for image in images for name in image.names}


def snapshot(root: Path) -> dict[str, object]:
    """Every file and folder under the store, with content digests: 'no trace' means equal."""
    tree: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_dir():
            tree[rel + "/"] = None
        else:
            tree[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return tree


class NoSeek:
    """An upload body: read() only, short reads, seek/tell refused."""

    def __init__(self, data: bytes, step: int = 65_521) -> None:
        self._data = io.BytesIO(data)
        self._step = step

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self._step
        return self._data.read(min(n, self._step))

    def seekable(self) -> bool:
        return False

    def seek(self, *args):
        raise io.UnsupportedOperation("an upload stream cannot seek")

    def tell(self):
        raise io.UnsupportedOperation("an upload stream cannot tell")


@pytest.fixture
def store(tmp_path) -> ImageStore:
    return ImageStore(tmp_path / "store")


# --------------------------------------------------------------------------- podman's ids and names


@needs_fixtures
@pytest.mark.parametrize("fixture", sorted(EXPECTED) or ["(none)"])
def test_fixture_loads_with_podmans_ids_and_names(store, fixture):
    result = store.load_path(FIXTURES / fixture)
    assert _pairs(result.images) == EXPECTED[fixture]
    assert _pairs(store.images()) == EXPECTED[fixture]
    assert store.check() == []
    assert result.blobs_reused == 0
    for image in result.images:
        assert store.inspect(image.id).names == image.names


@needs_fixtures
@pytest.mark.parametrize("fixture", sorted(EXPECTED) or ["(none)"])
def test_fixture_loads_from_a_non_seekable_stream(store, fixture):
    data = (FIXTURES / fixture).read_bytes()
    seen: list[int] = []
    result = store.load(NoSeek(data), progress=seen.append)
    assert _pairs(result.images) == EXPECTED[fixture]
    assert seen == sorted(seen) and seen[-1] == len(data) == result.bytes_read
    assert store.check() == []


@needs_fixtures
def test_formats_and_compressions_are_reported(store):
    docker = store.load_path(FIXTURES / "app-docker.tar")
    assert (docker.format, docker.compression) == ("docker-archive", None)
    gz = store.load_path(FIXTURES / "app-docker.tar.gz")
    assert (gz.format, gz.compression) == ("docker-archive", "gzip")
    assert gz.blobs_written == 0  # same blobs as the plain archive
    oci = store.load_path(FIXTURES / "app-oci-zstd-layers.tar")
    assert oci.format == "oci-archive"
    manifest = json.loads((store.layout.blobs / oci.images[0].manifest_digest[7:]).read_bytes())
    assert {layer["mediaType"] for layer in manifest["layers"]} == {
        "application/vnd.oci.image.layer.v1.tar+zstd"
    }


@needs_fixtures
def test_whole_archive_zstd_compression(store):
    data = zstandard.ZstdCompressor(level=3).compress((FIXTURES / "app-docker.tar").read_bytes())
    result = store.load(NoSeek(data))
    assert result.compression == "zstd"
    assert _pairs(result.images) == EXPECTED["app-docker.tar"]


@needs_fixtures
def test_docker_archive_manifest_keeps_layers_as_they_came(store):
    result = store.load_path(FIXTURES / "app-docker.tar")
    manifest_bytes = (store.layout.blobs / result.images[0].manifest_digest[7:]).read_bytes()
    manifest = json.loads(manifest_bytes)
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"] == {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        "digest": APP_ID,
        "size": 1420,
    }
    assert [layer["mediaType"] for layer in manifest["layers"]] == [
        "application/vnd.oci.image.layer.v1.tar"
    ] * 3
    assert [layer["size"] for layer in manifest["layers"]] == [10240, 204800, 3072]
    assert hashlib.sha256(manifest_bytes).hexdigest() == result.images[0].manifest_digest[7:]


def _docker_archive_from_fixture(transform) -> bytes:
    """Rebuild app-docker.tar with its layers passed through ``transform`` (e.g. gzip)."""
    out = io.BytesIO()
    with tarfile.open(FIXTURES / "app-docker.tar") as source, tarfile.open(fileobj=out, mode="w") as target:
        manifest = json.loads(source.extractfile("manifest.json").read())
        renamed = []
        for position, name in enumerate(manifest[0]["Layers"]):
            data = transform(source.extractfile(name).read())
            # as skopeo names them (after the digest of the bytes stored), or freely: both are fine
            name = (
                hashlib.sha256(data).hexdigest() + ".tar" if position == 0 else f"layer{position}/layer.tar"
            )
            renamed.append(name)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            target.addfile(info, io.BytesIO(data))
        manifest[0]["Layers"] = renamed
        config = source.extractfile(manifest[0]["Config"]).read()
        for name, data in [(manifest[0]["Config"], config), ("manifest.json", json.dumps(manifest).encode())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            target.addfile(info, io.BytesIO(data))
    return out.getvalue()


@needs_fixtures
def test_docker_archive_with_gzip_layers(store):
    data = _docker_archive_from_fixture(lambda layer: gzip.compress(layer, mtime=0))
    result = store.load(NoSeek(data))
    assert _pairs(result.images) == EXPECTED["app-docker.tar"]
    manifest = json.loads((store.layout.blobs / result.images[0].manifest_digest[7:]).read_bytes())
    assert {layer["mediaType"] for layer in manifest["layers"]} == {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    }
    assert store.check() == []


@needs_fixtures
def test_two_images_archive_yields_two_images(store):
    result = store.load_path(FIXTURES / "two-images-docker.tar")
    assert sorted(image.id for image in result.images) == sorted([APP_ID, BASE_ID])
    assert {image.id: image.names for image in store.images()} == {
        APP_ID: ["localhost/fx-app:shared"],
        BASE_ID: ["localhost/fx-base:shared"],
    }
    # the base layer is shared: stored once
    assert result.blobs_written == 3 + 1 + 1 + 1 + 1  # layers, app config+manifest, base config+manifest


@needs_fixtures
def test_same_image_from_several_archives_is_one_image_with_all_names(store):
    for fixture in ("app-docker.tar", "app-oci-gzip-layers.tar", "app-oci-zstd-layers.tar"):
        store.load_path(FIXTURES / fixture)
    images = store.images()
    assert len(images) == 1
    assert images[0].id == APP_ID
    assert images[0].names == ["localhost/fx-app:gzip", "localhost/fx-app:shared", "localhost/fx-app:zstd"]
    assert len(images[0].manifest_digests) == 3


# --------------------------------------------------------------------------- idempotence and atomicity


@needs_fixtures
@pytest.mark.parametrize("fixture", ["app-docker.tar", "app-oci.tar", "app-docker.tar.gz"])
def test_reload_changes_nothing(store, fixture):
    first = store.load_path(FIXTURES / fixture)
    before = snapshot(store.layout.root)
    index_stat = os.stat(store.layout.index_path)
    second = store.load_path(FIXTURES / fixture)
    assert snapshot(store.layout.root) == before
    assert os.stat(store.layout.index_path).st_mtime_ns == index_stat.st_mtime_ns  # not even rewritten
    assert second.blobs_written == 0
    assert second.blobs_reused == first.blobs_written + first.blobs_reused
    assert _pairs(second.images) == _pairs(first.images)


@needs_fixtures
def test_a_load_that_fails_before_its_index_commit_is_not_in_the_index(store, monkeypatch):
    store.load_path(FIXTURES / "app-oci.tar")
    index_before = store.layout.index_path.read_bytes()

    def crash(index):
        raise RuntimeError("killed between blob commit and index commit")

    monkeypatch.setattr(store.layout, "write_index", crash)
    with pytest.raises(RuntimeError):
        store.load_path(FIXTURES / "two-images-docker.tar")
    monkeypatch.undo()
    assert store.layout.index_path.read_bytes() == index_before
    assert _pairs(store.images()) == EXPECTED["app-oci.tar"]
    assert store.check() == []  # blobs linked in are complete and verified, merely unreferenced
    assert not list((store.layout.tmp).iterdir())
    assert store.collect_garbage()  # and garbage collection takes them away
    assert store.check() == []


@needs_fixtures
def test_a_killed_load_leaves_no_trace_and_is_cleaned_at_next_open(tmp_path):
    root = tmp_path / "store"
    ImageStore(root).load_path(FIXTURES / "app-oci.tar")
    before = snapshot(root)
    script = textwrap.dedent(
        f"""
        import sys, time
        from fsbridge.store import ImageStore

        class Stalling:
            def __init__(self, handle):
                self.handle, self.done = handle, 0
            def read(self, n=-1):
                if self.done > 150_000:
                    print("stalled", flush=True)
                    time.sleep(600)
                data = self.handle.read(min(n, 8192) if n and n > 0 else 8192)
                self.done += len(data)
                return data

        with open({str(FIXTURES / "two-images-docker.tar")!r}, "rb") as handle:
            ImageStore({str(root)!r}).load(Stalling(handle))
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "stalled"
        staging = [p for p in (root / ".fsbridge/tmp").iterdir() if p.name.startswith("load-")]
        assert staging and any(staging[0].iterdir())  # members were being staged
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
    reopened = ImageStore(root)  # cleans what the dead load left
    assert snapshot(root) == before
    assert _pairs(reopened.images()) == EXPECTED["app-oci.tar"]
    assert reopened.check() == []


@needs_fixtures
def test_staging_of_a_live_load_is_not_cleaned(store):
    with store.layout.load_guard(), store.layout.staging() as staging:
        (staging.path / "part-x").write_bytes(b"in progress")
        ImageStore(store.root)  # another opener
        assert (staging.path / "part-x").exists()


@needs_fixtures
def test_identity_is_verified_while_the_file_streams(store, tmp_path):
    path = FIXTURES / "app-docker.tar"
    identity = compute_identity(path)
    result = store.load_path(path, identity=identity)
    assert _pairs(result.images) == EXPECTED["app-docker.tar"]

    other = ImageStore(tmp_path / "other")
    before = snapshot(other.layout.root)
    wrong = Identity(size=identity.size, mtime_ns=identity.mtime_ns, xxh3_128="0" * 32)
    with pytest.raises(FsbridgeError) as caught:
        other.load_path(path, identity=wrong)
    assert caught.value.reason == "identity-mismatch"
    assert snapshot(other.layout.root) == before
    with pytest.raises(FsbridgeError) as caught:
        other.load_path(path, identity=Identity(identity.size + 1, identity.mtime_ns, identity.xxh3_128))
    assert caught.value.reason == "identity-mismatch"
    with pytest.raises(FsbridgeError) as caught:
        other.load_path(tmp_path / "missing.tar")
    assert caught.value.reason == "not-found"
    assert snapshot(other.layout.root) == before


# --------------------------------------------------------------------------- inspect, remove, check


@needs_fixtures
def test_inspect_by_id_prefix_name_and_short_name(store):
    store.load_path(FIXTURES / "two-images-docker.tar")
    for query in (
        APP_ID,
        APP_ID[7:],
        APP_ID[7:19],
        "sha256:1f1291d3",
        "localhost/fx-app:shared",
        "fx-app:shared",
    ):
        assert store.inspect(query).id == APP_ID, query
    assert store.inspect("fx-base:shared").id == BASE_ID
    for query in ("fx-app", "fx-app:nope", "sha256:ffff", "docker.io/library/fx-app:shared", "1f1"):
        with pytest.raises(StoreError) as caught:
            store.inspect(query)
        assert caught.value.reason == "image-unknown", query


@needs_fixtures
def test_remove_and_garbage_collection(store):
    store.load_path(FIXTURES / "two-images-docker.tar")
    blobs_before = {p.name for p in store.layout.blobs.iterdir()}
    assert store.remove("fx-app:shared") == [APP_ID]
    assert [image.id for image in store.images()] == [BASE_ID]
    blobs_after = {p.name for p in store.layout.blobs.iterdir()}
    assert (
        "9f2fd7c3b892b539f4748f45c7bc7be8932bf831b6d3ce621b420095aefd6ed6" in blobs_after
    )  # shared base layer
    assert APP_ID[7:] not in blobs_after
    assert len(blobs_before - blobs_after) == 4  # two app-only layers, app config, app manifest
    assert store.check() == []
    assert store.remove(BASE_ID[7:19]) == [BASE_ID]
    assert store.images() == []
    assert list(store.layout.blobs.iterdir()) == []
    assert json.loads(store.layout.index_path.read_bytes())["manifests"] == []
    with pytest.raises(StoreError) as caught:
        store.remove("fx-app:shared")
    assert caught.value.reason == "image-unknown"


@needs_fixtures
def test_check_detects_a_corrupted_and_a_missing_blob(store):
    result = store.load_path(FIXTURES / "app-docker.tar")
    assert store.check() == []
    layer = store.layout.blobs / "b12d0298167ef3297b93f43ecb887a544a6f2c5dbcd3ec9b8a89f1c0f7a1d73e"
    os.chmod(layer, 0o644)
    with open(layer, "r+b") as handle:
        handle.seek(5000)
        handle.write(b"X")
    problems = store.check()
    assert len(problems) == 1 and "sha256:b12d0298" in problems[0] and "corrupt" in problems[0]
    layer.unlink()
    problems = store.check()
    assert any("missing" in problem and "b12d0298" in problem for problem in problems)
    (store.layout.blobs / result.images[0].manifest_digest[7:]).unlink()
    assert any("missing" in problem for problem in store.check())


def test_check_of_a_fresh_store_is_empty_and_layout_files_exist(store):
    assert store.check() == []
    assert json.loads((store.layout.root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert json.loads(store.layout.index_path.read_text())["manifests"] == []
    assert store.images() == []


def test_a_foreign_non_empty_folder_is_not_taken_over(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StoreError):
        ImageStore(tmp_path)


# --------------------------------------------------------------------------- names


def _retagged(fixture: str, tags: list[list[str] | None]) -> bytes:
    """The fixture docker-archive with manifest.json's RepoTags replaced."""
    out = io.BytesIO()
    with tarfile.open(FIXTURES / fixture) as source, tarfile.open(fileobj=out, mode="w") as target:
        for member in source.getmembers():
            if member.name == "manifest.json":
                manifest = json.loads(source.extractfile(member).read())
                for item, repo_tags in zip(manifest, tags, strict=True):
                    item["RepoTags"] = repo_tags
                data = json.dumps(manifest).encode()
                member.size = len(data)
                target.addfile(member, io.BytesIO(data))
            else:
                target.addfile(member, source.extractfile(member) if member.isreg() else None)
    return out.getvalue()


@needs_fixtures
def test_names_are_normalised_like_podman_and_move_between_images(store):
    store.load_path(FIXTURES / "two-images-docker.tar")
    # the base image now claims fx-app:shared; app loses its only name but stays, unnamed
    result = store.load(
        NoSeek(_retagged("two-images-docker.tar", [["other/app"], ["fx-app:shared", "docker.io/base"]]))
    )
    assert {image.id: image.names for image in result.images} == {
        APP_ID: ["localhost/other/app:latest"],
        BASE_ID: ["localhost/fx-app:shared", "docker.io/library/base:latest"],
    }
    listed = {image.id: image.names for image in store.images()}
    assert listed == {
        APP_ID: ["localhost/other/app:latest"],
        BASE_ID: ["docker.io/library/base:latest", "localhost/fx-app:shared", "localhost/fx-base:shared"],
    }
    store.load(NoSeek(_retagged("two-images-docker.tar", [[], ["localhost/other/app:latest"]])))
    listed = {image.id: image.names for image in store.images()}
    assert listed[APP_ID] == []  # podman's <none>
    assert "localhost/other/app:latest" in listed[BASE_ID]
    assert store.check() == []
    assert store.inspect(APP_ID[7:19]).names == []


@needs_fixtures
def test_an_image_without_repo_tags_has_no_name(store):
    result = store.load(NoSeek(_retagged("app-docker.tar", [None])))
    assert [(image.id, image.names) for image in result.images] == [(APP_ID, [])]
    assert [(image.id, image.names) for image in store.images()] == [(APP_ID, [])]


@pytest.mark.parametrize(
    "name, normalised",
    [
        ("example.com/busybox", "example.com/busybox:latest"),
        ("example.com/busybox:notlatest", "example.com/busybox:notlatest"),
        ("busybox:latest", "localhost/busybox:latest"),
        ("localhost/busybox", "localhost/busybox:latest"),
        ("ns/busybox:latest", "localhost/ns/busybox:latest"),
        ("docker.io/busybox:latest", "docker.io/library/busybox:latest"),
        ("localhost:5000/app:1", "localhost:5000/app:1"),
        ("fx-app:shared", "localhost/fx-app:shared"),
        ("localhost/fx-app:shared", "localhost/fx-app:shared"),
        (
            "example.com/busybox:tag@sha256:" + "0123456789abcdef" * 4,
            "example.com/busybox@sha256:" + "0123456789abcdef" * 4,
        ),
    ],
)
def test_normalize_name_matches_podman(name, normalised):
    assert normalize_name(name) == normalised


@pytest.mark.parametrize(
    "name", ["#", "", "UPPER/case", "a" * 300, "app:" + "t" * 200, "0123456789abcdef" * 4]
)
def test_normalize_name_refuses_invalid_names(name):
    with pytest.raises(ValueError):
        normalize_name(name)


def test_short_names_match_like_podman_lookups():
    assert short_matches("app:1", "docker.io/library/app:1")
    assert short_matches("app", "localhost/app:latest")
    assert short_matches("ns/app", "quay.io/ns/app:latest")
    assert not short_matches("app:1", "localhost/myapp:1")
    assert not short_matches("quay.io/app:1", "quay.io/app:1")  # qualified: exact match only


# --------------------------------------------------------------------------- concurrency


@needs_fixtures
def test_concurrent_loads_in_threads_and_processes_keep_the_store_consistent(tmp_path):
    root = tmp_path / "store"
    store = ImageStore(root)
    fixtures = sorted(EXPECTED)
    rounds = 3
    script = textwrap.dedent(
        """
        import sys
        from fsbridge.store import ImageStore
        store = ImageStore(sys.argv[1])
        print("ready", flush=True)
        sys.stdin.readline()
        for _ in range(int(sys.argv[2])):
            for path in sys.argv[3:]:
                store.load_path(path)
        """
    )
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                script,
                str(root),
                str(rounds),
                *[str(FIXTURES / f) for f in fixtures[i:] + fixtures[:i]],
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    errors: list[BaseException] = []
    start = threading.Barrier(4 + 1)

    def worker(names: list[str]) -> None:
        try:
            mine = ImageStore(root)
            start.wait(timeout=60)
            for _ in range(rounds):
                for name in names:
                    mine.load(NoSeek((FIXTURES / name).read_bytes()))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    try:
        for process in processes:
            assert process.stdout.readline().strip() == "ready"
        threads = [threading.Thread(target=worker, args=(fixtures[i:] + fixtures[:i],)) for i in range(4)]
        for thread in threads:
            thread.start()
        for process in processes:
            process.stdin.write("go\n")
            process.stdin.flush()
        start.wait(timeout=60)
        store.collect_garbage()  # GC amid loads must not take a blob a load relies on
        for thread in threads:
            thread.join(timeout=120)
        for process in processes:
            assert process.wait(timeout=120) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stdin.close()
            process.stdout.close()
    assert errors == []
    expected = set().union(*EXPECTED.values())
    assert _pairs(store.images()) == expected
    assert store.check() == []
    assert not list((root / ".fsbridge/tmp").iterdir())
    store.collect_garbage()
    assert store.check() == []
    assert _pairs(store.images()) == expected


# --------------------------------------------------------------------------- a real OCI peer


@needs_fixtures
@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
def test_skopeo_reads_the_layout(store):
    store.load_path(FIXTURES / "two-images-docker.tar")
    store.load_path(FIXTURES / "app-oci-zstd-layers.tar")
    for name, image_id in [
        ("localhost/fx-app:shared", APP_ID),
        ("localhost/fx-base:shared", BASE_ID),
        ("localhost/fx-app:zstd", APP_ID),
    ]:
        reference = f"oci:{store.root}:{name}"
        raw = subprocess.run(
            ["skopeo", "inspect", "--raw", reference], capture_output=True, check=True, timeout=60
        ).stdout
        assert json.loads(raw)["config"]["digest"] == image_id
        config = subprocess.run(
            ["skopeo", "inspect", "--config", "--raw", reference], capture_output=True, check=True, timeout=60
        ).stdout
        assert "sha256:" + hashlib.sha256(config).hexdigest() == image_id


def test_records_serialise():
    record = ImageRecord(
        id=APP_ID, names=["localhost/a:1"], manifest_digest="sha256:" + "0" * 64, size=3, created=None
    )
    assert record.to_json() == {
        "id": APP_ID,
        "names": ["localhost/a:1"],
        "manifest_digest": "sha256:" + "0" * 64,
        "manifest_digests": ["sha256:" + "0" * 64],
        "size": 3,
        "created": None,
    }
    result = LoadResult(images=[record], blobs_written=1, blobs_reused=2, format="oci-archive")
    assert result.to_json()["images"][0]["id"] == APP_ID
    assert json.dumps(result.to_json())
