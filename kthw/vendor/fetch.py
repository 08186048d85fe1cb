"""The vendor stage: every release file and image the inventory's nodes need, verified, in vendor/.

    vendor/files/<component>/<version>/<upstream file name>   release files as published
    vendor/bin/<arch>/<component>-<version>/<binary>          binaries taken out of them
    vendor/images/<arch>/<image>-<version>.tar                OCI layout archives (ctr import)

``vendor/files`` has the layout a mirror directory (``vendor.mirror``) must have, so one
workstation's vendor/files can serve as another's mirror. Only the versions and arches
that the inventory's nodes use are fetched. :func:`needs` tells the bundle stage which
vendored files a node gets and where they go on the node.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from kthw.errors import KthwError
from kthw.fsutil import atomic_file
from kthw.inventory import Inventory, Node
from kthw.layout import Layout
from kthw.supply import components, download, oci
from kthw.supply import pins as pins_table
from kthw.supply.components import ARCHES
from kthw.supply.pins import ImagePin, Pins


@dataclass(frozen=True)
class Extracted:
    """A binary taken out of a verified release file."""

    name: str
    member: str       # path in the archive; "" = the release file itself
    path: Path        # under vendor/bin
    install_as: str   # absolute path on the node
    origin: str       # what its stamp vouches for: the archive's pin and the member


@dataclass(frozen=True)
class Item:
    """One release file or image archive for one arch: one `vendor:` task."""

    component: str
    version: str
    arch: str
    source: str       # URL or file (release files); [http://]registry/repository (images)
    path: Path
    pin: str          # "<algo>:<hex>" of the file, or the image's index digest
    origin: str
    extracted: tuple[Extracted, ...] = ()
    reference: str = ""  # images: the name the node knows it by
    by_digest: str = ""  # images: the name that pins it (ImagePin.by_digest)
    tag: str = ""
    hint: str = ""

    @property
    def is_image(self) -> bool:
        return self.component in components.IMAGES

    @property
    def name(self) -> str:
        return f"{self.component}-{self.version}-{self.arch}"

    @property
    def targets(self) -> list[Path]:
        return [self.path] + [binary.path for binary in self.extracted]


@dataclass(frozen=True)
class VendoredFile:
    """A vendored file a node gets: ``source`` on the workstation, ``install_as`` on the node."""

    source: Path
    install_as: str
    mode: int
    task: str  # the doit task that produces it


def load_pins(inv: Inventory) -> Pins:
    return pins_table.load(inv.vendor.site_pins)


def pin_files(inv: Inventory) -> list[Path]:
    """The files :func:`load_pins` reads: the shipped table and the site's."""
    return [pins_table.SHIPPED, *([Path(inv.vendor.site_pins)] if inv.vendor.site_pins else [])]


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts]) if download.is_url(base) else str(Path(base, *parts))


def file_source(inv: Inventory, component: str, version: str, arch: str, upstream: str) -> tuple[str, str]:
    """Where a release file is fetched from, and the fix to print when it is not there."""
    file_name = upstream.rsplit("/", 1)[1]
    override = inv.vendor.override(component)
    if override:
        folder = override.format(version=version, arch=arch)
        return _join(folder, file_name), (f"vendor.overrides.{component} is {override}: put a copy of {upstream} "
                                          f"there as {file_name}")
    if inv.vendor.mirror:
        return _join(inv.vendor.mirror, component, version, file_name), (
            f"put a copy of {upstream} in the mirror (layout: <mirror>/<component>/<version>/<file name>), "
            f"or remove vendor.mirror to fetch from upstream")
    return upstream, (f"check that {component} {version} is published for {arch}, and the url_templates.{component} "
                      "entry of the pins")


def image_source(inv: Inventory, image: ImagePin) -> oci.Repository:
    override = inv.vendor.override(image.name)
    if override:
        return oci.Repository.parse(override)
    upstream = oci.Repository.parse(image.repository)
    return upstream.mirrored(inv.vendor.registry_mirror) if inv.vendor.registry_mirror else upstream


def _arches(inv: Inventory, roles: frozenset[str]) -> list[str]:
    present = {node.arch for node in inv.nodes if node.roles & roles}
    return [arch for arch in ARCHES if arch in present]


def plan(inv: Inventory, pins: Pins, layout: Layout) -> tuple[Item, ...]:
    """Every file and image the inventory's nodes need; an unpinned one is an UnpinnedError."""
    k8s = inv.kubernetes_version
    release = pins.release(k8s)
    items = []
    for component in components.FILE_COMPONENTS:
        version = release[component.name]
        for arch in _arches(inv, component.roles):
            checksum = pins.checksum(component.name, version, arch, k8s)
            upstream = pins.url(component.name, version, arch)
            source, hint = file_source(inv, component.name, version, arch, upstream)
            path = layout.vendor / "files" / component.name / version / upstream.rsplit("/", 1)[1]
            bin_dir = layout.vendor / "bin" / arch / f"{component.name}-{version}"
            extracted = tuple(
                Extracted(binary.name, binary.member.format(version=version, arch=arch), bin_dir / binary.name,
                          f"{binary.install_dir}/{binary.name}", f"{checksum} {binary.member or binary.name}")
                for binary in component.binaries)
            items.append(Item(component.name, version, arch, source, path, checksum, checksum, extracted, hint=hint))
    for image_component in components.IMAGE_COMPONENTS:
        version = release[image_component.name]
        for arch in _arches(inv, image_component.roles):
            image = pins.image(image_component.name, version, k8s)
            repository = image_source(inv, image)
            path = layout.vendor / "images" / arch / f"{image_component.name}-{version}.tar"
            items.append(Item(image_component.name, version, arch, str(repository), path, image.digest,
                              f"{image.reference}@{image.digest} {arch}", reference=image.reference,
                              by_digest=image.by_digest, tag=image.tag))
    return tuple(items)


def is_current(item: Item) -> bool:
    """The file (and what was taken out of it) is there and still what was verified."""
    return download.verified(item.path, item.origin) and all(
        download.verified(binary.path, binary.origin) for binary in item.extracted)


def fetch(item: Item) -> str:
    """Fetch, verify and unpack one item; a verified cached file is not fetched again."""
    if not download.verified(item.path, item.origin):
        download.forget(item.path)  # a corrupted or stale cached file must not outlive a failed fetch
        if item.is_image:
            oci.pull(oci.Repository.parse(item.source), item.reference, item.tag, item.pin, item.arch,
                     item.path, item.origin)
        else:
            download.fetch(item.source, item.path, item.pin, label=f"{item.name}", hint=item.hint)
    _extract(item)
    return ""


def _extract(item: Item) -> None:
    pending = [binary for binary in item.extracted if not download.verified(binary.path, binary.origin)]
    if not pending:
        return
    for binary in pending:
        download.forget(binary.path)
    if not pending[0].member:
        for binary in pending:
            with open(item.path, "rb") as handle:
                _write_binary(binary, handle, item)
        return
    import tarfile  # tarfile is loaded only where an archive is read or written: a no-op run never is
    try:
        with tarfile.open(item.path, "r:*") as archive:
            members = {member.name.removeprefix("./"): member for member in archive.getmembers()}
            for binary in pending:
                member = members.get(binary.member.removeprefix("./"))
                if member is None or not member.isfile():
                    raise KthwError(f"{item.path}: the verified release file has no file '{binary.member}'"
                                    f"\n  fix: this {item.component} release is laid out differently from what "
                                    "kthw/supply/components.py expects; update that table for it")
                _write_binary(binary, archive.extractfile(member), item)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise KthwError(f"{item.path}: cannot unpack ({err})\n  fix: free some disk space if that is the cause; "
                        "otherwise the pinned file is not the expected archive: check the pin") from None


def _write_binary(binary: Extracted, stream, item: Item) -> None:
    digest = hashlib.sha256()
    with atomic_file(binary.path, 0o755, suffix=".part") as out:
        while chunk := stream.read(1 << 20):
            out.write(chunk)
            digest.update(chunk)
    download.record(binary.path, f"sha256:{digest.hexdigest()}", binary.origin)


def needs(node: Node, inv: Inventory, layout: Layout, pins: Pins | None = None,
          items: tuple[Item, ...] | None = None) -> tuple[VendoredFile, ...]:
    """The vendored files ``node`` gets for its arch and roles, and where each goes on the node.

    A binary two roles need (kubectl) is listed once, from the first component that has it.
    ``items`` is the inventory's :func:`plan` when the caller already has it (it is the same
    for every node).
    """
    if items is None:
        items = plan(inv, pins or load_pins(inv), layout)
    files: dict[str, VendoredFile] = {}
    for item in items:
        component = components.FILES.get(item.component) or components.IMAGES[item.component]
        if item.arch != node.arch or not component.roles & node.roles:
            continue
        task = f"vendor:{item.name}"
        if item.is_image:
            install_as = f"{components.IMAGE_DIR}/{item.component}-{item.version}.tar"
            files.setdefault(install_as, VendoredFile(item.path, install_as, 0o644, task))
        for binary in item.extracted:
            files.setdefault(binary.install_as, VendoredFile(binary.path, binary.install_as, 0o755, task))
    return tuple(files.values())


def images(inv: Inventory, pins: Pins | None = None) -> dict[str, ImagePin]:
    """The pinned images of the inventory's Kubernetes version (e.g. the pause image for containerd)."""
    pins = pins or load_pins(inv)
    release = pins.release(inv.kubernetes_version)
    return {name: pins.image(name, release[name], inv.kubernetes_version) for name in components.IMAGES}
