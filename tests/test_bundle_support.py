"""Stand-in vendored files for the bundle tests and bench/bundle (no tests here).

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
from pathlib import Path
from typing import Callable

from kthw.supply import download
from kthw import inventory
from kthw.vendor import fetch as vendor
from kthw.layout import Layout


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
