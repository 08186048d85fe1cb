"""What a loaded inventory is: frozen dataclasses, the choices each field allows, and the defaults."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from kthw.roles import CONTROL_PLANE, ETCD, WORKER, Role

CA_BACKENDS = ("local", "vault")
VAULT_AUTH_METHODS = ("token", "userpass", "approle")
KUBELET_CREDENTIALS = ("tls-bootstrap", "static")
ENCRYPTION_PROVIDERS = ("secretbox", "aesgcm", "aescbc")
API_MODES = ("node-local", "external")
# kube-apiserver's secure port on every control-plane node.
APISERVER_PORT = 6443
# The default node-local name: under .internal, which ICANN keeps for private use, so no
# public DNS answers it; only the nodes' /etc/hosts blocks do.
NODE_LOCAL_NAME = "kube-apiserver.kthw.internal"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def url_host(ip) -> str:
    """An address as it appears in a URL: IPv6 in brackets."""
    ip = ipaddress.ip_address(str(ip))
    return f"[{ip}]" if ip.version == 6 else str(ip)


@dataclass(frozen=True)
class ApiEndpoint:
    """Where the nodes' kubeconfigs reach the API servers.

    ``node-local``: ``name``, which every node's /etc/hosts resolves to every control-plane
    address (nearest first), on the API servers' own port; ``dns`` and ``ip`` are then only
    further names of the API server cert. ``external``: the operator's VIP or load balancer,
    ``dns`` or ``ip`` and ``port``.
    """

    dns: str | None
    ip: IPAddress | None
    port: int
    mode: str = "node-local"
    name: str | None = None     # node-local: the name the /etc/hosts blocks resolve

    @property
    def node_local(self) -> bool:
        return self.mode == "node-local"

    @property
    def host(self) -> str:
        if self.node_local:
            if self.name is None:
                raise ValueError("a node-local API endpoint needs the name its nodes' /etc/hosts resolve")
            return self.name
        if self.dns:
            return self.dns
        return url_host(self.ip)

    @property
    def url(self) -> str:
        """The server of every kubeconfig that does not name the node's own API server."""
        return f"https://{self.host}:{self.port}"


@dataclass(frozen=True)
class Lifetimes:
    """How long each kind of cert is issued for."""

    root_ca: timedelta
    intermediate_ca: timedelta
    leaf: timedelta


@dataclass(frozen=True)
class VaultAuth:
    """How doit logs in to Vault. Secrets are only named here (an environment variable or
    a file), never held: the inventory is committed and copied around."""

    method: str = "token"
    mount: str | None = None                # auth mount path; default: the method's name
    token_file: Path | None = None          # token: else $VAULT_TOKEN, then $BAO_TOKEN
    username: str | None = None             # userpass
    password_env: str = "KTHW_VAULT_PASSWORD"
    password_file: Path | None = None
    role_id: str | None = None              # approle (an identifier, not a secret)
    role_id_file: Path | None = None
    secret_id_env: str = "KTHW_VAULT_SECRET_ID"
    secret_id_file: Path | None = None


@dataclass(frozen=True)
class VaultNaming:
    """Vault paths: one PKI mount for the root, one per intermediate ({domain}: '-' becomes '_')."""

    root_mount: str = "k8s_pki_root_ca"
    intermediate_mount: str = "k8s_pki_intermediate_ca_for_service_{domain}"
    role: str = "{cert}"
    policy: str | None = None  # the build identity's ACL policy; None: kthw-<cluster name>-build


@dataclass(frozen=True)
class CASettings:
    """The inventory's ``ca`` section: where the CA keys live."""

    backend: str
    address: str | None = None              # vault: https://host:8200
    namespace: str | None = None            # vault: X-Vault-Namespace
    ca_bundle: Path | None = None           # vault: PEM that verifies Vault's TLS cert (default: system CAs)
    auth: VaultAuth = VaultAuth()
    naming: VaultNaming = VaultNaming()


@dataclass(frozen=True)
class VendorSettings:
    """Where the vendor stage fetches from (default: upstream) and the site's own pins."""

    mirror: str | None = None           # http(s) base URL or absolute directory: replaces every upstream URL
    registry_mirror: str | None = None  # http(s)://host[:port][/prefix]: replaces every image registry
    overrides: tuple[tuple[str, str], ...] = ()  # component -> URL template / directory / image repository
    site_pins: Path | None = None       # extends or overrides the shipped pins table

    def override(self, component: str) -> str | None:
        return dict(self.overrides).get(component)


@dataclass(frozen=True)
class Node:
    """One node of the inventory."""

    name: str
    roles: frozenset[Role]
    arch: str
    zone: str | None
    ip: IPAddress
    extra_sans: tuple[str, ...] = ()
    pod_cidr: IPNetwork | None = None
    # An etcd member being added to the running cluster: its etcd starts with
    # --initial-cluster-state=existing. Removed from the inventory once the member is in.
    joining: bool = False

    @property
    def is_control_plane(self) -> bool:
        return CONTROL_PLANE in self.roles

    @property
    def is_etcd(self) -> bool:
        return ETCD in self.roles

    @property
    def is_worker(self) -> bool:
        return WORKER in self.roles


@dataclass(frozen=True)
class Inventory:
    """The validated cluster.yaml."""

    source: Path
    name: str
    kubernetes_version: str
    cluster_domain: str
    api_endpoint: ApiEndpoint
    service_cidr: IPNetwork
    pod_cidr: IPNetwork
    cluster_dns_ip: IPAddress
    ca: CASettings
    key_algorithm: str
    lifetimes: Lifetimes
    renew_before: timedelta
    kubelet_credentials: str
    encryption_provider: str
    bootstrap_token_ttl: timedelta
    nodes: tuple[Node, ...]
    vendor: VendorSettings = VendorSettings()
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    @property
    def control_plane_nodes(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.is_control_plane)

    @property
    def etcd_nodes(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.is_etcd)

    @property
    def worker_nodes(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.is_worker)

    @property
    def kubernetes_service_ip(self) -> IPAddress:
        """First address of the service range: the ``kubernetes`` Service's ClusterIP."""
        return self.service_cidr.network_address + 1


DEFAULT_LIFETIMES = Lifetimes(root_ca=timedelta(days=3650), intermediate_ca=timedelta(days=1825),
                              leaf=timedelta(days=365))
