"""Cluster DNS: the CoreDNS objects apply.sh creates, for the example inventory.

The objects are validated against the published schemas and accepted by real kubectl in
tests/test_secrets.py and tests/test_secrets_kubectl.py; here, what they say. No CoreDNS
binary is installable here, so the Corefile is checked by a parser of its block syntax
(the plugins and their order), not by CoreDNS itself.
"""

from __future__ import annotations

import re
from pathlib import Path

from support.project import REPO
from support.render import parse_blocks

from kthw import inventory
from kthw.bundle import build as bundle
from kthw.layout import Layout
from kthw.secrets import manifests
from kthw.vendor import fetch as vendor

# The plugins a cluster DNS server block carries, in the order kubeadm writes them.
PLUGINS = ["errors", "health", "ready", "kubernetes", "prometheus", "forward", "cache", "loop", "reload",
           "loadbalance"]


def example(tmp_path: Path, edit=lambda text: text) -> inventory.Inventory:
    path = tmp_path / "cluster.yaml"
    path.write_text(edit((REPO / "cluster.yaml").read_text()))
    return inventory.load(path)


def objects_of(inv: inventory.Inventory) -> dict[str, dict]:
    return {obj["kind"]: obj for obj in manifests.coredns(inv, vendor.images(inv)["coredns"])}


def test_the_corefile_serves_the_cluster_domain_from_the_api_and_forwards_the_rest(tmp_path):
    inv = example(tmp_path, lambda text: text.replace("cluster_domain: cluster.local", "cluster_domain: lab.internal"))
    assert inv.cluster_domain == "lab.internal"
    (server, plugins), = parse_blocks(objects_of(inv)["ConfigMap"]["data"]["Corefile"])
    assert server == ".:53"
    assert [line.split()[0] for line, _ in plugins] == PLUGINS
    directives = {line.split()[0]: (line.split()[1:], block) for line, block in plugins}
    assert directives["kubernetes"][0] == ["lab.internal", "in-addr.arpa", "ip6.arpa"]
    assert ("pods insecure", []) in directives["kubernetes"][1]
    assert directives["forward"][0] == [".", "/etc/resolv.conf"]
    assert ("disable success lab.internal", []) in directives["cache"][1]


def test_the_deployment_runs_the_vendored_image_by_digest_spread_over_the_workers(tmp_path):
    inv = example(tmp_path)
    objects = objects_of(inv)
    pin = vendor.images(inv)["coredns"]
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    container, = pod["containers"]
    assert container["image"] == f"{pin.repository}:{pin.tag}@{pin.digest}"
    assert re.fullmatch(r"registry\.k8s\.io/coredns/coredns:v[0-9.]+@sha256:[0-9a-f]{64}", container["image"])
    assert container["imagePullPolicy"] == "IfNotPresent"
    # The worker bundles name the imported image by that digest (install.sh tags it).
    layout = Layout(tmp_path)
    for worker in inv.worker_nodes:
        images = bundle.vendored_files(worker, inv, layout).images
        assert (f"{pin.repository}:{pin.tag}", pin.by_digest) in {(name, by_digest) for _, name, by_digest in images}
    assert objects["Deployment"]["spec"]["replicas"] == 2  # three workers: two replicas, one may go down
    spread, = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert spread["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert pod["dnsPolicy"] == "Default" and pod["serviceAccountName"] == "coredns"
    service = objects["Service"]
    assert service["metadata"]["name"] == "kube-dns"
    assert service["spec"]["clusterIP"] == str(inv.cluster_dns_ip)
    assert {(p["port"], p["protocol"]) for p in service["spec"]["ports"]} == {(53, "UDP"), (53, "TCP"), (9153, "TCP")}
    assert service["spec"]["selector"] == objects["Deployment"]["spec"]["selector"]["matchLabels"]


def test_replicas_follow_the_worker_count():
    assert [manifests.coredns_replicas(n) for n in (1, 2, 3, 10)] == [1, 2, 2, 2]


def test_without_workers_there_is_no_coredns_to_apply(tmp_path):
    inv = example(tmp_path, lambda text: text.split("  - {name: worker-az1-a")[0])
    assert not inv.worker_nodes
    assert manifests.COREDNS_FILE not in manifests.manifest_names(inv)
