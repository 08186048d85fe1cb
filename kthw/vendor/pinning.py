"""`doit pin version=X.Y.Z`: add a Kubernetes version to the pins from upstream's own checksums.

For the connected workstation. The component versions of the new release default to those
of the closest pinned release (same minor first) and can be set one by one
(``doit pin version=1.36.1 etcd=3.5.28``). Only what is not pinned yet is fetched: each
release file's checksum from the checksum file its project publishes beside it (the same
mirror and overrides as the vendor stage apply), and each image's index digest from its
registry. The result goes into the site pins file (or the shipped table), checked exactly
like a hand-written one before it replaces the file; comments in that file are kept.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from kthw.errors import KthwError
from kthw.fsutil import atomic_file
from kthw.inventory import Inventory
from kthw.supply import components, download, oci
from kthw.supply import pins as pins_table
from kthw.supply.components import ARCHES
from kthw.vendor.fetch import file_source, image_source
from kthw.versions import Version, VersionError, minor_of, version_key


def base_release(pins: pins_table.Pins, version: str) -> str | None:
    """The pinned release a new one starts from: same minor first, else the closest older one."""
    pinned = sorted(pins.releases, key=version_key)
    if version in pinned:
        return version
    same_minor = [v for v in pinned if minor_of(v) == minor_of(version)]
    older = [v for v in pinned if version_key(v) < version_key(version)]
    choice = same_minor or older or pinned
    return choice[-1] if choice else None


def parse_checksum_file(text: str, file_name: str, algorithm: str) -> str | None:
    """The hex checksum of ``file_name`` in a published checksum file (``<hex>  <name>`` lines or one bare hex)."""
    pattern = re.compile(rf"^[0-9a-fA-F]{{{download.ALGORITHMS[algorithm]}}}$")
    bare = []
    for line in text.splitlines():
        parts = line.split()
        if not parts or not pattern.match(parts[0]):
            continue
        if len(parts) == 1:
            bare.append(parts[0].lower())
        elif parts[-1].lstrip("*").removeprefix("./").rsplit("/", 1)[-1] == file_name:
            return parts[0].lower()
    return bare[0] if len(bare) == 1 else None


def _read(source: str) -> str:
    if download.is_url(source):
        return download.get(source, hint="the project does not publish a checksum file there").body.decode(
            "utf-8", "replace")
    try:
        return Path(source).read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise KthwError(f"{source}: cannot read the checksum file ({err.strerror})\n  fix: put the published "
                        "checksum file in the mirror beside the release file") from None


def _fetch_checksum(inv: Inventory, pins: pins_table.Pins, name: str, version: str, arch: str) -> tuple[str, str]:
    component = components.FILES[name]
    upstream = pins.url(name, version, arch)
    source, _ = file_source(inv, name, version, arch, upstream)
    file_name = upstream.rsplit("/", 1)[1]
    folder = source.rsplit("/", 1)[0] if download.is_url(source) else str(Path(source).parent)
    checksum_source = component.checksum_file.format(url=source, dir=folder)
    found = parse_checksum_file(_read(checksum_source), file_name, component.algorithm)
    if not found:
        raise KthwError(f"{checksum_source}: has no {component.algorithm} for {file_name}\n  fix: check that "
                        f"{name} {version} is published for {arch}, or pin it by hand in the site pins file")
    return f"{component.algorithm}:{found}", checksum_source


Entry = tuple[tuple[str, ...], object]  # the keys down to a value in the pins file, and the value


def pin(inv: Inventory, version: str, chosen: dict[str, str], target: Path | None = None) -> str:
    """Pin ``version`` (with ``chosen`` component versions) into ``target``; returns what was done."""
    try:
        version = str(Version.parse(version or "", patch=True))
    except VersionError as err:
        raise KthwError(f"{err.problem}\n  fix: run e.g. 'doit pin version=1.36.1'") from None
    site = inv.vendor.site_pins
    target = Path(target) if target else (site or pins_table.SHIPPED)
    pins = pins_table.load(site if site and site.exists() else None)
    if target not in pins.sources and target.exists():
        pins = pins_table.load(target)  # an explicit pins=PATH: it extends the shipped table too
    base = base_release(pins, version)
    release = _release(pins, version, base, chosen)
    lines = [f"Kubernetes {version}: " + ", ".join(f"{name} {release[name]}" for name in components.RELEASE_KEYS)
             + (f" (from the pinned {base} release)" if base and base != version else "")]
    entries: list[Entry] = []
    if pins.releases.get(version) != release:
        entries.append((("releases", version), release))
    full = pins_table.with_kubernetes_files(release, version)
    for found in (_file_checksums(inv, pins, full), _image_digests(inv, pins, full)):
        for entry, line in found:
            entries.append(entry)
            lines.append(line)
    if not entries:
        return f"Kubernetes {version} is already pinned in {', '.join(map(str, pins.sources))}; nothing to do"
    write(target.resolve(), entries)  # through a link to the file it names, the link kept
    lines.append(f"pinned into {target}")
    return "\n".join(lines)


def _release(pins: pins_table.Pins, version: str, base: str | None, chosen: dict[str, str]) -> dict[str, str]:
    """The component versions of ``version``: the ``base`` release's, with the ``chosen`` ones over them."""
    release = dict(pins.releases[base]) if base else {}
    for name, value in chosen.items():
        if name not in components.RELEASE_KEYS:
            raise KthwError(f"'{name}' is not a component\n  fix: use any of {', '.join(components.RELEASE_KEYS)}")
        try:
            release[name] = str(Version.parse(value or ""))
        except VersionError as err:
            raise KthwError(f"{name}: {err.problem}\n  fix: write e.g. {name}=1.2.3") from None
    missing = [name for name in components.RELEASE_KEYS if name not in release]
    if missing:
        raise KthwError(f"no pinned release to start from: the component versions of Kubernetes {version} are "
                        f"needed\n  fix: run 'doit pin version={version} "
                        + " ".join(f"{name}=X.Y.Z" for name in missing) + "'")
    return release


def _file_checksums(inv: Inventory, pins: pins_table.Pins, full: dict[str, str]) -> list[tuple[Entry, str]]:
    """The checksums not pinned yet of every file component, each arch: fetched from the published files."""
    found: list[tuple[Entry, str]] = []
    for name in components.FILES:
        for arch in ARCHES:
            if arch in pins.checksums.get(name, {}).get(full[name], {}):
                continue
            checksum, where = _fetch_checksum(inv, pins, name, full[name], arch)
            found.append(((("checksums", name, full[name], arch), checksum),
                          f"  {name} {full[name]} {arch}: {checksum[:19]}... from {where}"))
    return found


def _image_digests(inv: Inventory, pins: pins_table.Pins, full: dict[str, str]) -> list[tuple[Entry, str]]:
    """The index digests not pinned yet of the images, asked of their registries (or the mirror)."""
    found: list[tuple[Entry, str]] = []
    for name, component in components.IMAGES.items():
        if full[name] in pins.images.get(name, {}):
            continue
        upstream = next(iter(pins.images.get(name, {}).values()), None)
        repository = upstream.repository if upstream else None
        if repository is None:
            raise KthwError(f"no image repository is known for {name}\n  fix: add one {name} entry to the "
                            "site pins file by hand first")
        tag = component.tag.format(version=full[name])
        probe = pins_table.ImagePin(name, full[name], repository, "", tag)
        digest = oci.Client(image_source(inv, probe)).resolve(tag)
        found.append(((("images", name, full[name]), {"repository": repository, "digest": digest}),
                      f"  image {repository}:{tag}: {digest}"))
    return found


# --- writing: keep the file's comments ---------------------------------------------------


def _scalar(value: object) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 16).strip().removesuffix("...").strip()


def _quoted(key: str) -> str:
    return f'"{key}"' if re.match(r"^[\d.]+$", key) else key


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _significant(line: str) -> bool:
    return bool(line.strip()) and not line.lstrip().startswith("#")


def _insert(lines: list[str], keys: tuple[str, ...], value: object) -> list[str]:
    """Set ``keys`` to ``value`` in block-style YAML text, touching no other line."""
    start, end, indent = 0, len(lines), 0
    for depth, key in enumerate(keys):
        found = None
        for index in range(start, end):
            line = lines[index]
            if not _significant(line):
                continue
            if _indent(line) == indent and re.match(rf"^[\"']?{re.escape(key)}[\"']?\s*:", line.lstrip()):
                found = index
                break
        if found is None:
            block = [" " * (indent + 2 * step) + _quoted(name) + ":" for step, name in enumerate(keys[depth:-1])]
            block.append(" " * (indent + 2 * (len(keys) - depth - 1)) + f"{_quoted(keys[-1])}: {_scalar(value)}")
            at = end if depth == 0 else start
            return lines[:at] + block + lines[at:]
        block_end = next((i for i in range(found + 1, end) if _significant(lines[i]) and _indent(lines[i]) <= indent),
                         end)
        if depth == len(keys) - 1:
            return [*lines[:found], " " * indent + f"{_quoted(key)}: {_scalar(value)}", *lines[block_end:]]
        start, end, indent = found + 1, block_end, indent + 2
    return lines


def _merge(data: dict, keys: tuple[str, ...], value: object) -> None:
    for key in keys[:-1]:
        data = data.setdefault(key, {})
    data[keys[-1]] = value


def write(target: Path, entries: list[Entry]) -> None:
    """Add ``entries`` to the pins file ``target`` (created if missing); checked before it is replaced."""
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = (f"# Site pins: extend or override the shipped pins table (written by 'doit pin').\n"
                f"schema: {pins_table.SCHEMA}\n")
    except OSError as err:
        raise KthwError(f"{target}: cannot read ({err.strerror})") from None
    expected = yaml.safe_load(text) or {}
    lines = text.splitlines()
    for keys, value in entries:
        _merge(expected, keys, value)
        lines = _insert(lines, keys, value)
    new_text = "\n".join(lines) + "\n"
    if yaml.safe_load(new_text) != expected:
        # The file is not laid out as expected (flow style); write it plainly, keeping its header comments.
        header = "".join(line + "\n" for line in _leading_comments(text))
        new_text = header + yaml.safe_dump(expected, sort_keys=False, width=1 << 16)
    try:
        # sync: the site pins file is a source, not a build output that a rerun makes again.
        with atomic_file(target, 0o644, sync=True) as handle:
            handle.write(new_text.encode("utf-8"))
            handle.flush()
            pins_table.read(Path(handle.name))  # exactly the checks every pins file gets
    except OSError as err:
        raise KthwError(f"{target}: cannot write ({err.strerror}); it was left as it was") from None


def _leading_comments(text: str) -> list[str]:
    result = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            result.append(line)
        else:
            break
    return result
