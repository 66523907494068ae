"""Where the client looks for its server: --url, FSBRIDGE_URL, the config file, the default socket."""

from __future__ import annotations

from pathlib import Path

import pytest

from fsbridge.client.api import ApiClient, default_url
from fsbridge.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("FSBRIDGE_URL", "FSBRIDGE_CONFIG", "FSBRIDGE_TOKEN_FILE", "FSBRIDGE_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


def test_precedence_env_then_config_then_default_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_url().startswith("unix:") and default_url().endswith("fsbridge.sock")
    cfg = tmp_path / "xdg" / "fsbridge" / "config.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text('url = "http://127.0.0.1:7780"\n\n[[map]]\nhost = "/Users"\nbacking = "/Users"\n')
    assert default_url() == "http://127.0.0.1:7780"
    monkeypatch.setenv("FSBRIDGE_URL", "unix:/tmp/elsewhere.sock")
    assert default_url() == "unix:/tmp/elsewhere.sock"


def test_config_token_file_is_sent_as_bearer(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token-of-enough-length\n")
    cfg = tmp_path / "client.toml"
    cfg.write_text(f'url = "http://127.0.0.1:9"\ntoken_file = "{token}"\n')
    client = ApiClient(config=str(cfg))
    try:
        assert client.url == "http://127.0.0.1:9"
        assert client.http.headers["authorization"] == "Bearer s3cret-token-of-enough-length"
    finally:
        client.close()


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        default_url(str(tmp_path / "missing.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("url = 5\n")
    with pytest.raises(ConfigError, match="'url' must be a non-empty string"):
        default_url(str(bad))
