"""The render stage's library: what each node gets, for every supported Kubernetes minor.

These tests render through kthw.render.node_files (the same code the doit tasks run) and read the
output the way the components would: YAML and JSON parsers, Python's TOML parser for
containerd's config, and the unit's ExecStart split into words.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path, PurePosixPath

import pytest
import yaml
from support.project import loopback_inventory
from support.render import TEMPLATES, every_minor, pinned_inventory, release, write_pins

from kthw import inventory, versions
from kthw.errors import KthwError
from kthw.layout import Layout
from kthw.pki.node_paths import PATHS
from kthw.render.node_files import binaries_for, plan, render, unit_exec_start
from kthw.supply import components
from kthw.supply import pins as pins_table
from kthw.vendor import fetch as vendor

try:
    import tomllib  # Python 3.11+
except ImportError:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

MINORS = sorted(versions.KUBERNETES)
CONTROL_PLANE_FILES = {"/etc/systemd/system/kube-apiserver.service",
                       "/etc/systemd/system/kube-controller-manager.service",
                       "/etc/systemd/system/kube-scheduler.service", PATHS["audit_policy"], PATHS["scheduler_config"]}
ETCD_FILES = {"/etc/systemd/system/etcd.service", "/etc/k8s/etcd/etcd-member.sh"}
# Every node another worker's pod CIDR must be routed to (all of them in these inventories),
# and every node's record of the releases it installs.
ROUTES_FILES = {"/etc/systemd/system/kthw-pod-routes.service", "/etc/k8s/versions"}
WORKER_FILES = {"/etc/systemd/system/containerd.service", "/etc/systemd/system/kubelet.service",
                "/etc/systemd/system/kube-proxy.service", PATHS["containerd_config"], PATHS["kubelet_config"],
                PATHS["kube_proxy_config"], "/etc/cni/net.d/10-bridge.conflist", "/etc/cni/net.d/99-loopback.conf",
                "/etc/crictl.yaml", "/etc/modules-load.d/kubernetes.conf", "/etc/sysctl.d/99-kubernetes.conf"}
# What kind each YAML config must carry; its apiVersion comes from the version table.
KINDS = {
    PATHS["kubelet_config"]: ("KubeletConfiguration", "kubelet_config_api"),
    PATHS["kube_proxy_config"]: ("KubeProxyConfiguration", "proxy_config_api"),
    PATHS["scheduler_config"]: ("KubeSchedulerConfiguration", "scheduler_config_api"),
    PATHS["audit_policy"]: ("Policy", "audit_policy_api"),
}


def load(text: str):
    return inventory.loads(text, source="test.yaml")


def rendered(inv, templates: Path = TEMPLATES) -> dict[str, dict[str, str]]:
    return {node: {f.path: render(f, templates).decode() for f in files} for node, files in plan(inv).items()}


@pytest.mark.parametrize("containerd", ["1.7.24", "2.1.5"])
@pytest.mark.parametrize("minor", MINORS, ids=lambda m: f"{m[0]}.{m[1]}")
def test_every_supported_minor_renders_parseable_configs_with_the_table_versions(tmp_path, minor, containerd):
    row = versions.KUBERNETES[minor]
    version = f"{minor[0]}.{minor[1]}.0"
    pins = write_pins(tmp_path / "pins.yaml", every_minor(containerd=containerd))
    files = rendered(load(pinned_inventory(pins, version)))
    for node, by_path in files.items():
        for path, text in by_path.items():
            if path in KINDS:
                document = yaml.safe_load(text)
                kind, field = KINDS[path]
                assert (document["apiVersion"], document["kind"]) == (getattr(row, field), kind), (node, path)
            elif path.endswith((".conf", ".conflist")) and "/cni/" in path:
                assert json.loads(text)["cniVersion"] == "1.0.0"
    worker = files["worker1"]
    kubelet = yaml.safe_load(worker[PATHS["kubelet_config"]])
    assert kubelet["failCgroupV1"] is row.fail_cgroup_v1
    assert kubelet["containerRuntimeEndpoint"] == "unix:///run/containerd/containerd.sock"
    assert kubelet["cgroupDriver"] == "systemd" and kubelet["rotateCertificates"] is True
    assert kubelet["authentication"]["webhook"]["enabled"] and kubelet["authorization"]["mode"] == "Webhook"
    assert kubelet["authentication"]["x509"]["clientCAFile"] == "/etc/k8s/shared/kubernetes-ca.crt"
    assert kubelet["tlsCertFile"] == "/etc/k8s/kubelet/kubelet-serving.crt"
    assert kubelet["clusterDNS"] == ["10.96.0.10"] and kubelet["clusterDomain"] == "cluster.local"
    # Removed kubelet flags stay off the command line (--pod-infra-container-image is gone in 1.35).
    words = unit_exec_start(worker["/etc/systemd/system/kubelet.service"])
    assert not any(w.startswith(("--pod-infra-container-image", "--container-runtime=", "--network-plugin"))
                   for w in words)
    config = tomllib.loads(worker[PATHS["containerd_config"]])
    if containerd.startswith("1."):
        assert config["version"] == 2
        cri = config["plugins"]["io.containerd.grpc.v1.cri"]
        assert cri["sandbox_image"] == "registry.k8s.io/pause:3.10.1"
        runc = cri["containerd"]["runtimes"]["runc"]
    else:
        assert config["version"] == 3
        assert config["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"] == \
            "registry.k8s.io/pause:3.10.1"
        runc = config["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["runc"]
    assert runc["runtime_type"] == "io.containerd.runc.v2"
    assert runc["options"] == {"BinaryName": "/usr/local/bin/runc", "SystemdCgroup": True}


def test_each_node_gets_exactly_the_files_of_its_roles(tmp_path):
    pins = write_pins(tmp_path / "pins.yaml", every_minor())
    text = pinned_inventory(pins, "1.36.0").replace(
        "  - {name: worker2,", "  - {name: solo, roles: [control-plane, worker], arch: amd64, ip: 127.0.0.30, "
        "pod_cidr: 10.244.9.0/24}\n  - {name: worker2,")
    inv = load(text)
    paths = {node: {f.path for f in files} for node, files in plan(inv).items()}
    assert paths["cp1"] == CONTROL_PLANE_FILES | ETCD_FILES | ROUTES_FILES
    assert paths["worker1"] == WORKER_FILES | ROUTES_FILES
    assert paths["solo"] == CONTROL_PLANE_FILES | WORKER_FILES | ROUTES_FILES
    assert not paths["worker1"] & (CONTROL_PLANE_FILES | ETCD_FILES)
    # A control plane that is not an etcd member does not wait for a local etcd.
    solo = rendered(inv)["solo"]["/etc/systemd/system/kube-apiserver.service"]
    assert "etcd.service" not in solo and "--etcd-servers=https://127.0.0.1:2379,https://127.0.0.2:2379," in solo


def test_the_binaries_the_configs_rely_on_are_the_ones_the_bundle_installs(tmp_path):
    """binaries_for (what the render checks name) is exactly what the vendor stage hands the
    bundle for each node, and covers every CNI plugin the rendered CNI configs call."""
    pins = write_pins(tmp_path / "pins.yaml", every_minor())
    text = pinned_inventory(pins, "1.36.0").replace(
        "  - {name: worker2,", "  - {name: solo, roles: [control-plane, worker], arch: amd64, ip: 127.0.0.30, "
        "pod_cidr: 10.244.9.0/24}\n  - {name: worker2,")
    inv = load(text)
    pinned, layout = vendor.load_pins(inv), Layout(tmp_path)
    for node in inv.nodes:
        bundled = {f.install_as for f in vendor.needs(node, inv, layout, pinned)
                   if not f.install_as.startswith(components.IMAGE_DIR + "/")}
        assert set(binaries_for(node)) == bundled, node.name
    worker, cp = binaries_for(inv.node("worker1")), binaries_for(inv.node("cp1"))
    assert worker["/usr/local/bin/kubelet"] == worker["/usr/local/bin/kube-proxy"] == "kubernetes-node"
    assert worker["/usr/local/bin/runc"] == "runc" and worker["/usr/local/bin/containerd"] == "containerd"
    assert "/usr/local/bin/kubelet" not in cp and not any(path.startswith("/opt/cni/") for path in cp)
    assert cp["/usr/local/bin/etcd"] == "etcd" and cp["/usr/local/bin/kube-apiserver"] == "kubernetes-server"
    files = rendered(inv)["worker1"]
    bridge = json.loads(files["/etc/cni/net.d/10-bridge.conflist"])
    loopback = json.loads(files["/etc/cni/net.d/99-loopback.conf"])
    plugins = {loopback["type"]} | {p["type"] for p in bridge["plugins"]} | {
        p["ipam"]["type"] for p in bridge["plugins"] if "ipam" in p}
    assert plugins == {"bridge", "host-local", "portmap", "loopback"}
    assert {f"/opt/cni/bin/{plugin}" for plugin in plugins} <= set(worker)


def test_etcd_initial_cluster_and_apiserver_etcd_list_name_every_etcd_member(tmp_path):
    pins = write_pins(tmp_path / "pins.yaml", every_minor())
    files = rendered(load(pinned_inventory(pins, "1.33.0")))
    words = dict(w.split("=", 1) for w in unit_exec_start(files["cp2"]["/etc/systemd/system/etcd.service"])[1:])
    assert words["--name"] == "cp2"
    assert words["--initial-cluster"] == ("cp1=https://127.0.0.1:2380,cp2=https://127.0.0.2:2380,"
                                          "cp3=https://127.0.0.3:2380")
    assert words["--listen-client-urls"] == words["--advertise-client-urls"] == "https://127.0.0.2:2379"
    assert words["--listen-peer-urls"] == words["--initial-advertise-peer-urls"] == "https://127.0.0.2:2380"
    assert words["--client-cert-auth"] == words["--peer-client-cert-auth"] == "true"
    assert words["--data-dir"] == "/var/lib/etcd"
    api = dict(w.split("=", 1) for w in unit_exec_start(files["cp2"]["/etc/systemd/system/kube-apiserver.service"])[1:])
    assert api["--etcd-servers"] == "https://127.0.0.1:2379,https://127.0.0.2:2379,https://127.0.0.3:2379"
    assert api["--advertise-address"] == "127.0.0.2"
    assert api["--authorization-mode"] == "Node,RBAC" and api["--enable-bootstrap-token-auth"] == "true"
    assert api["--service-account-issuer"] == "https://kubernetes.default.svc.cluster.local"
    assert api["--service-account-key-file"] == "/etc/k8s/shared/sa.pub"
    assert api["--service-account-signing-key-file"] == "/etc/k8s/shared/sa.key"
    assert api["--encryption-provider-config"] == "/etc/k8s/kube-apiserver/encryption-config.yaml"
    assert api["--requestheader-allowed-names"] == "front-proxy-client"
    assert api["--service-cluster-ip-range"] == "10.96.0.0/12"


@pytest.mark.parametrize("etcd, expected", [
    ("3.5.24", {"--experimental-initial-corrupt-check": "true", "--experimental-watch-progress-notify-interval": "5s"}),
    ("3.6.5", {"--feature-gates": "InitialCorruptCheck=true", "--watch-progress-notify-interval": "5s"}),
    ("3.7.0", {"--feature-gates": "InitialCorruptCheck=true", "--watch-progress-notify-interval": "5s"}),
])
def test_etcd_flags_follow_the_pinned_etcd_minor(tmp_path, etcd, expected):
    pins = write_pins(tmp_path / "pins.yaml", every_minor(etcd=etcd))
    unit = rendered(load(pinned_inventory(pins, "1.36.0")))["cp1"]["/etc/systemd/system/etcd.service"]
    words = dict(w.split("=", 1) for w in unit_exec_start(unit)[1:])
    assert {k: words[k] for k in expected} == expected
    assert not any(k.startswith("--experimental-") for k in words) or etcd.startswith("3.5")


def test_controller_manager_allocates_node_cidrs_only_when_the_inventory_gives_none(tmp_path):
    pins = write_pins(tmp_path / "pins.yaml", every_minor())
    with_cidrs = rendered(load(pinned_inventory(pins, "1.35.0")))
    words = unit_exec_start(with_cidrs["cp1"]["/etc/systemd/system/kube-controller-manager.service"])
    assert not any(w.startswith(("--allocate-node-cidrs", "--cluster-cidr")) for w in words)
    bridge = json.loads(with_cidrs["worker2"]["/etc/cni/net.d/10-bridge.conflist"])
    assert bridge["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.244.2.0/24"}]]

    text = pinned_inventory(pins, "1.35.0").replace(", pod_cidr: 10.244.1.0/24", "").replace(
        ", pod_cidr: 10.244.2.0/24", "")
    without = rendered(load(text))
    words = dict(w.split("=", 1) for w in
                 unit_exec_start(without["cp1"]["/etc/systemd/system/kube-controller-manager.service"])[1:])
    assert words["--allocate-node-cidrs"] == "true" and words["--cluster-cidr"] == "10.244.0.0/16"
    assert words["--controllers"] == "*,bootstrapsigner,tokencleaner"
    assert words["--cluster-signing-cert-file"] == "/etc/k8s/kube-controller-manager/cluster-signing-ca.crt"
    assert words["--cluster-signing-duration"] == "8760h"
    assert words["--use-service-account-credentials"] == "true"
    assert "/etc/cni/net.d/10-bridge.conflist" not in without["worker1"]


def test_kubelet_credentials_decide_the_kubeconfig_flags(tmp_path):
    pins = write_pins(tmp_path / "pins.yaml", every_minor())
    static = rendered(load(pinned_inventory(pins, "1.34.0", kubelet_credentials="static")))
    words = unit_exec_start(static["worker1"]["/etc/systemd/system/kubelet.service"])
    assert "--kubeconfig=/etc/k8s/kubelet/kubeconfig" in words
    assert not any(w.startswith("--bootstrap-kubeconfig") for w in words)
    boot = rendered(load(pinned_inventory(pins, "1.34.0")))
    words = unit_exec_start(boot["worker1"]["/etc/systemd/system/kubelet.service"])
    assert "--bootstrap-kubeconfig=/etc/k8s/kubelet/bootstrap-kubeconfig" in words
    assert "--kubeconfig=/var/lib/kubelet/kubeconfig" in words
    assert "--node-ip=127.0.0.11" in words and "--hostname-override=worker1" in words


@pytest.mark.parametrize("version", ["1.31.9", "1.38.0", "2.0.0"])
def test_a_minor_outside_the_table_is_refused_naming_the_supported_ones(tmp_path, version):
    pins = write_pins(tmp_path / "pins.yaml", [release(version)])
    with pytest.raises(KthwError) as err:
        plan(load(pinned_inventory(pins, version)))
    message = str(err.value)
    assert f"kubernetes_version {version}" in message
    assert "supported minors: 1.32, 1.33, 1.34, 1.35, 1.36, 1.37" in message


def test_pins_problems_stop_only_the_files_that_need_the_pins(tmp_path):
    pins = write_pins(tmp_path / "pins.yaml", [release("1.35.1"), release("1.35.0")])
    inv = load(pinned_inventory(pins, "1.35.3"))
    files = {f.path: f for f in plan(inv)["cp1"] + plan(inv)["worker1"]}
    with pytest.raises(KthwError) as err:
        render(files["/etc/systemd/system/etcd.service"], TEMPLATES)
    message = str(err.value)
    # The vendor stage's message: what is pinned (shipped table and site file), where from, the fix.
    assert "Kubernetes 1.35.3 is not pinned" in message and "doit pin version=1.35.3" in message
    assert {"1.35.0", "1.35.1", "1.36.0"} <= set(re.search(r"pinned versions: ([^;]*);", message)[1].split(", "))
    assert str(pins) in message and str(pins_table.SHIPPED) in message
    with pytest.raises(KthwError, match=r"1\.35\.3 is not pinned"):
        render(files[PATHS["containerd_config"]], TEMPLATES)
    assert b"kube-apiserver" in render(files["/etc/systemd/system/kube-apiserver.service"], TEMPLATES)

    missing = plan(load(pinned_inventory(tmp_path / "nowhere.yaml", "1.35.0")))["cp1"]
    assert [f.path for f in missing if f.error] == ["/etc/systemd/system/etcd.service", "/etc/k8s/versions"]
    with pytest.raises(KthwError, match=r"nowhere.yaml: cannot read the pins file[\s\S]*vendor.site_pins"):
        render(missing[0], TEMPLATES)

    for bad, message, failing in [
            (release("1.35.0", etcd="3.4.30"), "etcd 3.4.30 is not supported", {"etcd.service"}),
            (release("1.35.0", containerd="1.6.36"), "containerd 1.6.36 is not supported", {"config.toml"}),
            # A pause version without a pinned image: only containerd's sandbox image needs it.
            (release("1.35.0", pause="3.77"), "no image digest is pinned for pause 3.77", {"config.toml"})]:
        write_pins(tmp_path / "bad.yaml", [bad])
        planned = plan(load(pinned_inventory(tmp_path / "bad.yaml", "1.35.0")))
        problems = {PurePosixPath(f.path).name: f.error for files in planned.values() for f in files if f.error}
        assert set(problems) == failing and all(message in p for p in problems.values()), (bad.versions, problems)

    # A site pins file the vendor stage would refuse is refused here too, with its file and line.
    (tmp_path / "broken.yaml").write_text('schema: 1\nreleases:\n  "1.35.0": {etcd: "3.5.24"}\n')
    planned = plan(load(pinned_inventory(tmp_path / "broken.yaml", "1.35.0")))
    problems = [f.error for files in planned.values() for f in files if f.error]
    assert len(problems) == 3 + 2 + 5  # every etcd unit, containerd config and versions record
    assert all(re.search(r"broken.yaml:3: releases.*containerd.*required key is missing", p) for p in problems)


def test_a_template_passing_a_removed_flag_is_refused_for_the_minors_without_it(tmp_path):
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES, templates)
    unit = templates / "units" / "kubelet.service.j2"
    unit.write_text(unit.read_text().replace("  --node-ip={{ node_ip }}",
                                             "  --node-ip={{ node_ip }} \\\n  --pod-infra-container-image=pause"))
    pins = write_pins(tmp_path / "pins.yaml", every_minor())
    for minor in MINORS:
        inv = load(pinned_inventory(pins, f"1.{minor[1]}.0"))
        kubelet = next(f for f in plan(inv)["worker1"] if f.path.endswith("kubelet.service"))
        if minor <= (1, 34):
            assert b"--pod-infra-container-image=pause" in render(kubelet, templates)
        else:
            with pytest.raises(KthwError, match=rf"kubelet 1\.{minor[1]} does not accept --pod-infra-container-image"):
                render(kubelet, templates)


def test_strict_templates_refuse_a_missing_value(tmp_path):
    pins = write_pins(tmp_path / "pins.yaml", every_minor())
    inv = load(pinned_inventory(pins, "1.36.0"))
    scheduler = next(f for f in plan(inv)["cp1"] if f.path == PATHS["scheduler_config"])
    broken = type(scheduler)(scheduler.node, scheduler.path, scheduler.template, {"paths": PATHS})
    with pytest.raises(KthwError, match="'api_version' is undefined"):
        render(broken, TEMPLATES)


def test_every_shipped_release_renders_every_file():
    """Every release the shipped pins table pins renders: its etcd and containerd are in the
    version table and its pause image is pinned."""
    shipped = pins_table.load()
    assert shipped.releases, "the pins table pins no release"
    for version in shipped.releases:
        inv = load(loopback_inventory(kubernetes_version=version))
        files = rendered(inv)
        config = tomllib.loads(files["worker1"][PATHS["containerd_config"]])
        pause = shipped.image("pause", shipped.release(version)["pause"], version)
        assert pause.reference in json.dumps(config), version


def test_every_flag_of_every_unit_is_in_the_version_table(tmp_path):
    """The FLAGS table covers what the templates pass; nothing passes a flag it does not list."""
    pins = write_pins(tmp_path / "pins.yaml", every_minor())
    seen = set()
    for minor in MINORS:
        for files in rendered(load(pinned_inventory(pins, f"1.{minor[1]}.0"))).values():
            for path, text in files.items():
                if path.startswith("/etc/systemd/system/"):
                    words = unit_exec_start(text)
                    binary = PurePosixPath(words[0]).name
                    if binary in versions.FLAGS:
                        seen |= {(binary, w.split("=", 1)[0]) for w in words[1:]}
    assert seen and all(flag in versions.FLAGS[binary] for binary, flag in seen)
