"""The certificate catalogue: every cert of the cluster, described as data.

``CAS`` is the CA hierarchy; ``LEAVES`` is one row per kind of leaf cert; ``TRUST``
says which CA certs (and the one CA key) each node carries. :func:`leaves_for` turns
the rows into concrete :class:`~kthw.crypto.CertSpec` for one node of an inventory.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from kthw.crypto import CertSpec
from kthw.inventory import APISERVER_PORT, Inventory, Node
from kthw.roles import CONTROL_PLANE, ETCD, WORKER, Role

# How a control-plane node's own components (server="local" kubeconfigs, apply.sh) reach
# its API server, on kube-apiserver's secure port (APISERVER_PORT).
LOCAL_APISERVER_URL = f"https://127.0.0.1:{APISERVER_PORT}"
SERVER, CLIENT = frozenset({"server"}), frozenset({"client"})
SERVER_CLIENT = SERVER | CLIENT

ROOT = "root"
INTERMEDIATES = ("kubernetes", "etcd", "front-proxy")
# The CA that kube-controller-manager signs kubelet CSRs with. Its key therefore sits
# on every control-plane node; it is the `kubernetes` intermediate, never the root.
CLUSTER_SIGNER = "kubernetes"
# With the vault backend no CA key can leave Vault, so the cluster signer is a CA of its
# own: its key is made locally and the Vault root signs its CSR (see kthw.pki.vault.client). Kubelet
# client certs it signs must verify against the API server's --client-ca-file, so its cert
# joins the kubernetes trust bundle (Trust.with_signer).
VAULT_CLUSTER_SIGNER = "kubelet-signer"


def cluster_signer(backend: str) -> str:
    return VAULT_CLUSTER_SIGNER if backend == "vault" else CLUSTER_SIGNER


def key_in_vault(ca: str, backend: str) -> bool:
    """With the vault backend every CA key stays in Vault, except the cluster signer's."""
    return backend == "vault" and ca != cluster_signer(backend)


# A cert's subject alternative names for one node: (DNS names, IP addresses).
SanRule = Callable[[Inventory, Node], tuple[list[str], list[str]]]


def _apiserver_sans(inv: Inventory, node: Node) -> tuple[list[str], list[str]]:
    dns = [node.name, "kubernetes", "kubernetes.default", "kubernetes.default.svc",
           f"kubernetes.default.svc.{inv.cluster_domain}", "localhost"]
    ips = [str(inv.kubernetes_service_ip), str(node.ip), "127.0.0.1"]
    if inv.api_endpoint.node_local:
        dns.append(inv.api_endpoint.host)  # the node-local name
    if inv.api_endpoint.dns:
        dns.append(inv.api_endpoint.dns)
    if inv.api_endpoint.ip:
        ips.append(str(inv.api_endpoint.ip))
    return dns, ips


def _etcd_sans(inv: Inventory, node: Node) -> tuple[list[str], list[str]]:
    return [node.name, "localhost"], [str(node.ip), "127.0.0.1", "::1"]


def _node_sans(inv: Inventory, node: Node) -> tuple[list[str], list[str]]:
    return [node.name], [str(node.ip)]


@dataclass(frozen=True, kw_only=True)
class Leaf:
    """One row of the catalogue: a kind of leaf cert."""

    name: str
    roles: frozenset[Role]          # a node gets this cert if it has any of these roles
    issuer: str
    common_name: str                # "{node}" is replaced by the node name
    organizations: tuple[str, ...] = ()
    usages: frozenset[str]
    sans: SanRule | None = None     # None: no SANs (a client cert), and no extra_sans either
    installed_as: str | None = None  # "<path>" -> <path>.crt/.key on the node (service certs)
    kubeconfig: str | None = None    # node path of the kubeconfig that embeds it instead
    server: str = "endpoint"         # kubeconfig server: "endpoint" (API endpoint) or "local"
    when: str | None = None          # "static-kubelet": only with kubelet_credentials: static

    @property
    def node_files(self) -> list[str]:
        """The node paths this cert is written to: cert and key, or the kubeconfig."""
        return ([self.installed_as + ".crt", self.installed_as + ".key"] if self.installed_as else []) + (
            [self.kubeconfig] if self.kubeconfig else [])


LEAVES: tuple[Leaf, ...] = (
    Leaf(name="apiserver", roles=frozenset({CONTROL_PLANE}), issuer="kubernetes", common_name="kube-apiserver",
         usages=SERVER, sans=_apiserver_sans, installed_as="/etc/k8s/kube-apiserver/apiserver"),
    # Its rights come from a ClusterRoleBinding to system:kubelet-api-admin (secrets stage),
    # not from system:masters.
    Leaf(name="apiserver-kubelet-client", roles=frozenset({CONTROL_PLANE}), issuer="kubernetes",
         common_name="kube-apiserver-kubelet-client", usages=CLIENT,
         installed_as="/etc/k8s/kube-apiserver/apiserver-kubelet-client"),
    Leaf(name="apiserver-etcd-client", roles=frozenset({CONTROL_PLANE}), issuer="etcd",
         common_name="kube-apiserver-etcd-client", usages=CLIENT,
         installed_as="/etc/k8s/kube-apiserver/apiserver-etcd-client"),
    Leaf(name="front-proxy-client", roles=frozenset({CONTROL_PLANE}), issuer="front-proxy",
         common_name="front-proxy-client", usages=CLIENT, installed_as="/etc/k8s/kube-apiserver/front-proxy-client"),
    Leaf(name="etcd-server", roles=frozenset({ETCD}), issuer="etcd", common_name="{node}", usages=SERVER_CLIENT,
         sans=_etcd_sans, installed_as="/etc/k8s/etcd/server"),
    Leaf(name="etcd-peer", roles=frozenset({ETCD}), issuer="etcd", common_name="{node}", usages=SERVER_CLIENT,
         sans=_etcd_sans, installed_as="/etc/k8s/etcd/peer"),
    Leaf(name="etcd-healthcheck-client", roles=frozenset({ETCD}), issuer="etcd",
         common_name="kube-etcd-healthcheck-client", usages=CLIENT, installed_as="/etc/k8s/etcd/healthcheck-client"),
    Leaf(name="admin", roles=frozenset({CONTROL_PLANE}), issuer="kubernetes", common_name="kubernetes-admin",
         organizations=("system:masters",), usages=CLIENT, kubeconfig="/etc/k8s/shared/admin.kubeconfig"),
    Leaf(name="controller-manager", roles=frozenset({CONTROL_PLANE}), issuer="kubernetes",
         common_name="system:kube-controller-manager", usages=CLIENT,
         kubeconfig="/etc/k8s/kube-controller-manager/kubeconfig", server="local"),
    Leaf(name="scheduler", roles=frozenset({CONTROL_PLANE}), issuer="kubernetes", common_name="system:kube-scheduler",
         usages=CLIENT, kubeconfig="/etc/k8s/kube-scheduler/kubeconfig", server="local"),
    Leaf(name="kube-proxy", roles=frozenset({WORKER}), issuer="kubernetes", common_name="system:kube-proxy",
         organizations=("system:node-proxier",), usages=CLIENT, kubeconfig="/etc/k8s/kube-proxy/kubeconfig"),
    Leaf(name="kubelet-client", roles=frozenset({WORKER}), issuer="kubernetes", common_name="system:node:{node}",
         organizations=("system:nodes",), usages=CLIENT, kubeconfig="/etc/k8s/kubelet/kubeconfig",
         when="static-kubelet"),
    # Pre-issued even with TLS bootstrap: kube-controller-manager never auto-approves
    # serving-cert CSRs, so a bootstrapped serving cert would wait for a human.
    Leaf(name="kubelet-serving", roles=frozenset({WORKER}), issuer="kubernetes", common_name="system:node:{node}",
         organizations=("system:nodes",), usages=SERVER, sans=_node_sans,
         installed_as="/etc/k8s/kubelet/kubelet-serving"),
)
_LEAF_BY_NAME = {row.name: row for row in LEAVES}


def leaf(name: str) -> Leaf:
    """The catalogue row called ``name``."""
    return _LEAF_BY_NAME[name]


@dataclass(frozen=True)
class Trust:
    """A CA cert (and, for the cluster signer, its key) placed on nodes with these roles."""

    ca: str
    roles: frozenset[Role]
    installed_as: str
    with_key: bool = False      # the row of the cluster signer: the backend's signer CA, cert and key
    with_signer: bool = False   # the cluster signer's cert joins this bundle when it is a CA of its own

    def cas(self, backend: str) -> tuple[str, ...]:
        """The CA certs this file holds, in order, for a CA backend."""
        signer = cluster_signer(backend)
        if self.with_key:
            return (signer,)
        return (self.ca, signer) if self.with_signer and signer != self.ca else (self.ca,)

    @property
    def node_files(self) -> list[str]:
        return [self.installed_as + ".crt"] + ([self.installed_as + ".key"] if self.with_key else [])


TRUST: tuple[Trust, ...] = (
    Trust("kubernetes", frozenset({CONTROL_PLANE, WORKER}), "/etc/k8s/shared/kubernetes-ca", with_signer=True),
    Trust("etcd", frozenset({CONTROL_PLANE, ETCD}), "/etc/k8s/shared/etcd-ca"),
    Trust("front-proxy", frozenset({CONTROL_PLANE}), "/etc/k8s/shared/front-proxy-ca"),
    Trust(CLUSTER_SIGNER, frozenset({CONTROL_PLANE}), "/etc/k8s/kube-controller-manager/cluster-signing-ca",
          with_key=True),
)


def ca_specs(inv: Inventory) -> dict[str, CertSpec]:
    """The CA hierarchy: the root, then one intermediate per trust domain (and the cluster
    signer when the backend makes it a CA of its own)."""
    specs = {ROOT: CertSpec(ROOT, f"{inv.name}-root-ca", (), frozenset({"ca"}), (), (),
                            inv.lifetimes.root_ca, inv.key_algorithm, path_length=1)}
    for name in (*INTERMEDIATES, cluster_signer(inv.ca.backend)):
        specs[name] = CertSpec(name, f"{inv.name}-{name}-ca", (), frozenset({"ca"}), (), (),
                               inv.lifetimes.intermediate_ca, inv.key_algorithm, path_length=0)
    return specs


@dataclass(frozen=True)
class NodeCert:
    """A catalogue row resolved for one node."""

    row: Leaf
    spec: CertSpec


def applies(roles: frozenset[Role], node: Node) -> bool:
    return bool(roles & node.roles)


def node_paths() -> list[str]:
    """Every node path the pki stage may write on some node: leaf certs and keys,
    kubeconfigs, trust bundles and the cluster-signing key."""
    leaf_paths = {path for leaf_row in LEAVES for path in leaf_row.node_files}
    return sorted(leaf_paths | {path for trust_row in TRUST for path in trust_row.node_files})


def node_files(inv: Inventory, node: Node) -> list[str]:
    """The node paths the pki stage writes for ``node``."""
    return [path for row in [item.row for item in leaves_for(inv, node)] + list(trust_for(node))
            for path in row.node_files]


def leaves_for(inv: Inventory, node: Node) -> tuple[NodeCert, ...]:
    result = []
    for row in LEAVES:
        if not applies(row.roles, node):
            continue
        if row.when == "static-kubelet" and inv.kubelet_credentials != "static":
            continue
        dns, ips = row.sans(inv, node) if row.sans else ([], [])
        if row.sans:
            for san in node.extra_sans:
                (ips if _is_ip(san) else dns).append(san)
        spec = CertSpec(
            name=row.name,
            common_name=row.common_name.format(node=node.name),
            organizations=row.organizations,
            usages=row.usages,
            dns_names=tuple(dict.fromkeys(dns)),
            ip_addresses=tuple(dict.fromkeys(ips)),
            lifetime=inv.lifetimes.leaf,
            key_algorithm=inv.key_algorithm,
        )
        result.append(NodeCert(row, spec))
    return tuple(result)


def trust_for(node: Node) -> tuple[Trust, ...]:
    return tuple(t for t in TRUST if applies(t.roles, node))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
