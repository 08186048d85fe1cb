"""Where things are on a node, and the ports its services listen on: one table for every stage
(render names them in units and configs, secrets and pki place files there, the bundle's
installer and the day-2 scripts read them)."""

from __future__ import annotations

from kthw.inventory import APISERVER_PORT  # the inventory checks an endpoint's port against it
from kthw.pki.catalogue import CLUSTER_SIGNER, TRUST, leaf
from kthw.supply import components

BIN_DIR = components.BIN_DIR
UNIT_DIR = "/etc/systemd/system"
# What each node runs, one "<component>=<version>" line each: install.sh says which versions
# it moves from and to, and `doit upgrade_plan` reads what the last build carries.
VERSIONS_FILE = "/etc/k8s/versions"
ETCD_CLIENT_PORT, ETCD_PEER_PORT = 2379, 2380
CONTAINERD_SOCKET = "unix:///run/containerd/containerd.sock"

__all__ = ["APISERVER_PORT", "BIN_DIR", "CONTAINERD_SOCKET", "ETCD_CLIENT_PORT", "ETCD_PEER_PORT", "PATHS",
           "UNIT_DIR", "VERSIONS_FILE"]


def _leaf(name: str) -> str:
    row = leaf(name)
    path = row.installed_as or row.kubeconfig
    if path is None:
        raise ValueError(f"the catalogue installs the leaf {name} nowhere")
    return path


def _trust(ca: str) -> str:
    return next(t.installed_as for t in TRUST if t.ca == ca and not t.with_key)


_SIGNER = next(t.installed_as for t in TRUST if t.ca == CLUSTER_SIGNER and t.with_key)

# Node paths every template may name. Certs and kubeconfigs come from the pki stage's
# catalogue; the rest are fixed here for every stage that writes or names them.
PATHS: dict[str, str] = {
    "bin": BIN_DIR,
    "kubernetes_ca": _trust("kubernetes") + ".crt",
    "etcd_ca": _trust("etcd") + ".crt",
    "front_proxy_ca": _trust("front-proxy") + ".crt",
    "cluster_signing_cert": _SIGNER + ".crt",
    "cluster_signing_key": _SIGNER + ".key",
    **{f"{name.replace('-', '_')}_{part}": _leaf(name) + f".{ext}"
       for name in ("apiserver", "apiserver-kubelet-client", "apiserver-etcd-client", "front-proxy-client",
                    "etcd-server", "etcd-peer", "etcd-healthcheck-client", "kubelet-serving")
       for part, ext in (("cert", "crt"), ("key", "key"))},
    "controller_manager_kubeconfig": _leaf("controller-manager"),
    "scheduler_kubeconfig": _leaf("scheduler"),
    "kube_proxy_kubeconfig": _leaf("kube-proxy"),
    "kubelet_static_kubeconfig": _leaf("kubelet-client"),
    "admin_kubeconfig": _leaf("admin"),
    # secrets stage
    "sa_key": "/etc/k8s/shared/sa.key",
    "sa_pub": "/etc/k8s/shared/sa.pub",
    # the extra public key of a service-account key rotation (kthw.secrets.sa_rotation)
    "sa_next_pub": "/etc/k8s/shared/sa-next.pub",
    "sa_previous_pub": "/etc/k8s/shared/sa-previous.pub",
    "encryption_config": "/etc/k8s/kube-apiserver/encryption-config.yaml",
    "kubelet_bootstrap_kubeconfig": "/etc/k8s/kubelet/bootstrap-kubeconfig",
    # render stage
    "audit_policy": "/etc/k8s/kube-apiserver/audit-policy.yaml",
    "scheduler_config": "/etc/k8s/kube-scheduler/kube-scheduler.yaml",
    "kubelet_config": "/etc/k8s/kubelet/kubelet-config.yaml",
    "kube_proxy_config": "/etc/k8s/kube-proxy/kube-proxy-config.yaml",
    "containerd_config": "/etc/k8s/containerd/config.toml",
    # node-local API endpoint: the lines the installer keeps in /etc/hosts
    "api_hosts": "/etc/k8s/shared/apiserver-hosts",
    # created at run time by the services themselves
    "containerd_socket": CONTAINERD_SOCKET,
    "etcd_data": "/var/lib/etcd",
    "audit_log": "/var/log/kubernetes/audit.log",
    "kubelet_kubeconfig": "/var/lib/kubelet/kubeconfig",  # written by the kubelet after TLS bootstrap
    "kubelet_cert_dir": "/var/lib/kubelet/pki",
}
