"""Inventory validation: every bad input is a clear, located error; never a traceback."""

from __future__ import annotations

import contextlib
import copy
import ipaddress

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.project import REPO

from kthw import inventory
from kthw.errors import InventoryError

EXAMPLE = (REPO / "cluster.yaml").read_text()


def test_bundled_example_is_valid_and_as_documented():
    inv = inventory.load(REPO / "cluster.yaml")
    control_planes = [n for n in inv.nodes if n.roles == {"control-plane", "etcd"}]
    assert [n.name for n in control_planes] == ["node-az1", "node-az2", "node-az3"]
    assert [n.zone for n in control_planes] == ["az1", "az2", "az3"]
    workers = inv.worker_nodes
    assert len(workers) >= 3 and {n.arch for n in workers} == {"amd64", "arm64"}
    assert inv.key_algorithm == "ecdsa-p256"
    assert inv.warnings == ()


def test_arch_aliases_are_normalised():
    inv = inventory.loads(EXAMPLE.replace("arch: amd64, zone: az1, ip: 10.0.1.11", "arch: x86_64, zone: az1, "
                                          "ip: 10.0.1.11"))
    assert inv.node("node-az1").arch == "amd64"
    assert inv.node("worker-az3-a").arch == "arm64"  # written as aarch64 in the example


def _error(text: str) -> InventoryError:
    with pytest.raises(InventoryError) as caught:
        inventory.loads(text, source="site.yaml")
    return caught.value


@pytest.mark.parametrize("old, new, field, words", [
    ("roles: [control-plane, etcd], arch: amd64, zone: az1", "roles: [contol-plane, etcd], arch: amd64, zone: az1",
     "nodes[0].roles", ["unknown value 'contol-plane'", "did you mean 'control-plane'"]),
    ("cluster_domain: cluster.local", "clustr_domain: cluster.local", "clustr_domain",
     ["unknown key", "did you mean 'cluster_domain'"]),
    ("{name: node-az2,", "{name: node-az1,", "nodes[1].name", ["used twice"]),
    ("ip: 10.0.2.11}", "ip: 10.0.1.11}", "nodes[1].ip", ["already used by node 'node-az1'"]),
    ("ip: 10.0.2.11}", "ip: 10.0.2.300}", "nodes[1].ip", ["not an IP address"]),
    ("service_cidr: 10.96.0.0/12", "service_cidr: 10.96.0.0/33", "service_cidr", ["not a CIDR"]),
    ("service_cidr: 10.96.0.0/12", "service_cidr: 10.96.0.1/12", "service_cidr", ["not a CIDR"]),
    ("pod_cidr: 10.244.0.0/16", "pod_cidr: 10.96.0.0/16", "pod_cidr", ["overlaps service CIDR"]),
    ("cluster_dns_ip: 10.96.0.10", "cluster_dns_ip: 10.244.0.10", "cluster_dns_ip", ["outside the service CIDR"]),
    ("arch: arm64, zone: az3, ip: 10.0.3.11", "arch: sparc, zone: az3, ip: 10.0.3.11", "nodes[2].arch",
     ["unknown value 'sparc'", "amd64"]),
    ("key_algorithm: ecdsa-p256", "key_algorithm: dsa-1024", "key_algorithm", ["unknown value"]),
    ('kubernetes_version: "1.36.0"', "kubernetes_version: 1.34", "kubernetes_version", ["quote"]),
    ("leaf: 365d", "leaf: 5000d", "lifetimes.leaf", ["leaf < intermediate_ca"]),
    ("renew_before: 30d", "renew_before: 400d", "renew_before", ["not shorter than the leaf lifetime"]),
    ("pod_cidr: 10.244.1.0/24}", "pod_cidr: 10.245.1.0/24}", "nodes[3].pod_cidr", ["not inside"]),
    ("port: 6443", "port: 70000", "api_endpoint.port", ["not a TCP port"]),
])
def test_bad_value_names_line_field_and_fix(old, new, field, words):
    assert old in EXAMPLE, old
    text = EXAMPLE.replace(old, new, 1)
    err = _error(text)
    assert err.field == field
    assert err.line == EXAMPLE[:EXAMPLE.index(old)].count("\n") + 1, str(err)
    message = str(err)
    assert message.startswith(f"site.yaml:{err.line}: {field}: ")
    assert "fix:" in message
    for word in words:
        assert word in message


def test_yaml_syntax_error_is_located():
    text = EXAMPLE.replace("  port: 6443", "  port: [6443")
    err = _error(text)
    assert "YAML syntax error" in str(err) and err.line is not None


def test_duplicate_key_is_an_error_not_a_silent_override():
    err = _error(EXAMPLE + "renew_before: 10d\n")
    assert "appears twice" in str(err) and err.field == "renew_before"


@pytest.mark.parametrize("roles, words", [
    ("[worker]", "no node has the 'control-plane' role"),
    ("[control-plane]", "no node has the 'etcd' role"),
])
def test_cluster_needs_control_plane_and_etcd(roles, words):
    text = EXAMPLE.replace("roles: [control-plane, etcd]", f"roles: {roles}")
    assert words in str(_error(text))


def test_even_etcd_members_is_a_warning():
    text = EXAMPLE.replace("{name: node-az3, roles: [control-plane, etcd]", "{name: node-az3, roles: [control-plane]")
    inv = inventory.loads(text)
    assert len(inv.etcd_nodes) == 2
    assert any("even" in w for w in inv.warnings)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(InventoryError, match="cannot read the inventory"):
        inventory.load(tmp_path / "nope.yaml")


# --- property-based: mutated inventories end in a model or a clear error ------------

BASE = yaml.safe_load(EXAMPLE)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.floats(allow_nan=False),
                    st.text(max_size=12), st.sampled_from(["10.0.0.1", "10.96.0.0/12", "::1", "fe80::/10", "1.34",
                                                           "365d", "0h", "control-plane", "x86_64", "node-az1",
                                                           "10.244.9.0/24", "localhost", "local"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


ALL_PATHS = [p for p in _paths(BASE) if p]


@st.composite
def mutated(draw):
    data = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(ALL_PATHS))
        parent = data
        try:
            for step in path[:-1]:
                parent = parent[step]
            action = draw(st.sampled_from(["replace", "delete", "rename", "duplicate-node"]))
            if action == "replace":
                parent[path[-1]] = draw(VALUES)
            elif action == "delete":
                del parent[path[-1]]
            elif action == "rename" and isinstance(parent, dict):
                parent[str(path[-1]) + draw(st.sampled_from(["x", "_", "s"]))] = parent.pop(path[-1])
            elif action == "duplicate-node":
                data["nodes"].append(copy.deepcopy(data["nodes"][0]))
        except (KeyError, IndexError, TypeError, AttributeError):  # e.g. nodes already replaced by a scalar
            continue
    return yaml.safe_dump(data)


@pytest.mark.slow  # 500 examples: long, though no build
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_inventories_never_crash(text):
    try:
        inv = inventory.loads(text)
    except InventoryError as err:
        message = str(err)
        assert message.startswith("cluster.yaml")
        assert err.problem
        return
    # A model that loads is coherent.
    assert inv.nodes and inv.control_plane_nodes and inv.etcd_nodes
    assert inv.cluster_dns_ip in inv.service_cidr
    assert not inv.service_cidr.overlaps(inv.pod_cidr)
    assert len({n.name for n in inv.nodes}) == len(inv.nodes)
    assert all(isinstance(n.ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)) for n in inv.nodes)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_never_crashes(text):
    with contextlib.suppress(InventoryError):  # a clean refusal is fine; anything else fails the test
        inventory.loads(text)


@pytest.mark.slow
def test_bad_inventory_stops_doit_with_message_and_writes_nothing(project):
    project.write_inventory(EXAMPLE.replace("roles: [worker]", "roles: [wroker]", 1))
    run = project.doit("pki", check=False)
    assert run.returncode != 0
    assert "Traceback" not in run.stderr + run.stdout
    assert "unknown value 'wroker'" in run.stderr and "did you mean 'worker'" in run.stderr
    assert f"{project.inventory}:" in run.stderr
    assert not (project.root / "build" / "pki").exists()
    assert not (project.root / "build" / "nodes").exists()
    assert not (project.root / "build").exists(), "not even doit's state database"


# --- the whole inventory is checked when it is read: version, lifetimes, addresses ---------------

LONG_NAME = "n" * 64


def _load_file(tmp_path, text: str):
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return path, inventory.load(path)


@pytest.mark.parametrize("old, new, field, words", [
    ('kubernetes_version: "1.36.0"', 'kubernetes_version: "1.31.0"', "kubernetes_version",
     ["Kubernetes 1.31 is not supported", "1.32, 1.33, 1.34, 1.35, 1.36, 1.37", "1.36.0"]),
    ('kubernetes_version: "1.36.0"', 'kubernetes_version: "1.40.0"', "kubernetes_version",
     ["Kubernetes 1.40 is not supported"]),
    ('kubernetes_version: "1.36.0"', 'kubernetes_version: "1.36.1"', "kubernetes_version",
     ["Kubernetes 1.36.1 is not pinned", "pinned versions: ", "doit pin version=1.36.1"]),
    ("root_ca: 3650d", "root_ca: 99999999999d", "lifetimes.root_ca", ["far too long"]),
    ("root_ca: 3650d", "root_ca: 9000y", "lifetimes.root_ca", ["would end after 9999-12-31", "use at most"]),
    ("bootstrap_token_ttl: 14d", "bootstrap_token_ttl: 9000y", "bootstrap_token_ttl", ["would end after 9999-12-31"]),
    ("ip: 10.0.2.21, pod_cidr", "ip: 'fd00::21', pod_cidr", "nodes[4].ip",
     ["node IP fd00::21 is IPv6 but the cluster is IPv4-only", "use the node's IPv4 address"]),
    ("pod_cidr: 10.244.0.0/16", "pod_cidr: 'fd00:244::/56'", "pod_cidr",
     ["is IPv6 but service CIDR", "one address family"]),
    ("{name: node-az2,", f"{{name: {LONG_NAME},", "nodes[1].name", ["is longer than 63 characters (64)"]),
    ("port: 6443", 'port: "6443"', "api_endpoint.port", ["'6443' is text, not a number", "without quotes"]),
])
def test_edges_are_refused_when_the_file_is_read(tmp_path, old, new, field, words):
    assert old in EXAMPLE, old
    with pytest.raises(InventoryError) as caught:
        _load_file(tmp_path, EXAMPLE.replace(old, new, 1))
    err = caught.value
    assert err.field == field, str(err)
    assert err.line == EXAMPLE[:EXAMPLE.index(old)].count("\n") + 1, str(err)
    assert str(err).startswith(f"{tmp_path / 'site.yaml'}:{err.line}: {field}: ") and "\n  fix: " in str(err)
    for word in words:
        assert word in str(err), str(err)


def test_an_empty_inventory_or_node_entry_is_named_as_such(tmp_path):
    with pytest.raises(InventoryError, match=r"site.yaml: the inventory is empty\n  fix: start from"):
        _load_file(tmp_path, "# nothing yet\n")
    text = EXAMPLE.replace("nodes:\n", "nodes:\n  -\n", 1)
    with pytest.raises(InventoryError) as caught:
        _load_file(tmp_path, text)
    assert caught.value.field == "nodes[0]" and "an empty entry" in str(caught.value)
    assert "NoneType" not in str(caught.value)


def test_the_even_etcd_warning_names_its_line(tmp_path):
    text = EXAMPLE.replace("{name: node-az3, roles: [control-plane, etcd]", "{name: node-az3, roles: [control-plane]")
    path, inv = _load_file(tmp_path, text)
    line = text[:text.index("nodes:")].count("\n") + 1
    assert inv.warnings == (f"{path}:{line}: nodes: 2 etcd members: an even count tolerates no more failures than "
                            "1; use an odd number (3 or 5)",)


def test_pinning_a_version_the_inventory_already_names_is_allowed(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text(EXAMPLE.replace('"1.36.0"', '"1.36.1"'))
    with pytest.raises(InventoryError, match="not pinned"):
        inventory.load(path)
    assert inventory.load(path, pinning="1.36.1").kubernetes_version == "1.36.1"  # what `doit pin version=` does
    with pytest.raises(InventoryError, match="not supported"):
        path.write_text(EXAMPLE.replace('"1.36.0"', '"1.40.0"'))
        inventory.load(path, pinning="1.40.0")


# Values at the edges of what each field accepts; the property below holds for every mix.
DURATIONS = st.one_of(
    st.builds("{}{}".format, st.sampled_from([1, 23, 24, 364, 365, 366, 1825, 3650, 2_900_000, 2_940_000,
                                               999_999_999, 10**9, 99_999_999_999]), st.sampled_from("hdwy")),
    st.sampled_from([1, 365, 3650, 10**9, 10**12, "365", "0d", "-1d", "1.5y", ""]))
VERSIONS = st.sampled_from(["1.31.0", "1.32.8", "1.35.4", "1.36.0", "1.36.1", "1.37.0", "1.40.0", "2.0.0", "v1.36.0",
                            "1.36", "1.36.0.1", 1.36])
ADDRESSES = st.sampled_from(["10.0.1.11", "10.0.9.9", "0.0.0.0", "255.255.255.255", "10.96.0.1", "10.244.0.5",
                             "fd00::21", "::1", "::ffff:10.0.1.11", "10.0.1.256", "", "localhost"])
NETWORKS = st.sampled_from(["10.96.0.0/12", "10.96.0.0/11", "10.96.0.0/30", "10.96.0.0/31", "10.96.0.1/12",
                            "fd00:10:96::/108", "fd00::/64", "10.244.0.0/16", "10.0.0.0/8"])
PORTS = st.sampled_from([6443, 0, 1, 65535, 65536, -1, "6443", "x", True])


EDGES = {
    ("kubernetes_version",): VERSIONS, ("lifetimes", "root_ca"): DURATIONS,
    ("lifetimes", "intermediate_ca"): DURATIONS, ("lifetimes", "leaf"): DURATIONS, ("renew_before",): DURATIONS,
    ("bootstrap_token_ttl",): DURATIONS, ("service_cidr",): NETWORKS, ("pod_cidr",): NETWORKS,
    ("api_endpoint", "port"): PORTS, ("nodes", 1, "ip"): ADDRESSES, ("nodes", 4, "ip"): ADDRESSES,
}


@st.composite
def edge_inventories(draw) -> str:
    """The example inventory with one to three fields set to a value at the edge of what it accepts."""
    data = copy.deepcopy(BASE)
    for path in draw(st.sets(st.sampled_from(sorted(EDGES, key=str)), min_size=1, max_size=3)):
        parent = data
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] = draw(EDGES[path])
    return yaml.safe_dump(data)


@settings(max_examples=50, deadline=None)
@given(edge_inventories())
def test_inventories_at_the_edges_load_whole_or_fail_with_file_line_field_and_fix(tmp_path_factory, text):
    from datetime import datetime, timezone

    from kthw.crypto import LAST_CERT_DATE
    from kthw.supply import pins as pins_table
    from kthw.versions import KUBERNETES, minor_of
    path = tmp_path_factory.mktemp("edges") / "cluster.yaml"
    path.write_text(text)
    try:
        inv = inventory.load(path)
    except InventoryError as err:
        assert str(err).startswith(f"{path}:") and err.line and err.field and err.problem and err.fix, str(err)
        return
    # What loads can be built: a release the render stage knows and the pins hold, a root
    # that ends before the last date a cert can carry, one address family.
    assert minor_of(inv.kubernetes_version) in KUBERNETES
    assert inv.kubernetes_version in pins_table.load(inv.vendor.site_pins).releases
    assert inv.lifetimes.leaf < inv.lifetimes.intermediate_ca <= inv.lifetimes.root_ca
    assert inv.lifetimes.root_ca <= LAST_CERT_DATE - datetime.now(timezone.utc)
    assert inv.bootstrap_token_ttl <= LAST_CERT_DATE - datetime.now(timezone.utc)
    assert {n.ip.version for n in inv.nodes} == {inv.service_cidr.version} == {inv.pod_cidr.version}
    assert 1 <= inv.api_endpoint.port <= 65535


@pytest.mark.slow
@pytest.mark.parametrize("old, new", [
    ('kubernetes_version: "1.36.0"', 'kubernetes_version: "1.31.0"'),
    ('kubernetes_version: "1.36.0"', 'kubernetes_version: "1.36.1"'),
    ("root_ca: 3650d", "root_ca: 99999999999d"),
    ("root_ca: 3650d", "root_ca: 9000y"),
    ("ip: 10.0.2.21, pod_cidr", "ip: 'fd00::21', pod_cidr"),
    ("{name: node-az2,", f"{{name: {LONG_NAME},"),
    ("port: 6443", 'port: "6443"'),
    (EXAMPLE, ""),
], ids=["unsupported minor", "unpinned", "overflowing lifetime", "past 9999", "IPv6 node IP", "64-character name",
        "quoted port", "empty file"])
def test_doit_stops_on_an_edge_with_exit_2_and_writes_nothing(project, old, new):
    project.write_inventory(EXAMPLE.replace(old, new, 1))
    run = project.doit("pki", check=False)
    output = run.stdout + run.stderr
    assert run.returncode == 2, output
    assert "Traceback" not in output and f"error: {project.inventory}:" in run.stderr and "fix: " in run.stderr, output
    assert not (project.root / "build").exists(), "not even doit's state database"
