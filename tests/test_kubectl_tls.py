"""Real kubectl, with the generated kubeconfigs of each CA backend's build, against a TLS
server on loopback standing in for kube-apiserver (support/apiserver.py says what it does
the way kube-apiserver does).
"""

from __future__ import annotations

import base64
import json

import pytest
import yaml
from support.apiserver import stand_in_apiservers, whoami

pytestmark = pytest.mark.slow  # end to end (see pyproject's markers)


@pytest.fixture(scope="module")
def apiserver(pki_build):
    """The stand-ins on the loopback build of each CA backend."""
    with stand_in_apiservers(pki_build) as servers:
        yield pki_build, servers


@pytest.mark.parametrize("node, path, user, groups", [
    ("cp1", "etc/k8s/shared/admin.kubeconfig", "kubernetes-admin", ["system:masters"]),
    ("cp2", "etc/k8s/kube-controller-manager/kubeconfig", "system:kube-controller-manager", []),
    ("cp3", "etc/k8s/kube-scheduler/kubeconfig", "system:kube-scheduler", []),
    ("worker1", "etc/k8s/kube-proxy/kubeconfig", "system:kube-proxy", ["system:node-proxier"]),
    ("worker2", "etc/k8s/kubelet/kubeconfig", "system:node:worker2", ["system:nodes"]),
])
def test_server_sees_the_identity_of_each_kubeconfig(apiserver, node, path, user, groups):
    project, [(server, seen), _] = apiserver
    port = server.server_address[1]
    # The kubeconfigs name localhost / 127.0.0.1 on the real API port; only the port is
    # redirected to the stand-in. TLS is verified with the kubeconfig's own CA data.
    result = whoami(project.node_file(node, path), f"https://127.0.0.1:{port}")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)["status"]["userInfo"]
    assert info["username"] == user
    assert info["groups"] == [*groups, "system:authenticated"]
    assert seen[-1][1:] == (user, groups)


def test_kubeconfig_server_name_comes_from_the_inventory(apiserver):
    project, [(server, _), _] = apiserver
    config = yaml.safe_load(project.node_file("cp1", "etc/k8s/shared/admin.kubeconfig").read_text())
    assert config["clusters"][0]["cluster"]["server"] == "https://localhost:6443"
    # Through the name the kubeconfig uses (localhost), on the stand-in's port.
    result = whoami(project.node_file("cp1", "etc/k8s/shared/admin.kubeconfig"),
                    f"https://localhost:{server.server_address[1]}")
    assert result.returncode == 0, result.stderr


def test_a_host_outside_the_apiserver_sans_is_refused(apiserver):
    project, [_, (other, seen)] = apiserver
    result = whoami(project.node_file("cp1", "etc/k8s/shared/admin.kubeconfig"),
                    f"https://127.0.0.9:{other.server_address[1]}")
    assert result.returncode != 0
    assert "x509" in result.stderr and "127.0.0.9" in result.stderr, result.stderr
    assert seen == [], "no request got through"


def test_a_client_cert_from_the_etcd_intermediate_is_refused(apiserver, tmp_path):
    project, [(server, seen), _] = apiserver
    seen_before = len(seen)
    admin = yaml.safe_load(project.node_file("cp1", "etc/k8s/shared/admin.kubeconfig").read_text())
    user = admin["users"][0]["user"]
    user["client-certificate-data"] = base64.b64encode(
        project.node_file("cp1", "etc/k8s/kube-apiserver/apiserver-etcd-client.crt").read_bytes()).decode()
    user["client-key-data"] = base64.b64encode(
        project.node_file("cp1", "etc/k8s/kube-apiserver/apiserver-etcd-client.key").read_bytes()).decode()
    foreign = tmp_path / "foreign.kubeconfig"
    foreign.write_text(yaml.safe_dump(admin))
    result = whoami(foreign, f"https://127.0.0.1:{server.server_address[1]}")
    assert result.returncode != 0
    # The stand-in's TLS layer refuses the cert (alert unknown_ca), before any request.
    assert "remote error: tls: unknown certificate authority" in result.stderr, result.stderr
    assert len(seen) == seen_before, "the etcd client cert must not authenticate to the API server"
