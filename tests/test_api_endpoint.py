"""api_endpoint.mode: what node-local and external give the nodes, and the installer's /etc/hosts block.

Real doit builds the example inventory; real bash runs the real install.sh into a
directory (--root); certs are read with cryptography, kubeconfigs with a YAML parser.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from support.bundles import example_project, fingerprint, install, unpack
from support.project import REPO, Project, fails_cleanly

from kthw import inventory
from kthw.errors import InventoryError

NAME = "kube-apiserver.kthw.internal"
NODE_URL = f"https://{NAME}:6443"
EXAMPLE = (REPO / "cluster.yaml").read_text()
EXAMPLE_API = EXAMPLE[EXAMPLE.index("api_endpoint:"):EXAMPLE.index("service_cidr:")]
WORKER = "worker-az1-a"
KUBE_PROXY, BOOTSTRAP = "/etc/k8s/kube-proxy/kubeconfig", "/etc/k8s/kubelet/bootstrap-kubeconfig"
HOSTS_FRAGMENT = "/etc/k8s/shared/apiserver-hosts"


def with_api(text: str) -> str:
    """The example inventory with another api_endpoint section."""
    return EXAMPLE.replace(EXAMPLE_API, text + "\n")


EXTERNAL = "api_endpoint: {mode: external, dns: k8s.homelab.lan, ip: 10.0.1.10, port: 8443}"


def _server(path: Path) -> str:
    return yaml.safe_load(path.read_text())["clusters"][0]["cluster"]["server"]


def _dns_sans(path: Path) -> list[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


# --- the inventory ------------------------------------------------------------------------------


def test_the_example_is_node_local_and_a_missing_section_is_too():
    example = inventory.loads(EXAMPLE).api_endpoint
    assert (example.mode, example.name, example.url) == ("node-local", NAME, NODE_URL)
    bare = inventory.loads(with_api("")).api_endpoint
    assert (bare.mode, bare.url, bare.dns, bare.ip) == ("node-local", NODE_URL, None, None)
    external = inventory.loads(with_api(EXTERNAL)).api_endpoint
    assert (external.mode, external.name, external.url) == ("external", None, "https://k8s.homelab.lan:8443")


@pytest.mark.parametrize("section, field, needles", [
    ("api_endpoint: {mode: vip}", "api_endpoint.mode", ["unknown value 'vip'", "node-local, external"]),
    ("api_endpoint: {port: 8443}", "api_endpoint.port", ["directly, on its port 6443, not 8443", "mode: external"]),
    ("api_endpoint: {mode: external, port: 6443}", "api_endpoint", ["neither 'dns' nor 'ip'"]),
    ("api_endpoint: {mode: external, name: api.lan, dns: k8s.lan}", "api_endpoint.name", ["mode is 'external'"]),
    ("api_endpoint: {name: k8s.homelab.lan, dns: k8s.homelab.lan}", "api_endpoint.name",
     ["both the node-local name and 'dns'", "only the nodes' /etc/hosts answers"]),
    ("api_endpoint: {name: api.cluster.local}", "api_endpoint.name", ["the cluster DNS answers"]),
    ("api_endpoint: {name: localhost}", "api_endpoint.name", ["every machine itself answers"]),
    ("api_endpoint: {name: node-az2}", "api_endpoint.name", ["also names the node 'node-az2'"]),
    ("api_endpoint: {name: worker-az3-a.homelab.lan}", "api_endpoint.name", ["names the node 'worker-az3-a'"]),
])
def test_a_bad_api_endpoint_names_the_field_and_the_fix(section, field, needles):
    with pytest.raises(InventoryError) as caught:
        inventory.loads(with_api(section))
    assert caught.value.field == field and caught.value.fix, str(caught.value)
    for needle in needles:
        assert needle in str(caught.value)


@pytest.mark.slow
def test_an_unknown_mode_stops_doit_with_exit_2_and_writes_nothing(project):
    project.write_inventory(with_api("api_endpoint:\n  mode: load-balanced\n"))
    run = project.doit("pki", check=False)
    fails_cleanly(run, "api_endpoint.mode", "unknown value 'load-balanced'", "use one of: node-local, external")
    assert run.returncode == 2
    assert not (project.root / "build").exists()


# --- what the build gives the nodes --------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Project:
    project = example_project(tmp_path_factory.mktemp("api-endpoint"))
    project.doit("pki", "secrets", "render")
    return project


@pytest.mark.slow
def test_node_side_kubeconfigs_name_the_node_local_endpoint_and_control_planes_keep_their_own(built):
    for worker in ("worker-az1-a", "worker-az2-a", "worker-az3-a"):
        assert _server(built.node_file(worker, KUBE_PROXY)) == NODE_URL
        assert _server(built.node_file(worker, BOOTSTRAP)) == NODE_URL
    for cp in ("node-az1", "node-az2", "node-az3"):
        assert _server(built.node_file(cp, "/etc/k8s/shared/admin.kubeconfig")) == NODE_URL
        assert _server(built.node_file(cp, "/etc/k8s/kube-controller-manager/kubeconfig")) == "https://127.0.0.1:6443"
        assert _server(built.node_file(cp, "/etc/k8s/kube-scheduler/kubeconfig")) == "https://127.0.0.1:6443"
        info = next(yaml.safe_load_all(built.node_file(cp, "/etc/k8s/bootstrap/cluster-info.yaml").read_text()))
        assert yaml.safe_load(info["data"]["kubeconfig"])["clusters"][0]["cluster"]["server"] == NODE_URL
        sans = _dns_sans(built.node_file(cp, "/etc/k8s/kube-apiserver/apiserver.crt"))
        assert NAME in sans and "k8s.homelab.lan" in sans


@pytest.mark.slow
def test_kubelet_and_kube_proxy_drop_a_silent_api_connection_within_15_seconds(built):
    for unit in ("kubelet", "kube-proxy"):
        text = built.node_file(WORKER, f"/etc/systemd/system/{unit}.service").read_text()
        lines = [line for line in text.splitlines() if line.startswith("Environment=")]
        assert lines == ["Environment=HTTP2_READ_IDLE_TIMEOUT_SECONDS=10 HTTP2_PING_TIMEOUT_SECONDS=5"], unit


def _hosts_lines(project: Project, node: str) -> list[str]:
    text = project.node_file(node, HOSTS_FRAGMENT).read_text()
    return [line for line in text.splitlines() if line and not line.startswith("#")]


@pytest.mark.slow
def test_each_node_lists_every_control_plane_its_own_or_its_zones_first(built):
    expected = {"worker-az1-a": ["10.0.1.11", "10.0.2.11", "10.0.3.11"],
                "worker-az2-a": ["10.0.2.11", "10.0.3.11", "10.0.1.11"],
                "worker-az3-a": ["10.0.3.11", "10.0.1.11", "10.0.2.11"],
                "node-az2": ["10.0.2.11", "10.0.3.11", "10.0.1.11"]}
    for node, addresses in expected.items():
        assert _hosts_lines(built, node) == [f"{address} {NAME}" for address in addresses], node


@pytest.mark.slow
def test_a_new_dns_name_reissues_only_the_api_server_certs(tmp_path):
    project = example_project(tmp_path)
    project.doit("pki", "secrets", "render")
    project.write_inventory(EXAMPLE.replace("dns: k8s.homelab.lan", "dns: api.homelab.lan"))
    run = project.doit("pki", "secrets", "render")
    assert sorted(run.executed) == [f"pki:node-az{i}/apiserver" for i in (1, 2, 3)]


@pytest.mark.slow
def test_external_mode_writes_no_hosts_fragment_and_uses_the_load_balancer(tmp_path):
    project = example_project(tmp_path, edit=lambda text: with_api(EXTERNAL))
    project.doit("pki", "secrets", "render")
    assert _server(project.node_file(WORKER, KUBE_PROXY)) == "https://k8s.homelab.lan:8443"
    assert not any(path == HOSTS_FRAGMENT for node in ("node-az1", WORKER) for path in project.node_files(node))
    assert NAME not in _dns_sans(project.node_file("node-az1", "/etc/k8s/kube-apiserver/apiserver.crt"))


# --- the installer's block in /etc/hosts ----------------------------------------------------------

OTHER_LINES = "127.0.0.1 localhost\n# the site's own entries\n10.0.9.9 nas.homelab.lan nas\n\n10.0.9.10 printer"


def _block(hosts: str) -> list[str]:
    lines = hosts.splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith("# BEGIN kthw-airgap"))
    end = lines.index("# END kthw-airgap")
    return lines[start + 1:end]


@pytest.fixture(scope="module")
def worker_bundle(tmp_path_factory):
    where = tmp_path_factory.mktemp("hosts")
    project = example_project(where / "project")
    project.doit(f"bundle:{WORKER}")
    return project, unpack(project, WORKER, where / "bundle")


def _root(tmp_path: Path, hosts: str | None = OTHER_LINES) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    if hosts is not None:
        (root / "etc/hosts").write_text(hosts)
        os.chmod(root / "etc/hosts", 0o644)
    return root


def _args(project: Project, root: Path) -> list[str]:
    return ["--root", str(root), "--no-start", "--any-hostname", "--fingerprint", fingerprint(project)]


@pytest.mark.slow
def test_the_installer_adds_the_block_keeps_every_other_line_and_a_rerun_leaves_the_file_alone(worker_bundle, tmp_path):
    project, bundle = worker_bundle
    root = _root(tmp_path)
    check = install(bundle, *_args(project, root), "--check", check=True)
    assert "/etc/hosts: would write the API servers' block" in check.stdout
    assert (root / "etc/hosts").read_text() == OTHER_LINES
    first = install(bundle, *_args(project, root), check=True)
    assert "/etc/hosts: API servers' block written (3 addresses of kube-apiserver.kthw.internal)" in first.stdout
    hosts = (root / "etc/hosts").read_text()
    assert hosts.startswith(OTHER_LINES + "\n")  # every line as it was, the last one ended
    assert _block(hosts) == [f"{ip} {NAME}" for ip in ("10.0.1.11", "10.0.2.11", "10.0.3.11")]
    assert oct((root / "etc/hosts").stat().st_mode & 0o777) == oct(0o644)
    assert not list((root / "etc").glob(".hosts.kthw-*"))
    before = (root / "etc/hosts").stat().st_mtime_ns
    second = install(bundle, *_args(project, root), check=True)
    assert "nothing changed" in second.stdout and "/etc/hosts" not in second.stdout
    assert (root / "etc/hosts").stat().st_mtime_ns == before


@pytest.mark.slow
def test_a_block_edited_by_hand_is_put_back_and_one_without_its_end_line_is_refused(worker_bundle, tmp_path):
    project, bundle = worker_bundle
    root = _root(tmp_path)
    install(bundle, *_args(project, root), check=True)
    hosts = root / "etc/hosts"
    good = hosts.read_text()
    hosts.write_text(good.replace("10.0.2.11 ", "10.0.2.99 "))
    assert "block written" in install(bundle, *_args(project, root), check=True).stdout
    assert hosts.read_text() == good
    hosts.write_text(good.replace("# END kthw-airgap\n", ""))
    broken = hosts.read_text()
    result = install(bundle, *_args(project, root))
    assert result.returncode != 0 and "has no '# END kthw-airgap' line" in result.stderr
    assert hosts.read_text() == broken


@pytest.mark.slow
def test_a_hosts_file_that_is_a_link_is_refused(worker_bundle, tmp_path):
    project, bundle = worker_bundle
    root = _root(tmp_path, hosts=None)
    (tmp_path / "elsewhere").write_text(OTHER_LINES)
    (root / "etc/hosts").symlink_to(tmp_path / "elsewhere")
    result = install(bundle, *_args(project, root))
    assert result.returncode != 0 and "is not a regular file (a link?)" in result.stderr
    assert (tmp_path / "elsewhere").read_text() == OTHER_LINES


@pytest.mark.slow
def test_switching_to_external_removes_the_block_and_the_fragment(tmp_path):
    project = example_project(tmp_path / "project")
    project.doit(f"bundle:{WORKER}")
    node_local = unpack(project, WORKER, tmp_path / "v1")
    root = _root(tmp_path)
    install(node_local, *_args(project, root), check=True)
    project.write_inventory(with_api(EXTERNAL))
    project.doit(f"bundle:{WORKER}")
    external = unpack(project, WORKER, tmp_path / "v2")
    result = install(external, *_args(project, root), check=True)
    assert f"remove: {HOSTS_FRAGMENT}" in result.stdout
    assert "/etc/hosts: API servers' block removed (the API endpoint is external)" in result.stdout
    assert (root / "etc/hosts").read_text() == OTHER_LINES + "\n"
    assert not (root / HOSTS_FRAGMENT.lstrip("/")).exists()
    assert _server(root / KUBE_PROXY.lstrip("/")) == "https://k8s.homelab.lan:8443"
