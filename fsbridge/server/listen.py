"""Where `fsbridge serve` listens, who may talk to it, and its run loop.

A unix socket (mode 0600: only its owner can connect) is the default. TCP is only served with a bearer
token, kept in a file of mode 0600 (created with a random token if missing; refused if others can read
it), because anything that can reach the port could otherwise make the server read files.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import signal
import socket
import stat as stat_mod
from dataclasses import dataclass
from functools import partial
from typing import Callable

import trio

from fsbridge.errors import ConfigError
from fsbridge.server.app import Api
from fsbridge.server.http import serve_connection

log = logging.getLogger(__name__)


def default_socket_path() -> str:
    if os.geteuid() == 0:
        return "/run/fsbridge/fsbridge.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/fsbridge-{os.getuid()}"
    return os.path.join(runtime, "fsbridge", "fsbridge.sock")


@dataclass(frozen=True)
class ListenAddress:
    kind: str  # "unix" or "tcp"
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.kind == "unix" else f"tcp:{self.host}:{self.port}"


def parse_listen(text: str | None) -> ListenAddress:
    """`unix:PATH` or `tcp:HOST:PORT` (HOST may be [v6]); None: the default socket."""
    if not text:
        return ListenAddress("unix", path=default_socket_path())
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if not path.startswith("/"):
            raise ConfigError(f"--listen {text}: the socket path must be absolute", reason="bad-listen")
        return ListenAddress("unix", path=path)
    if text.startswith("tcp:"):
        host, sep, port = text[len("tcp:"):].rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) < 65536:  # 0: any free port
            raise ConfigError(f"--listen {text}: expected tcp:HOST:PORT", reason="bad-listen")
        return ListenAddress("tcp", host=host.strip("[]") or "127.0.0.1", port=int(port))
    raise ConfigError(f"--listen {text}: expected unix:PATH or tcp:HOST:PORT", reason="bad-listen")


def read_token_file(path: str, *, create: bool) -> str:
    """The bearer token in `path`; with create, a new random one is written (0600) if the file is missing."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if not create:
            raise ConfigError(f"token file {path} does not exist", reason="no-token") from None
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
        st = os.stat(path)
    if st.st_mode & (stat_mod.S_IRWXG | stat_mod.S_IRWXO):
        raise ConfigError(f"token file {path} is readable by others (mode {stat_mod.S_IMODE(st.st_mode):o}); "
                          f"chmod 600 {path}", reason="token-exposed")
    with open(path, encoding="utf-8") as f:
        token = f.read().strip()
    if len(token) < 16:
        raise ConfigError(f"token file {path} holds no usable token (16 characters at least)", reason="bad-token")
    return token


def _unix_socket(path: str) -> socket.socket:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    if os.path.lexists(path):
        if not stat_mod.S_ISSOCK(os.lstat(path).st_mode):
            raise ConfigError(f"{path} exists and is not a socket; refusing to replace it", reason="address-in-use")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # a stale socket from a server that is gone
        else:
            raise ConfigError(f"another server is already listening on {path}", reason="address-in-use")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket is born 0600: no window in which others may connect
    try:
        sock.bind(path)
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock


async def _listeners(address: ListenAddress) -> list[trio.SocketListener]:
    if address.kind == "unix":
        sock = trio.socket.from_stdlib_socket(_unix_socket(address.path))
        return [trio.SocketListener(sock)]
    try:
        return await trio.open_tcp_listeners(address.port, host=address.host)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(f"{address} is already in use", reason="address-in-use") from None
        raise


def serve(api: Api, address: ListenAddress, *, ready: Callable[[str], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM; removes its unix socket on the way out."""
    if address.kind == "tcp" and api.token is None:
        raise ConfigError("TCP needs a bearer token: give --token-file FILE", reason="no-token")

    bound: list[tuple[int, int]] = []  # (st_dev, st_ino) of the socket file this server created

    async def main() -> None:
        listeners = await _listeners(address)
        if address.kind == "unix":
            st = os.lstat(address.path)
            bound.append((st.st_dev, st.st_ino))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signals, nursery.cancel_scope)
            await nursery.start(partial(trio.serve_listeners, partial(serve_connection, handle=api.handle),
                                        listeners))
            if ready is not None:
                if address.kind == "tcp":
                    host, port = listeners[0].socket.getsockname()[:2]
                    ready(f"tcp:{host}:{port}")
                else:
                    ready(str(address))

    try:
        trio.run(main)
    finally:
        # Remove our own socket only: not a file that was in the way, nor another server's socket.
        if address.kind == "unix" and bound:
            try:
                st = os.lstat(address.path)
                if (st.st_dev, st.st_ino) == bound[0]:
                    os.unlink(address.path)
            except OSError:
                pass


async def _stop_on_signals(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("signal %d: stopping", signum)
            scope.cancel()
            return
