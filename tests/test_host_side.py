"""The host side (macOS, Windows) must not need anything Linux-only: with pyfuse3, trio and fcntl made
unimportable, the host-side modules import, `fsbridge map` resolves, and `fsbridge load` loads through a
real server (which itself runs normally, in the VM's role)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_helpers import FIXTURES, Servers, expected_images, needs_fixtures, running_servers

BLOCKED = ("pyfuse3", "trio", "fcntl")

PRELUDE = textwrap.dedent(f"""
    import sys
    BLOCKED = {BLOCKED!r}
    preloaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not preloaded, f"imported before the test could block them: {{preloaded}}"

    class LinuxOnly:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is Linux-only: the host side must not import it")
            return None

    sys.meta_path.insert(0, LinuxOnly())
""")


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    yield from running_servers(tmp_path)


def run_blocked(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_blocker_works() -> None:
    result = run_blocked("import trio\n")
    assert result.returncode != 0
    assert "trio is Linux-only" in result.stderr


def test_host_side_modules_import_nothing_linux_only() -> None:
    result = run_blocked("""
        import fsbridge, fsbridge.errors, fsbridge.identity, fsbridge.mapping, fsbridge.client, fsbridge.cli
        from fsbridge.client import ApiClient, load_archive, default_url
        from fsbridge.client.load import LoadOutcome
        from fsbridge.mapping import MappingTable
        ApiClient("http://127.0.0.1:9").close()
        ApiClient("unix:/nowhere.sock").close()
        table = MappingTable.load(["C:\\\\Users=/mnt/c/Users"])
        assert table.resolve("C:\\\\Users\\\\me\\\\x.tar").backing_path == "/mnt/c/Users/me/x.tar"
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_map_command_runs_without_linux_only_modules() -> None:
    result = run_blocked("""
        from fsbridge.cli import cli
        sys.argv = ["fsbridge", "map", "/Users/me/img.tar", "--map", "/Users=/mnt/Users", "--json"]
        try:
            cli(prog_name="fsbridge")
        except SystemExit as e:
            assert e.code in (0, None), e.code
    """)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["backing_path"] == "/mnt/Users/me/img.tar"


@needs_fixtures
def test_load_command_runs_without_linux_only_modules(servers, tmp_path: Path) -> None:
    server = servers.start(maps={FIXTURES: FIXTURES})

    def load(*args: str) -> dict:
        result = run_blocked(f"""
            from fsbridge.cli import cli
            sys.argv = ["fsbridge", "load", "--json", "--url", {server.url!r}, *{list(args)!r}]
            try:
                cli(prog_name="fsbridge")
            except SystemExit as e:
                assert e.code in (0, None), e.code
            loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
            assert not loaded, loaded
        """)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    archive = str(FIXTURES / "app-docker.tar")
    expected = expected_images()["app-docker.tar"]
    for args, via in (([archive], "path"), (["--upload", archive], "upload")):
        outcome = load(*args)
        assert outcome["via"] == via
        assert {i["id"]: set(i["names"]) for i in outcome["images"]} == expected
