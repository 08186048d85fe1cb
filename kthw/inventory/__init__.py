"""The cluster inventory (``cluster.yaml``): loaded, validated, frozen.

Every problem is reported as an :class:`InventoryError` naming the file, the line,
the field and the fix; nothing else escapes :func:`load`. :func:`load` also checks the
Kubernetes version against the version table and the pins (shipped and the site's), so
doit stops before any task runs; :func:`loads` checks the document alone.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import string
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

from kthw import clock
from kthw.supply import components
from kthw.supply import pins as pins_table
from kthw.supply.components import ARCH_ALIASES, ARCHES
from kthw.crypto import KEY_ALGORITHMS, LAST_CERT_DATE
from kthw.errors import InventoryError
from kthw.supply.oci import Repository
from kthw.roles import CONTROL_PLANE, ETCD, ROLES, WORKER, Role
from kthw.versions import KUBERNETES, Version, VersionError, minor_of, supported_minors, version_key
from kthw.yamldoc import Bad as _Bad, Reader as _Reader, kind as _kind, parse, read_text

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

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_DURATION = re.compile(r"^(\d+)\s*([hdwy])$")
_DURATION_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1),
                   "y": timedelta(days=365)}


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


# --- field parsers --------------------------------------------------------------


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Bad(f"expected text, got {_kind(value)}", "write a non-empty string")
    return value.strip()


def _choice(options: tuple[str, ...], aliases: dict[str, str] | None = None) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _text(value) if isinstance(value, str) else str(value)
        canon = (aliases or {}).get(text, text)
        if canon not in options:
            guess = difflib.get_close_matches(text, list(aliases or options), n=1)
            hint = f"did you mean '{guess[0]}'? " if guess else ""
            raise _Bad(f"unknown value '{text}'", f"{hint}use one of: {', '.join(aliases or options)}")
        return canon
    return parse


def _dns_name(value: Any) -> str:
    text = _text(value)
    if len(text) > 253 or not _DNS_NAME.match(text):
        raise _Bad(f"'{text}' is not a valid DNS name",
                   "use lowercase letters, digits, '-' and '.', each label 1-63 characters")
    return text


def _ip(value: Any) -> IPAddress:
    try:
        return ipaddress.ip_address(str(value).strip())
    except ValueError:
        raise _Bad(f"'{value}' is not an IP address", "write an address such as 10.0.0.11") from None


def _cidr(value: Any) -> IPNetwork:
    try:
        return ipaddress.ip_network(str(value).strip(), strict=True)
    except ValueError as err:
        raise _Bad(f"'{value}' is not a CIDR network ({err})",
                   "write a network address with its prefix, such as 10.96.0.0/12") from None


def _port(value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        raise _Bad(f"'{value}' is text, not a number", f"write the port without quotes, e.g. port: {value.strip()}")
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise _Bad(f"'{value}' is not a TCP port", "use a number from 1 to 65535, usually 6443")
    return value


def _version(value: Any) -> str:
    if isinstance(value, float):
        raise _Bad(f"{value} was read as a number", 'quote the full version, e.g. "1.34.2"')
    try:
        return str(Version.parse(str(value).strip(), patch=True))
    except VersionError as err:
        raise _Bad(err.problem, err.fix) from None


def _duration(value: Any) -> timedelta:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        count, unit = value, "d"
    else:
        match = _DURATION.match(str(value).strip()) if isinstance(value, str) else None
        if not match or int(match.group(1)) == 0:
            raise _Bad(f"'{value}' is not a duration", "write a positive number of days, or e.g. 8760h, 365d, 52w, 1y")
        count, unit = int(match.group(1)), match.group(2)
    try:
        return count * _DURATION_UNITS[unit]
    except OverflowError:
        raise _Bad(f"'{value}' is far too long (past the year 9999)", "write e.g. 3650d for ten years") from None


def _until_last_date(reader: _Reader, key: str, duration: timedelta, what: str) -> None:
    """A duration that starts now must end by the last date a certificate or token can carry."""
    room = LAST_CERT_DATE - clock.system_now()
    if duration > room:
        raise reader.fail(key, f"{what} of {duration.days} days from today would end after {LAST_CERT_DATE:%Y-%m-%d}, "
                          "the last date a certificate can carry", f"use at most {room.days}d (e.g. 3650d)")


def _node_name(value: Any) -> str:
    text = _text(value)
    if len(text) > 63:
        raise _Bad(f"node name '{text}' is longer than 63 characters ({len(text)})", "use the node's short hostname")
    return _dns_name(text)


def _san(value: Any) -> str:
    text = str(value).strip() if isinstance(value, (str, int)) else ""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if text.startswith("*."):
        _dns_name(text[2:])
        return text
    return _dns_name(text)


def _inside(inner: IPNetwork, outer: IPNetwork) -> bool:
    return inner.version == outer.version and inner.subnet_of(outer)


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"expected true or false, got {_kind(value)}", "write joining: true, or leave the key out")
    return value


def _list_of(parse: Callable[[Any], Any]) -> Callable[[Any], tuple]:
    def parse_list(value: Any) -> tuple:
        if not isinstance(value, list):
            raise _Bad(f"expected a list, got {_kind(value)}", "write a YAML list, e.g. [a, b]")
        return tuple(parse(item) for item in value)
    return parse_list


# --- the schema ---------------------------------------------------------------

TOP_KEYS = ("name", "kubernetes_version", "cluster_domain", "api_endpoint", "service_cidr", "pod_cidr",
            "cluster_dns_ip", "ca", "key_algorithm", "lifetimes", "renew_before", "kubelet_credentials",
            "encryption_provider", "bootstrap_token_ttl", "nodes", "vendor")
NODE_KEYS = ("name", "roles", "arch", "zone", "ip", "extra_sans", "pod_cidr", "joining")

DEFAULT_LIFETIMES = Lifetimes(root_ca=timedelta(days=3650), intermediate_ca=timedelta(days=1825),
                              leaf=timedelta(days=365))


def load(path: str | Path, *, pinning: str | None = None) -> Inventory:
    """Read and validate an inventory file, its Kubernetes version included.

    ``pinning`` is a version ``doit pin`` is adding: the inventory may name it before it is pinned.
    """
    path = Path(path)
    text = read_text(path, "the inventory", "check the path given with 'doit inventory=PATH' or KTHW_INVENTORY")
    top = _top(text, str(path))
    inventory = _build(top)
    _check_release(top, inventory, pinning)
    for warning in inventory.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return inventory


def loads(text: str, source: str = "cluster.yaml") -> Inventory:
    """Validate inventory text; ``source`` names it in messages. The version is checked for
    its form only: see :func:`load`."""
    return _build(_top(text, source))


def _top(text: str, source: str) -> _Reader:
    document = parse(text, source)
    if document is None:
        raise InventoryError(source, None, "", "the inventory is empty",
                             "start from the bundled example cluster.yaml, or check the path given with "
                             "'doit inventory=PATH' or KTHW_INVENTORY")
    return _Reader(source, document, "", 1)


def _check_release(top: _Reader, inv: Inventory, pinning: str | None) -> None:
    """The version must be in the version table (:mod:`kthw.versions`) and pinned, shipped or by the site."""
    version = inv.kubernetes_version
    pins = pins_table.load(inv.vendor.site_pins)  # a bad site pins file is reported with its own line
    pinned = sorted(pins.releases, key=version_key)
    minor = minor_of(version)
    if minor not in KUBERNETES:
        usable = [v for v in pinned if minor_of(v) in KUBERNETES]
        raise top.fail("kubernetes_version", f"Kubernetes {minor[0]}.{minor[1]} is not supported (supported "
                       f"minors: {supported_minors()})", "set kubernetes_version to a release of a supported "
                       f"minor; pinned now: {', '.join(usable) or 'none'}")
    if version not in pins.releases and version != pinning:
        raise top.fail("kubernetes_version", f"Kubernetes {version} is not pinned (pinned versions: "
                       f"{', '.join(pinned) or 'none'}; pins read from {', '.join(map(str, pins.sources))})",
                       f"on the connected workstation run '{pins.pin_command(version)}' to fetch its published "
                       "checksums into the pins (the site pins file when the inventory names one), or set "
                       "kubernetes_version to a pinned version")


def _build(top: _Reader) -> Inventory:
    top.check_keys(TOP_KEYS)
    name = top.get("name", _dns_name)
    version = top.get("kubernetes_version", _version)
    domain = top.get("cluster_domain", _dns_name, "cluster.local")

    endpoint = _api_endpoint(top, domain)

    service_cidr = top.get("service_cidr", _cidr)
    pod_cidr = top.get("pod_cidr", _cidr)
    if pod_cidr.version != service_cidr.version:
        raise top.fail("pod_cidr", f"pod CIDR {pod_cidr} is IPv{pod_cidr.version} but service CIDR {service_cidr} "
                       f"is IPv{service_cidr.version}", "use networks of one address family (dual-stack clusters "
                       "are not supported)")
    if service_cidr.overlaps(pod_cidr):
        raise top.fail("pod_cidr", f"pod CIDR {pod_cidr} overlaps service CIDR {service_cidr}",
                       "choose ranges that do not overlap, e.g. service 10.96.0.0/12 and pod 10.244.0.0/16")
    if service_cidr.version == 4 and service_cidr.prefixlen < 12:
        raise top.fail("service_cidr", f"service CIDR {service_cidr} is larger than kube-apiserver accepts",
                       "use a prefix of /12 or longer (kube-apiserver rejects larger IPv4 ranges)")
    if service_cidr.num_addresses < 4:
        raise top.fail("service_cidr", f"service CIDR {service_cidr} is too small", "use e.g. a /16 or a /12")
    dns_ip = top.get("cluster_dns_ip", _ip, None)
    if dns_ip is None:
        dns_ip = service_cidr.network_address + 10
    if dns_ip not in service_cidr:
        raise top.fail("cluster_dns_ip", f"cluster DNS IP {dns_ip} is outside the service CIDR {service_cidr}",
                       f"pick an address inside {service_cidr}, e.g. {service_cidr.network_address + 10}")
    if dns_ip in (service_cidr.network_address, service_cidr.network_address + 1, service_cidr.broadcast_address):
        raise top.fail("cluster_dns_ip", f"cluster DNS IP {dns_ip} is reserved (network, broadcast or the "
                       "'kubernetes' Service address)", f"use e.g. {service_cidr.network_address + 10}")

    ca_settings = _ca(top)

    life = top.sub("lifetimes")
    life.check_keys(("root_ca", "intermediate_ca", "leaf"))
    lifetimes = Lifetimes(root_ca=life.get("root_ca", _duration, DEFAULT_LIFETIMES.root_ca),
                          intermediate_ca=life.get("intermediate_ca", _duration, DEFAULT_LIFETIMES.intermediate_ca),
                          leaf=life.get("leaf", _duration, DEFAULT_LIFETIMES.leaf))
    if not lifetimes.leaf < lifetimes.intermediate_ca <= lifetimes.root_ca:
        culprit = "leaf" if lifetimes.leaf >= lifetimes.intermediate_ca else "intermediate_ca"
        raise life.fail(culprit, "lifetimes must grow up the chain: leaf < intermediate_ca <= root_ca",
                        "a CA must outlive the certs it signs; e.g. leaf 365d, intermediate_ca 1825d, root_ca 3650d")
    # The root is the longest; every cert below it ends by the root's end.
    _until_last_date(life, "root_ca", lifetimes.root_ca, "a root CA lifetime")
    renew_before = top.get("renew_before", _duration, timedelta(days=30))
    if renew_before >= lifetimes.leaf:
        raise top.fail("renew_before", f"the renewal window ({renew_before.days} days) is not shorter than "
                       f"the leaf lifetime ({lifetimes.leaf.days} days): every run would re-issue every cert",
                       "use a window well under the leaf lifetime, e.g. 30d")

    token_ttl = top.get("bootstrap_token_ttl", _duration, timedelta(days=14))
    _until_last_date(top, "bootstrap_token_ttl", token_ttl, "a bootstrap token lifetime")

    nodes = _nodes(top, service_cidr, pod_cidr)
    _check_node_local_name(top, endpoint, nodes)
    warnings = []
    etcd_count = sum(1 for n in nodes if n.is_etcd)
    if etcd_count % 2 == 0:
        warnings.append(f"{top.source}:{top.where('nodes')}: nodes: {etcd_count} etcd members: an even count "
                        f"tolerates no more failures than {etcd_count - 1}; use an odd number (3 or 5)")

    return Inventory(
        source=Path(top.source), name=name, kubernetes_version=version, cluster_domain=domain,
        api_endpoint=endpoint, service_cidr=service_cidr, pod_cidr=pod_cidr, cluster_dns_ip=dns_ip,
        ca=ca_settings, key_algorithm=top.get("key_algorithm", _choice(KEY_ALGORITHMS), "ecdsa-p256"),
        lifetimes=lifetimes, renew_before=renew_before,
        kubelet_credentials=top.get("kubelet_credentials", _choice(KUBELET_CREDENTIALS), "tls-bootstrap"),
        encryption_provider=top.get("encryption_provider", _choice(ENCRYPTION_PROVIDERS), "secretbox"),
        bootstrap_token_ttl=token_ttl,
        nodes=nodes, vendor=_vendor(top), warnings=tuple(warnings))


API_ENDPOINT_KEYS = ("mode", "name", "dns", "ip", "port")


def _api_endpoint(top: _Reader, domain: str) -> ApiEndpoint:
    """The `api_endpoint:` section (absent: node-local with the default name)."""
    api = top.sub("api_endpoint")
    api.check_keys(API_ENDPOINT_KEYS)
    mode = api.get("mode", _choice(API_MODES), "node-local")
    endpoint = ApiEndpoint(dns=api.get("dns", _dns_name, None), ip=api.get("ip", _ip, None),
                           port=api.get("port", _port, APISERVER_PORT), mode=mode,
                           name=api.get("name", _dns_name, NODE_LOCAL_NAME) if mode == "node-local" else None)
    if mode == "external":
        if "name" in api.mapping:
            raise api.fail("name", "'name' is the node-local mode's name, but the mode is 'external'",
                           "remove 'name' (the nodes then use 'dns' or 'ip'), or set 'mode: node-local'")
        if endpoint.dns is None and endpoint.ip is None:
            raise top.fail("api_endpoint", "the external API endpoint has neither 'dns' nor 'ip'",
                           "give the address of your VIP or load balancer, e.g. api_endpoint: {mode: external, "
                           "dns: k8s.example.lan, ip: 10.0.0.10, port: 6443}; or use 'mode: node-local', "
                           "which needs neither")
        return endpoint
    if endpoint.port != APISERVER_PORT:
        raise api.fail("port", f"in node-local mode the nodes reach each API server directly, on its port "
                       f"{APISERVER_PORT}, not {endpoint.port}",
                       f"remove 'port' (or set {APISERVER_PORT}); for a load balancer on port {endpoint.port} "
                       "set 'mode: external'")
    name = endpoint.name
    if name == endpoint.dns:
        raise api.fail("name", f"'{name}' is both the node-local name and 'dns'",
                       "the node-local name must be one only the nodes' /etc/hosts answers, so that no DNS "
                       f"answer can send a node to a single API server: remove 'name' (default {NODE_LOCAL_NAME})")
    for reserved, answered_by in (("localhost", "every machine itself"), (domain, "the cluster DNS")):
        if name == reserved or name.endswith("." + reserved):
            raise api.fail("name", f"'{name}' is a name {answered_by} answers",
                           f"pick a name under a domain no one serves, e.g. the default {NODE_LOCAL_NAME}")
    return endpoint


def _check_node_local_name(top: _Reader, endpoint: ApiEndpoint, nodes: tuple[Node, ...]) -> None:
    """The node-local name must not also name one machine."""
    if not endpoint.node_local:
        return
    for node in nodes:
        if endpoint.name == node.name or endpoint.name in node.extra_sans:
            raise top.sub("api_endpoint").fail("name", f"'{endpoint.name}' also names the node '{node.name}'",
                                               f"pick a name of its own, e.g. the default {NODE_LOCAL_NAME}")


CA_KEYS = ("backend", "address", "namespace", "ca_bundle", "auth", "naming")
VAULT_AUTH_KEYS = {"token": ("method", "mount", "token_file"),
                   "userpass": ("method", "mount", "username", "password_env", "password_file"),
                   "approle": ("method", "mount", "role_id", "role_id_file", "secret_id_env", "secret_id_file")}
_SECRETS_IN_INVENTORY = {"token": "token_file (or $VAULT_TOKEN / $BAO_TOKEN)",
                         "password": "password_env or password_file", "secret_id": "secret_id_env or secret_id_file"}
_VAULT_PATH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _ca(top: _Reader) -> CASettings:
    """The `ca:` section; with the vault backend, where Vault is and how to log in."""
    base = Path(top.source).parent
    reader = top.sub("ca")
    reader.check_keys(CA_KEYS)
    backend = reader.get("backend", _choice(CA_BACKENDS), "local")
    if backend != "vault":
        for key in CA_KEYS[1:]:
            if key in reader.mapping:
                raise reader.fail(key, f"'{key}' is a Vault setting but the backend is '{backend}'",
                                  f"set 'backend: vault', or remove '{key}'")
        return CASettings(backend=backend)

    def url(value: Any) -> str:
        text = _text(value).rstrip("/")
        if not re.match(r"^https?://[^/\s?#]+$", text):
            raise _Bad(f"'{text}' is not a Vault address",
                       "write scheme, host and port, e.g. https://vault.example.lan:8200")
        return text

    def file(value: Any) -> Path:
        return (base / Path(_text(value)).expanduser()).resolve()

    def env_name(value: Any) -> str:
        text = _text(value)
        if not _ENV_NAME.match(text):
            raise _Bad(f"'{text}' is not an environment variable name",
                       "name the variable that holds the secret, e.g. KTHW_VAULT_PASSWORD (the secret itself never "
                       "goes in the inventory)")
        return text

    def vault_path(value: Any) -> str:
        text = _text(value).strip("/")
        if not _VAULT_PATH.match(text):
            raise _Bad(f"'{text}' is not a Vault path", "use letters, digits, '_', '-' and '.', parts joined by '/'")
        return text

    def pattern(placeholder: str) -> Callable[[Any], str]:
        def parse_pattern(value: Any) -> str:
            text = _text(value)
            if "{" + placeholder + "}" not in text:
                raise _Bad(f"'{text}' lacks the {{{placeholder}}} placeholder",
                           f"every trust domain / cert class needs its own name, e.g. 'k8s_pki_{{{placeholder}}}'")
            try:
                vault_path(text.format(**{placeholder: "x"}))
            except (KeyError, IndexError, ValueError):
                raise _Bad(f"'{text}' has a placeholder other than {{{placeholder}}}",
                           f"only {{{placeholder}}} is replaced") from None
            return text
        return parse_pattern

    auth_value = reader.mapping.get("auth")
    if isinstance(auth_value, str):  # `auth: token` is short for `auth: {method: token}`
        auth_reader = _Reader(top.source, {"method": auth_value}, "ca.auth", reader.where("auth"))
    else:
        auth_reader = reader.sub("auth")
    for key, instead in _SECRETS_IN_INVENTORY.items():
        if key in auth_reader.mapping:
            # Never echo the value: it is a secret.
            raise auth_reader.fail(key, "a secret does not belong in the inventory (it is committed and copied "
                                   "to other machines)", f"remove '{key}' and use {instead}")
    method = auth_reader.get("method", _choice(VAULT_AUTH_METHODS), "token")
    auth_reader.check_keys(VAULT_AUTH_KEYS[method])
    auth = VaultAuth(
        method=method, mount=auth_reader.get("mount", vault_path, None),
        token_file=auth_reader.get("token_file", file, None),
        username=auth_reader.get("username", _text, None),
        password_env=auth_reader.get("password_env", env_name, VaultAuth.password_env),
        password_file=auth_reader.get("password_file", file, None),
        role_id=auth_reader.get("role_id", _text, None), role_id_file=auth_reader.get("role_id_file", file, None),
        secret_id_env=auth_reader.get("secret_id_env", env_name, VaultAuth.secret_id_env),
        secret_id_file=auth_reader.get("secret_id_file", file, None))
    if method == "userpass" and auth.username is None:
        raise auth_reader.fail("username", "userpass login needs a username", "add 'username: <Vault user>'")
    if method == "approle" and (auth.role_id is None) == (auth.role_id_file is None):
        raise auth_reader.fail("role_id", "approle login needs exactly one of role_id and role_id_file",
                               "add 'role_id: <id>' or 'role_id_file: <path>'")

    naming_reader = reader.sub("naming")
    naming_reader.check_keys(("root_mount", "intermediate_mount", "role", "policy"))
    naming = VaultNaming(root_mount=naming_reader.get("root_mount", vault_path, VaultNaming.root_mount),
                         intermediate_mount=naming_reader.get("intermediate_mount", pattern("domain"),
                                                              VaultNaming.intermediate_mount),
                         role=naming_reader.get("role", pattern("cert"), VaultNaming.role),
                         policy=naming_reader.get("policy", vault_path, None))
    return CASettings(backend=backend, address=reader.get("address", url),
                      namespace=reader.get("namespace", vault_path, None),
                      ca_bundle=reader.get("ca_bundle", file, None), auth=auth, naming=naming)


VENDOR_KEYS = ("mirror", "registry_mirror", "overrides", "site_pins")


def _vendor(top: _Reader) -> VendorSettings:
    """The `vendor:` section; relative paths are relative to the inventory file."""
    base = Path(top.source).parent
    reader = top.sub("vendor")
    reader.check_keys(VENDOR_KEYS)

    def location(value: Any) -> str:
        text = _text(value)
        if "://" not in text:
            return str((base / Path(text).expanduser()).resolve())
        if not re.match(r"^https?://[^/\s?#]+(/[^\s?#]*)?$", text):
            raise _Bad(f"'{text}' is neither an http(s) URL nor a directory",
                       "write e.g. https://mirror.example.lan/kthw or /srv/kthw-mirror")
        return text.rstrip("/")

    def folder_template(value: Any) -> str:
        text = location(value)
        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
        except ValueError as err:
            raise _Bad(f"'{text}' has a broken placeholder ({err})", "write placeholders as {version} or {arch}") from None
        if fields - {"version", "arch"}:
            raise _Bad(f"unknown placeholder {{{sorted(fields - {'version', 'arch'})[0]}}}",
                       "only {version} and {arch} are replaced")
        return text

    def repository(value: Any) -> str:
        try:
            return str(Repository.parse(_text(value)))
        except ValueError as err:
            raise _Bad(str(err), "write the repository without tag or digest, e.g. "
                       "https://registry.example.lan/k8s/pause (http:// only for a plain-HTTP registry)") from None

    def registry(value: Any) -> str:
        text = location(value)
        if not text.startswith(("http://", "https://")):
            raise _Bad(f"'{text}' is not an http(s) URL", "write e.g. https://registry.example.lan or "
                       "http://127.0.0.1:5000 (a registry, not a directory)")
        return text

    def pins_file(value: Any) -> Path:
        if "://" in _text(value):
            raise _Bad(f"'{value}' is a URL", "name a local YAML file (relative to the inventory), e.g. site-pins.yaml")
        return Path(location(value))

    over = reader.sub("overrides")
    over.check_keys(components.ALL_NAMES)
    overrides = tuple((name, over.get(name, repository if name in components.IMAGES else folder_template))
                      for name in over.mapping)
    return VendorSettings(mirror=reader.get("mirror", location, None),
                          registry_mirror=reader.get("registry_mirror", registry, None),
                          overrides=overrides,
                          site_pins=reader.get("site_pins", pins_file, None))


def _nodes(top: _Reader, service_cidr: IPNetwork, pod_cidr: IPNetwork) -> tuple[Node, ...]:
    raw = top.get("nodes", lambda v: v)
    if not isinstance(raw, list) or not raw:
        raise top.fail("nodes", "expected a non-empty list of nodes", "list each machine under 'nodes:'")
    lines = getattr(raw, "item_lines", [None] * len(raw))
    nodes: list[Node] = []
    readers: list[_Reader] = []
    seen_names: dict[str, int | None] = {}
    seen_ips: dict[IPAddress, str] = {}
    for index, (item, line) in enumerate(zip(raw, lines)):
        if item is None:
            raise InventoryError(top.source, line, f"nodes[{index}]", "an empty entry",
                                 "describe the node, e.g. {name: node-az1, roles: [worker], arch: amd64, "
                                 "ip: 10.0.1.21}, or remove the '-' line")
        reader = _Reader(top.source, item, f"nodes[{index}]", line)
        reader.check_keys(NODE_KEYS)
        name = reader.get("name", _node_name)
        roles = reader.get("roles", _list_of(_choice(ROLES)))
        if not roles:
            raise reader.fail("roles", "a node needs at least one role", f"use any of: {', '.join(ROLES)}")
        node = Node(name=name, roles=frozenset(roles), arch=reader.get("arch", _choice(ARCHES, ARCH_ALIASES)),
                    zone=reader.get("zone", _text, None), ip=reader.get("ip", _ip),
                    extra_sans=reader.get("extra_sans", _list_of(_san), ()),
                    pod_cidr=reader.get("pod_cidr", _cidr, None), joining=reader.get("joining", _flag, False))
        if node.ip.version != service_cidr.version:
            raise reader.fail("ip", f"node IP {node.ip} is IPv{node.ip.version} but the cluster is "
                              f"IPv{service_cidr.version}-only (service_cidr {service_cidr}, pod_cidr {pod_cidr})",
                              f"use the node's IPv{service_cidr.version} address: the kubelet, etcd and the API "
                              "server advertise it")
        if name in seen_names:
            raise reader.fail("name", f"node name '{name}' is used twice",
                              "give every node its own name (it becomes the node's identity in its certs)")
        if node.ip in seen_ips:
            raise reader.fail("ip", f"IP {node.ip} is already used by node '{seen_ips[node.ip]}'",
                              "give every node its own address")
        for network, what in ((service_cidr, "service_cidr"), (pod_cidr, "pod_cidr")):
            if node.ip in network:
                raise reader.fail("ip", f"node IP {node.ip} lies inside {what} {network}",
                                  "node addresses must be outside the cluster's virtual ranges")
        if node.pod_cidr is not None and not _inside(node.pod_cidr, pod_cidr):
            raise reader.fail("pod_cidr", f"node pod CIDR {node.pod_cidr} is not inside the cluster pod CIDR {pod_cidr}",
                              f"pick a subnet of {pod_cidr}")
        for other in nodes:
            if node.pod_cidr and other.pod_cidr and node.pod_cidr.overlaps(other.pod_cidr):
                raise reader.fail("pod_cidr", f"node pod CIDR {node.pod_cidr} overlaps that of '{other.name}'",
                                  "give each node its own subnet of the pod CIDR")
        seen_names[name] = line
        seen_ips[node.ip] = name
        nodes.append(node)
        readers.append(reader)

    if not any(n.is_control_plane for n in nodes):
        raise top.fail("nodes", f"no node has the '{CONTROL_PLANE}' role",
                       f"add '{CONTROL_PLANE}' to the roles of at least one node")
    if not any(n.is_etcd for n in nodes):
        raise top.fail("nodes", "no node has the 'etcd' role", "add 'etcd' to the roles of one or three nodes")
    _check_joining(top, nodes, readers)
    workers = [(n, reader) for n, reader in zip(nodes, readers) if n.is_worker]
    if any(n.pod_cidr for n, _ in workers):
        for node, reader in workers:
            if node.pod_cidr is None:
                raise reader.fail("name", f"worker '{node.name}' has no pod_cidr while other workers have one",
                                  "give every worker a pod_cidr, or none (the controller-manager then allocates them)")
    return tuple(nodes)


def _check_joining(top: _Reader, nodes: list[Node], readers: list[_Reader]) -> None:
    """`joining: true` marks the one etcd member being added to a running cluster."""
    joining = [(n, reader) for n, reader in zip(nodes, readers) if n.joining]
    for node, reader in joining:
        if not node.is_etcd:
            raise reader.fail("joining", f"node '{node.name}' is not an etcd member, and only etcd members join "
                              "a running cluster this way", "remove 'joining', or add 'etcd' to its roles")
    if len(joining) > 1:
        node, reader = joining[1]
        raise reader.fail("joining", f"'{joining[0][0].name}' and '{node.name}' are both joining: etcd adds one "
                          "member at a time", f"add '{joining[0][0].name}' first, remove its 'joining', then mark "
                          f"'{node.name}'")
    if joining and not any(n.is_etcd and not n.joining for n in nodes):
        node, reader = joining[0]
        raise reader.fail("joining", f"'{node.name}' is joining, but no other etcd member is running to join",
                          "remove 'joining': a new cluster starts every member at once")
