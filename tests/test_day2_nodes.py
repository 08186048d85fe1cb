"""Adding and removing a worker: doit rebuilds exactly what the new node set changes.

The real doit graph on a small cluster (3 control-plane+etcd nodes, workers), vendored
files stand-ins; the tasks doit runs and the files that change are what is asserted.
"""

from __future__ import annotations

import re

import pytest
from support.day2 import day2_inventory, vendor_stand_ins
from support.project import Project, changed

pytestmark = pytest.mark.slow  # end to end (see pyproject's markers)

CONTROL_PLANES = ["cp1", "cp2", "cp3"]
ROUTES = "etc/systemd/system/kthw-pod-routes.service"


def snapshot(project: Project) -> dict:
    return {**project.snapshot(), **project.snapshot("bundles")}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    project = Project(tmp_path_factory.mktemp("day2-nodes"))
    project.write_inventory(day2_inventory(CONTROL_PLANES, ["worker1", "worker2"]))
    vendor_stand_ins(project)
    project.doit()
    return project


def stage_of(task: str) -> str:
    return task.split(":")[0]


def node_of(task: str) -> str:
    return re.split(r"[:/]", task)[1] if ":" in task else ""


def test_adding_a_worker_rebuilds_its_bundle_its_token_the_manifests_and_the_pod_routes(project):
    before = snapshot(project)
    project.write_inventory(day2_inventory(CONTROL_PLANES, ["worker1", "worker2", "worker3"]))
    run = project.doit()
    after = snapshot(project)

    for task in run.executed:
        stage, node = stage_of(task), node_of(task)
        if stage == "pki":
            assert node == "worker3", f"{task}: only the new worker's certs are issued"
        elif stage == "secrets":
            assert task in ("secrets:bootstrap-token-worker3", "secrets:worker3/bootstrap-kubeconfig",
                            "secrets:worker3", "secrets:worker3/stale") or \
                task in {f"secrets:{cp}/bootstrap-manifests" for cp in CONTROL_PLANES}, task
        elif stage == "render":
            assert node == "worker3" or task.endswith("/kthw-pod-routes.service"), task
        else:
            assert stage == "bundle", task
    assert "secrets:bootstrap-token-worker3" in run.executed

    files = changed(before, after)
    for path in files:
        parts = path.split("/")
        if path.startswith("bundles/"):
            continue  # every node's pod routes changed, so every bundle is rebuilt
        if parts[:2] == ["build", "nodes"]:
            node, on_node = parts[2], "/".join(parts[3:])
            assert node == "worker3" or on_node == ROUTES or (
                node in CONTROL_PLANES and on_node.startswith("etc/k8s/bootstrap/")), path
        elif parts[:3] == ["build", "pki", "nodes"]:
            assert parts[3] == "worker3", path
        else:
            assert path == "build/state/tokens/worker3.yaml", path
    assert "build/state/tokens/worker3.yaml" in files
    assert {f"build/nodes/{n}/{ROUTES}" for n in [*CONTROL_PLANES, "worker1", "worker2"]} <= files
    assert {f"bundles/{n}.tar.gz" for n in [*CONTROL_PLANES, "worker1", "worker2", "worker3"]} <= files
    for cp in CONTROL_PLANES:
        assert project.node_file(cp, "/etc/k8s/bootstrap/bootstrap-token-worker3.yaml").exists()
    # Nothing else: no key, cert or unit of an existing node besides its pod routes.
    assert not [p for p in files if p.startswith("build/pki/ca/")]


def test_removing_a_worker_drops_its_bundle_and_token_and_reissues_nothing(project):
    project.write_inventory(day2_inventory(CONTROL_PLANES, ["worker1", "worker2", "worker3"]))
    project.doit()
    before = snapshot(project)
    project.write_inventory(day2_inventory(CONTROL_PLANES, ["worker1", "worker3"]))
    run = project.doit()
    after = snapshot(project)

    assert not (project.root / "bundles" / "worker2.tar.gz").exists()
    assert "removed " in run.stdout and "worker2 is no longer in the inventory" in run.stdout
    assert "etcd member" not in run.stdout, "a worker leaves no etcd membership behind"
    issued = [t for t in run.executed if stage_of(t) == "pki" and not t.endswith("/stale")]
    assert issued == [], f"no cert is issued again: {issued}"
    for cp in CONTROL_PLANES:
        assert not project.node_file(cp, "/etc/k8s/bootstrap/bootstrap-token-worker2.yaml").exists()
        assert "worker2" not in project.node_file(cp, "/" + ROUTES).read_text()
    assert sorted(t for t in run.executed if stage_of(t) == "secrets") == sorted(
        f"secrets:{cp}/{part}" for cp in CONTROL_PLANES for part in ("bootstrap-manifests", "stale"))
    assert sorted(t for t in run.executed if stage_of(t) == "render") == sorted(
        f"render:{n}/kthw-pod-routes.service" for n in [*CONTROL_PLANES, "worker1", "worker3"])
    files = changed(before, after)
    # Existing nodes: only the bootstrap manifests (control planes) and the pod routes change.
    for path in files:
        parts = path.split("/")
        if parts[:2] == ["build", "nodes"] and parts[2] != "worker2":
            on_node = "/".join(parts[3:])
            assert on_node == ROUTES or on_node.startswith("etc/k8s/bootstrap/"), path
        assert not path.startswith("build/pki/ca/"), path
    # The other nodes' certs and keys are untouched.
    for path in before:
        if path.startswith("build/pki/nodes/") and "/worker2/" not in path:
            assert after.get(path) == before[path], path
