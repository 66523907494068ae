"""Sniffing and bounded decompression of gzip and zstd streams.

Everything here pulls: a consumer asks for at most N decompressed bytes and gets at most N, so
memory stays bounded however well a hostile stream compresses; every stream is counted against
absolute and ratio caps (see Limits) and fails with ArchiveError, never with a library traceback.
Nothing needs ``seek``: the sources are tar members and upload bodies.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable
from typing import Protocol

import zstandard

from fsbridge.errors import ArchiveError
from fsbridge.store.limits import Limits

GZIP = "gzip"
ZSTD = "zstd"

_MAGIC: list[tuple[bytes, str]] = [
    (b"\x1f\x8b", GZIP),
    (b"\x28\xb5\x2f\xfd", ZSTD),
    (b"\xfd7zXZ\x00", "xz"),
    (b"BZh", "bzip2"),
]

#: bytes needed to tell the formats apart
SNIFF_BYTES = 6

#: the largest zstd window accepted (zstd's own default cap): bounds decoder memory
_ZSTD_MAX_WINDOW = 1 << 27


class Reader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


def sniff(head: bytes) -> str | None:
    """The compression ``head`` starts with: "gzip", "zstd", "xz", "bzip2", or None."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return None


def read_exactly(reader: Reader, n: int) -> bytes:
    """Up to ``n`` bytes, fewer only at end of stream (a plain read may return short)."""
    parts: list[bytes] = []
    remaining = n
    while remaining > 0:
        chunk = reader.read(remaining)
        if not chunk:
            break
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


class ObservedReader:
    """A non-seekable reader over ``inner`` that counts bytes and shows each chunk to ``observe``."""

    def __init__(self, inner: Reader, observe: Callable[[bytes], None] | None = None) -> None:
        self._inner = inner
        self._observe = observe
        self.count = 0

    def read(self, n: int = -1, /) -> bytes:
        data = self._inner.read(n)
        if data:
            if not isinstance(data, bytes):
                data = bytes(data)
            self.count += len(data)
            if self._observe is not None:
                self._observe(data)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


class PrefixedReader:
    """Replays ``prefix`` (bytes already taken from ``inner`` to sniff them), then reads ``inner``."""

    def __init__(self, prefix: bytes, inner: Reader) -> None:
        self._prefix = prefix
        self._inner = inner

    def read(self, n: int = -1, /) -> bytes:
        if self._prefix:
            if n is None or n < 0:
                data, self._prefix = self._prefix + self._inner.read(), b""
                return data
            data, self._prefix = self._prefix[:n], self._prefix[n:]
            return data
        return self._inner.read(n)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


class ZstdFrameChecker:
    """Walks zstd frame and block headers (RFC 8878) over the raw bytes, to tell a complete stream
    from a truncated one: the zstd stream reader ends quietly when its input ends mid-frame."""

    _FRAME_MAGIC = 0xFD2FB528

    def __init__(self, what: str) -> None:
        self._what = what
        self._state = "magic"
        self._need = 4
        self._buf = bytearray()
        self._skip = 0
        self._after_skip = "magic"
        self._checksum = False
        self.frames = 0

    def feed(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self._skip:
                take = min(self._skip, end - pos)
                pos += take
                self._skip -= take
                if not self._skip:
                    self._enter(self._after_skip)
                continue
            take = min(self._need - len(self._buf), end - pos)
            self._buf += data[pos : pos + take]
            pos += take
            if len(self._buf) == self._need:
                field = bytes(self._buf)
                self._buf.clear()
                self._on_field(field)

    def finish(self) -> None:
        if self._state != "magic" or self._buf or self._skip or self.frames == 0:
            raise ArchiveError(f"{self._what}: the zstd data is truncated (it ends inside a frame)")

    def _enter(self, state: str, need: int = 0) -> None:
        if state == "frame-end":
            self.frames += 1
            state, need = "magic", 4
        self._state = state
        self._need = need or {"magic": 4, "descriptor": 1, "block": 3, "skippable-size": 4}[state]

    def _skip_then(self, count: int, state: str) -> None:
        if count:
            self._skip = count
            self._after_skip = state
            self._state = "skipping"
        else:
            self._enter(state)

    def _on_field(self, field: bytes) -> None:
        value = int.from_bytes(field, "little")
        if self._state == "magic":
            if value == self._FRAME_MAGIC:
                self._enter("descriptor")
            elif 0x184D2A50 <= value <= 0x184D2A5F:
                self._enter("skippable-size")
            else:
                raise ArchiveError(
                    f"{self._what}: the zstd data is corrupt (unexpected bytes after its last frame)"
                )
        elif self._state == "skippable-size":
            self._skip_then(value, "magic")
        elif self._state == "descriptor":
            if value & 0x08:
                raise ArchiveError(f"{self._what}: the zstd data is corrupt (bad frame header)")
            single_segment = (value >> 5) & 1
            self._checksum = bool((value >> 2) & 1)
            content_size = (1 if single_segment else 0, 2, 4, 8)[value >> 6]
            dictionary = (0, 1, 2, 4)[value & 3]
            window = 0 if single_segment else 1
            self._skip_then(window + dictionary + content_size, "block")
        elif self._state == "block":
            last = value & 1
            block_type = (value >> 1) & 3
            if block_type == 3:
                raise ArchiveError(f"{self._what}: the zstd data is corrupt (reserved block type)")
            body = 1 if block_type == 1 else value >> 3
            if not last:
                self._skip_then(body, "block")
            else:
                self._skip_then(body + (4 if self._checksum else 0), "frame-end")


class RatioBudget:
    """Decompressed bytes allowed against compressed bytes consumed: anything up to
    ``limits.ratio_floor``, then at most ``limits.max_ratio`` times what ``counted`` has read.

    Each stream has its own; a load also shares one across all its layers against the archive's
    bytes, so that many small bombs cannot each spend a floor's worth."""

    def __init__(self, limits: Limits, counted: ObservedReader, what: str) -> None:
        self._limits = limits
        self._counted = counted
        self._what = what
        self.spent = 0

    def spend(self, n: int) -> None:
        self.spent += n
        limits = self._limits
        if self.spent > limits.ratio_floor and self.spent > limits.max_ratio * max(self._counted.count, 1):
            raise ArchiveError(
                f"{self._what} decompresses to more than {limits.max_ratio} times its compressed size: "
                "refusing a likely decompression bomb"
            )


class DecompressingReader:
    """Pulls decompressed bytes out of ``source`` (compressed, already sniffed as ``kind``).

    ``budgets`` bound the output against compressed bytes consumed; ``max_bytes`` is the absolute
    cap on it. Corrupt or truncated data, and output past a cap, raise ArchiveError.
    """

    def __init__(
        self,
        kind: str,
        source: Reader,
        budgets: list[RatioBudget],
        *,
        max_bytes: int,
        what: str,
        checker: ZstdFrameChecker | None = None,
    ) -> None:
        self._kind = kind
        self._budgets = budgets
        self._max_bytes = max_bytes
        self._what = what
        self._checker = checker
        self.count = 0
        self._done = False
        if kind == GZIP:
            self._inner: Reader = gzip.GzipFile(fileobj=source, mode="rb")  # type: ignore[arg-type]
        elif kind == ZSTD:
            if checker is None:
                raise ValueError("zstd needs a frame checker fed with the raw bytes")
            decompressor = zstandard.ZstdDecompressor(max_window_size=_ZSTD_MAX_WINDOW)
            self._inner = decompressor.stream_reader(
                source, read_size=256 * 1024, read_across_frames=True, closefd=False
            )
        else:
            raise ArchiveError(f"{what} is {kind}-compressed; only gzip and zstd are supported")

    def read(self, n: int = -1, /) -> bytes:
        if self._done:
            return b""
        if n is None or n < 0:
            raise ValueError("read a bounded amount")
        try:
            data = self._inner.read(n)
        except (EOFError, zlib.error, gzip.BadGzipFile, zstandard.ZstdError) as exc:
            raise ArchiveError(
                f"{self._what}: the {self._kind} data is corrupt or truncated ({exc})"
            ) from None
        if not data:
            self._done = True
            if self._checker is not None:
                self._checker.finish()
            return b""
        self.count += len(data)
        if self.count > self._max_bytes:
            raise ArchiveError(f"{self._what} decompresses to more than {self._max_bytes} bytes; refusing it")
        for budget in self._budgets:
            budget.spend(len(data))
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


def decompressing(
    kind: str,
    raw: ObservedReader,
    *,
    prefix: bytes,
    limits: Limits,
    max_bytes: int,
    what: str,
    shared: RatioBudget | None = None,
) -> DecompressingReader:
    """A bounded decompressing reader over ``raw``, from which ``prefix`` was already read to
    sniff it; ``raw.count`` (compressed bytes consumed) feeds its own ratio budget, and ``shared``
    (if given) is charged too."""
    checker = ZstdFrameChecker(what) if kind == ZSTD else None
    inner: Reader = raw
    if checker is not None:
        checker.feed(prefix)
        inner = ObservedReader(raw, checker.feed)
    source: Reader = PrefixedReader(prefix, inner) if prefix else inner
    budgets = [RatioBudget(limits, raw, what)]
    if shared is not None:
        budgets.append(shared)
    return DecompressingReader(kind, source, budgets, max_bytes=max_bytes, what=what, checker=checker)
