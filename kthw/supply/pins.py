"""The pins table: which component versions go with a Kubernetes version, the checksum of
every release file per arch, and the index digest of every image.

The shipped table is ``kthw/supply/data/pins.yaml``; a site pins file named by the inventory
(``vendor.site_pins``) has the same shape, is checked the same way, and extends or
overrides it entry by entry (a release, a checksum of one arch, an image tag, a URL
template). Every problem is an error naming the file, the line, the entry and the fix.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kthw.errors import KthwError
from kthw.supply import components
from kthw.supply.components import ARCHES
from kthw.supply.download import Checksum
from kthw.supply.oci import DIGEST, Repository
from kthw.versions import Version, VersionError, version_key
from kthw.yamldoc import Bad as _Bad
from kthw.yamldoc import Map as _Map
from kthw.yamldoc import Reader as _Reader
from kthw.yamldoc import parse, read_text

SHIPPED = Path(__file__).resolve().parent / "data" / "pins.yaml"
SCHEMA = 1
SECTIONS = ("schema", "url_templates", "releases", "checksums", "images")
_URL_TEMPLATE = re.compile(r"^https://[^/\s?#]+/\S+$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")  # the OCI distribution spec's tag grammar


class UnpinnedError(KthwError):
    """The inventory asks for a version the pins table does not have."""


@dataclass(frozen=True)
class ImagePin:
    """A container image pinned by digest."""

    name: str
    version: str
    repository: str
    digest: str
    tag: str

    @property
    def reference(self) -> str:
        """The name the node knows the image by, e.g. registry.k8s.io/pause:3.10.1."""
        return f"{self.repository}:{self.tag}"

    @property
    def by_digest(self) -> str:
        """The name that pins it, repository@sha256:<index digest>; a pod naming the image
        with this digest finds it under this name in the node's image store."""
        return f"{self.repository}@{self.digest}"


@dataclass(frozen=True)
class Pins:
    """The pins table: release URLs, versions, checksums and images."""

    sources: tuple[Path, ...]
    url_templates: dict[str, str]
    releases: dict[str, dict[str, str]]
    checksums: dict[str, dict[str, dict[str, str]]]
    images: dict[str, dict[str, ImagePin]]

    def pin_command(self, version: str) -> str:
        return f"doit pin version={version}"

    def release(self, kubernetes_version: str) -> dict[str, str]:
        """Component -> version for this Kubernetes version (the two tarballs included)."""
        if kubernetes_version not in self.releases:
            pinned = ", ".join(sorted(self.releases, key=version_key)) or "none"
            raise UnpinnedError(
                f"Kubernetes {kubernetes_version} is not pinned (pinned versions: {pinned}; pins read from "
                f"{', '.join(map(str, self.sources))})\n  fix: on the connected workstation run "
                f"'{self.pin_command(kubernetes_version)}' to fetch its published checksums into the pins "
                "(the site pins file when the inventory names one), or set kubernetes_version to a pinned version")
        return with_kubernetes_files(self.releases[kubernetes_version], kubernetes_version)

    def url(self, component: str, version: str, arch: str) -> str:
        if component not in self.url_templates:
            raise UnpinnedError(f"the pins have no url_templates entry for {component}\n  fix: add "
                                f"'url_templates: {{{component}: \"https://...{{version}}...{{arch}}...\"}}' "
                                "to the site pins file")
        return self.url_templates[component].format(version=version, arch=arch)

    def checksum(self, component: str, version: str, arch: str, kubernetes_version: str) -> str:
        try:
            return self.checksums[component][version][arch]
        except KeyError:
            raise UnpinnedError(
                f"no checksum is pinned for {component} {version} ({arch}), which Kubernetes "
                f"{kubernetes_version} uses\n  fix: run '{self.pin_command(kubernetes_version)}' on the "
                "connected workstation, or add it to the site pins file") from None

    def image(self, name: str, version: str, kubernetes_version: str) -> ImagePin:
        try:
            return self.images[name][version]
        except KeyError:
            raise UnpinnedError(
                f"no image digest is pinned for {name} {version}, which Kubernetes {kubernetes_version} "
                f"uses\n  fix: run '{self.pin_command(kubernetes_version)}' on the connected workstation, "
                "or add it to the site pins file") from None

    def gaps(self) -> list[str]:
        """What a pinned release lacks: a URL template, a checksum of one arch, an image digest."""
        missing = []
        for kubernetes_version in sorted(self.releases, key=version_key):
            release = self.release(kubernetes_version)
            for name in components.FILES:
                if name not in self.url_templates:
                    missing.append(f"url_templates.{name}")
                pinned = self.checksums.get(name, {}).get(release[name], {})
                missing.extend(f"checksums.{name}.{release[name]}.{arch} (Kubernetes {kubernetes_version})"
                               for arch in ARCHES if arch not in pinned)
            missing.extend(f"images.{name}.{release[name]} (Kubernetes {kubernetes_version})"
                           for name in components.IMAGES if release[name] not in self.images.get(name, {}))
        return list(dict.fromkeys(missing))


def with_kubernetes_files(release: dict[str, str], kubernetes_version: str) -> dict[str, str]:
    """A release's component versions plus the two Kubernetes tarballs, which carry the Kubernetes version."""
    return {**release, **dict.fromkeys(components.KUBERNETES_FILES, kubernetes_version)}


# --- reading one file ------------------------------------------------------------------


def _version_text(example: str, patch: bool = False):
    def parse(value: Any) -> str:
        if not isinstance(value, str):
            raise _Bad(f"{value!r} was read as {type(value).__name__}, not as a version",
                       f'quote versions, e.g. "{example}"')
        try:
            Version.parse(value, patch=patch, leading_v=False, example=example)
        except VersionError as err:
            raise _Bad(err.problem, err.fix) from None
        return value
    return parse


def _tag(value: Any) -> str:
    if not isinstance(value, str) or not _TAG.match(value):
        raise _Bad(f"{value!r} is not an image tag", 'quote the tag, e.g. "v1.12.0": letters, digits, "_", "." '
                   'and "-", at most 128')
    return value


def _url_template(value: Any) -> str:
    if not isinstance(value, str) or not _URL_TEMPLATE.match(value):
        raise _Bad(f"{value!r} is not an https URL template", 'write e.g. "https://dl.k8s.io/v{version}/'
                   'kubernetes-server-linux-{arch}.tar.gz"')
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
    except ValueError as err:
        raise _Bad(f"broken placeholder in '{value}' ({err})", "write placeholders as {version} and {arch}") from None
    if fields != {"version", "arch"}:
        raise _Bad(f"'{value}' must use exactly the placeholders {{version}} and {{arch}} "
                   f"(it uses {', '.join(sorted(fields)) or 'none'})",
                   "every release file differs per version and per arch")
    return value


def _checksum(value: Any) -> str:
    try:
        return str(Checksum.parse(value if isinstance(value, str) else repr(value)))
    except ValueError as err:
        raise _Bad(str(err), "copy the value from the release's published checksum file") from None


def _digest(value: Any) -> str:
    if not isinstance(value, str) or not DIGEST.match(value):
        raise _Bad(f"{value!r} is not an image digest", "write sha256:<64 hex digits> of the multi-arch index")
    return value


def _repository(value: Any) -> str:
    try:
        repository = Repository.parse(value if isinstance(value, str) else repr(value))
    except ValueError as err:
        raise _Bad(str(err), "write e.g. registry.k8s.io/pause") from None
    if repository.scheme != "https":
        raise _Bad(f"'{value}' names a scheme", "pins name the upstream image (host/path); a plain-HTTP "
                   "registry belongs in the inventory's vendor.registry_mirror or vendor.overrides")
    return str(repository)


def _mapping(reader: _Reader, key: str) -> _Reader:
    value = reader.mapping.get(key)
    if value is not None and not isinstance(value, dict):
        raise reader.fail(key, f"expected a mapping, got {type(value).__name__}", "write 'key: value' lines here")
    return reader.sub(key)


def _keys(reader: _Reader, parse) -> list[tuple[Any, str]]:
    """The keys of a mapping, checked with ``parse`` (versions must be quoted strings)."""
    return [(key, _key(reader, parse, key)) for key in reader.mapping]


def _key(reader: _Reader, parse, key: Any) -> str:
    try:
        return parse(key)
    except _Bad as bad:
        raise reader.fail(str(key), bad.problem, bad.fix) from None


def read(path: Path) -> dict:
    """One pins file, validated: its sections."""
    path = Path(path)
    text = read_text(path, "the pins file",
                     "check vendor.site_pins in the inventory (a path relative to the inventory)")
    data = parse(text, str(path))
    top = _Reader(str(path), _Map() if data is None else data, "", 1)
    top.check_keys(SECTIONS)
    schema = top.get("schema", lambda v: v)
    if schema != SCHEMA:
        raise top.fail("schema", f"schema {schema!r} is not supported", f"write 'schema: {SCHEMA}'")
    result: dict[str, dict] = {"url_templates": {}, "releases": {}, "checksums": {}, "images": {}}

    templates = _mapping(top, "url_templates")
    templates.check_keys(tuple(components.FILES))
    for name in templates.mapping:
        result["url_templates"][name] = templates.get(name, _url_template)

    releases = _mapping(top, "releases")
    for key, version in _keys(releases, _version_text("1.36.0", patch=True)):
        entry = _mapping(releases, key)
        entry.check_keys(components.RELEASE_KEYS)
        release = {}
        for name in components.RELEASE_KEYS:
            release[name] = entry.get(name, _version_text("3.5.27"))
        result["releases"][version] = release

    for name, version, per_arch in _per_version(top, "checksums", tuple(components.FILES), "3.5.27"):
        per_arch.check_keys(ARCHES)
        for arch in per_arch.mapping:
            value = per_arch.get(arch, _checksum)
            result["checksums"].setdefault(name, {}).setdefault(version, {})[arch] = value

    for name, version, entry in _per_version(top, "images", tuple(components.IMAGES), "3.10.1"):
        entry.check_keys(("repository", "digest", "tag"))
        tag = entry.get("tag", _tag, components.IMAGES[name].tag.format(version=version))
        pin = ImagePin(name, version, entry.get("repository", _repository), entry.get("digest", _digest), tag)
        result["images"].setdefault(name, {})[version] = pin
    return result


def _per_version(top: _Reader, section: str, names: tuple[str, ...],
                 example: str) -> Iterator[tuple[str, str, _Reader]]:
    """(component, version, the entry's reader) of a section laid out as component -> version -> entry."""
    components_reader = _mapping(top, section)
    components_reader.check_keys(names)
    for name in components_reader.mapping:
        per_version = _mapping(components_reader, name)
        for key, version in _keys(per_version, _version_text(example)):
            yield name, version, _mapping(per_version, key)


def load(site: Path | None = None, shipped: Path = SHIPPED) -> Pins:
    """The shipped pins, extended and overridden entry by entry by the site pins file."""
    sources = (Path(shipped),) + ((Path(site),) if site else ())
    return _load(tuple((path, _mtime(path)) for path in sources))


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None  # read() reports it


@functools.lru_cache(maxsize=8)
def _load(sources: tuple[tuple[Path, int | None], ...]) -> Pins:
    """Cached by path and mtime: every node's tasks ask for the same pins while doit loads."""
    merged: dict[str, dict] = {"url_templates": {}, "releases": {}, "checksums": {}, "images": {}}
    paths = tuple(path for path, _ in sources)
    for path in paths:
        data = read(path)
        merged["url_templates"].update(data["url_templates"])
        merged["releases"].update(data["releases"])
        for name, versions in data["checksums"].items():
            for version, arches in versions.items():
                merged["checksums"].setdefault(name, {}).setdefault(version, {}).update(arches)
        for name, versions in data["images"].items():
            merged["images"].setdefault(name, {}).update(versions)
    return Pins(sources=paths, **merged)
