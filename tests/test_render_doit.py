"""`doit render` as a user runs it: what lands in build/nodes/<node>/, what a rerun
touches, and that every path a rendered file names will be on the node."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

import pytest
from support.project import Project, loopback_inventory
from support.render import named_paths, pinned_inventory, release, rendered_paths, write_pins

from kthw import inventory
from kthw.render.node_files import binaries_for, unit_exec_start

pytestmark = pytest.mark.slow  # end to end (see pyproject's markers)

# Created on the node by the services themselves (data, logs, sockets), never installed.
RUNTIME_DIRS = ("/var/lib/", "/var/log/", "/run/")
CONTROL_PLANE_DIRS = ("etc/k8s/kube-apiserver", "etc/k8s/kube-controller-manager", "etc/k8s/kube-scheduler",
                      "etc/k8s/etcd")
CONTROL_PLANE_UNITS = {"etcd.service", "kube-apiserver.service", "kube-controller-manager.service",
                       "kube-scheduler.service", "kthw-pod-routes.service"}
WORKER_UNITS = {"containerd.service", "kubelet.service", "kube-proxy.service", "kthw-pod-routes.service"}


def test_every_path_a_rendered_file_names_is_installed_on_that_node(rendered_cluster):
    project, _ = rendered_cluster
    inv = inventory.load(project.inventory)
    for node_name, paths in rendered_paths(project).items():
        node = inv.node(node_name)
        installed = project.node_files(node_name) | set(binaries_for(node))
        directories = {parent for path in installed for parent in _parents(path)}
        for path in paths:
            text = project.node_file(node_name, path).read_text()
            for named in named_paths(text):
                if named.startswith(RUNTIME_DIRS):
                    continue
                assert named in installed or named in directories, \
                    f"{node_name}:{path} names {named}, which nothing installs on {node_name}"


def _parents(path: str):
    parts = path.split("/")
    for i in range(2, len(parts)):
        yield "/".join(parts[:i])


def test_workers_get_no_control_plane_file_and_control_planes_no_worker_file(rendered_cluster):
    project, _ = rendered_cluster
    for node in ("worker1", "worker2"):
        files = project.node_files(node)
        assert {p.rsplit("/", 1)[1] for p in files if p.startswith("/etc/systemd/system/")} == WORKER_UNITS
        assert not [p for p in files if p.lstrip("/").startswith(CONTROL_PLANE_DIRS)], node
    for node in ("cp1", "cp2", "cp3"):
        files = project.node_files(node)
        assert {p.rsplit("/", 1)[1] for p in files if p.startswith("/etc/systemd/system/")} == CONTROL_PLANE_UNITS
        assert not [p for p in files if p.startswith(("/etc/cni/", "/etc/k8s/kubelet/", "/etc/k8s/kube-proxy/",
                                                      "/etc/k8s/containerd/", "/etc/crictl.yaml"))], node


def test_no_secret_is_written_on_a_command_line(rendered_cluster):
    project, _ = rendered_cluster
    for node in ("cp1", "cp2", "cp3", "worker1", "worker2"):
        root = project.root / "build" / "nodes" / node
        secrets = [p.read_text() for p in root.rglob("*") if p.is_file() and (
            p.suffix == ".key" or "kubeconfig" in p.name or p.name == "encryption-config.yaml")]
        secret_lines = {line.strip() for text in secrets for line in text.splitlines() if len(line.strip()) >= 24}
        assert secret_lines, f"{node}: expected keys or kubeconfigs to compare against"
        for unit in (root / "etc/systemd/system").glob("*.service"):
            command = " ".join(unit_exec_start(unit.read_text()))
            assert "BEGIN" not in command and not re.search(r"\b[a-z0-9]{6}\.[a-z0-9]{16}\b", command), unit
            assert not any(line in command for line in secret_lines), unit
            # No key material of any kind: a long unbroken base64 run would be one.
            assert not re.search(r"[A-Za-z0-9+/=]{40,}", command), unit


def test_a_rerun_renders_nothing_and_an_ip_change_rerenders_only_the_files_that_name_it(tmp_path):
    project = Project(tmp_path)
    text = pinned_inventory(write_pins(tmp_path / "pins.yaml", [release()]))
    project.write_inventory(text)
    project.doit("pki", "render")
    before = project.snapshot()

    rerun = project.doit("pki", "render")
    assert [t for t in rerun.executed if t.startswith("render:")] == []
    assert project.snapshot() == before

    project.write_inventory(text.replace("ip: 127.0.0.2}", "ip: 127.0.0.4}"))
    changed = project.doit("render")
    # Every file that lists the etcd members: the units and the membership script.
    naming_members = ("etc/systemd/system/etcd.service", "etc/systemd/system/kube-apiserver.service",
                      "etc/k8s/etcd/etcd-member.sh")
    expected = {f"render:{node}/{PurePosixPath(path).name}" for node in ("cp1", "cp2", "cp3")
                for path in naming_members}
    assert set(changed.executed) == expected, changed.executed
    after = project.snapshot()
    rewritten = {path for path in after if path.startswith("build/nodes/") and after[path] != before.get(path)}
    assert rewritten == {f"build/nodes/{node}/{path}" for node in ("cp1", "cp2", "cp3") for path in naming_members}
    for path in rewritten:
        content = (tmp_path / path).read_text()
        assert "127.0.0.4" in content and "127.0.0.2" not in content, path

    project.write_inventory(text.replace("ip: 127.0.0.12,", "ip: 127.0.0.22,").replace(
        "ip: 127.0.0.2}", "ip: 127.0.0.4}"))
    worker = project.doit("render")
    # The worker's own kubelet, and every other node's route to its pod CIDR.
    assert sorted(worker.executed) == sorted(["render:worker2/kubelet.service"] + [
        f"render:{node}/kthw-pod-routes.service" for node in ("cp1", "cp2", "cp3", "worker1")])
    assert "--node-ip=127.0.0.22" in project.node_file("worker2", "/etc/systemd/system/kubelet.service").read_text()


def test_an_unsupported_version_fails_doit_render_with_the_supported_list(tmp_path):
    project = Project(tmp_path)
    project.write_inventory(loopback_inventory(kubernetes_version="1.31.4"))
    run = project.doit("render", check=False)
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert "Kubernetes 1.31 is not supported" in output and "1.32, 1.33, 1.34, 1.35, 1.36, 1.37" in output
    assert "Traceback" not in output
    assert not (tmp_path / "build" / "nodes").exists() or not any((tmp_path / "build" / "nodes").rglob("*.service"))


def test_a_release_missing_from_the_pins_fails_with_the_pinned_ones(tmp_path):
    project = Project(tmp_path)
    project.write_inventory(pinned_inventory(write_pins(tmp_path / "pins.yaml", [release("1.35.0")]), "1.35.3"))
    run = project.doit("render:cp1", check=False)
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert "Kubernetes 1.35.3 is not pinned" in output and "Traceback" not in output
    assert re.search(r"pinned versions: [^;]*\b1\.35\.0\b", output) and "doit pin version=1.35.3" in output
    assert not project.node_file("cp1", "/etc/systemd/system/etcd.service").exists()


def test_a_pins_change_rerenders_exactly_the_files_that_use_it(tmp_path):
    """The pins feed two files: each etcd unit (its flags follow the etcd minor) and each
    worker's containerd config (its schema follows the containerd minor; the pause image),
    and each node's record of the versions it installs (/etc/k8s/versions)."""
    project = Project(tmp_path)
    pins = tmp_path / "pins.yaml"
    project.write_inventory(pinned_inventory(write_pins(pins, [release(etcd="3.5.24", containerd="2.1.5")])))
    project.doit("render")
    etcd_units = {f"render:{node}/etcd.service" for node in ("cp1", "cp2", "cp3")}
    containerd_configs = {f"render:{node}/config.toml" for node in ("worker1", "worker2")}
    cp_versions = {f"render:{node}/versions" for node in ("cp1", "cp2", "cp3")}
    worker_versions = {f"render:{node}/versions" for node in ("worker1", "worker2")}

    write_pins(pins, [release(etcd="3.5.27", containerd="2.1.5")])  # same etcd minor: same unit
    assert set(project.doit("render").executed) == cp_versions
    assert "etcd=3.5.27\n" in project.node_file("cp1", "/etc/k8s/versions").read_text()
    write_pins(pins, [release(etcd="3.6.5", containerd="2.1.5")])
    assert set(project.doit("render").executed) == etcd_units | cp_versions
    assert "--feature-gates=InitialCorruptCheck=true" in project.node_file(
        "cp1", "/etc/systemd/system/etcd.service").read_text()
    write_pins(pins, [release(etcd="3.6.5", containerd="1.7.24")])
    assert set(project.doit("render").executed) == containerd_configs | worker_versions
    assert "\nversion = 2\n" in project.node_file("worker1", "/etc/k8s/containerd/config.toml").read_text()
    write_pins(pins, [release(etcd="3.6.5", containerd="1.7.24", pause="3.99")],
               {("pause", "3.99"): "sha256:" + "99" * 32})
    assert set(project.doit("render").executed) == containerd_configs | worker_versions
    assert 'sandbox_image = "registry.k8s.io/pause:3.99"' in project.node_file(
        "worker1", "/etc/k8s/containerd/config.toml").read_text()


def test_files_a_node_no_longer_gets_are_removed(tmp_path):
    """Dropping the workers' pod CIDRs hands pod networking to a CNI add-on: the old bridge
    configs must not stay in the trees the bundles are made from."""
    project = Project(tmp_path)
    text = pinned_inventory(write_pins(tmp_path / "pins.yaml", [release()]))
    project.write_inventory(text)
    project.doit("pki", "render")
    bridge = project.node_file("worker1", "/etc/cni/net.d/10-bridge.conflist")
    assert bridge.exists()

    project.write_inventory(text.replace(", pod_cidr: 10.244.1.0/24", "").replace(", pod_cidr: 10.244.2.0/24", ""))
    run = project.doit("render")
    assert {"render:worker1/stale", "render:worker2/stale",
            "render:cp1/kube-controller-manager.service"} <= set(run.executed)
    assert not bridge.exists() and not project.node_file("worker2", "/etc/cni/net.d/10-bridge.conflist").exists()
    assert project.node_file("worker1", "/etc/cni/net.d/99-loopback.conf").exists()
    assert "--allocate-node-cidrs=true" in project.node_file(
        "cp1", "/etc/systemd/system/kube-controller-manager.service").read_text()
    assert project.doit("render").executed == []
