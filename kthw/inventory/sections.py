"""Parsers of the inventory's sections: each takes the top-level reader and returns the
section's frozen settings, or raises the reader's error naming file, line, field and fix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from kthw.errors import InventoryError
from kthw.inventory.model import (
    API_MODES,
    APISERVER_PORT,
    CA_BACKENDS,
    NODE_LOCAL_NAME,
    VAULT_AUTH_METHODS,
    ApiEndpoint,
    CASettings,
    IPNetwork,
    Node,
    VaultAuth,
    VaultNaming,
    VendorSettings,
)
from kthw.inventory.values import (
    _choice,
    _cidr,
    _dns_name,
    _env_name,
    _file_under,
    _flag,
    _folder_template,
    _inside,
    _ip,
    _list_of,
    _location,
    _node_name,
    _pins_file,
    _port,
    _registry,
    _repository,
    _san,
    _text,
    _vault_address,
    _vault_path,
    _vault_path_pattern,
)
from kthw.roles import CONTROL_PLANE, ROLES
from kthw.supply import components
from kthw.supply.components import ARCH_ALIASES, ARCHES
from kthw.yamldoc import Reader

API_ENDPOINT_KEYS = ("mode", "name", "dns", "ip", "port")


def _api_endpoint(top: Reader, domain: str) -> ApiEndpoint:
    """The `api_endpoint:` section (absent: node-local with the default name)."""
    api = top.sub("api_endpoint")
    api.check_keys(API_ENDPOINT_KEYS)
    mode = api.get("mode", _choice(API_MODES), "node-local")
    dns, ip = api.get("dns", _dns_name, None), api.get("ip", _ip, None)
    port = api.get("port", _port, APISERVER_PORT)
    if mode == "external":
        endpoint = ApiEndpoint(dns=dns, ip=ip, port=port, mode=mode)
        if "name" in api.mapping:
            raise api.fail("name", "'name' is the node-local mode's name, but the mode is 'external'",
                           "remove 'name' (the nodes then use 'dns' or 'ip'), or set 'mode: node-local'")
        if endpoint.dns is None and endpoint.ip is None:
            raise top.fail("api_endpoint", "the external API endpoint has neither 'dns' nor 'ip'",
                           "give the address of your VIP or load balancer, e.g. api_endpoint: {mode: external, "
                           "dns: k8s.example.lan, ip: 10.0.0.10, port: 6443}; or use 'mode: node-local', "
                           "which needs neither")
        return endpoint
    name: str = api.get("name", _dns_name, NODE_LOCAL_NAME)
    endpoint = ApiEndpoint(dns=dns, ip=ip, port=port, mode=mode, name=name)
    if endpoint.port != APISERVER_PORT:
        raise api.fail("port", f"in node-local mode the nodes reach each API server directly, on its port "
                       f"{APISERVER_PORT}, not {endpoint.port}",
                       f"remove 'port' (or set {APISERVER_PORT}); for a load balancer on port {endpoint.port} "
                       "set 'mode: external'")
    if name == endpoint.dns:
        raise api.fail("name", f"'{name}' is both the node-local name and 'dns'",
                       "the node-local name must be one only the nodes' /etc/hosts answers, so that no DNS "
                       f"answer can send a node to a single API server: remove 'name' (default {NODE_LOCAL_NAME})")
    for reserved, answered_by in (("localhost", "every machine itself"), (domain, "the cluster DNS")):
        if name == reserved or name.endswith("." + reserved):
            raise api.fail("name", f"'{name}' is a name {answered_by} answers",
                           f"pick a name under a domain no one serves, e.g. the default {NODE_LOCAL_NAME}")
    return endpoint


def _check_node_local_name(top: Reader, endpoint: ApiEndpoint, nodes: tuple[Node, ...]) -> None:
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


def _ca(top: Reader) -> CASettings:
    """The `ca:` section; with the vault backend, where Vault is and how to log in."""
    reader = top.sub("ca")
    reader.check_keys(CA_KEYS)
    backend = reader.get("backend", _choice(CA_BACKENDS), "local")
    if backend != "vault":
        for key in CA_KEYS[1:]:
            if key in reader.mapping:
                raise reader.fail(key, f"'{key}' is a Vault setting but the backend is '{backend}'",
                                  f"set 'backend: vault', or remove '{key}'")
        return CASettings(backend=backend)
    file = _file_under(Path(top.source).parent)
    auth = _vault_auth(top, reader, file)
    naming = _vault_naming(reader)
    return CASettings(backend=backend, address=reader.get("address", _vault_address),
                      namespace=reader.get("namespace", _vault_path, None),
                      ca_bundle=reader.get("ca_bundle", file, None), auth=auth, naming=naming)


def _vault_auth(top: Reader, ca: Reader, file: Callable[[Any], Path]) -> VaultAuth:
    """The `ca.auth:` section: how doit logs in to Vault, the secrets named, never held."""
    auth_value = ca.mapping.get("auth")
    if isinstance(auth_value, str):  # `auth: token` is short for `auth: {method: token}`
        reader = Reader(top.source, {"method": auth_value}, "ca.auth", ca.where("auth"))
    else:
        reader = ca.sub("auth")
    for key, instead in _SECRETS_IN_INVENTORY.items():
        if key in reader.mapping:
            # Never echo the value: it is a secret.
            raise reader.fail(key, "a secret does not belong in the inventory (it is committed and copied "
                              "to other machines)", f"remove '{key}' and use {instead}")
    method = reader.get("method", _choice(VAULT_AUTH_METHODS), "token")
    reader.check_keys(VAULT_AUTH_KEYS[method])
    auth = VaultAuth(
        method=method, mount=reader.get("mount", _vault_path, None),
        token_file=reader.get("token_file", file, None),
        username=reader.get("username", _text, None),
        password_env=reader.get("password_env", _env_name, VaultAuth.password_env),
        password_file=reader.get("password_file", file, None),
        role_id=reader.get("role_id", _text, None), role_id_file=reader.get("role_id_file", file, None),
        secret_id_env=reader.get("secret_id_env", _env_name, VaultAuth.secret_id_env),
        secret_id_file=reader.get("secret_id_file", file, None))
    if method == "userpass" and auth.username is None:
        raise reader.fail("username", "userpass login needs a username", "add 'username: <Vault user>'")
    if method == "approle" and (auth.role_id is None) == (auth.role_id_file is None):
        raise reader.fail("role_id", "approle login needs exactly one of role_id and role_id_file",
                          "add 'role_id: <id>' or 'role_id_file: <path>'")
    return auth


def _vault_naming(ca: Reader) -> VaultNaming:
    """The `ca.naming:` section: the Vault mounts, roles and policy doit creates and uses."""
    reader = ca.sub("naming")
    reader.check_keys(("root_mount", "intermediate_mount", "role", "policy"))
    return VaultNaming(root_mount=reader.get("root_mount", _vault_path, VaultNaming.root_mount),
                       intermediate_mount=reader.get("intermediate_mount", _vault_path_pattern("domain"),
                                                     VaultNaming.intermediate_mount),
                       role=reader.get("role", _vault_path_pattern("cert"), VaultNaming.role),
                       policy=reader.get("policy", _vault_path, None))


VENDOR_KEYS = ("mirror", "registry_mirror", "overrides", "site_pins")


def _vendor(top: Reader) -> VendorSettings:
    """The `vendor:` section; relative paths are relative to the inventory file."""
    base = Path(top.source).parent
    reader = top.sub("vendor")
    reader.check_keys(VENDOR_KEYS)
    over = reader.sub("overrides")
    over.check_keys(components.ALL_NAMES)
    folder_template = _folder_template(base)
    overrides = tuple((name, over.get(name, _repository if name in components.IMAGES else folder_template))
                      for name in over.mapping)
    return VendorSettings(mirror=reader.get("mirror", _location(base), None),
                          registry_mirror=reader.get("registry_mirror", _registry(base), None),
                          overrides=overrides,
                          site_pins=reader.get("site_pins", _pins_file(base), None))


NODE_KEYS = ("name", "roles", "arch", "zone", "ip", "extra_sans", "pod_cidr", "joining")


def _nodes(top: Reader, service_cidr: IPNetwork, pod_cidr: IPNetwork) -> tuple[Node, ...]:
    """The `nodes:` list: each node valid on its own, against the cluster's ranges and the nodes before it."""
    raw = top.get("nodes", lambda v: v)
    if not isinstance(raw, list) or not raw:
        raise top.fail("nodes", "expected a non-empty list of nodes", "list each machine under 'nodes:'")
    lines = getattr(raw, "item_lines", [None] * len(raw))
    nodes: list[Node] = []
    readers: list[Reader] = []
    for index, (item, line) in enumerate(zip(raw, lines, strict=True)):
        if item is None:
            raise InventoryError(top.source, line, f"nodes[{index}]", "an empty entry",
                                 "describe the node, e.g. {name: node-az1, roles: [worker], arch: amd64, "
                                 "ip: 10.0.1.21}, or remove the '-' line")
        reader = Reader(top.source, item, f"nodes[{index}]", line)
        node = _node(reader)
        _check_node_address(reader, node, nodes, service_cidr, pod_cidr)
        _check_node_pod_cidr(reader, node, nodes, pod_cidr)
        nodes.append(node)
        readers.append(reader)
    _check_roles_present(top, nodes)
    _check_joining(top, nodes, readers)
    _check_worker_pod_cidrs(nodes, readers)
    return tuple(nodes)


def _node(reader: Reader) -> Node:
    """One entry of `nodes:`, on its own."""
    reader.check_keys(NODE_KEYS)
    name = reader.get("name", _node_name)
    roles = reader.get("roles", _list_of(_choice(ROLES)))
    if not roles:
        raise reader.fail("roles", "a node needs at least one role", f"use any of: {', '.join(ROLES)}")
    return Node(name=name, roles=frozenset(roles), arch=reader.get("arch", _choice(ARCHES, ARCH_ALIASES)),
                zone=reader.get("zone", _text, None), ip=reader.get("ip", _ip),
                extra_sans=reader.get("extra_sans", _list_of(_san), ()),
                pod_cidr=reader.get("pod_cidr", _cidr, None), joining=reader.get("joining", _flag, False))


def _check_node_address(reader: Reader, node: Node, earlier: list[Node], service_cidr: IPNetwork,
                        pod_cidr: IPNetwork) -> None:
    """The node's name and address are its own, and its address is of the cluster's family, outside its ranges."""
    if node.ip.version != service_cidr.version:
        raise reader.fail("ip", f"node IP {node.ip} is IPv{node.ip.version} but the cluster is "
                          f"IPv{service_cidr.version}-only (service_cidr {service_cidr}, pod_cidr {pod_cidr})",
                          f"use the node's IPv{service_cidr.version} address: the kubelet, etcd and the API "
                          "server advertise it")
    if any(other.name == node.name for other in earlier):
        raise reader.fail("name", f"node name '{node.name}' is used twice",
                          "give every node its own name (it becomes the node's identity in its certs)")
    for other in earlier:
        if other.ip == node.ip:
            raise reader.fail("ip", f"IP {node.ip} is already used by node '{other.name}'",
                              "give every node its own address")
    for network, what in ((service_cidr, "service_cidr"), (pod_cidr, "pod_cidr")):
        if node.ip in network:
            raise reader.fail("ip", f"node IP {node.ip} lies inside {what} {network}",
                              "node addresses must be outside the cluster's virtual ranges")


def _check_node_pod_cidr(reader: Reader, node: Node, earlier: list[Node], pod_cidr: IPNetwork) -> None:
    """A node's own pod CIDR lies in the cluster's and overlaps no other node's."""
    if node.pod_cidr is None:
        return
    if not _inside(node.pod_cidr, pod_cidr):
        raise reader.fail("pod_cidr", f"node pod CIDR {node.pod_cidr} is not inside the cluster pod CIDR {pod_cidr}",
                          f"pick a subnet of {pod_cidr}")
    for other in earlier:
        if other.pod_cidr and node.pod_cidr.overlaps(other.pod_cidr):
            raise reader.fail("pod_cidr", f"node pod CIDR {node.pod_cidr} overlaps that of '{other.name}'",
                              "give each node its own subnet of the pod CIDR")


def _check_roles_present(top: Reader, nodes: list[Node]) -> None:
    if not any(n.is_control_plane for n in nodes):
        raise top.fail("nodes", f"no node has the '{CONTROL_PLANE}' role",
                       f"add '{CONTROL_PLANE}' to the roles of at least one node")
    if not any(n.is_etcd for n in nodes):
        raise top.fail("nodes", "no node has the 'etcd' role", "add 'etcd' to the roles of one or three nodes")


def _check_worker_pod_cidrs(nodes: list[Node], readers: list[Reader]) -> None:
    """Either every worker names its pod CIDR or none does."""
    workers = [(n, reader) for n, reader in zip(nodes, readers, strict=True) if n.is_worker]
    if any(n.pod_cidr for n, _ in workers):
        for node, reader in workers:
            if node.pod_cidr is None:
                raise reader.fail("name", f"worker '{node.name}' has no pod_cidr while other workers have one",
                                  "give every worker a pod_cidr, or none (the controller-manager then allocates them)")


def _check_joining(top: Reader, nodes: list[Node], readers: list[Reader]) -> None:
    """`joining: true` marks the one etcd member being added to a running cluster."""
    joining = [(n, reader) for n, reader in zip(nodes, readers, strict=True) if n.joining]
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
