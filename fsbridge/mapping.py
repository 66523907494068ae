"""Host path ↔ backing path ↔ exposed path.

A *mapping* says that the host folder HOST is reachable in the VM at BACKING (a 9p, virtiofs or drvfs share).
Under the fsbridge mount every host path appears at its own name: ``/Users/me/x`` at ``MOUNT/Users/me/x`` and
``C:\\Users\\me\\x`` at ``MOUNT/c/Users/me/x`` (drive letter in lower case); that is the *exposed* path.

Host paths accepted
    POSIX ``/Users/me/x``; Windows ``C:\\Users\\me\\x``, ``C:/Users/me/x``, ``\\\\?\\C:\\Users\\me\\x``
    (and ``\\\\.\\C:\\…``), any drive letter. ``/mnt/c/…`` (the WSL spelling of a Windows drive) is read
    as ``C:\\…`` when no POSIX mapping covers it and a mapping for that drive exists. Refused: relative
    paths (``not-absolute``), UNC paths ``\\\\server\\share\\…`` and ``\\\\?\\UNC\\…``
    (``unc-unsupported``), NUL bytes and names Windows cannot hold (``invalid-path``).

Matching
    Paths are compared by components, never by string prefix (``/Users/me2`` is not under ``/Users/me``), and
    the longest matching mapping wins. Each mapping compares names case-insensitively and/or treating NFC and
    NFD spellings as equal when its host file system does so. Defaults: Windows drive mappings are both;
    POSIX mappings under ``/Users``, ``/Volumes``, ``/private`` and ``/var/folders`` (macOS, whose default
    APFS volumes ignore case and normalisation) are both; other POSIX mappings are exact.

Refusals
    ``..`` is applied lexically; a path whose ``..`` climbs out of the mapping it starts in, into no mapping,
    is ``outside-export``. With ``check=True`` (in the VM) the backing path is resolved with
    :func:`os.path.realpath` and must stay under the realpath of the mapping's backing root
    (``outside-export``, e.g. a symbolic link pointing elsewhere) and exist (``not-found``).

``--map`` syntax
    ``HOST=BACKING[,OPTION...]``. HOST and BACKING are split at the first ``=`` followed by ``/`` (BACKING is
    an absolute VM path). Options, at the end, comma-separated: ``case=insensitive`` / ``case=sensitive`` and
    ``unicode=normalize`` / ``unicode=exact``. Example: ``--map '/srv/data=/mnt/data,case=insensitive'``.

Config file (TOML)::

    discover = false            # optional: also read /proc/self/mountinfo
    [[map]]
    host = 'C:\\Users\\me'
    backing = "/mnt/c/Users/me"
    case_insensitive = true     # optional, default as above
    unicode_normalize = true    # optional, default as above

Discovery (``/proc/self/mountinfo``): 9p and virtiofs mounts are mapped at their own path (podman machine and
Lima mount host folders at the host's path); WSL drive shares (9p with ``aname=drvfs;path=C:\\;…``, fstype
``drvfs``, virtiofs tagged ``drvfsC0``) map the drive to the mount point. FUSE mounts are skipped.

This module runs on the host side too (macOS, Windows): it uses the standard library only.
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
import tomllib
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from fsbridge.errors import ConfigError, MappingError

__all__ = [
    "DEFAULT_MOUNTINFO",
    "MACOS_ROOTS",
    "Mapping",
    "MappingTable",
    "Resolution",
    "default_sensitivity",
    "discover_mappings",
    "load_config",
    "parse_map_option",
    "parse_mountinfo",
    "split_host_path",
]

DEFAULT_MOUNTINFO = "/proc/self/mountinfo"

#: POSIX host folders treated as macOS ones (case- and normalisation-insensitive by default, as APFS is).
MACOS_ROOTS: tuple[str, ...] = ("/Users", "/Volumes", "/private", "/var/folders")

_WINDOWS_BAD_CHARS = frozenset('<>:"|?*') | frozenset(chr(i) for i in range(1, 32))
_DRIVE_RE = re.compile(r"[A-Za-z]:")
_OPTION_RE = re.compile(r"[A-Za-z_]+=[^,/]*")
_WSL_VIRTIOFS_TAG_RE = re.compile(r"drvfs([A-Za-z])\d+")
_MAP_OPTIONS = {
    "case": {"insensitive": True, "sensitive": False},
    "unicode": {"normalize": True, "normalise": True, "exact": False},
}
_CONFIG_MAP_KEYS = ("host", "backing", "case_insensitive", "unicode_normalize")


# ---------------------------------------------------------------------------------------------------------
# Host paths


def _refuse(reason: str, message: str) -> MappingError:
    return MappingError(message, reason=reason)


def _check_encodable(path: str) -> None:
    if "\0" in path:
        raise _refuse("invalid-path", f"The path {path!r} contains a NUL character.")
    try:
        path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise _refuse("invalid-path", f"The path {path!r} is not valid text.") from None


def _parse_host(host_path: str) -> tuple[str, list[str]]:
    """Split a host path into its root ("/" or "C:") and its components; drop "" and ".", keep ".."."""
    if not isinstance(host_path, str):
        raise _refuse("invalid-path", f"A host path must be text, not {type(host_path).__name__}.")
    if not host_path:
        raise _refuse("invalid-path", "The host path is empty.")
    _check_encodable(host_path)
    if host_path.startswith("/"):
        return "/", [p for p in host_path.split("/") if p not in ("", ".")]

    rest: str
    if host_path[:2] in ("\\\\", "\\/"):
        # \\server\share, \\?\C:\..., \\.\C:\..., \\?\UNC\server\share
        body = host_path[2:]
        if body[:2] in ("?\\", ".\\", "?/", "./"):
            body = body[2:]
            if body[:4].upper() in ("UNC\\", "UNC/") or body.upper() == "UNC":
                raise _refuse(
                    "unc-unsupported",
                    f"{host_path} is a network (UNC) path; only folders on local drives that are shared "
                    "with the VM can be served.",
                )
            if not _DRIVE_RE.match(body[:2]):
                raise _refuse(
                    "invalid-path",
                    f"{host_path} is a Windows device or volume path; give it with its drive letter, "
                    "such as C:\\Users\\me\\file.",
                )
            drive, rest = body[:2], body[2:]
            if rest and rest[0] not in "\\/":
                raise _refuse("invalid-path", f"{host_path} is not a valid Windows path.")
        else:
            raise _refuse(
                "unc-unsupported",
                f"{host_path} is a network (UNC) path; only folders on local drives that are shared "
                "with the VM can be served.",
            )
    elif _DRIVE_RE.match(host_path[:2]):
        drive, rest = host_path[:2], host_path[2:]
        if not rest or rest[0] not in "\\/":
            raise _refuse(
                "not-absolute",
                f"{host_path} is relative to the current folder of drive {drive.upper()}; "
                f"give the full path, such as {drive.upper()}\\Users\\me\\file.",
            )
    else:
        raise _refuse(
            "not-absolute",
            f"{host_path} is not an absolute path; give the full host path, such as /Users/me/file "
            "or C:\\Users\\me\\file.",
        )

    parts = [p for p in re.split(r"[\\/]", rest) if p not in ("", ".")]
    for part in parts:
        if part == "..":
            continue
        bad = sorted({c for c in part if c in _WINDOWS_BAD_CHARS})
        if bad:
            shown = " ".join(repr(c) for c in bad)
            raise _refuse(
                "invalid-path", f"{host_path} has a name with characters Windows does not allow: {shown}."
            )
        if part[-1] in ". ":
            raise _refuse(
                "invalid-path",
                f"{host_path} has a name ending in a dot or a space ({part!r}), which Windows does not keep.",
            )
    return drive.upper(), parts


def _collapse(parts: Sequence[str]) -> list[str]:
    """Apply ".." lexically; ".." at the root stays at the root, as the operating systems do."""
    out: list[str] = []
    for part in parts:
        if part == "..":
            if out:
                out.pop()
        else:
            out.append(part)
    return out


def split_host_path(host_path: str, *, keep_dotdot: bool = False) -> tuple[str, list[str]]:
    """Split a host path into ``(root, components)``.

    ``root`` is ``"/"`` for a POSIX path or the upper-case drive (``"C:"``) for a Windows one. Components
    are normalised lexically (``.`` and empty ones dropped, ``..`` applied) unless ``keep_dotdot`` is true,
    in which case ``..`` components are kept as given. Raises :class:`MappingError` (``not-absolute``,
    ``unc-unsupported``, ``invalid-path``) for paths that cannot be served.
    """
    root, parts = _parse_host(host_path)
    return root, (parts if keep_dotdot else _collapse(parts))


def _format_host(root: str, parts: Sequence[str]) -> str:
    if root == "/":
        return "/" + "/".join(parts)
    return root + "\\" + "\\".join(parts)


def _fold(name: str, case_insensitive: bool, unicode_insensitive: bool) -> str:
    if unicode_insensitive:
        name = unicodedata.normalize("NFC", name)
    if case_insensitive:
        name = name.casefold()
        if unicode_insensitive:
            name = unicodedata.normalize("NFC", name)
    return name


def _is_macos_root(parts: Sequence[str]) -> bool:
    for root in MACOS_ROOTS:
        want = root.strip("/").split("/")
        if list(parts[: len(want)]) == want:
            return True
    return False


def default_sensitivity(host: str) -> tuple[bool, bool]:
    """``(case_insensitive, unicode_insensitive)`` defaults for a host folder.

    Windows drives: both (NTFS ignores case). POSIX folders under :data:`MACOS_ROOTS`: both (APFS, the macOS
    default, ignores case and treats NFC/NFD spellings as the same name). Other POSIX folders: neither.
    """
    root, parts = split_host_path(host)
    if root != "/":
        return True, True
    if _is_macos_root(parts):
        return True, True
    return False, False


# ---------------------------------------------------------------------------------------------------------
# Mappings


def _normalise_backing(backing: str) -> str:
    if not isinstance(backing, str) or not backing:
        raise ConfigError("The backing path is empty; it must be an absolute path in the VM.")
    if "\0" in backing:
        raise ConfigError(f"The backing path {backing!r} contains a NUL character.")
    if not backing.startswith("/"):
        raise ConfigError(f"The backing path {backing!r} must be an absolute path in the VM, such as /mnt/c.")
    norm = posixpath.normpath(backing)
    return "/" + norm.lstrip("/")


def _backing_parts(backing: str) -> list[str]:
    return [p for p in backing.split("/") if p]


@dataclass(frozen=True)
class Mapping:
    """The host folder ``host`` is reachable in the VM at ``backing``.

    ``host`` and ``backing`` are normalised on construction (``C:/Users/me/`` becomes ``C:\\Users\\me``); a
    host or backing that cannot be a mapping raises :class:`ConfigError`. Use :meth:`create` to get the default
    case/Unicode behaviour for the host.
    """

    host: str
    backing: str
    case_insensitive: bool
    unicode_insensitive: bool
    source: str = "--map"

    def __post_init__(self) -> None:
        try:
            root, parts = split_host_path(self.host)
        except MappingError as e:
            raise ConfigError(f"The host folder cannot be mapped: {e.message}") from None
        object.__setattr__(self, "host", _format_host(root, parts))
        object.__setattr__(self, "backing", _normalise_backing(self.backing))
        object.__setattr__(self, "case_insensitive", bool(self.case_insensitive))
        object.__setattr__(self, "unicode_insensitive", bool(self.unicode_insensitive))

    @classmethod
    def create(
        cls,
        host: str,
        backing: str,
        *,
        case_insensitive: bool | None = None,
        unicode_insensitive: bool | None = None,
        source: str = "--map",
    ) -> Mapping:
        """A mapping whose unset case/Unicode options take the defaults of :func:`default_sensitivity`."""
        try:
            ci, ui = default_sensitivity(host)
        except MappingError as e:
            raise ConfigError(f"The host folder cannot be mapped: {e.message}") from None
        return cls(
            host=host,
            backing=backing,
            case_insensitive=ci if case_insensitive is None else case_insensitive,
            unicode_insensitive=ui if unicode_insensitive is None else unicode_insensitive,
            source=source,
        )

    @functools.cached_property
    def _split(self) -> tuple[str, tuple[str, ...]]:
        root, parts = split_host_path(self.host)
        return root, tuple(parts)

    @property
    def root(self) -> str:
        """``"/"`` for a POSIX host folder, the drive (``"C:"``) for a Windows one."""
        return self._split[0]

    @property
    def parts(self) -> tuple[str, ...]:
        """The host folder's components below its root."""
        return self._split[1]

    @property
    def is_windows(self) -> bool:
        return self.root != "/"

    @functools.cached_property
    def _keys(self) -> tuple[str, ...]:
        return tuple(self.fold(p) for p in self.parts)

    @functools.cached_property
    def backing_parts(self) -> tuple[str, ...]:
        return tuple(_backing_parts(self.backing))

    def fold(self, name: str) -> str:
        """The comparison key of a name under this mapping's case/Unicode rules."""
        return _fold(name, self.case_insensitive, self.unicode_insensitive)

    @property
    def exposed(self) -> str:
        """Where the host folder appears under the mount: ``/Users/me`` or ``/c/Users/me``."""
        if self.root == "/":
            return "/" + "/".join(self.parts)
        return "/" + self.root[0].lower() + "".join("/" + p for p in self.parts)

    def prefix_length(self, root: str, parts: Sequence[str]) -> int | None:
        """How many of ``parts`` this mapping's host folder covers, or None if the path is not under it."""
        if root != self.root or len(parts) < len(self._keys):
            return None
        for key, part in zip(self._keys, parts):
            if self.fold(part) != key:
                return None
        return len(self._keys)

    def same_host(self, other: Mapping) -> bool:
        """Whether both mappings name the same host folder (under the more lenient of their rules)."""
        if self.root != other.root or len(self.parts) != len(other.parts):
            return False
        ci = self.case_insensitive or other.case_insensitive
        ui = self.unicode_insensitive or other.unicode_insensitive
        return all(_fold(a, ci, ui) == _fold(b, ci, ui) for a, b in zip(self.parts, other.parts))

    def describe(self) -> str:
        flags = []
        if self.case_insensitive:
            flags.append("case-insensitive")
        if self.unicode_insensitive:
            flags.append("NFC/NFD-insensitive")
        extra = f", {', '.join(flags)}" if flags else ""
        return f"{self.host} -> {self.backing} ({self.source}{extra})"


def parse_map_option(text: str, *, source: str = "--map") -> Mapping:
    """Parse ``HOST=BACKING[,OPTION...]`` (the ``--map`` syntax).

    HOST and BACKING are split at the first ``=`` that is followed by ``/`` (BACKING is an absolute VM path,
    so a Windows HOST may itself contain ``=``). Trailing comma-separated options:

    - ``case=insensitive`` or ``case=sensitive``: compare names ignoring case, or exactly;
    - ``unicode=normalize`` or ``unicode=exact``: treat NFC and NFD spellings as the same name, or not.

    Unset options take the defaults of :func:`default_sensitivity`. Raises :class:`ConfigError`.
    Examples: ``/Users=/mnt/Users``, ``C:\\=/mnt/c``, ``/srv/data=/mnt/data,case=insensitive``.
    """
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("A --map value is empty; expected HOST=BACKING, such as /Users=/mnt/Users.")
    body = text
    options: dict[str, bool] = {}
    while True:
        head, comma, tail = body.rpartition(",")
        if not comma or not _OPTION_RE.fullmatch(tail):
            break
        key, _, value = tail.partition("=")
        key, value = key.lower(), value.lower()
        if key not in _MAP_OPTIONS:
            known = "case=insensitive|sensitive, unicode=normalize|exact"
            raise ConfigError(f"Unknown option {tail!r} in --map {text!r}; the options are {known}.")
        if value not in _MAP_OPTIONS[key]:
            allowed = "|".join(v for v in _MAP_OPTIONS[key] if v != "normalise")
            raise ConfigError(f"Option {tail!r} in --map {text!r} takes {key}={allowed}.")
        if key in options:
            raise ConfigError(f"Option {key!r} is given twice in --map {text!r}.")
        options[key] = _MAP_OPTIONS[key][value]
        body = head
    at = body.find("=/")
    if at < 0:
        if "=" in body:
            raise ConfigError(
                f"In --map {text!r} the part after '=' must be an absolute path in the VM, "
                "such as /Users=/mnt/Users."
            )
        raise ConfigError(f"--map {text!r} is not HOST=BACKING, such as /Users=/mnt/Users or C:\\=/mnt/c.")
    host, backing = body[:at], body[at + 1 :]
    if not host:
        raise ConfigError(f"--map {text!r} has no host folder before '='.")
    try:
        return Mapping.create(
            host,
            backing,
            case_insensitive=options.get("case"),
            unicode_insensitive=options.get("unicode"),
            source=source,
        )
    except ConfigError as e:
        raise ConfigError(f"--map {text!r}: {e.message}") from None


# ---------------------------------------------------------------------------------------------------------
# Resolution


@dataclass(frozen=True)
class Resolution:
    """Where a host path is found in the VM."""

    mapping: Mapping
    backing_path: str  # absolute VM path on the share
    exposed_path: str  # path relative to the mount root, starting with "/"
    host_path: str = ""  # the host path, normalised
    real_path: str | None = None  # with check=True: the backing path with every symbolic link resolved

    def under_mount(self, mountpoint: str) -> str:
        """The path under the fsbridge mount at ``mountpoint``."""
        if not mountpoint.startswith("/") or "\0" in mountpoint:
            raise ConfigError(f"The mount point {mountpoint!r} must be an absolute path in the VM.")
        base = "/" + posixpath.normpath(mountpoint).lstrip("/")
        if base == "/":
            return self.exposed_path
        if self.exposed_path == "/":
            return base
        return base + self.exposed_path


def _join(base: str, parts: Sequence[str]) -> str:
    if not parts:
        return base
    return base.rstrip("/") + "/" + "/".join(parts)


def _within(path: str, root: str) -> bool:
    if root == "/":
        return path.startswith("/")
    return path == root or path.startswith(root.rstrip("/") + "/")


def _merge(groups: Sequence[Iterable[Mapping]], *, strict: Sequence[bool]) -> list[Mapping]:
    """Merge mapping groups, earlier groups first. A host folder mapped twice keeps its first mapping; two
    different backings for one host folder within a strict group are an error."""
    merged: list[Mapping] = []
    group_of: list[int] = []
    for index, group in enumerate(groups):
        for mapping in group:
            for other, other_group in zip(merged, group_of):
                if not other.same_host(mapping):
                    continue
                if other.backing != mapping.backing and other_group == index and strict[index]:
                    raise ConfigError(
                        f"The host folder {mapping.host} is mapped twice: to {other.backing} "
                        f"({other.source}) and to {mapping.backing} ({mapping.source})."
                    )
                break
            else:
                merged.append(mapping)
                group_of.append(index)
    return merged


class MappingTable:
    """A set of mappings: resolves host paths to backing and exposed paths, and backing paths back."""

    def __init__(self, mappings: Iterable[Mapping]) -> None:
        merged = _merge([list(mappings)], strict=[True])
        exposed: dict[str, Mapping] = {}
        for mapping in merged:
            other = exposed.get(mapping.exposed)
            if other is not None:
                raise ConfigError(
                    f"The host folders {other.host} and {mapping.host} would both appear at "
                    f"{mapping.exposed} under the mount; map only one of them."
                )
            exposed[mapping.exposed] = mapping
        self.mappings: tuple[Mapping, ...] = tuple(merged)

    @classmethod
    def load(
        cls,
        maps: Sequence[str | Mapping] = (),
        config: str | os.PathLike[str] | None = None,
        discover: bool | None = None,
        mountinfo: str | os.PathLike[str] = DEFAULT_MOUNTINFO,
    ) -> MappingTable:
        """Build the table from ``--map`` values, a config file and (optionally) mountinfo discovery.

        Precedence for one host folder: ``--map``, then the config file, then discovery. ``discover`` left
        unset takes the config file's ``discover`` key, else is true only when neither ``--map`` nor the
        config file gives a mapping.
        """
        explicit = [m if isinstance(m, Mapping) else parse_map_option(m) for m in maps]
        configured: list[Mapping] = []
        config_discover: bool | None = None
        if config is not None:
            configured, config_discover = load_config(config)
        if discover is None:
            discover = config_discover if config_discover is not None else not (explicit or configured)
        discovered = discover_mappings(mountinfo) if discover else []
        merged = _merge([explicit, configured, discovered], strict=[True, True, False])
        # A discovered share may expose the same name as an explicit mapping of another host folder;
        # the explicit one is kept.
        kept: list[Mapping] = []
        names: set[str] = set()
        for mapping in merged:
            if mapping.exposed in names and mapping.source == "mountinfo":
                continue
            names.add(mapping.exposed)
            kept.append(mapping)
        return cls(kept)

    def __len__(self) -> int:
        return len(self.mappings)

    def __iter__(self) -> Iterator[Mapping]:
        return iter(self.mappings)

    def __repr__(self) -> str:
        return f"MappingTable({list(self.mappings)!r})"

    def exposed_roots(self) -> list[tuple[str, str]]:
        """``[(exposed_path, backing_root)]`` for every mapping, in table order."""
        return [(m.exposed, m.backing) for m in self.mappings]

    def _longest(self, root: str, parts: Sequence[str]) -> tuple[Mapping, int] | None:
        best: tuple[Mapping, int] | None = None
        for mapping in self.mappings:
            n = mapping.prefix_length(root, parts)
            if n is not None and (best is None or n > best[1]):
                best = (mapping, n)
        return best

    def _not_mapped(self, host_path: str) -> MappingError:
        if not self.mappings:
            return _refuse(
                "not-mapped",
                f"{host_path} cannot be served because no host folders are mapped "
                "(give --map HOST=BACKING or a config file).",
            )
        roots = ", ".join(m.host for m in self.mappings[:6])
        more = ", …" if len(self.mappings) > 6 else ""
        return _refuse(
            "not-mapped", f"{host_path} is not inside any mapped host folder (mapped: {roots}{more})."
        )

    def resolve(self, host_path: str, *, check: bool = False) -> Resolution:
        """Resolve a host path to its backing path and exposed path.

        With ``check=True`` (in the VM), the backing path is also resolved with :func:`os.path.realpath`: it
        must stay under the real backing root (else ``outside-export``) and exist (else ``not-found``).
        Raises :class:`MappingError`.
        """
        root, raw = _parse_host(host_path)
        parts = _collapse(raw)
        best = self._longest(root, parts)
        if best is None and root == "/":
            wsl = self._wsl_drive(parts)
            if wsl is not None:
                best = self._longest(wsl[0], wsl[1])
                if best is not None:
                    root, parts = wsl
        if best is None:
            start = self._longest(root, raw[: raw.index("..")]) if ".." in raw else None
            if start is not None:
                raise _refuse(
                    "outside-export",
                    f"{host_path} uses '..' to leave the mapped host folder {start[0].host}.",
                )
            raise self._not_mapped(host_path)

        mapping, n = best
        rest = parts[n:]
        resolution = Resolution(
            mapping=mapping,
            backing_path=_join(mapping.backing, rest),
            exposed_path=_join(mapping.exposed, rest),
            host_path=_format_host(root, parts),
        )
        if check:
            resolution = self._check(host_path, resolution)
        return resolution

    def _wsl_drive(self, parts: Sequence[str]) -> tuple[str, list[str]] | None:
        """``/mnt/c/x`` read as ``C:\\x`` when the table maps that drive."""
        if len(parts) < 2 or parts[0] != "mnt" or not _DRIVE_RE.fullmatch(parts[1] + ":"):
            return None
        drive = parts[1].upper() + ":"
        if not any(m.root == drive for m in self.mappings):
            return None
        try:
            return split_host_path(drive + "\\" + "\\".join(parts[2:]))
        except MappingError:
            return None

    @staticmethod
    def _check(host_path: str, resolution: Resolution) -> Resolution:
        mapping = resolution.mapping
        real_root = os.path.realpath(mapping.backing)
        if not os.path.isdir(real_root):
            raise _refuse(
                "not-found",
                f"The shared folder {mapping.backing} for host folder {mapping.host} "
                "does not exist in the VM.",
            )
        real = os.path.realpath(resolution.backing_path)
        if not _within(real, real_root):
            raise _refuse(
                "outside-export",
                f"{host_path} leads through a symbolic link to {real}, outside the shared folder "
                f"{mapping.backing}.",
            )
        if not os.path.exists(real):
            raise _refuse(
                "not-found", f"{host_path} does not exist in the VM (looked for {resolution.backing_path})."
            )
        return Resolution(
            mapping=mapping,
            backing_path=resolution.backing_path,
            exposed_path=resolution.exposed_path,
            host_path=resolution.host_path,
            real_path=real,
        )

    def host_path_of(self, backing_path: str) -> str:
        """The host path of a VM path on a share; the longest backing root wins. Raises MappingError."""
        if not isinstance(backing_path, str) or not backing_path:
            raise _refuse("invalid-path", "The VM path is empty.")
        _check_encodable(backing_path)
        if not backing_path.startswith("/"):
            raise _refuse("not-absolute", f"{backing_path} is not an absolute path in the VM.")
        parts = _collapse([p for p in backing_path.split("/") if p not in ("", ".")])
        best: tuple[Mapping, int] | None = None
        for mapping in self.mappings:
            root = mapping.backing_parts
            if tuple(parts[: len(root)]) == root and (best is None or len(root) > best[1]):
                best = (mapping, len(root))
        if best is None:
            shares = ", ".join(m.backing for m in self.mappings[:6]) or "none"
            raise _refuse("not-mapped", f"{backing_path} is not on any mapped share (shares: {shares}).")
        mapping, n = best
        rest = parts[n:]
        if mapping.is_windows:
            for part in rest:
                if "\\" in part:
                    raise _refuse(
                        "invalid-path",
                        f"{backing_path} has a name with '\\', which a Windows path cannot hold.",
                    )
        return _format_host(mapping.root, [*mapping.parts, *rest])


# ---------------------------------------------------------------------------------------------------------
# Config file


def _config_error(path: str, where: str, message: str) -> ConfigError:
    return ConfigError(f"Config file {path}: {where}{message}")


def _config_bool(path: str, where: str, entry: dict[str, Any], key: str) -> bool | None:
    if key not in entry:
        return None
    value = entry[key]
    if not isinstance(value, bool):
        raise _config_error(path, where, f"key '{key}' must be true or false, not {value!r}.")
    return value


def load_config(path: str | os.PathLike[str]) -> tuple[list[Mapping], bool | None]:
    """Read the mappings and the ``discover`` key of a TOML config file. Raises :class:`ConfigError`.

    Keys other than ``map`` and ``discover`` belong to other parts of fsbridge and are left alone; unknown
    keys inside a ``[[map]]`` entry are errors (they are most likely misspelt).
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"Config file {name} does not exist.") from None
    except IsADirectoryError:
        raise ConfigError(f"Config file {name} is a folder, not a file.") from None
    except OSError as e:
        raise ConfigError(f"Config file {name} cannot be read: {e.strerror or e}.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"Config file {name} is not UTF-8 text.") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"Config file {name} is not valid TOML: {e}.") from None

    discover = data.get("discover")
    if discover is not None and not isinstance(discover, bool):
        raise _config_error(name, "", f"key 'discover' must be true or false, not {discover!r}.")

    entries = data.get("map", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise _config_error(name, "", "key 'map' must be a list of tables, each written [[map]].")
    mappings: list[Mapping] = []
    for number, entry in enumerate(entries, start=1):
        where = f"[[map]] entry {number}: "
        unknown = sorted(set(entry) - set(_CONFIG_MAP_KEYS))
        if unknown:
            raise _config_error(
                name, where, f"unknown key '{unknown[0]}' (known keys: {', '.join(_CONFIG_MAP_KEYS)})."
            )
        for key in ("host", "backing"):
            if key not in entry:
                raise _config_error(name, where, f"key '{key}' is missing.")
            if not isinstance(entry[key], str):
                raise _config_error(name, where, f"key '{key}' must be a string, not {entry[key]!r}.")
        ci = _config_bool(name, where, entry, "case_insensitive")
        ui = _config_bool(name, where, entry, "unicode_normalize")
        try:
            split_host_path(entry["host"])
        except MappingError as e:
            raise _config_error(name, where, f"key 'host': {e.message}") from None
        try:
            _normalise_backing(entry["backing"])
        except ConfigError as e:
            raise _config_error(name, where, f"key 'backing': {e.message}") from None
        mappings.append(
            Mapping.create(
                entry["host"],
                entry["backing"],
                case_insensitive=ci,
                unicode_insensitive=ui,
                source=f"config {name}",
            )
        )
    return mappings, discover


# ---------------------------------------------------------------------------------------------------------
# Discovery from /proc/self/mountinfo


def _unescape(field: str) -> str:
    """Undo the kernel's octal escapes in mountinfo paths (space, tab, newline, backslash)."""
    return re.sub(r"\\(040|011|012|134)", lambda m: chr(int(m.group(1), 8)), field)


def _drive_mapping(host: str, mountpoint: str, case_insensitive: bool) -> Mapping | None:
    try:
        root, _ = split_host_path(host)
    except MappingError:
        return None  # a UNC share or something else a drive mapping cannot hold
    if root == "/":
        return None
    try:
        return Mapping(host, mountpoint, case_insensitive, True, source="mountinfo")
    except ConfigError:
        return None


def _drvfs_case_insensitive(options: Iterable[str]) -> bool:
    # drvfs case=off (default) and case=dir are case-insensitive for ordinary folders; case=force is not.
    for option in options:
        if option.startswith("case="):
            return option[len("case=") :] != "force"
    return True


def _mapping_from_mount(root: str, mountpoint: str, fstype: str, source: str, options: str) -> Mapping | None:
    if fstype == "fuse" or fstype.startswith(("fuse.", "fuseblk")):
        return None
    if root != "/" or not mountpoint.startswith("/"):
        return None  # a bind mount of a sub-folder: its mount point does not name the host folder
    super_options = options.split(",")
    if fstype == "drvfs":  # WSL1: source "C:" (or "C:\")
        host = source if source.endswith("\\") else source + "\\"
        return _drive_mapping(host, mountpoint, _drvfs_case_insensitive(super_options))
    if fstype == "9p":
        aname = next((o[len("aname=") :] for o in super_options if o.startswith("aname=")), None)
        if aname is not None and ";" in aname:
            sub = aname.split(";")
            if sub[0] != "drvfs":
                return None  # WSL's own plan9 shares (drivers, wslg, ...)
            path = next((_unescape(s[len("path=") :]) for s in sub if s.startswith("path=")), None)
            if path is None:
                return None
            return _drive_mapping(path, mountpoint, _drvfs_case_insensitive(sub))
        if aname == "drvfs":
            return _drive_mapping(source, mountpoint, True)
    elif fstype == "virtiofs":
        tag = _WSL_VIRTIOFS_TAG_RE.fullmatch(source)
        if tag:  # WSL with virtiofs=true names drive shares drvfsC0, drvfsD0, ...
            return _drive_mapping(tag.group(1) + ":\\", mountpoint, True)
        if source.startswith("drvfs") or source == "wslg":
            return None
    else:
        return None
    if mountpoint == "/":
        return None  # a VM whose root is a host share: the whole VM is not a host folder
    try:
        return Mapping.create(mountpoint, mountpoint, source="mountinfo")
    except ConfigError:
        return None


def parse_mountinfo(text: str) -> list[Mapping]:
    """Mappings for the 9p / virtiofs / drvfs shares listed in mountinfo ``text``.

    A share hidden by a later mount on the same mount point is left out; a host folder mounted twice keeps its
    first mount point.
    """
    top: dict[str, Mapping | None] = {}
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) < sep + 3:
            continue
        mountpoint = _unescape(fields[4])
        mapping = _mapping_from_mount(
            root=_unescape(fields[3]),
            mountpoint=mountpoint,
            fstype=fields[sep + 1],
            source=_unescape(fields[sep + 2]),
            options=" ".join(fields[sep + 3 :]),
        )
        top.pop(mountpoint, None)
        top[mountpoint] = mapping
    found = [m for m in top.values() if m is not None]
    return _merge([found], strict=[False])


def discover_mappings(mountinfo: str | os.PathLike[str] = DEFAULT_MOUNTINFO) -> list[Mapping]:
    """Mappings discovered from ``mountinfo``; none when it cannot be read (e.g. on macOS or Windows)."""
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError:
        return []
    return parse_mountinfo(text)
