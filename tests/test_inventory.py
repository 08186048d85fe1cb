"""Inventory validation: every bad input is a clear, located error; never a traceback."""

from __future__ import annotations

import copy
import ipaddress

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kthw import inventory
from kthw.errors import InventoryError

from conftest import REPO

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
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, prefix + (index,))


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
        except (KeyError, IndexError, TypeError):
            continue
    return yaml.safe_dump(data)


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
    try:
        inventory.loads(text)
    except InventoryError:
        pass


def test_bad_inventory_stops_doit_with_message_and_writes_nothing(project):
    project.write_inventory(EXAMPLE.replace("roles: [worker]", "roles: [wroker]", 1))
    run = project.doit("pki", check=False)
    assert run.returncode != 0
    assert "Traceback" not in run.stderr + run.stdout
    assert "unknown value 'wroker'" in run.stderr and "did you mean 'worker'" in run.stderr
    assert f"{project.inventory}:" in run.stderr
    assert not (project.root / "build" / "pki").exists()
    assert not (project.root / "build" / "nodes").exists()
