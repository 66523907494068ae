"""fsbridge.identity: a file's size, mtime_ns and xxh3-128, computed in one pass on the host and
verified by the server while it streams the file."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
import xxhash

from fsbridge.errors import FsbridgeError
from fsbridge.identity import CHUNK, Identity, IdentityVerifier, compute_identity


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_identity_of_a_file_matches_stat_and_xxh3(tmp_path):
    data = os.urandom(3 * CHUNK + 12345)
    path = _write(tmp_path / "a.tar", data)
    seen: list[int] = []
    identity = compute_identity(path, progress=seen.append)
    st = os.stat(path)
    assert identity == Identity(
        size=len(data), mtime_ns=st.st_mtime_ns, xxh3_128=xxhash.xxh3_128(data).hexdigest()
    )
    assert len(identity.xxh3_128) == 32
    assert seen == [CHUNK, 2 * CHUNK, 3 * CHUNK, len(data)]


def test_identity_of_an_empty_file(tmp_path):
    identity = compute_identity(_write(tmp_path / "empty", b""))
    assert identity.size == 0
    assert identity.xxh3_128 == xxhash.xxh3_128(b"").hexdigest()


def test_a_file_that_changes_while_hashed_is_refused(tmp_path):
    path = _write(tmp_path / "growing", os.urandom(2 * CHUNK))

    def append_once(done: int) -> None:
        if done == CHUNK:
            with open(path, "ab") as handle:
                handle.write(b"more bytes")

    with pytest.raises(FsbridgeError) as caught:
        compute_identity(path, progress=append_once)
    assert caught.value.reason == "file-changed"
    assert "changed while it was being hashed" in caught.value.message


def test_a_missing_file_raises_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        compute_identity(tmp_path / "nope")


def test_json_round_trip():
    identity = Identity(size=10, mtime_ns=1_700_000_000_123_456_789, xxh3_128="0" * 31 + "a")
    wire = identity.to_json()
    assert wire == {"size": 10, "mtime_ns": 1_700_000_000_123_456_789, "xxh3_128": "0" * 31 + "a"}
    assert Identity.from_json(wire) == identity


@pytest.mark.parametrize(
    "value, words",
    [
        ([], "JSON object"),
        ({"size": 1, "mtime_ns": 2}, "lacks xxh3_128"),
        ({"size": 1, "mtime_ns": 2, "xxh3_128": "a" * 32, "extra": 1}, "unknown keys: extra"),
        ({"size": -1, "mtime_ns": 2, "xxh3_128": "a" * 32}, "size must be"),
        ({"size": True, "mtime_ns": 2, "xxh3_128": "a" * 32}, "size must be"),
        ({"size": "1", "mtime_ns": 2, "xxh3_128": "a" * 32}, "size must be"),
        ({"size": 1, "mtime_ns": 2.5, "xxh3_128": "a" * 32}, "mtime_ns must be"),
        ({"size": 1, "mtime_ns": 2, "xxh3_128": "A" * 32}, "xxh3_128 must be"),
        ({"size": 1, "mtime_ns": 2, "xxh3_128": "a" * 31}, "xxh3_128 must be"),
        ({"size": 1, "mtime_ns": 2, "xxh3_128": None}, "xxh3_128 must be"),
    ],
)
def test_from_json_refuses_malformed_identities(value, words):
    with pytest.raises(ValueError) as caught:
        Identity.from_json(value)
    assert words in str(caught.value)


def _drain(reader, size=7777):
    while reader.read(size):
        pass


def test_verifier_accepts_the_same_bytes_read_in_any_chunks(tmp_path):
    data = os.urandom(CHUNK + 999)
    identity = compute_identity(_write(tmp_path / "f", data))
    with open(tmp_path / "f", "rb") as handle:
        verifier = IdentityVerifier(handle)
        _drain(verifier)
    assert verifier.bytes_read == len(data)
    verifier.verify(identity)
    assert verifier.seekable() is False and verifier.readable() is True


def test_verifier_refuses_other_content_of_the_same_size(tmp_path):
    identity = compute_identity(_write(tmp_path / "f", b"a" * 1000))
    verifier = IdentityVerifier(io.BytesIO(b"b" * 1000))
    _drain(verifier)
    with pytest.raises(FsbridgeError) as caught:
        verifier.verify(identity)
    assert caught.value.reason == "identity-mismatch"
    assert "xxh3-128" in caught.value.message


def test_verifier_refuses_a_different_size(tmp_path):
    identity = compute_identity(_write(tmp_path / "f", b"a" * 1000))
    verifier = IdentityVerifier(io.BytesIO(b"a" * 999))
    _drain(verifier)
    with pytest.raises(FsbridgeError) as caught:
        verifier.verify(identity)
    assert caught.value.reason == "identity-mismatch"
    assert "999 bytes" in caught.value.message


def test_verifier_counts_only_what_was_read(tmp_path):
    identity = compute_identity(_write(tmp_path / "f", b"a" * 1000))
    verifier = IdentityVerifier(io.BytesIO(b"a" * 1000))
    verifier.read(10)
    with pytest.raises(FsbridgeError):
        verifier.verify(identity)


def test_identity_is_host_side_and_imports_nothing_linux_only():
    code = (
        "import sys\n"
        "for name in ('fcntl', 'pyfuse3', 'trio', 'zstandard'):\n"
        "    sys.modules[name] = None\n"
        "import fsbridge.identity\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
