"""HTTP/1.1 on trio with h11: just enough server to carry the API, and uploads at disk speed.

h11 does all the parsing; this module reads the socket 1 MiB at a time (hypercorn's 64 KiB reads made a
1 GiB upload three times slower), hands request bodies out as a stream of chunks, and writes JSON
responses. One request at a time per connection, with keep-alive.

A request body is never held whole in memory: `Request.receive_chunk()` yields it piece by piece, and
`BodyReader` turns that into a blocking file object for a worker thread (the image store reads it there).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable
from urllib.parse import unquote, urlsplit

import h11
import trio

log = logging.getLogger(__name__)

RECEIVE_SIZE = 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
SERVER_NAME = b"fsbridge"
IDLE_TIMEOUT_S = 300.0  # from connect (or the previous answer) until a request's head is complete


class ClientGone(Exception):
    """The client closed the connection (or broke the protocol) before the request was complete."""


@dataclass
class Request:
    method: str
    path: str  # decoded path, without the query string
    query: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    connection: "Connection" = field(repr=False)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        return int(value) if value is not None and value.isdigit() else None

    async def receive_chunk(self) -> bytes:
        """The next piece of the body, b"" at its end."""
        return await self.connection.receive_body_chunk()

    async def read_body(self, limit: int) -> bytes:
        """The whole body, for small JSON requests; ValueError if it is larger than `limit`."""
        parts: list[bytes] = []
        size = 0
        while chunk := await self.receive_chunk():
            size += len(chunk)
            if size > limit:
                raise ValueError(f"the request body is larger than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)


class Connection:
    """One client connection: reads requests, streams bodies, writes responses."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.bytes_received = 0

    async def _next_event(self) -> Any:
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as e:
                raise ClientGone(f"bad request: {e}") from None
            if event is h11.NEED_DATA:
                try:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                    raise ClientGone(str(e)) from None
                self.bytes_received += len(data)
                self.conn.receive_data(data)
                continue
            return event

    async def next_request(self) -> Request | None:
        """The next request's head, or None when the client closed the connection cleanly."""
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            try:
                self.conn.start_next_cycle()
            except h11.LocalProtocolError:
                return None
        try:
            event = await self._next_event()
        except ClientGone:
            return None
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):
            return None
        headers: dict[str, str] = {}
        for name, value in event.headers:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        target = urlsplit(event.target.decode("latin-1"))
        return Request(event.method.decode("ascii"), unquote(target.path), target.query, headers, self)

    async def receive_body_chunk(self) -> bytes:
        if self.conn.their_state is not h11.SEND_BODY:
            return b""
        if self.conn.they_are_waiting_for_100_continue:  # "Expect: 100-continue": we do want the body
            await self._send(h11.InformationalResponse(status_code=100, headers=[(b"server", SERVER_NAME)]))
        event = await self._next_event()
        if isinstance(event, h11.Data):
            return bytes(event.data)
        if isinstance(event, h11.EndOfMessage):
            return b""
        raise ClientGone("the connection closed in the middle of the request body")

    async def discard_body(self, limit: int = 1 << 20) -> bool:
        """Read and drop what is left of the body (up to `limit`); False if the connection must close."""
        seen = 0
        try:
            while self.conn.their_state is h11.SEND_BODY:
                chunk = await self.receive_body_chunk()
                if not chunk:
                    break
                seen += len(chunk)
                if seen > limit:
                    return False
        except ClientGone:
            return False
        return True

    async def send_json(self, status: int, body: Any, *, close: bool = False) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(data)).encode()),
            (b"server", SERVER_NAME),
        ]
        if close:
            headers.append((b"connection", b"close"))
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="fsbridge"'))
        await self._send(h11.Response(status_code=status, headers=headers))
        await self._send(h11.Data(data=data))
        await self._send(h11.EndOfMessage())

    async def _send(self, event: Any) -> None:
        try:
            data = self.conn.send(event)
        except h11.LocalProtocolError as e:
            raise ClientGone(str(e)) from None
        if data:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                raise ClientGone(str(e)) from None

    @property
    def can_continue(self) -> bool:
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE


Handler = Callable[[Request], Awaitable[tuple[int, Any]]]


async def serve_connection(stream: trio.abc.Stream, handle: Handler) -> None:
    """Answer requests on one connection until it closes. `handle` returns (status, JSON body)."""
    conn = Connection(stream)
    try:
        while True:
            request = None
            # An idle or slow client may not hold a connection (and its socket) forever.
            with trio.move_on_after(IDLE_TIMEOUT_S):
                request = await conn.next_request()
            if request is None:
                return
            try:
                status, body = await handle(request)
            except ClientGone as e:
                log.info("%s %s: client gone: %s", request.method, request.path, e)
                return
            # The answer may come before the body was read (a refusal): drain a little, else close. A client
            # still waiting for "100 Continue" has not sent the body: answer at once and close.
            if conn.conn.their_state is not h11.SEND_BODY:
                keep = True
            elif conn.conn.they_are_waiting_for_100_continue:
                keep = False
            else:
                keep = await conn.discard_body()
            try:
                await conn.send_json(status, body, close=not keep)
            except ClientGone:
                return
            log.info("%s %s -> %d", request.method, request.path, status)
            if not keep or not conn.can_continue:
                return
    finally:
        await stream.aclose()


class BodyReader:
    """A blocking, read-only file object over a request body, for code running in a worker thread.

    Each read asks the trio thread for the next chunk (trio.from_thread.run), so the worker pulls the
    body at its own pace and memory stays at one chunk. Extra bytes of a chunk are kept for the next read.
    """

    def __init__(self, request: Request, progress: Callable[[int], None] | None = None) -> None:
        self._request = request
        self._pending = memoryview(b"")
        self._eof = False
        self.bytes_read = 0
        self._progress = progress

    def read(self, n: int = -1, /) -> bytes:
        if not self._pending and not self._eof:
            chunk = trio.from_thread.run(self._request.receive_chunk)
            if not chunk:
                self._eof = True
            self._pending = memoryview(chunk)
        if n is None or n < 0:
            parts = [bytes(self._pending)]
            self._pending = memoryview(b"")
            while not self._eof:
                chunk = trio.from_thread.run(self._request.receive_chunk)
                if not chunk:
                    self._eof = True
                parts.append(chunk)
            data = b"".join(parts)
        else:
            data = bytes(self._pending[:n])
            self._pending = self._pending[n:]
        self.bytes_read += len(data)
        if self._progress is not None:
            self._progress(self.bytes_read)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False
