"""Path mapping: host path -> backing path -> exposed path, and the refusals that keep reads in exports."""

from __future__ import annotations

import json
import os
import posixpath
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st

from fsbridge.cli import cli
from fsbridge.errors import ConfigError, MappingError
from fsbridge.mapping import (
    Mapping,
    MappingTable,
    default_sensitivity,
    discover_mappings,
    load_config,
    parse_map_option,
    parse_mountinfo,
    split_host_path,
)


def table(*maps: str) -> MappingTable:
    return MappingTable(parse_map_option(m) for m in maps)


def refused(tbl: MappingTable, path: str, **kw: bool) -> MappingError:
    with pytest.raises(MappingError) as info:
        tbl.resolve(path, **kw)
    assert info.value.message  # a sentence, not an empty error
    return info.value


# --- host path forms ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, root, parts",
    [
        ("/Users/me/x.tar", "/", ["Users", "me", "x.tar"]),
        ("/Users//me/./x.tar/", "/", ["Users", "me", "x.tar"]),
        ("/", "/", []),
        ("C:\\Users\\me\\x.tar", "C:", ["Users", "me", "x.tar"]),
        ("C:/Users/me/x.tar", "C:", ["Users", "me", "x.tar"]),
        ("c:\\Users/me\\\\x.tar", "C:", ["Users", "me", "x.tar"]),
        ("\\\\?\\C:\\Users\\me\\x.tar", "C:", ["Users", "me", "x.tar"]),
        ("\\\\.\\D:\\data\\x.tar", "D:", ["data", "x.tar"]),
        ("E:\\", "E:", []),
        ("\\\\?\\z:", "Z:", []),
    ],
)
def test_split_host_path_accepts_posix_and_windows_forms(path: str, root: str, parts: list[str]) -> None:
    assert split_host_path(path) == (root, parts)


def test_split_host_path_applies_dotdot_lexically_unless_asked_to_keep_it() -> None:
    assert split_host_path("/a/b/../c") == ("/", ["a", "c"])
    assert split_host_path("/a/b/../c", keep_dotdot=True) == ("/", ["a", "b", "..", "c"])
    assert split_host_path("C:\\..\\..\\Windows") == ("C:", ["Windows"])  # the root's parent is the root


@pytest.mark.parametrize(
    "path, reason",
    [
        ("Users/me/x.tar", "not-absolute"),
        ("x.tar", "not-absolute"),
        ("C:x.tar", "not-absolute"),
        ("C:", "not-absolute"),
        ("\\Users\\me", "not-absolute"),
        ("\\\\server\\share\\x.tar", "unc-unsupported"),
        ("\\\\?\\UNC\\server\\share\\x.tar", "unc-unsupported"),
        ("\\\\.\\UNC\\server\\share", "unc-unsupported"),
        ("\\\\?\\Volume{0f1e2d3c-0000-0000-0000-100000000000}\\x", "invalid-path"),
        ("/Users/me/x\0.tar", "invalid-path"),
        ("C:\\Users\\me\\x.tar:stream", "invalid-path"),
        ("C:\\Users\\me\\what?.tar", "invalid-path"),
        ("C:\\Users\\me.\\x.tar", "invalid-path"),
        ("", "invalid-path"),
        ("/Users/\ud800", "invalid-path"),
    ],
)
def test_unservable_paths_are_refused_with_a_reason(path: str, reason: str) -> None:
    tbl = table("/=/mnt/root", "C:\\=/mnt/c")
    err = refused(tbl, path)
    assert err.reason == reason


def test_unc_refusal_explains_itself() -> None:
    err = refused(table("C:\\=/mnt/c"), "\\\\fileserver\\builds\\img.tar")
    assert "network (UNC) path" in err.message
    assert "fileserver" in err.message


# --- mappings -----------------------------------------------------------------------------------------------


def test_windows_mapping_is_normalised_and_exposed_under_lower_case_drive() -> None:
    m = parse_map_option("c:/Users/me/=/mnt/c/Users/me/")
    assert m.host == "C:\\Users\\me"
    assert m.backing == "/mnt/c/Users/me"
    assert m.exposed == "/c/Users/me"
    assert (m.case_insensitive, m.unicode_insensitive) == (True, True)
    assert Mapping.create("D:\\", "/mnt/d").exposed == "/d"
    assert Mapping.create("/", "/mnt/root").exposed == "/"


def test_posix_defaults_are_exact_but_macos_folders_ignore_case_and_normalisation() -> None:
    assert default_sensitivity("/home/me") == (False, False)
    assert default_sensitivity("/Users/me") == (True, True)
    assert default_sensitivity("/Volumes/Data") == (True, True)
    assert default_sensitivity("/var/folders/xy") == (True, True)
    assert default_sensitivity("/var/lib") == (False, False)
    assert default_sensitivity("/UsersArchive") == (False, False)  # a component, not a string prefix
    assert default_sensitivity("C:\\Users") == (True, True)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("/Users", "not HOST=BACKING"),
        ("/Users=mnt/Users", "absolute path in the VM"),
        ("=/mnt/x", "no host folder"),
        ("Users=/mnt/Users", "not an absolute path"),
        ("\\\\server\\share=/mnt/s", "UNC"),
        ("/srv=/mnt/srv,cse=insensitive", "Unknown option 'cse=insensitive'"),
        ("/srv=/mnt/srv,case=maybe", "case=insensitive|sensitive"),
        ("/srv=/mnt/srv,case=sensitive,case=insensitive", "given twice"),
    ],
)
def test_bad_map_options_raise_config_error(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_map_option(text)
    assert message in info.value.message


def test_map_option_suffixes_override_defaults() -> None:
    m = parse_map_option("/srv/data=/mnt/data,case=insensitive,unicode=normalize")
    assert (m.host, m.backing, m.case_insensitive, m.unicode_insensitive) == (
        "/srv/data",
        "/mnt/data",
        True,
        True,
    )
    m = parse_map_option("/Users=/Users,case=sensitive")
    assert (m.case_insensitive, m.unicode_insensitive) == (False, True)
    m = parse_map_option("/Users=/Users,unicode=exact")
    assert (m.case_insensitive, m.unicode_insensitive) == (True, False)


def test_map_option_splits_at_first_equals_slash_so_windows_hosts_may_contain_equals() -> None:
    m = parse_map_option("C:\\a=b=/mnt/c/a=b")
    assert (m.host, m.backing) == ("C:\\a=b", "/mnt/c/a=b")


# --- resolution ---------------------------------------------------------------------------------------------


def test_posix_path_resolves_to_backing_exposed_and_mount_paths() -> None:
    r = table("/home/me=/mnt/home").resolve("/home/me/images/app.tar")
    assert r.backing_path == "/mnt/home/images/app.tar"
    assert r.exposed_path == "/home/me/images/app.tar"
    assert r.under_mount("/mnt/host") == "/mnt/host/home/me/images/app.tar"
    assert r.under_mount("/mnt/host/") == "/mnt/host/home/me/images/app.tar"
    assert r.real_path is None  # no check was asked for


@pytest.mark.parametrize(
    "path",
    [
        "C:\\Users\\me\\img.tar",
        "C:/Users/me/img.tar",
        "c:\\users\\ME\\img.tar",
        "\\\\?\\C:\\Users\\me\\img.tar",
        "/mnt/c/Users/me/img.tar",  # the WSL spelling of the same file
    ],
)
def test_windows_forms_resolve_to_the_same_file(path: str) -> None:
    r = table("C:\\Users\\me=/mnt/c/Users/me").resolve(path)
    assert r.backing_path == "/mnt/c/Users/me/img.tar"
    assert r.exposed_path == "/c/Users/me/img.tar"
    assert r.under_mount("/mnt/host") == "/mnt/host/c/Users/me/img.tar"
    assert r.host_path.upper() == "C:\\USERS\\ME\\IMG.TAR"


def test_other_drive_letters_map_to_their_own_share() -> None:
    tbl = table("C:\\=/mnt/c", "D:\\=/mnt/d")
    assert tbl.resolve("d:\\data\\x.tar").backing_path == "/mnt/d/data/x.tar"
    assert tbl.resolve("D:/data/x.tar").exposed_path == "/d/data/x.tar"
    assert tbl.resolve("C:\\").backing_path == "/mnt/c"
    assert refused(tbl, "E:\\data\\x.tar").reason == "not-mapped"


def test_remainder_keeps_the_callers_spelling_after_a_case_insensitive_root() -> None:
    r = table("C:\\Users\\me=/mnt/c/Users/me").resolve("C:\\USERS\\Me\\Docs\\Img.TAR")
    assert r.backing_path == "/mnt/c/Users/me/Docs/Img.TAR"


def test_longest_prefix_wins_regardless_of_order() -> None:
    maps = ["/Users=/mnt/u", "/Users/me/proj=/mnt/p"]
    for order in (maps, maps[::-1]):
        tbl = table(*order)
        assert tbl.resolve("/Users/me/proj/img.tar").backing_path == "/mnt/p/img.tar"
        assert tbl.resolve("/Users/me/proj").backing_path == "/mnt/p"
        assert tbl.resolve("/Users/me/other.tar").backing_path == "/mnt/u/me/other.tar"
        assert tbl.resolve("/Users/me/proj/img.tar").exposed_path == "/Users/me/proj/img.tar"
    assert sorted(table(*maps).exposed_roots()) == [("/Users", "/mnt/u"), ("/Users/me/proj", "/mnt/p")]


def test_prefixes_are_compared_by_component_not_by_string() -> None:
    tbl = table("/home/me=/mnt/me", "C:\\Users\\me=/mnt/c/me")
    assert refused(tbl, "/home/me2/x.tar").reason == "not-mapped"
    assert refused(tbl, "/home/mex").reason == "not-mapped"
    assert refused(tbl, "C:\\Users\\me2\\x.tar").reason == "not-mapped"
    assert tbl.resolve("/home/me").backing_path == "/mnt/me"


def test_case_sensitivity_is_per_mapping() -> None:
    exact = table("/srv/Data=/mnt/data")
    assert refused(exact, "/srv/data/x").reason == "not-mapped"
    assert exact.resolve("/srv/Data/x").backing_path == "/mnt/data/x"
    ci = table("/srv/Data=/mnt/data,case=insensitive")
    assert ci.resolve("/SRV/data/x").backing_path == "/mnt/data/x"
    mac = table("/Users/me=/Users/me")
    assert mac.resolve("/users/ME/x").backing_path == "/Users/me/x"
    mac_exact = table("/Users/me=/Users/me,case=sensitive")
    assert refused(mac_exact, "/users/me/x").reason == "not-mapped"


def test_nfc_and_nfd_spellings_match_only_where_the_mapping_says_so() -> None:
    nfc = unicodedata.normalize("NFC", "/Users/Zoë")
    nfd = unicodedata.normalize("NFD", "/Users/Zoë")
    assert nfc != nfd
    mac = table(f"{nfc}=/mnt/zoe")
    assert mac.resolve(nfd + "/x.tar").backing_path == "/mnt/zoe/x.tar"
    assert mac.resolve(nfc + "/x.tar").backing_path == "/mnt/zoe/x.tar"
    exact = table(f"{nfc}=/mnt/zoe,unicode=exact")
    assert refused(exact, nfd + "/x.tar").reason == "not-mapped"
    linux = table(f"/home/{nfd[len('/Users/') :]}=/mnt/zoe")  # POSIX default: exact
    assert refused(linux, unicodedata.normalize("NFC", linux.mappings[0].host) + "/x").reason == "not-mapped"
    windows = table("C:\\Users\\Zoë=/mnt/c/zoe")
    assert windows.resolve(unicodedata.normalize("NFD", "C:\\Users\\ZOË\\x")).backing_path == "/mnt/c/zoe/x"


def test_dotdot_inside_a_mapping_is_fine_after_normalisation() -> None:
    tbl = table("/Users/me=/mnt/me")
    r = tbl.resolve("/Users/me/a/../b/./img.tar")
    assert r.backing_path == "/mnt/me/b/img.tar"
    assert r.host_path == "/Users/me/b/img.tar"


@pytest.mark.parametrize(
    "path",
    [
        "/Users/me/../other/x.tar",
        "/Users/me/..",
        "/Users/me/a/../../../etc/passwd",
        "C:\\Users\\me\\..\\you\\x",
    ],
)
def test_dotdot_climbing_out_of_the_mapping_is_outside_export(path: str) -> None:
    tbl = table("/Users/me=/mnt/me", "C:\\Users\\me=/mnt/c/me")
    err = refused(tbl, path)
    assert err.reason == "outside-export"
    assert "'..'" in err.message


def test_dotdot_into_another_mapped_folder_resolves_there() -> None:
    tbl = table("/Users/me=/mnt/me", "/Users/you=/mnt/you")
    assert tbl.resolve("/Users/me/../you/x.tar").backing_path == "/mnt/you/x.tar"


def test_resolved_backing_never_leaves_the_backing_root_lexically() -> None:
    tbl = table("/Users/me=/mnt/me", "C:\\Users\\me=/mnt/c/me", "/=/mnt/root")

    alphabet = st.sampled_from(["/", "\\", ".", "..", "a", "B", ":", "C:", "Users", "me", "é", " "])

    @settings(max_examples=400, database=None, deadline=None)
    @given(st.lists(alphabet, max_size=12))
    def check(pieces: list[str]) -> None:
        path = "".join(pieces)
        try:
            r = tbl.resolve(path)
        except MappingError as e:
            assert e.reason in {
                "not-mapped",
                "outside-export",
                "unc-unsupported",
                "not-absolute",
                "invalid-path",
            }
            return
        root = r.mapping.backing
        assert posixpath.normpath(r.backing_path) == r.backing_path
        assert r.backing_path == root or r.backing_path.startswith(root.rstrip("/") + "/")
        assert "/../" not in r.backing_path + "/"

    check()


def test_empty_table_says_nothing_is_mapped() -> None:
    err = refused(MappingTable([]), "/Users/me/x.tar")
    assert err.reason == "not-mapped"
    assert "no host folders are mapped" in err.message


# --- checks in the VM: realpath containment and existence ---------------------------------------------------


@pytest.fixture
def share(tmp_path: Path) -> tuple[MappingTable, Path, Path]:
    root = tmp_path / "share"
    outside = tmp_path / "secret"
    (root / "me").mkdir(parents=True)
    outside.mkdir()
    (root / "me" / "img.tar").write_bytes(b"tar")
    (outside / "key").write_text("private")
    (root / "me" / "inner-link").symlink_to(root / "me" / "img.tar")
    (root / "me" / "escape").symlink_to(outside / "key")
    (root / "me" / "escape-dir").symlink_to(outside)
    (root / "me" / "dangling-out").symlink_to(outside / "missing")
    (root / "me" / "relative-out").symlink_to("../../secret/key")
    return table(f"/host={root}"), root, outside


def test_check_accepts_an_existing_file_and_links_that_stay_inside(
    share: tuple[MappingTable, Path, Path],
) -> None:
    tbl, root, _ = share
    r = tbl.resolve("/host/me/img.tar", check=True)
    assert r.real_path == os.path.realpath(root / "me" / "img.tar")
    r = tbl.resolve("/host/me/inner-link", check=True)
    assert r.real_path == os.path.realpath(root / "me" / "img.tar")
    assert r.backing_path == str(root / "me" / "inner-link")


@pytest.mark.parametrize("name", ["escape", "escape-dir/key", "dangling-out", "relative-out"])
def test_check_refuses_symlinks_that_point_outside_the_share(
    share: tuple[MappingTable, Path, Path], name: str
) -> None:
    tbl, _, outside = share
    assert tbl.resolve(f"/host/me/{name}").backing_path.endswith(name)  # lexically fine
    err = refused(tbl, f"/host/me/{name}", check=True)
    assert err.reason == "outside-export"
    assert "symbolic link" in err.message
    assert str(outside) in err.message


def test_check_reports_missing_files_as_not_found(share: tuple[MappingTable, Path, Path]) -> None:
    tbl, root, _ = share
    assert tbl.resolve("/host/me/nope.tar").backing_path == str(root / "me" / "nope.tar")
    err = refused(tbl, "/host/me/nope.tar", check=True)
    assert err.reason == "not-found"
    assert "does not exist" in err.message


def test_check_reports_a_missing_share_root_as_not_found(tmp_path: Path) -> None:
    err = refused(table(f"/host={tmp_path / 'gone'}"), "/host/x", check=True)
    assert err.reason == "not-found"
    assert "shared folder" in err.message


def test_check_follows_a_symlinked_share_root(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    r = table(f"/host={tmp_path / 'link'}").resolve("/host/f", check=True)
    assert r.real_path == os.path.realpath(tmp_path / "real" / "f")


# --- backing path -> host path ------------------------------------------------------------------------------


def test_host_path_of_reverses_posix_and_windows_mappings() -> None:
    tbl = table("C:\\=/mnt/c", "C:\\Users\\me=/srv/me", "/Users=/Users")
    assert tbl.host_path_of("/mnt/c/Windows/x.dll") == "C:\\Windows\\x.dll"
    assert tbl.host_path_of("/mnt/c") == "C:\\"
    assert tbl.host_path_of("/srv/me/img.tar") == "C:\\Users\\me\\img.tar"
    assert tbl.host_path_of("/Users/me//x/./y") == "/Users/me/x/y"
    for path in ("/Users/me/x.tar", "C:\\Users\\me\\a\\b.tar", "C:\\Temp\\z"):
        assert tbl.host_path_of(tbl.resolve(path).backing_path) == path


def test_host_path_of_longest_backing_root_wins_and_components_matter() -> None:
    tbl = table("/Users=/mnt/u", "/Users/me/proj=/mnt/u/me/proj2")
    assert tbl.host_path_of("/mnt/u/me/proj2/x") == "/Users/me/proj/x"
    assert tbl.host_path_of("/mnt/u/me/proj/x") == "/Users/me/proj/x"
    assert tbl.host_path_of("/mnt/u/me/proj22") == "/Users/me/proj22"


@pytest.mark.parametrize(
    "path, reason",
    [
        ("/etc/passwd", "not-mapped"),
        ("/mnt/c/../etc", "not-mapped"),
        ("/mnt/cc/x", "not-mapped"),
        ("mnt/c/x", "not-absolute"),
        ("/mnt/c/a\0b", "invalid-path"),
        ("/mnt/c/a\\b", "invalid-path"),
    ],
)
def test_host_path_of_refuses_paths_off_the_shares(path: str, reason: str) -> None:
    with pytest.raises(MappingError) as info:
        table("C:\\=/mnt/c").host_path_of(path)
    assert info.value.reason == reason


# --- tables: precedence and conflicts -----------------------------------------------------------------------


def test_conflicting_mappings_for_one_host_folder_are_refused() -> None:
    with pytest.raises(ConfigError, match="mapped twice"):
        table("C:\\Users=/mnt/a", "c:/users=/mnt/b")
    assert len(table("/x=/mnt/x", "/x/=/mnt/x/")) == 1  # the same mapping twice is one mapping


def test_two_host_folders_at_one_exposed_name_are_refused() -> None:
    with pytest.raises(ConfigError, match="would both appear at /c"):
        table("/c=/mnt/posix-c", "C:\\=/mnt/c")


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_map_option_overrides_the_config_and_discovery(tmp_path: Path) -> None:
    cfg = write(tmp_path / "f.toml", '[[map]]\nhost = "/Users"\nbacking = "/from-config"\n')
    info = write(tmp_path / "mountinfo", "85 1 0:44 / /Users rw,relatime - virtiofs a2a0ee2c7174 rw\n")
    tbl = MappingTable.load(["/Users=/from-cli"], config=cfg, discover=True, mountinfo=info)
    assert [(m.backing, m.source) for m in tbl] == [("/from-cli", "--map")]
    tbl = MappingTable.load([], config=cfg, discover=True, mountinfo=info)
    assert [m.backing for m in tbl] == ["/from-config"]


def test_discovery_runs_by_default_only_without_explicit_mappings(tmp_path: Path) -> None:
    info = write(tmp_path / "mountinfo", "85 1 0:44 / /Users rw,relatime - virtiofs a2a0ee2c7174 rw\n")
    assert [m.host for m in MappingTable.load(mountinfo=info)] == ["/Users"]
    assert [m.host for m in MappingTable.load(["/srv=/mnt/srv"], mountinfo=info)] == ["/srv"]
    on = write(tmp_path / "on.toml", 'discover = true\n[[map]]\nhost = "/srv"\nbacking = "/mnt/srv"\n')
    assert [m.host for m in MappingTable.load(config=on, mountinfo=info)] == ["/srv", "/Users"]
    off = write(tmp_path / "off.toml", "discover = false\n")
    assert len(MappingTable.load(config=off, mountinfo=info)) == 0
    only_other_settings = write(tmp_path / "url.toml", 'url = "unix:/run/fsbridge.sock"\n')
    assert len(MappingTable.load(config=only_other_settings, mountinfo=info)) == 1
    assert len(MappingTable.load(discover=False, mountinfo=info)) == 0


# --- config file --------------------------------------------------------------------------------------------


def test_config_file_mappings_and_options(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "fsbridge.toml",
        """
url = "unix:/run/fsbridge.sock"   # belongs to other commands; left alone
discover = false

[[map]]
host = 'C:\\Users\\me'
backing = "/mnt/c/Users/me"
case_insensitive = true

[[map]]
host = "/home/me"
backing = "/mnt/home"
case_insensitive = true
unicode_normalize = true

[[map]]
host = "/Users"
backing = "/Users"
case_insensitive = false
""",
    )
    mappings, discover = load_config(cfg)
    assert discover is False
    got = [(m.host, m.backing, m.case_insensitive, m.unicode_insensitive) for m in mappings]
    assert got == [
        ("C:\\Users\\me", "/mnt/c/Users/me", True, True),
        ("/home/me", "/mnt/home", True, True),
        ("/Users", "/Users", False, True),
    ]
    assert mappings[0].source == f"config {cfg}"
    assert MappingTable.load(config=cfg).resolve("/HOME/ME/x").backing_path == "/mnt/home/x"


@pytest.mark.parametrize(
    "text, expected",
    [
        ('[[map]]\nhost = "/a"\n', "entry 1: key 'backing' is missing"),
        ('[[map]]\nbacking = "/a"\n', "entry 1: key 'host' is missing"),
        (
            '[[map]]\nhost = "/a"\nbacking = "/b"\n[[map]]\nhost = "/c"\nbacking = "rel"\n',
            "entry 2: key 'backing'",
        ),
        ("[[map]]\nhost = 'relative'\nbacking = \"/b\"\n", "key 'host'"),
        ("[[map]]\nhost = '\\\\srv\\share'\nbacking = \"/b\"\n", "UNC"),
        ('[[map]]\nhost = "/a"\nbacking = "/b"\ncase_insensitve = true\n', "unknown key 'case_insensitve'"),
        (
            '[[map]]\nhost = "/a"\nbacking = "/b"\ncase_insensitive = "yes"\n',
            "key 'case_insensitive' must be true or false",
        ),
        ('[[map]]\nhost = 1\nbacking = "/b"\n', "key 'host' must be a string"),
        ('[map]\nhost = "/a"\nbacking = "/b"\n', "key 'map' must be a list of tables"),
        ('discover = "sometimes"\n', "key 'discover' must be true or false"),
        ("[[map]\nhost=", "is not valid TOML"),
        ('[[map]]\nhost = "/a"\nbacking = "/b"\n[[map]]\nhost = "/a"\nbacking = "/c"\n', "mapped twice"),
    ],
)
def test_bad_config_names_the_file_and_the_key(tmp_path: Path, text: str, expected: str) -> None:
    cfg = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as info:
        MappingTable.load(config=cfg, discover=False)
    assert expected in info.value.message
    if "mapped twice" not in expected:
        assert cfg in info.value.message


def test_missing_or_unreadable_config_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)
    (tmp_path / "latin1.toml").write_bytes(b'x = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="latin1.toml"):
        load_config(tmp_path / "latin1.toml")


# --- discovery from /proc/self/mountinfo --------------------------------------------------------------------

WSL2_MOUNTINFO = r"""66 1 8:48 / / rw,relatime - ext4 /dev/sdd rw,discard,errors=remount-ro,data=ordered
61 66 0:54 / /mnt/wsl rw,relatime shared:1 - tmpfs none rw
83 66 0:37 / /usr/lib/wsl/drivers ro,nosuid,nodev,noatime - 9p drivers ro,aname=drivers;fmask=222;dmask=222,cache=0x5,access=client,msize=65536,trans=fd,rfd=8,wfd=8
87 66 0:41 / /mnt/wslg rw,relatime shared:2 - tmpfs none rw,huge=advise
95 66 0:62 / /mnt/c rw,noatime - 9p C:\134 rw,dirsync,aname=drvfs;path=C:\;uid=1000;gid=1000;symlinkroot=/mnt/,mmap,access=client,msize=65536,trans=fd,rfd=5,wfd=5
96 66 0:63 / /mnt/d rw,noatime - 9p D:\134 rw,aname=drvfs;path=D:\;uid=1000;gid=1000;symlinkroot=/mnt/,cache=5,access=client,msize=65536,trans=fd,rfd=6,wfd=6
97 66 0:64 / /mnt/e rw,noatime - 9p E:\134 rw,aname=drvfs;path=E:\;case=force;uid=1000;gid=1000,access=client,trans=virtio
98 66 0:65 / /mnt/z rw,noatime - 9p \134\134nas\134media rw,aname=drvfs;path=\\nas\media;uid=1000;gid=1000,access=client,trans=virtio
120 66 0:70 / /mnt/host rw,nosuid,nodev,relatime - fuse.fsbridge fsbridge rw,user_id=0,group_id=0
"""

MAC_PODMAN_MOUNTINFO = r"""71 1 0:33 / / rw,relatime shared:1 - xfs /dev/vda4 rw,attr2,inode64
85 71 0:44 / /Users rw,relatime shared:44 - virtiofs a2a0ee2c717462feb1de2f5afd59de5fd2d8 rw
86 71 0:45 / /private rw,relatime shared:45 - virtiofs 71708eb255bc230cd7c91dd26f7667a7b938 rw
87 71 0:46 / /var/folders rw,relatime shared:46 - virtiofs a0bb3a2c8b0b02ba5958b0576f0d6530e104 rw
88 71 0:47 / /Volumes/My\040Disk rw,relatime shared:47 - virtiofs 4e1b0ad2c5d0 rw
89 71 0:44 /me/proj /work rw,relatime shared:44 - virtiofs a2a0ee2c717462feb1de2f5afd59de5fd2d8 rw
"""


def test_discovers_wsl2_drvfs_drives_and_skips_wsl_internals_unc_and_fuse() -> None:
    found = {m.host: m for m in parse_mountinfo(WSL2_MOUNTINFO)}
    assert sorted(found) == ["C:\\", "D:\\", "E:\\"]
    assert found["C:\\"].backing == "/mnt/c"
    assert found["D:\\"].backing == "/mnt/d"
    assert found["C:\\"].case_insensitive and found["C:\\"].unicode_insensitive
    assert found["E:\\"].case_insensitive is False  # case=force
    assert found["C:\\"].source == "mountinfo"
    tbl = MappingTable(found.values())
    assert tbl.resolve("C:\\Users\\me\\img.tar").under_mount("/mnt/host") == "/mnt/host/c/Users/me/img.tar"
    assert tbl.resolve("d:/data/img.tar").backing_path == "/mnt/d/data/img.tar"


def test_discovers_podman_machine_virtiofs_shares_at_their_own_path() -> None:
    found = {m.host: m for m in parse_mountinfo(MAC_PODMAN_MOUNTINFO)}
    assert sorted(found) == [
        "/Users",
        "/Volumes/My Disk",
        "/private",
        "/var/folders",
    ]  # not / nor the bind mount
    assert all(m.backing == m.host for m in found.values())
    assert found["/Users"].case_insensitive and found["/Users"].unicode_insensitive
    tbl = MappingTable(found.values())
    assert tbl.resolve("/Volumes/My Disk/img.tar").backing_path == "/Volumes/My Disk/img.tar"
    assert tbl.resolve("/users/me/img.tar").backing_path == "/Users/me/img.tar"


def test_discovers_9p_shares_of_qemu_and_lima_and_other_wsl_forms() -> None:
    text = r"""90 71 0:48 / /Users rw,relatime - 9p vol0 rw,sync,dirsync,access=client,trans=virtio
35 24 0:39 / /home/me.linux rw,relatime - 9p mount0 ro,sync,dirsync,access=client,trans=virtio
9 2 0:18 / /mnt/f rw,noatime - drvfs F: rw,uid=1000,gid=1000,case=off
99 66 0:70 / /mnt/g rw,noatime - virtiofs drvfsG0 rw
100 66 0:71 / /run/wsl/virtiofs-mounts/drvfsa rw - virtiofs drvfsa rw
101 66 0:72 / /tmp/sshfs rw,relatime - fuse.sshfs me@127.0.0.1:/Users/me rw,user_id=0
1 0 0:20 / / rw - virtiofs rootfs rw
garbage line
"""
    found = {m.host: m.backing for m in parse_mountinfo(text)}
    assert found == {
        "/Users": "/Users",
        "/home/me.linux": "/home/me.linux",
        "F:\\": "/mnt/f",
        "G:\\": "/mnt/g",
    }


def test_a_share_hidden_by_a_later_mount_is_not_used() -> None:
    text = (
        "90 71 0:48 / /Users rw - virtiofs vol0 rw\n"
        "91 90 0:49 / /Users rw,nosuid - fuse.fsbridge fsbridge rw,user_id=0\n"
        "92 71 0:50 / /srv rw - 9p vol1 rw,trans=virtio\n"
    )
    assert [m.host for m in parse_mountinfo(text)] == ["/srv"]


def test_discover_mappings_reads_a_file_and_tolerates_a_missing_one(tmp_path: Path) -> None:
    info = write(tmp_path / "mountinfo", WSL2_MOUNTINFO)
    assert [m.backing for m in discover_mappings(info)] == ["/mnt/c", "/mnt/d", "/mnt/e"]
    assert discover_mappings(tmp_path / "absent") == []


def test_mapping_module_imports_only_the_standard_library() -> None:
    code = (
        "import sys; before = set(sys.modules); import fsbridge.mapping; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(sorted(new - set(sys.stdlib_module_names) - {'fsbridge'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- fsbridge map -------------------------------------------------------------------------------------------


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, ["map", *args])


def test_cli_map_prints_backing_and_mount_paths() -> None:
    result = run("/Users/me/img.tar", "--map", "/Users=/mnt/Users")
    assert result.exit_code == 0, result.output
    assert result.stdout == "/mnt/Users/me/img.tar\n"
    result = run("C:\\Users\\me\\img.tar", "--map", "C:\\=/mnt/c", "--mount", "/mnt/host")
    assert result.exit_code == 0, result.output
    assert result.stdout == "/mnt/host/c/Users/me/img.tar\n"


def test_cli_map_json_describes_every_form() -> None:
    result = run("c:/Users/me/img.tar", "--map", "C:\\Users=/mnt/c/Users", "--mount", "/mnt/host", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["backing_path"] == "/mnt/c/Users/me/img.tar"
    assert record["exposed_path"] == "/c/Users/me/img.tar"
    assert record["mount_path"] == "/mnt/host/c/Users/me/img.tar"
    assert record["host_path"] == "C:\\Users\\me\\img.tar"
    assert record["mapping"]["case_insensitive"] is True
    assert record["mapping"]["source"] == "--map"


@pytest.mark.parametrize(
    "args, reason, words",
    [
        (["/home/me2/x", "--map", "/home/me=/mnt/me"], "not-mapped", "not inside any mapped host folder"),
        (["/home/me/../../etc/shadow", "--map", "/home/me=/mnt/me"], "outside-export", "'..'"),
        (["\\\\server\\share\\x", "--map", "C:\\=/mnt/c"], "unc-unsupported", "network (UNC) path"),
        (["images/x.tar", "--map", "/home/me=/mnt/me"], "not-absolute", "not an absolute path"),
    ],
)
def test_cli_map_failures_exit_1_with_the_reason(args: list[str], reason: str, words: str) -> None:
    result = run(*args)
    assert result.exit_code == 1
    assert f"[{reason}]" in result.stderr
    assert words in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.output


def test_cli_map_check_reports_not_found_and_escapes(tmp_path: Path) -> None:
    (tmp_path / "share").mkdir()
    (tmp_path / "share" / "out").symlink_to("/etc")
    result = run("/host/missing.tar", "--map", f"/host={tmp_path / 'share'}", "--check")
    assert result.exit_code == 1 and "[not-found]" in result.stderr
    result = run("/host/out/passwd", "--map", f"/host={tmp_path / 'share'}", "--check")
    assert result.exit_code == 1 and "[outside-export]" in result.stderr
    result = run("/host/out/passwd", "--map", f"/host={tmp_path / 'share'}")
    assert result.exit_code == 0 and result.stdout == f"{tmp_path}/share/out/passwd\n"


def test_cli_map_reads_a_config_file(tmp_path: Path) -> None:
    cfg = write(tmp_path / "f.toml", "[[map]]\nhost = 'D:\\'\nbacking = \"/mnt/d\"\n")
    result = run("D:\\games\\img.tar", "--config", cfg)
    assert result.exit_code == 0, result.output
    assert result.stdout == "/mnt/d/games/img.tar\n"
    empty = write(tmp_path / "empty.toml", "discover = false\n")
    result = run("/x", "--config", empty)
    assert result.exit_code == 1 and "no host folders are mapped" in result.stderr
    bad = write(tmp_path / "bad.toml", "[[map]]\nhost = '/a'\n")
    result = run("/a/x", "--config", bad)
    assert result.exit_code == 1
    assert "bad.toml" in result.stderr and "'backing'" in result.stderr and "[bad-config]" in result.stderr


@pytest.mark.parametrize(
    "args, words",
    [
        (["/x", "--map", "nonsense"], "Invalid value for '--map'"),
        (["/x", "--map", "/x=/mnt/x,case=upside-down"], "case=insensitive|sensitive"),
        (["/x", "--map", "/x=/mnt/x", "--mount", "relative/mnt"], "absolute path in the VM"),
        (["/x", "--config", "/nonexistent/fsbridge.toml"], "does not exist"),
        ([], "Missing argument 'PATH'"),
    ],
)
def test_cli_map_usage_errors_exit_2(args: list[str], words: str) -> None:
    result = run(*args)
    assert result.exit_code == 2
    assert words in result.stderr
    assert "Traceback" not in result.output


def test_cli_map_help_teaches_with_examples() -> None:
    result = run("--help")
    assert result.exit_code == 0
    assert "fsbridge map /Users/me/img.tar --map /Users=/mnt/Users" in result.stdout
    assert "/mnt/host/c/Users/me/img.tar" in result.stdout
    assert "case=insensitive|sensitive" in result.stdout
    assert "--config FILE" in result.stdout
