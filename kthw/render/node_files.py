"""Render stage: every systemd unit and component config a node needs, from kthw/templates/.

:func:`plan` decides, per node and only for its roles, which files exist and the exact
values each template receives (its *context*). The context is all a file depends on
besides its template: the task layer fingerprints it, so changing one node's IP
re-renders only the files that name that IP. Templates render with StrictUndefined: a
value missing from a context is an error, never an empty flag.

Version-dependent choices come from :mod:`kthw.versions`; the pinned etcd, containerd
and pause image come from the same pins the vendor stage fetches by
(:func:`kthw.vendor.fetch.load_pins`: the shipped table extended by the inventory's
``vendor.site_pins``), so the configs name exactly what the bundles install. Every flag a
unit passes to a Kubernetes binary is checked against the version table before the unit is written.
"""

from __future__ import annotations

import functools
import shlex
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from kthw import templating, versions
from kthw.errors import KthwError
from kthw.fsutil import PUBLIC_MODE, atomic_write
from kthw.inventory import Inventory, Node, url_host
from kthw.pki.catalogue import leaf
from kthw.pki.node_paths import APISERVER_PORT, ETCD_CLIENT_PORT, ETCD_PEER_PORT, PATHS, UNIT_DIR, VERSIONS_FILE
from kthw.render import membership
from kthw.roles import CONTROL_PLANE, ETCD, WORKER
from kthw.supply import components
from kthw.supply.pins import Pins
from kthw.vendor import fetch as vendor

# --- what each role installs from the vendor stage --------------------------------


def binaries_for(node: Node) -> dict[str, str]:
    """Every binary the node's roles install: node path -> the vendored component that provides it.

    Read from :data:`kthw.supply.components.FILE_COMPONENTS`, the table the vendor stage extracts
    and the bundle installs by; a binary two components carry (kubectl) counts once, from
    the first, as in :func:`kthw.vendor.fetch.needs`.
    """
    result: dict[str, str] = {}
    for component in components.FILE_COMPONENTS:
        if component.roles & node.roles:
            for binary in component.binaries:
                result.setdefault(f"{binary.install_dir}/{binary.name}", component.name)
    return dict(sorted(result.items()))


# --- the plan: which files each node gets, with which values ---------------------------


@dataclass(frozen=True)
class NodeFile:
    """One file of one node: its path on the node, its template and every value it uses."""

    node: str
    path: str
    template: str
    context: dict = field(compare=False)
    mode: int = PUBLIC_MODE
    # When the pins cannot give what the file uses: the message, and the file is not written.
    error: str | None = None

    @property
    def fingerprint(self) -> dict:
        """What decides the file's bytes besides its template text."""
        return {"template": self.template, "mode": self.mode, "context": self.context, "error": self.error}


def _go_duration(delta) -> str:
    return f"{int(delta.total_seconds() // 3600)}h"


class _Inputs:
    """What the file rules read: the inventory, its version row and the pins."""

    def __init__(self, inv: Inventory, release: versions.KubernetesRelease, pins: Pins | None, pins_error: str | None,
                 service_account_keys: tuple[str, ...] | None, service_account_error: str | None):
        self.inv, self.release = inv, release
        self._pins, self._pins_error = pins, pins_error
        self._service_account_keys, self._service_account_error = service_account_keys, service_account_error

    @property
    def pins(self) -> Pins:
        """The pins; only the rules that need them read them, and only when they loaded."""
        if self._pins is None:
            raise KthwError(self._pins_error)
        return self._pins

    def service_account_keys(self) -> list[str]:
        """Node paths of every public key the API servers accept service-account tokens from."""
        if self._service_account_keys is None:
            raise KthwError(self._service_account_error)
        return list(self._service_account_keys)

    def pinned(self, component: str) -> str:
        """The version pinned for the inventory's Kubernetes release (UnpinnedError if none)."""
        return self.pins.release(self.inv.kubernetes_version)[component]

    def pause_image(self) -> str:
        """repository:tag, the name the node's image store gives the vendored pause image."""
        return self.pins.image("pause", self.pinned("pause"), self.inv.kubernetes_version).reference

    def etcd_members(self) -> list[dict]:
        """The members of the running cluster: every etcd node but the one joining it."""
        return [{"name": n.name, "host": url_host(n.ip)} for n in self.inv.etcd_nodes if not n.joining]


def _systemd_dir(path: str, base: str) -> str:
    """The name systemd's StateDirectory= or LogsDirectory= takes for ``path`` (under ``base``),
    so the directory the unit creates and locks down is the one its flags name."""
    return str(PurePosixPath(path).relative_to(base))


def _etcd_unit(i: _Inputs, node: Node) -> dict:
    line = versions.etcd_line(i.pinned("etcd"))
    # --initial-cluster and --initial-cluster-state matter only at a member's first start
    # (etcd ignores them once its data directory holds data): a new cluster starts every
    # member with the same list; a member joining a running one lists the members plus itself.
    members = i.etcd_members()
    if node.joining:
        members.append({"name": node.name, "host": url_host(node.ip)})
    return {"name": node.name, "host": url_host(node.ip), "members": members, "token": i.inv.name,
            "cluster_state": "existing" if node.joining else "new",
            "client_port": ETCD_CLIENT_PORT, "peer_port": ETCD_PEER_PORT,
            "extra_flags": [f"{flag}={value}" for flag, value in line.extra_flags], "paths": PATHS,
            "state_directory": _systemd_dir(PATHS["etcd_data"], "/var/lib")}


def _etcd_member_script(i: _Inputs, node: Node) -> dict:
    return membership.script_context(i.inv, node)


def node_versions(inv: Inventory, pins: Pins, node: Node) -> dict[str, str]:
    """Kubernetes (unless the node only runs etcd) and every pinned component the node's
    roles install, with their versions."""
    release = pins.release(inv.kubernetes_version)
    result = {}
    every: tuple[components.FileComponent | components.ImageComponent, ...] = (
        *components.FILE_COMPONENTS, *components.IMAGE_COMPONENTS)
    for component in every:
        if not component.roles & node.roles:
            continue
        if component.name in components.KUBERNETES_FILES:
            result["kubernetes"] = inv.kubernetes_version
        else:
            result[component.name] = release[component.name]
    return dict(sorted(result.items(), key=lambda item: item[0] != "kubernetes"))


def _versions(i: _Inputs, node: Node) -> dict:
    return {"versions": node_versions(i.inv, i.pins, node)}


def _apiserver_unit(i: _Inputs, node: Node) -> dict:
    return {
        "kubernetes_minor": i.release.name,
        "advertise_address": str(node.ip),
        "local_etcd": node.is_etcd,
        "etcd_servers": [f"https://{m['host']}:{ETCD_CLIENT_PORT}" for m in i.etcd_members()],
        "service_cidr": str(i.inv.service_cidr),
        # The in-cluster name of the API: tokens stay valid if the API endpoint changes,
        # and kubeadm uses the same issuer.
        "service_account_issuer": f"https://kubernetes.default.svc.{i.inv.cluster_domain}",
        # The signing pair's public key, plus the other key during a rotation (kthw.secrets.sa_rotation).
        "service_account_key_files": i.service_account_keys(),
        "port": APISERVER_PORT,
        # Only the aggregation proxy's own cert may assert a user through request headers.
        "front_proxy_client_cn": leaf("front-proxy-client").common_name,
        "logs_directory": _systemd_dir(str(PurePosixPath(PATHS["audit_log"]).parent), "/var/log"),
        "paths": PATHS,
    }


def _audit_policy(i: _Inputs, node: Node) -> dict:
    return {"api_version": i.release.audit_policy_api}


def _controller_manager_unit(i: _Inputs, node: Node) -> dict:
    workers = i.inv.worker_nodes
    return {
        "kubernetes_minor": i.release.name,
        "cluster_name": i.inv.name,
        "cluster_cidr": str(i.inv.pod_cidr),
        "service_cidr": str(i.inv.service_cidr),
        # Per-node pod CIDRs in the inventory go straight into each worker's CNI config;
        # without them the controller-manager hands out node CIDRs itself.
        "allocate_node_cidrs": not any(n.pod_cidr for n in workers),
        "signing_duration": _go_duration(i.inv.lifetimes.leaf),
        "paths": PATHS,
    }


def _scheduler_unit(i: _Inputs, node: Node) -> dict:
    return {"kubernetes_minor": i.release.name, "paths": PATHS}


def _scheduler_config(i: _Inputs, node: Node) -> dict:
    return {"api_version": i.release.scheduler_config_api, "paths": PATHS}


def _plain_unit(i: _Inputs, node: Node) -> dict:
    return {"paths": PATHS}


def _containerd_config(i: _Inputs, node: Node) -> dict:
    line = versions.containerd_line(i.pinned("containerd"), i.release)
    return {"config_version": line.config_version, "runtime_plugin": line.runtime_plugin,
            "sandbox_table": line.sandbox_table, "sandbox_key": line.sandbox_key,
            "sandbox_image": i.pause_image(), "paths": PATHS}


# client-go's HTTP/2 health check (k8s.io/apimachinery util/net): a connection with no frame
# for this long is pinged, and dropped when the ping goes unanswered; the next dial tries
# every API server again. Its defaults, 30 s and 15 s, keep a kubelet or kube-proxy on a
# control plane that vanished without a word for 45 s.
API_CONNECTION_HEALTH = {"HTTP2_READ_IDLE_TIMEOUT_SECONDS": 10, "HTTP2_PING_TIMEOUT_SECONDS": 5}


def _kubelet_unit(i: _Inputs, node: Node) -> dict:
    return {"kubernetes_minor": i.release.name, "node_name": node.name, "node_ip": str(node.ip),
            "credentials": i.inv.kubelet_credentials, "api_connection_health": API_CONNECTION_HEALTH,
            "runtime_endpoint_in_config": i.release.runtime_endpoint_in_config, "paths": PATHS}


def _kubelet_config(i: _Inputs, node: Node) -> dict:
    return {"api_version": i.release.kubelet_config_api, "cluster_dns": [str(i.inv.cluster_dns_ip)],
            "cluster_domain": i.inv.cluster_domain, "fail_cgroup_v1": i.release.fail_cgroup_v1,
            "runtime_endpoint_in_config": i.release.runtime_endpoint_in_config, "paths": PATHS}


def _kube_proxy_unit(i: _Inputs, node: Node) -> dict:
    return {"kubernetes_minor": i.release.name, "api_connection_health": API_CONNECTION_HEALTH, "paths": PATHS}


def _kube_proxy_config(i: _Inputs, node: Node) -> dict:
    return {"api_version": i.release.proxy_config_api, "cluster_cidr": str(i.inv.pod_cidr),
            "node_name": node.name, "paths": PATHS}


def _cni_bridge(i: _Inputs, node: Node) -> dict:
    if node.pod_cidr is None:  # the rule's condition leaves such a node out
        raise KthwError(f"{node.name}: a bridge network needs the node's pod_cidr")
    return {"subnet": str(node.pod_cidr), "default_route": "::/0" if node.pod_cidr.version == 6 else "0.0.0.0/0"}


# The routing protocol number the pod routes carry (any value iproute2 and the kernel
# leave unassigned), so the unit removes its own routes and no one else's.
POD_ROUTE_PROTO = 249


def pod_routes(inv: Inventory, node: Node) -> list[dict]:
    """Every other worker's pod CIDR, through that worker's address."""
    return [{"cidr": cidr, "via": via} for name, cidr, via in _worker_routes(inv) if name != node.name]


@functools.lru_cache(maxsize=8)
def _worker_routes(inv: Inventory) -> tuple[tuple[str, str, str], ...]:
    """(name, pod CIDR, address) of every worker with a pod CIDR, once per inventory: written
    out for each node, the addresses cost a 100-node plan 0.1 s."""
    return tuple((other.name, str(other.pod_cidr), str(other.ip)) for other in inv.worker_nodes
                 if other.pod_cidr is not None)


def _pod_routes(i: _Inputs, node: Node) -> dict:
    return {"routes": pod_routes(i.inv, node), "proto": POD_ROUTE_PROTO}


def apiserver_order(inv: Inventory, node: Node) -> tuple[Node, ...]:
    """The control planes in the order ``node`` tries them: itself, then those of its zone,
    then the other zones in turn (az2 after az1, ...). Ties start at a point taken from the
    node's own name, so nodes spread their first tries, and adding or removing another
    node changes no node's order."""
    planes = inv.control_plane_nodes
    start = zlib.crc32(node.name.encode()) % len(planes)
    turned = planes[start:] + planes[:start]
    ring = sorted({cp.zone for cp in planes if cp.zone is not None} | ({node.zone} if node.zone else set()))

    def distance(cp: Node) -> tuple[int, int]:
        if cp.name == node.name:
            return (0, 0)
        if node.zone is None or cp.zone is None:
            return (2, 0)
        return (1, (ring.index(cp.zone) - ring.index(node.zone)) % len(ring))

    return tuple(sorted(turned, key=distance))


def _api_hosts(i: _Inputs, node: Node) -> dict:
    return {"cluster": i.inv.name, "name": i.inv.api_endpoint.name,
            "addresses": [str(cp.ip) for cp in apiserver_order(i.inv, node)]}


def _uses_node_local_endpoint(inv: Inventory, node: Node) -> bool:
    """Workers (kubelet, kube-proxy) and control planes (the admin kubeconfig) reach the API
    through the node-local name."""
    return inv.api_endpoint.node_local and (node.is_worker or node.is_control_plane)


def _nothing(i: _Inputs, node: Node) -> dict:
    return {}


def _crictl(i: _Inputs, node: Node) -> dict:
    return {"paths": PATHS}


@dataclass(frozen=True)
class _Rule:
    """Which template makes a node file, for which nodes, with what context."""

    path: str
    template: str
    role: str | None  # None: every node
    context: Callable[[_Inputs, Node], dict]
    needs_pins: bool = False
    when: Callable[[Inventory, Node], bool] = lambda inv, node: True
    mode: int = PUBLIC_MODE


RULES: tuple[_Rule, ...] = (
    _Rule(f"{UNIT_DIR}/etcd.service", "units/etcd.service.j2", ETCD, _etcd_unit, needs_pins=True),
    _Rule(membership.MEMBER_SCRIPT, membership.SCRIPT_TEMPLATE, ETCD, _etcd_member_script, mode=0o755),
    _Rule(VERSIONS_FILE, "configs/versions.j2", None, _versions, needs_pins=True),
    _Rule(f"{UNIT_DIR}/kube-apiserver.service", "units/kube-apiserver.service.j2", CONTROL_PLANE, _apiserver_unit),
    _Rule(PATHS["audit_policy"], "configs/audit-policy.yaml.j2", CONTROL_PLANE, _audit_policy),
    _Rule(f"{UNIT_DIR}/kube-controller-manager.service", "units/kube-controller-manager.service.j2", CONTROL_PLANE,
          _controller_manager_unit),
    _Rule(f"{UNIT_DIR}/kube-scheduler.service", "units/kube-scheduler.service.j2", CONTROL_PLANE, _scheduler_unit),
    _Rule(PATHS["scheduler_config"], "configs/kube-scheduler.yaml.j2", CONTROL_PLANE, _scheduler_config),
    _Rule(f"{UNIT_DIR}/containerd.service", "units/containerd.service.j2", WORKER, _plain_unit),
    _Rule(PATHS["containerd_config"], "configs/containerd-config.toml.j2", WORKER, _containerd_config,
          needs_pins=True),
    _Rule(f"{UNIT_DIR}/kubelet.service", "units/kubelet.service.j2", WORKER, _kubelet_unit),
    _Rule(PATHS["kubelet_config"], "configs/kubelet-config.yaml.j2", WORKER, _kubelet_config),
    _Rule(f"{UNIT_DIR}/kube-proxy.service", "units/kube-proxy.service.j2", WORKER, _kube_proxy_unit),
    _Rule(PATHS["kube_proxy_config"], "configs/kube-proxy-config.yaml.j2", WORKER, _kube_proxy_config),
    # Without a node pod CIDR the network is a CNI add-on's job (it reads Node.spec.podCIDR,
    # which the controller-manager then allocates); only loopback is written.
    _Rule("/etc/cni/net.d/10-bridge.conflist", "configs/cni-bridge.conflist.j2", WORKER, _cni_bridge,
          when=lambda inv, node: node.pod_cidr is not None),
    _Rule("/etc/cni/net.d/99-loopback.conf", "configs/cni-loopback.conf.j2", WORKER, _nothing),
    _Rule("/etc/crictl.yaml", "configs/crictl.yaml.j2", WORKER, _crictl),
    # Bridged pod traffic must pass iptables (kube-proxy) and be forwarded.
    _Rule("/etc/modules-load.d/kubernetes.conf", "configs/modules-load.conf.j2", WORKER, _nothing),
    _Rule("/etc/sysctl.d/99-kubernetes.conf", "configs/sysctl.conf.j2", WORKER, _nothing),
    # Pods on one worker reach pods on another, and the API server reaches every pod, by
    # plain routing: on every node that another worker's pod CIDR is not local to.
    _Rule(f"{UNIT_DIR}/kthw-pod-routes.service", "units/kthw-pod-routes.service.j2", None, _pod_routes,
          when=lambda inv, node: bool(pod_routes(inv, node))),
    # The node-local API endpoint's name, resolved to every API server by /etc/hosts.
    _Rule(PATHS["api_hosts"], "configs/apiserver-hosts.j2", None, _api_hosts, when=_uses_node_local_endpoint),
)


def plan(inv: Inventory, pins: Pins | None = None,
         service_account_keys: Callable[[], tuple[str, ...]] | None = None) -> dict[str, tuple[NodeFile, ...]]:
    """Every file of every node. A Kubernetes minor outside the version table is a KthwError.
    ``pins`` defaults to what the vendor stage loads for ``inv``; pins that cannot be read,
    or that lack what a file uses, only mark the files that need them (their render fails).
    ``service_account_keys`` gives the node paths of the public keys the API servers accept
    tokens from (default: the one pair's sa.pub); a KthwError it raises marks the files that
    list them the same way."""
    release = versions.kubernetes_release(inv.kubernetes_version)
    pins_error = None
    if pins is None:
        try:
            pins = vendor.load_pins(inv)
        except KthwError as err:
            pins_error = str(err)
    sa_keys: tuple[str, ...] | None = (PATHS["sa_pub"],)
    sa_error = None
    if service_account_keys is not None:
        try:
            sa_keys = service_account_keys()
        except KthwError as err:
            sa_keys, sa_error = None, str(err)
    inputs = _Inputs(inv, release, pins, pins_error, sa_keys, sa_error)
    result = {}
    for node in inv.nodes:
        files = []
        for rule in RULES:
            if (rule.role is not None and rule.role not in node.roles) or not rule.when(inv, node):
                continue
            context, error = {}, None
            if rule.needs_pins and pins is None:
                error = pins_error
            else:
                try:
                    context = rule.context(inputs, node)
                except KthwError as err:
                    error = str(err)
            files.append(NodeFile(node.name, rule.path, rule.template, context, mode=rule.mode, error=error))
        names = [PurePosixPath(f.path).name for f in files]
        assert len(names) == len(set(names)), f"two files of {node.name} share a name: {names}"
        result[node.name] = tuple(files)
    return result


# --- rendering -----------------------------------------------------------------------


def template_files(template: str, templates: Path | None = None) -> list[Path]:
    """The template and every template it includes or imports (its file dependencies)."""
    return templating.files(template, templates)


def unit_exec_start(text: str) -> list[str]:
    """The ExecStart command line of a unit, as a list of words (continuations joined)."""
    joined = text.replace("\\\n", " ")
    for line in joined.splitlines():
        if line.startswith("ExecStart="):
            return shlex.split(line[len("ExecStart="):])
    raise KthwError("the unit has no ExecStart line")


def render(nf: NodeFile, templates: Path | None = None) -> bytes:
    """The file's bytes; a unit's flags are checked against the version table first.
    ``templates``: a directory to render from instead of the package's templates."""
    if nf.error:
        raise KthwError(f"{nf.node}: {nf.path}: {nf.error}")
    try:
        text = templating.render(nf.template, nf.context, templates)
    except KthwError as err:
        raise KthwError(f"{nf.node}: {nf.path}: {err}") from None
    if nf.path.startswith(UNIT_DIR + "/"):
        words = unit_exec_start(text)
        binary = PurePosixPath(words[0]).name
        if binary in versions.FLAGS:
            release = versions.kubernetes_release(nf.context["kubernetes_minor"])
            versions.check_flags(binary, [w.split("=", 1)[0] for w in words[1:]], release)
    return text.encode()


def stale_files(node_root: Path, planned: tuple[NodeFile, ...]) -> list[Path]:
    """Files this stage wrote for the node earlier that its plan no longer has (a role or a
    pod CIDR gone): left in place they would be installed with the node's bundle."""
    keep = {nf.path for nf in planned}
    candidates = (node_root / rule.path.lstrip("/") for rule in RULES if rule.path not in keep)
    return sorted(path for path in candidates if path.exists())


def remove_stale(node_root: Path, planned: tuple[NodeFile, ...]) -> str:
    removed = stale_files(node_root, planned)
    for path in removed:
        path.unlink()
    return "\n".join(f"removed {path.relative_to(node_root.parent)} (no longer part of this node)"
                     for path in removed)


def write_node_file(nf: NodeFile, destination: Path) -> None:
    """Render and write one file; an unchanged file is left untouched (same bytes, same mtime).
    A node's versions file is not rewritten for a Kubernetes downgrade or skip of minors."""
    data = render(nf)
    if nf.path == VERSIONS_FILE:
        from kthw.render.upgrade import check_rebuild  # here: kthw.upgrade reads this module's tables
        check_rebuild(destination, data)
    atomic_write(destination, data, nf.mode)
