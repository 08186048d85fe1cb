"""Reading an inventory: the document, its sections, and the checks across sections."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from kthw.crypto import KEY_ALGORITHMS
from kthw.errors import InventoryError, warn
from kthw.inventory.model import (
    DEFAULT_LIFETIMES,
    ENCRYPTION_PROVIDERS,
    KUBELET_CREDENTIALS,
    Inventory,
    IPAddress,
    IPNetwork,
    Lifetimes,
    Node,
)
from kthw.inventory.sections import _api_endpoint, _ca, _check_node_local_name, _nodes, _vendor
from kthw.inventory.values import _choice, _cidr, _dns_name, _duration, _ip, _until_last_date, _version
from kthw.supply import pins as pins_table
from kthw.versions import KUBERNETES, minor_of, supported_minors, version_key
from kthw.yamldoc import Reader, parse, read_text

TOP_KEYS = ("name", "kubernetes_version", "cluster_domain", "api_endpoint", "service_cidr", "pod_cidr",
            "cluster_dns_ip", "ca", "key_algorithm", "lifetimes", "renew_before", "kubelet_credentials",
            "encryption_provider", "bootstrap_token_ttl", "nodes", "vendor")


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
        warn(warning)
    return inventory


def loads(text: str, source: str = "cluster.yaml") -> Inventory:
    """Validate inventory text; ``source`` names it in messages. The version is checked for
    its form only: see :func:`load`."""
    return _build(_top(text, source))


def _top(text: str, source: str) -> Reader:
    document = parse(text, source)
    if document is None:
        raise InventoryError(source, None, "", "the inventory is empty",
                             "start from the bundled example cluster.yaml, or check the path given with "
                             "'doit inventory=PATH' or KTHW_INVENTORY")
    return Reader(source, document, "", 1)


def _check_release(top: Reader, inv: Inventory, pinning: str | None) -> None:
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


def _build(top: Reader) -> Inventory:
    top.check_keys(TOP_KEYS)
    name = top.get("name", _dns_name)
    version = top.get("kubernetes_version", _version)
    domain = top.get("cluster_domain", _dns_name, "cluster.local")
    endpoint = _api_endpoint(top, domain)
    service_cidr, pod_cidr = _networks(top)
    dns_ip = _cluster_dns_ip(top, service_cidr)
    ca_settings = _ca(top)
    lifetimes = _lifetimes(top)
    renew_before = top.get("renew_before", _duration, timedelta(days=30))
    if renew_before >= lifetimes.leaf:
        raise top.fail("renew_before", f"the renewal window ({renew_before.days} days) is not shorter than "
                       f"the leaf lifetime ({lifetimes.leaf.days} days): every run would re-issue every cert",
                       "use a window well under the leaf lifetime, e.g. 30d")
    token_ttl = top.get("bootstrap_token_ttl", _duration, timedelta(days=14))
    _until_last_date(top, "bootstrap_token_ttl", token_ttl, "a bootstrap token lifetime")
    nodes = _nodes(top, service_cidr, pod_cidr)
    _check_node_local_name(top, endpoint, nodes)
    return Inventory(
        source=Path(top.source), name=name, kubernetes_version=version, cluster_domain=domain,
        api_endpoint=endpoint, service_cidr=service_cidr, pod_cidr=pod_cidr, cluster_dns_ip=dns_ip,
        ca=ca_settings, key_algorithm=top.get("key_algorithm", _choice(KEY_ALGORITHMS), "ecdsa-p256"),
        lifetimes=lifetimes, renew_before=renew_before,
        kubelet_credentials=top.get("kubelet_credentials", _choice(KUBELET_CREDENTIALS), "tls-bootstrap"),
        encryption_provider=top.get("encryption_provider", _choice(ENCRYPTION_PROVIDERS), "secretbox"),
        bootstrap_token_ttl=token_ttl,
        nodes=nodes, vendor=_vendor(top), warnings=_warnings(top, nodes))


def _networks(top: Reader) -> tuple[IPNetwork, IPNetwork]:
    """The service and pod ranges: one address family, apart, and of a size kube-apiserver takes."""
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
    return service_cidr, pod_cidr


def _cluster_dns_ip(top: Reader, service_cidr: IPNetwork) -> IPAddress:
    """The cluster DNS Service's address: given, or the tenth of the service range."""
    dns_ip = top.get("cluster_dns_ip", _ip, None)
    if dns_ip is None:
        dns_ip = service_cidr.network_address + 10
    if dns_ip not in service_cidr:
        raise top.fail("cluster_dns_ip", f"cluster DNS IP {dns_ip} is outside the service CIDR {service_cidr}",
                       f"pick an address inside {service_cidr}, e.g. {service_cidr.network_address + 10}")
    if dns_ip in (service_cidr.network_address, service_cidr.network_address + 1, service_cidr.broadcast_address):
        raise top.fail("cluster_dns_ip", f"cluster DNS IP {dns_ip} is reserved (network, broadcast or the "
                       "'kubernetes' Service address)", f"use e.g. {service_cidr.network_address + 10}")
    return dns_ip


def _lifetimes(top: Reader) -> Lifetimes:
    """The `lifetimes:` section: each CA outlives what it signs, and the root ends by the last cert date."""
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
    return lifetimes


def _warnings(top: Reader, nodes: tuple[Node, ...]) -> tuple[str, ...]:
    """What is allowed but unwise."""
    etcd_count = sum(1 for n in nodes if n.is_etcd)
    if etcd_count % 2 == 0:
        return (f"{top.source}:{top.where('nodes')}: nodes: {etcd_count} etcd members: an even count "
                f"tolerates no more failures than {etcd_count - 1}; use an odd number (3 or 5)",)
    return ()
