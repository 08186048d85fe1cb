"""Vendor stage: every release file and image the inventory's nodes need, pinned and verified.

    vendor:<component>-<version>-<arch>  one release file (and the binaries taken out of it)
                                         or one image archive, e.g. vendor:etcd-3.5.27-arm64
    vendor                               all of them, for the versions and arches in use
    pin version=X.Y.Z [etcd=...] [pins=FILE]
                                         connected workstation: pin a new Kubernetes version

A task is up to date when its files are there and unchanged since they were verified
(a stamp of size, mtime and checksum; a changed file is hashed again), so a rerun makes
no network request. `doit -n 4 vendor` fetches four files at a time. `doit clean` leaves
vendor/ alone: it only holds verified downloads.
"""

from __future__ import annotations

from pathlib import Path

from doit import get_var

from kthw.errors import KthwError
from kthw.supply import components
from kthw.vendor import fetch as vendor
from kthw.vendor import pinning

from .common import checked, context, failing, guarded


def task_vendor():
    """Fetch and verify every pinned release file and image the inventory's nodes need."""
    inv, layout = context()
    try:
        items = vendor.plan(inv, vendor.load_pins(inv), layout)
    except KthwError as err:
        # The inventory check refuses an unpinned version; what else the pins lack for this
        # inventory (a checksum of one arch, an image digest) fails `doit vendor` alone.
        yield failing("pins", "the pins table does not cover the inventory", str(err))
        return
    for item in items:
        what = f"image {item.reference}" if item.is_image else f"{item.component} {item.version}"
        yield {
            "name": item.name,
            "doc": f"{what} for {item.arch}",
            "actions": [(guarded, [vendor.fetch, item])],
            "targets": item.targets,
            "uptodate": [(checked, [vendor.is_current, item])],
        }


def _pin(version: str | None, chosen: dict, target: str | None) -> str:
    if not version:
        raise KthwError("which version? run e.g. 'doit pin version=1.36.1' (component versions may follow: "
                        + " ".join(f"{name}=..." for name in components.RELEASE_KEYS) + ")")
    inv, _ = context()
    return pinning.pin(inv, version, chosen, Path(target) if target else None)


def task_pin():
    """Pin a Kubernetes version from upstream's checksums: doit pin version=X.Y.Z [etcd=...] [pins=FILE]."""
    chosen = {name: get_var(name) for name in components.RELEASE_KEYS if get_var(name, None)}
    return {
        "actions": [(guarded, [_pin, get_var("version", None), chosen, get_var("pins", None)])],
        "uptodate": [False],
        "verbosity": 2,
    }
