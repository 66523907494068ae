"""Image names as podman writes them, so that an image loaded here is listed under the name podman
would give it.

podman (libimage ``NormalizeName``, used for docker-archive RepoTags and for the oci-archive
``org.opencontainers.image.ref.name`` annotation alike): a name whose first component is not a
registry (has no ``.`` or ``:`` and is not ``localhost``) gets ``localhost/`` in front;
``docker.io/x`` becomes ``docker.io/library/x``; a name without tag or digest gets ``:latest``; a
name with both keeps only the digest. So ``fx-app:shared`` is ``localhost/fx-app:shared`` and
``ns/app`` is ``localhost/ns/app:latest``.
"""

from __future__ import annotations

import re

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(
    rf"(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?",
    re.ASCII,
)
_HEX64 = re.compile(r"[a-f0-9]{64}")
_MAX_NAME = 255


class Reference:
    """A parsed, normalised image reference: ``domain/path[:tag][@digest]``."""

    __slots__ = ("digest", "domain", "path", "tag")

    def __init__(self, domain: str, path: str, tag: str | None, digest: str | None) -> None:
        self.domain = domain
        self.path = path
        self.tag = tag
        self.digest = digest

    def __str__(self) -> str:
        text = f"{self.domain}/{self.path}"
        if self.tag is not None:
            text += ":" + self.tag
        if self.digest is not None:
            text += "@" + self.digest
        return text


def _parse(name: str) -> tuple[str | None, str, str | None, str | None]:
    match = _REFERENCE.fullmatch(name)
    if match is None:
        if name.lower() != name and _REFERENCE.fullmatch(name.lower()):
            raise ValueError(f"image name {name!r} must be lower case")
        raise ValueError(f"{name!r} is not a valid image name")
    domain, path, tag, digest = match.group("domain", "path", "tag", "digest")
    full = f"{domain}/{path}" if domain else path
    if len(full) > _MAX_NAME:
        raise ValueError(f"image name {name!r} is longer than {_MAX_NAME} characters")
    if digest is not None:
        algorithm, _, value = digest.partition(":")
        if algorithm == "sha256" and not _HEX64.fullmatch(value):
            raise ValueError(f"{name!r} has a malformed sha256 digest")
    return domain, path, tag, digest


def _is_registry(component: str) -> bool:
    return "." in component or ":" in component or component == "localhost"


def normalize_name(name: str) -> str:
    """The name podman stores for ``name`` (see the module docstring); ValueError if invalid."""
    if not isinstance(name, str) or not name:
        raise ValueError("an image name must be a non-empty string")
    domain, _, _, _ = _parse(name)
    if domain is None or not _is_registry(domain):
        name = "localhost/" + name.lstrip("/")
    domain, path, tag, digest = _parse(name)
    assert domain is not None
    if domain == "index.docker.io":
        domain = "docker.io"
    if domain == "docker.io" and "/" not in path:
        path = "library/" + path
    if _HEX64.fullmatch(path):
        raise ValueError(f"{name!r}: a 64-character hexadecimal string cannot be a repository name")
    if digest is not None:
        tag = None
    elif tag is None:
        tag = "latest"
    return str(Reference(domain, path, tag, digest))


def short_matches(query: str, name: str) -> bool:
    """Whether ``query``, a name without registry (``app:1``, ``ns/app``), designates the stored
    normalised ``name`` (``docker.io/library/app:1``, ``quay.io/ns/app:latest``), as podman's
    lookup of short names does."""
    try:
        domain, path, tag, digest = _parse(query)
    except ValueError:
        return False
    if domain is not None and _is_registry(domain):
        return False
    repository = f"{domain}/{path}" if domain else path
    if digest is None and tag is None:
        tag = "latest"
    suffix = "/" + repository + (f":{tag}" if digest is None else f"@{digest}")
    return name.endswith(suffix)
