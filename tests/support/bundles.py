"""A project's bundles, built from stand-in vendored files, unpacked and installed with their
own install.sh; used by the bundle tests and bench/.

``stand_in_vendor`` fills vendor/ the way `doit vendor` leaves it, from the vendor
stage's own plan: every release file, every binary taken out of it and every image
archive, each with its verification stamp. The vendor stage itself is tested against
real servers in test_vendor.py; here no network or registry is involved, and the
stamps make the vendor tasks count as done, as after a real `doit vendor`.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from kthw import inventory
from kthw.bundle import build as bundle
from kthw.layout import Layout
from kthw.supply import download
from kthw.vendor import fetch as vendor
from support.project import REPO, Project


def stand_in_bytes(label: str, size: int, incompressible: float = 0.5) -> bytes:
    """``size`` bytes: a script line naming ``label``, then random bytes (the share that does
    not compress) and text that compresses about as well as program code."""
    head = f"#!/bin/sh\necho stand-in {label}\n".encode()
    rng = random.Random(label)
    noise = rng.randbytes(int(size * incompressible))
    words = [rng.randbytes(rng.randrange(2, 12)) for _ in range(512)]
    text = bytearray()
    while len(text) < size - len(head) - len(noise):
        text += b"".join(rng.choices(words, k=4096))
    return (head + noise + bytes(text))[:max(size, len(head))]


def _write(path: Path, data: bytes, mode: int, origin: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)
    download.record(path, "sha256:" + hashlib.sha256(data).hexdigest(), origin)


def stand_in_vendor(root: Path, inventory_path: Path, size: Callable[[str], int] | int = 2048,
                    tag: str = "", scripts: dict[str, bytes] | None = None) -> dict[Path, bytes]:
    """Write stand-ins for everything `doit vendor` would fetch for the inventory; return them.

    ``size`` gives the size of a binary or image archive by file name; ``tag`` makes other
    bytes (a new release); ``scripts`` replaces binaries by name (e.g. a ctr that works).
    An image archive's stand-in starts with a line "image <name>", the name the node
    knows it by.
    """
    inv = inventory.load(inventory_path)
    layout = Layout(Path(root))
    sizes = size if callable(size) else (lambda name: size)
    written = {}
    for item in vendor.plan(inv, vendor.load_pins(inv), layout):
        if item.is_image:
            data = f"image {item.reference}\n".encode() + stand_in_bytes(f"{item.name}{tag}", sizes(item.path.name))
        else:
            data = f"stand-in release file {item.name}{tag}\n".encode()
        _write(item.path, data, 0o644, item.origin)
        written[item.path] = data
        for binary in item.extracted:
            data = (scripts or {}).get(binary.name) or \
                stand_in_bytes(f"{binary.name} {item.version} {item.arch}{tag}", sizes(binary.name))
            _write(binary.path, data, 0o755, binary.origin)
            written[binary.path] = data
    return written


def example_project(root: Path, edit=None) -> Project:
    project = Project(root)
    root.mkdir(parents=True, exist_ok=True)
    text = (REPO / "cluster.yaml").read_text()
    project.write_inventory(edit(text) if edit else text)
    stand_in_vendor(project.root, project.inventory, size=20_000)
    return project


def bundle_path(project: Project, node: str) -> Path:
    return project.root / "bundles" / f"{node}.tar.gz"


def unpack(project: Project, node: str, where: Path) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-xzf", str(bundle_path(project, node)), "-C", str(where)], check=True)
    return where / bundle.TOP


def fingerprint(project: Project) -> str:
    text = project.doit("fingerprint").stdout
    return re.search(r"ed25519:[0-9a-f]{64}", text).group(0)


def install(directory: Path, *args: str, check: bool = False) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", str(directory / "install.sh"), *args], capture_output=True, text=True,
                            cwd=directory.parent)
    if check and result.returncode != 0:
        raise AssertionError(f"install.sh {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def tree_state(root: Path) -> dict[str, tuple]:
    """Every path under root: kind, mode, owner, mtime and content hash."""
    state = {}
    for path in sorted([root, *root.rglob("*")]):
        stat = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        state[str(path.relative_to(root))] = (stat.st_mode, stat.st_uid, stat.st_gid, stat.st_mtime_ns, digest)
    return state


def two_versions(project: Project, node: str, cert: str, where: Path) -> tuple[Path, Path]:
    """The node's bundle unpacked before (where/v1) and after (where/v2) a new key for ``cert``."""
    project.doit(f"bundle:{node}")
    v1 = unpack(project, node, where / "v1")
    project.doit(f"rekey:{node}/{cert}")
    project.doit(f"bundle:{node}")
    return v1, unpack(project, node, where / "v2")
