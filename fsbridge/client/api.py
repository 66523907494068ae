"""Talking to `fsbridge serve` from the host: where the server is, authentication, and error mapping.

Runs on macOS, Windows and Linux: httpx only, nothing Linux-only. Every failure becomes a RemoteError
with the HTTP status (None when the server was not reached) and the server's reason code.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator

import httpx

from fsbridge.errors import ConfigError, RemoteError
from fsbridge.identity import Identity

CHUNK = 1024 * 1024
UNIX_BASE_URL = "http://fsbridge"


def default_config_path() -> str:
    """FSBRIDGE_CONFIG, else the per-user config file (~/.config/fsbridge/config.toml; %APPDATA% on Windows)."""
    explicit = os.environ.get("FSBRIDGE_CONFIG")
    if explicit:
        return explicit
    if os.name == "nt" and os.environ.get("APPDATA"):
        return os.path.join(os.environ["APPDATA"], "fsbridge", "config.toml")
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "fsbridge", "config.toml")


def read_client_config(path: str | None) -> dict[str, Any]:
    """The client settings (`url`, `token_file`) of a TOML config file; {} when the default file is absent.

    The same file may hold the VM side's [[map]] entries; the client ignores them.
    """
    import tomllib

    explicit = path is not None
    path = path or default_config_path()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"config file {path} does not exist", reason="bad-config") from None
        return {}
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"config file {path} cannot be read: {e}", reason="bad-config") from None
    out: dict[str, Any] = {}
    for key in ("url", "token_file"):
        if key in data:
            if not isinstance(data[key], str) or not data[key]:
                raise ConfigError(f"config file {path}: '{key}' must be a non-empty string", reason="bad-config")
            out[key] = data[key]
    return out


def default_url(config: str | None = None) -> str:
    """FSBRIDGE_URL, then the config file's `url`, then the default socket of a server in this machine."""
    url = os.environ.get("FSBRIDGE_URL") or read_client_config(config).get("url")
    if url:
        return url
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return "unix:/run/fsbridge/fsbridge.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/fsbridge-{os.getuid() if hasattr(os, 'getuid') else 0}"
    return f"unix:{os.path.join(runtime, 'fsbridge', 'fsbridge.sock')}"


def _token(token_file: str | None, config: str | None = None) -> str | None:
    token_file = token_file or os.environ.get("FSBRIDGE_TOKEN_FILE") or read_client_config(config).get("token_file")
    if token_file:
        try:
            with open(os.path.expanduser(token_file), encoding="utf-8") as f:
                return f.read().strip()
        except OSError as e:
            raise ConfigError(f"cannot read token file {token_file}: {e.strerror}", reason="no-token") from None
    return os.environ.get("FSBRIDGE_TOKEN") or None


class ApiClient:
    """A client of one fsbridge server. `url`: unix:/path/to.sock or http://HOST:PORT."""

    def __init__(self, url: str | None = None, *, token_file: str | None = None, config: str | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url or default_url(config)
        headers = {"user-agent": "fsbridge-client"}
        token = _token(token_file, config)
        if token:
            headers["authorization"] = f"Bearer {token}"
        timeout = httpx.Timeout(30.0, read=None, write=None)
        if self.url.startswith("unix:"):
            self.socket_path = self.url[len("unix:"):]
            transport = transport or httpx.HTTPTransport(uds=self.socket_path)
            base = UNIX_BASE_URL
        elif self.url.startswith(("http://", "https://")):
            self.socket_path = None
            base = self.url.rstrip("/")
        else:
            raise ConfigError(f"--url {self.url}: expected unix:/path/to.sock or http://HOST:PORT", reason="bad-url")
        self.http = httpx.Client(base_url=base, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "ApiClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise RemoteError(f"cannot reach the fsbridge server at {self.url}: {e}; is `fsbridge serve` "
                              "running in the VM, and is FSBRIDGE_URL right?", reason="unreachable") from None
        except httpx.TransportError as e:
            what = str(e) or type(e).__name__
            raise RemoteError(f"the fsbridge server at {self.url} closed the connection: {what}",
                              reason="connection-lost") from None
        return self._decode(response)

    @staticmethod
    def _decode(response: httpx.Response) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.is_success:
            if not isinstance(body, (dict, list)):
                raise RemoteError(f"the answer from {response.url} is not fsbridge's JSON; is this an fsbridge "
                                  "server?", reason="bad-response", status=response.status_code)
            return body
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            reason, message = str(error.get("reason", "error")), str(error.get("message", ""))
        else:
            reason, message = f"http-{response.status_code}", response.text[:200] or response.reason_phrase
        raise RemoteError(message, reason=reason, status=response.status_code)

    # -- the API ---------------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return self._request("GET", "/v1/info")

    def images(self) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/images")["images"]

    def inspect(self, ref: str) -> dict[str, Any]:
        return self._request("GET", "/v1/images/" + httpx.URL(path=ref).raw_path.decode())

    def remove(self, ref: str) -> list[str]:
        return self._request("DELETE", "/v1/images/" + httpx.URL(path=ref).raw_path.decode())["removed"]

    def load_reference(self, host_path: str, identity: Identity) -> dict[str, Any]:
        return self._request("POST", "/v1/images/load", json={"path": host_path, "identity": identity.to_json()})

    def upload(self, path: str, *, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        size = os.path.getsize(path)
        sent = 0

        def body() -> Iterator[bytes]:
            nonlocal sent
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    sent += len(chunk)
                    if progress is not None:
                        progress(len(chunk))
                    yield chunk

        try:
            return self._request("POST", "/v1/images/load", content=body(),
                                 headers={"content-type": "application/x-tar", "content-length": str(size)})
        except RemoteError as e:
            if e.reason == "connection-lost" and e.status is None:
                raise RemoteError(f"the upload stopped after {sent} of {size} bytes ({e.message.rstrip('.')}). "
                                  "Nothing was stored; run the command again.",
                                  reason="upload-interrupted") from None
            raise
