"""The Vault CA backend against a real OpenBao dev server (one per test run, conftest).

`doit vault_setup` prepares the server and `doit pki` issues the full cert set of a 3+2 node
inventory through it. The checks both backends must pass (the cert fields and hierarchy in
test_pki, a real three-member etcd cluster in test_etcd_tls, real kubectl in test_kubectl_tls)
run on this same build through conftest's pki_build; here is what is Vault's own.
"""

from __future__ import annotations

import base64
import contextlib
import json
import stat
from datetime import datetime, timedelta, timezone

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from support.apiserver import stand_in_apiservers, whoami
from support.project import Project, fails_cleanly, loopback_inventory, system_clock_at
from support.vault import DOMAIN_MOUNTS, ROOT_MOUNT, no_vault_env, policy_token, vault_section

from kthw.crypto import (
    CertSpec,
    build_certificate,
    certs_pem,
    generate_key,
    load_private_key,
    private_key_pem,
    same_public_key,
)
from kthw.inventory import CASettings
from kthw.kubeconfig import kubeconfig
from kthw.pki.catalogue import leaf
from kthw.pki.vault.policy import role_of

pytestmark = pytest.mark.slow  # end to end (see pyproject's markers)

# Certs whose names are a node's have one role per node (<cert>.<node>); the others one per class.
CONTROL_PLANES, WORKERS = ("cp1", "cp2", "cp3"), ("worker1", "worker2")
ROLES = {"kubernetes": {"apiserver-kubelet-client", "admin", "controller-manager", "scheduler", "kube-proxy",
                        *(f"apiserver.{n}" for n in CONTROL_PLANES), *(f"kubelet-client.{n}" for n in WORKERS),
                        *(f"kubelet-serving.{n}" for n in WORKERS)},
         "etcd": {"apiserver-etcd-client", "etcd-healthcheck-client", *(f"etcd-server.{n}" for n in CONTROL_PLANES),
                  *(f"etcd-peer.{n}" for n in CONTROL_PLANES)},
         "front-proxy": {"front-proxy-client"}}


# This module's tests run against the session's Vault server and its build (conftest).


@pytest.fixture(scope="module")
def bao(vault_dev_server):
    return vault_dev_server


@pytest.fixture(scope="module")
def setup_runs(vault_setup_runs):
    return vault_setup_runs


@pytest.fixture(scope="module")
def build_env(vault_build_env) -> dict:
    return vault_build_env


@pytest.fixture(scope="module")
def built_loopback(vault_build) -> Project:
    """In this module the loopback build is the one Vault issued."""
    return vault_build


@pytest.fixture(scope="module")
def apiserver(vault_build):
    """The stand-in API servers (support/apiserver.py) on the Vault build."""
    with stand_in_apiservers(vault_build) as servers:
        yield vault_build, servers


def new_build(bao, tmp_path, env: dict, **inventory) -> Project:
    """A project of its own, prepared by the admin (vault_setup makes its kubelet signer)."""
    project = Project(tmp_path)
    project.write_inventory(loopback_inventory(**inventory, extra=vault_section(bao)))
    project.doit("vault_setup", env=env)
    return project


def test_vault_setup_creates_the_mounts_cas_and_roles(bao, setup_runs):
    _, _, (first, state), _ = setup_runs
    for mount in (ROOT_MOUNT, *DOMAIN_MOUNTS.values()):
        assert state["mounts"][f"{mount}/"] == "pki"
        assert f"created mount {mount}" in first.stdout
    root = x509.load_pem_x509_certificate(state[ROOT_MOUNT].encode())
    root.verify_directly_issued_by(root)
    for domain, mount in DOMAIN_MOUNTS.items():
        cert = x509.load_pem_x509_certificate(state[mount].encode())
        assert cert.subject.rfc4514_string() == f"CN=testcluster-{domain}-ca"
        cert.verify_directly_issued_by(root)
        roles = {key.split("/roles/")[1] for key in state if key.startswith(f"{mount}/roles/")}
        assert roles == ROLES[domain]
    # A role allows exactly its names in this inventory (a node's, for a node's cert), its usages and its O.
    serving = state[f"{DOMAIN_MOUNTS['kubernetes']}/roles/kubelet-serving.worker1"]
    assert set(serving["allowed_domains"]) == {"system:node:worker1", "worker1"}
    assert set(serving["allowed_ip_sans_cidr"]) == {"127.0.0.11/32"}
    assert (serving["server_flag"], serving["client_flag"], serving["organization"]) == (True, False,
                                                                                       ["system:nodes"])
    assert not serving["allow_any_name"] and not serving["allow_subdomains"]
    admin = state[f"{DOMAIN_MOUNTS['kubernetes']}/roles/admin"]
    assert admin["allowed_domains"] == ["kubernetes-admin"] and admin["organization"] == ["system:masters"]
    assert not admin["allow_ip_sans"]


def test_a_second_vault_setup_changes_nothing(setup_runs):
    _, _, (_, after_first), (second, after_second) = setup_runs
    assert after_second == after_first
    assert "nothing changed" in second.stdout
    assert "created" not in second.stdout and "generated" not in second.stdout


def test_no_ca_key_of_vault_is_on_disk_and_the_ca_copies_match_vault(bao, built_loopback):
    ca_dir = built_loopback.root / "build" / "pki" / "ca"
    assert sorted(p.name for p in ca_dir.iterdir()) == sorted(
        ["root.crt", "kubernetes.crt", "etcd.crt", "front-proxy.crt", "kubelet-signer.crt", "kubelet-signer.key"])
    client = bao.client()
    for name, mount in {"root": ROOT_MOUNT, **DOMAIN_MOUNTS}.items():
        assert (ca_dir / f"{name}.crt").read_text().strip() == client.read(f"{mount}/cert/ca")["data"][
            "certificate"].strip()


def test_every_leaf_key_was_made_locally_and_matches_its_cert(built_loopback):
    # Vault only ever saw CSRs: the key on disk is the one the cert certifies.
    leaves = list((built_loopback.root / "build" / "pki" / "nodes").rglob("*.key"))
    assert len(leaves) == 3 * 10 + 2 * 3  # 3 control-plane+etcd nodes, 2 workers with static kubelet certs
    for key_path in leaves:
        cert = x509.load_pem_x509_certificates(key_path.with_suffix(".crt").read_bytes())[0]
        assert same_public_key(load_private_key(key_path), cert.public_key()), key_path


def test_kubelet_signer_is_a_local_key_signed_by_the_vault_root(built_loopback):
    def node(path):
        return built_loopback.node_file("cp1", path)

    ca_dir = built_loopback.root / "build" / "pki" / "ca"
    root = x509.load_pem_x509_certificate((ca_dir / "root.crt").read_bytes())
    signer = x509.load_pem_x509_certificates(node("etc/k8s/kube-controller-manager/cluster-signing-ca.crt")
                                             .read_bytes())
    assert len(signer) == 1 and signer[0].subject.rfc4514_string() == "CN=testcluster-kubelet-signer-ca"
    signer[0].verify_directly_issued_by(root)
    assert signer[0].extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    key_file = node("etc/k8s/kube-controller-manager/cluster-signing-ca.key")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert same_public_key(load_private_key(key_file), signer[0].public_key())
    # The API server's client CA holds both intermediates of the kubernetes domain, never the root.
    bundle = x509.load_pem_x509_certificates(node("etc/k8s/shared/kubernetes-ca.crt").read_bytes())
    assert [c.subject.rfc4514_string() for c in bundle] == ["CN=testcluster-kubernetes-ca",
                                                           "CN=testcluster-kubelet-signer-ca"]
    for domain in ("etcd", "front-proxy"):
        only = x509.load_pem_x509_certificates(node(f"etc/k8s/shared/{domain}-ca.crt").read_bytes())
        assert [c.subject.rfc4514_string() for c in only] == [f"CN=testcluster-{domain}-ca"]
    # Kubeconfigs verify the API server: its issuer only.
    config = yaml.safe_load(node("etc/k8s/shared/admin.kubeconfig").read_text())
    ca_data = base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"])
    assert [c.subject.rfc4514_string() for c in x509.load_pem_x509_certificates(ca_data)] == [
        "CN=testcluster-kubernetes-ca"]


def test_a_kubelet_cert_from_the_cluster_signer_logs_in_to_the_api_server(apiserver, tmp_path):
    # What kube-controller-manager does with an approved kubelet CSR: sign it with
    # --cluster-signing-cert-file/--cluster-signing-key-file. The stand-in API server
    # trusts the node's kubernetes-ca.crt, as kube-apiserver's --client-ca-file would.
    project, [(server, seen), _] = apiserver
    signer_cert = project.node_file("cp1", "etc/k8s/kube-controller-manager/cluster-signing-ca.crt")
    signer_key = load_private_key(project.node_file("cp1", "etc/k8s/kube-controller-manager/cluster-signing-ca.key"))
    issuer = x509.load_pem_x509_certificate(signer_cert.read_bytes())
    key = generate_key("ecdsa-p256")
    spec = CertSpec("kubelet-client", "system:node:worker9", ("system:nodes",), frozenset({"client"}), (), (),
                    timedelta(days=30), "ecdsa-p256")
    cert = build_certificate(spec, key.public_key(), datetime.now(timezone.utc), issuer, signer_key)
    admin = yaml.safe_load(project.node_file("cp1", "etc/k8s/shared/admin.kubeconfig").read_text())
    ca_pem = base64.b64decode(admin["clusters"][0]["cluster"]["certificate-authority-data"])
    path = tmp_path / "kubelet.kubeconfig"
    path.write_bytes(kubeconfig("testcluster", "https://localhost:6443", ca_pem, "system:node:worker9",
                                cert_pem=certs_pem(cert), key_pem=private_key_pem(key)))
    result = whoami(path, f"https://127.0.0.1:{server.server_address[1]}")
    assert result.returncode == 0, result.stderr
    assert seen[-1][1:] == ("system:node:worker9", ["system:nodes"])


def test_a_rerun_asks_vault_for_the_ca_certs_and_changes_no_file(build_env, built_loopback):
    before = built_loopback.snapshot()
    again = built_loopback.doit("pki", env=build_env)
    assert sorted(again.executed) == ["pki:ca-etcd", "pki:ca-front-proxy", "pki:ca-kubernetes", "pki:ca-root"]
    assert again.stdout.strip() == ""
    assert built_loopback.snapshot() == before


def test_the_expiry_report_lists_the_kubelet_signer_and_says_where_vault_cas_renew(build_env, built_loopback):
    env = build_env
    rows = {(r["node"], r["cert"]): r for r in json.loads(built_loopback.doit("expiry", "--json", env=env).stdout)}
    assert {("-", name) for name in ("root", "kubernetes", "etcd", "front-proxy", "kubelet-signer")} <= set(rows)
    assert all(row["state"] == "ok" for row in rows.values())
    # 4 years and 11 months on, the CAs are due; each note says who renews it.
    late = (datetime.now(timezone.utc) + timedelta(days=1795)).isoformat(timespec="seconds")
    due = {(r["node"], r["cert"]): r for r in json.loads(
        built_loopback.doit("expiry", "--json", "--at", late, env=env, check=False).stdout)}
    assert due[("-", "kubernetes")]["state"] == "renew soon" and "in Vault" in due[("-", "kubernetes")]["note"]
    assert "renewed by doit" in due[("-", "kubelet-signer")]["note"]


def _issued_by_vault(bao) -> int:
    """How many certs the intermediates have signed so far."""
    client = bao.client()
    return sum(len((client.list(f"{mount}/certs") or {"data": {"keys": []}})["data"]["keys"])
               for mount in DOMAIN_MOUNTS.values())


def _age_every_leaf(bao, project: Project, days_left: int) -> None:
    """Have Vault sign every leaf again as if it had been issued a year ago: through a copy of
    its role that backdates the cert, so that it ends in ``days_left`` days. Same key, names
    and lifetime; as a year of real time would leave the build."""
    client = bao.client()
    lifetime = timedelta(days=365)
    settings = CASettings(backend="vault", address=bao.address)
    for cert_path in sorted((project.root / "build/pki/nodes").rglob("*.crt")):
        name = cert_path.stem
        mount = DOMAIN_MOUNTS[leaf(name).issuer]
        role = client.read(f"{mount}/roles/{role_of(settings, name, cert_path.parent.name)}")["data"]
        client.write_data(f"{mount}/roles/aged-{name}", data={
            **role, "not_before_duration": int((lifetime - timedelta(days=days_left)).total_seconds())})
        old = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
        key = load_private_key(cert_path.with_suffix(".key"))
        builder = x509.CertificateSigningRequestBuilder().subject_name(old.subject)
        with contextlib.suppress(x509.ExtensionNotFound):  # a cert without SANs keeps none
            builder = builder.add_extension(old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value,
                                            critical=False)
        csr = builder.sign(key, old.signature_hash_algorithm).public_bytes(serialization.Encoding.PEM).decode()
        signed = client.write_data(f"{mount}/sign/aged-{name}", data={
            "csr": csr, "ttl": f"{days_left * 86400}s", "exclude_cn_from_sans": True, "format": "pem"})["data"]
        cert_path.write_text(signed["certificate"].strip() + "\n" + signed["issuing_ca"].strip() + "\n")


def test_renewal_asks_vault_again_and_keeps_the_keys(bao, setup_runs, build_env, tmp_path):
    from support.pki import assert_build_is_true
    project = new_build(bao, tmp_path, setup_runs[1], workers=1)
    env = build_env
    project.doit("pki", env=env)
    keys = {k: v for k, v in project.snapshot("build/pki").items() if k.endswith(".key")}
    # A year on: every leaf (365 days) has ten days left, inside the 30-day window; the CAs do not.
    _age_every_leaf(bao, project, days_left=10)
    peer = project.root / "build/pki/nodes/cp2/etcd-peer.crt"
    old = x509.load_pem_x509_certificate(peer.read_bytes())
    run = project.doit("pki", env=env)
    renewed = {name for name in run.executed if not name.startswith("pki:ca-") and "/" in name
               and not name.endswith((".kubeconfig", "/trust"))}
    assert len(renewed) == 3 * 10 + 2 and "pki:cp2/etcd-peer" in renewed
    assert {k: v for k, v in project.snapshot("build/pki").items() if k.endswith(".key")} == keys
    new = x509.load_pem_x509_certificates(peer.read_bytes())
    assert new[0].serial_number != old.serial_number and new[0].public_key() == old.public_key()
    assert new[0].not_valid_after_utc - datetime.now(timezone.utc) > timedelta(days=360)
    assert_build_is_true(project)
    # Renewed on Vault's clock, which is this machine's: the next run has nothing to do.
    again = project.doit("pki", env=env)
    assert [name for name in again.executed if not name.startswith("pki:ca-")] == []


def test_a_later_kthw_now_never_makes_vault_sign(bao, setup_runs, build_env, tmp_path):
    """A run with KTHW_NOW set would date nothing by it (Vault signs on its own clock) and
    renew the same certs on every run: it refuses before asking Vault for anything."""
    project = new_build(bao, tmp_path, setup_runs[1], workers=1)
    env = build_env
    project.doit("pki", env=env)
    before, signed = project.snapshot(), _issued_by_vault(bao)
    later = (datetime.now(timezone.utc) + timedelta(days=340)).date().isoformat()
    for _ in range(2):
        run = project.doit("pki", env={**env, "KTHW_NOW": later}, check=False)
        fails_cleanly(run, f"KTHW_NOW={later} is set", "Nothing was written", f"doit expiry --at {later}")
        assert _issued_by_vault(bao) == signed, "Vault was asked to sign"
        assert project.snapshot() == before


def test_a_workstation_clock_ahead_of_vault_stops_without_writing(bao, setup_runs, build_env, tmp_path):
    """This machine's clock says a year later than Vault's: every leaf looks due, and what
    Vault signs (dated by its clock) would look due again at once. The first such cert stops
    the run unwritten, so no run signs more than one, and none loops."""
    project = new_build(bao, tmp_path, setup_runs[1], workers=1)
    env = build_env
    project.doit("pki", env=env)
    before, signed = project.snapshot(), _issued_by_vault(bao)
    ahead = system_clock_at(datetime.now(timezone.utc) + timedelta(days=340))
    for attempt in (1, 2):
        run = project.doit("pki", env={**env, **ahead}, check=False)
        fails_cleanly(run, "would have to be issued again at once", "nothing was written",
                      "Vault signs on its own clock")
        assert _issued_by_vault(bao) == signed + attempt
        assert project.snapshot() == before


def test_a_role_that_forbids_a_new_san_fails_clearly_until_updated(bao, setup_runs, tmp_path):
    # Own roles (naming.role) and build policy, so the module's other builds keep theirs.
    _, admin_env, _, _ = setup_runs
    project = Project(tmp_path)
    section = vault_section(bao, extra="naming: {role: 'san-test-{cert}', policy: san-test-build}")
    text = loopback_inventory(workers=1, extra=section)
    project.write_inventory(text)
    project.doit("vault_setup", env=admin_env)
    env = no_vault_env(VAULT_TOKEN=policy_token(bao, "san-test-build"))
    project.doit("pki", env=env)
    project.write_inventory(text.replace("ip: 127.0.0.11,", "ip: 127.0.0.11, extra_sans: [w1.example.lan],"))
    before = project.snapshot()
    run = project.doit("pki", env=env, check=False)
    fails_cleanly(run, f"Vault at {bao.address}: the role refuses the request at "
                       f"{DOMAIN_MOUNTS['kubernetes']}/sign/san-test-kubelet-serving.worker1: subject alternate name "
                       "w1.example.lan not allowed by this role; if the inventory changed, update the roles with "
                       "'doit vault_setup update_roles=1'")
    assert project.snapshot() == before
    report = project.doit("vault_setup", env=admin_env)
    assert (f"role {DOMAIN_MOUNTS['kubernetes']}/roles/san-test-kubelet-serving.worker1 differs from what the "
            "inventory needs") in report.stdout and "w1.example.lan" in report.stdout
    assert "left as it is" in report.stdout
    assert project.doit("pki", env=env, check=False).returncode != 0, "a report alone changes no role"
    updated = project.doit("vault_setup", "update_roles=1", env=admin_env)
    assert f"updated role {DOMAIN_MOUNTS['kubernetes']}/roles/san-test-kubelet-serving.worker1" in updated.stdout
    project.doit("pki", env=env)
    cert = x509.load_pem_x509_certificate(project.node_file("worker1", "etc/k8s/kubelet/kubelet-serving.crt")
                                          .read_bytes())
    assert "w1.example.lan" in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.DNSName)


def test_a_missing_mount_points_at_vault_setup(bao, build_env, tmp_path):
    # As the build identity: Vault answers "permission denied" for a mount it does not have.
    env = build_env
    project = Project(tmp_path)
    project.write_inventory(loopback_inventory(workers=1, extra=vault_section(
        bao, extra="naming: {intermediate_mount: 'other_pki_{domain}'}")))
    run = project.doit("pki", env=env, check=False)
    fails_cleanly(run, f"Vault at {bao.address}: mount 'other_pki_", "does not exist", "run 'doit vault_setup'")
    assert not (project.root / "build" / "nodes").exists()
    assert not list((project.root / "build" / "pki").rglob("*.key"))


def test_switching_a_local_build_to_vault_is_refused_and_touches_nothing(bao, setup_runs, tmp_path):
    _, env, _, _ = setup_runs
    project = Project(tmp_path)
    text = loopback_inventory(workers=1)
    project.write_inventory(text)
    project.doit("pki")
    before = project.snapshot()
    project.write_inventory(text + vault_section(bao) + "\n")
    run = project.doit("pki", env=env, check=False)
    fails_cleanly(run, "belongs to a local root CA, but the inventory's CA backend is vault")
    assert project.snapshot() == before


def test_vault_setup_refuses_the_local_backend(project):
    project.write_inventory(loopback_inventory(workers=1))
    run = project.doit("vault_setup", check=False)
    fails_cleanly(run, "vault_setup only applies with")


def test_a_missing_role_points_at_vault_setup(bao, setup_runs, tmp_path):
    _, env, _, _ = setup_runs
    project = Project(tmp_path)
    project.write_inventory(loopback_inventory(workers=1, extra=vault_section(
        bao, extra="naming: {role: 'not-set-up-{cert}'}")))
    run = project.doit("pki:cp1/etcd-peer", env=env, check=False)
    fails_cleanly(run, f"Vault at {bao.address}: {DOMAIN_MOUNTS['etcd']}/sign/not-set-up-etcd-peer.cp1: unknown role: "
                       "not-set-up-etcd-peer.cp1; run 'doit vault_setup'")
    assert not (project.root / "build/pki/nodes/cp1/etcd-peer.key").exists()


def test_a_root_mount_that_would_cut_the_root_short_is_refused(bao, setup_runs, tmp_path):
    # A pre-existing, empty mount (made by someone else) whose max_lease_ttl is 30 days:
    # vault_setup generates no 30-day root in it, and says what to change.
    _, env, _, _ = setup_runs
    bao.client().sys.enable_secrets_engine("pki", path="short_root", config={"max_lease_ttl": "720h"})
    project = Project(tmp_path)
    project.write_inventory(loopback_inventory(workers=1, extra=vault_section(
        bao, extra="naming: {root_mount: short_root, intermediate_mount: 'short_pki_{domain}'}")))
    run = project.doit("vault_setup", env=env, check=False)
    fails_cleanly(run, f"Vault at {bao.address}: mount 'short_root' allows at most 2592000s (max_lease_ttl), "
                       "less than the root CA's lifetime (315360000s); nothing was generated: raise it with "
                       "'bao secrets tune -max-lease-ttl=315360000s short_root'")
    assert "short_pki_etcd/" not in bao.client().sys.list_mounted_secrets_engines()["data"]


def test_a_cert_vault_hands_out_shorter_than_asked_is_not_written(bao, setup_runs, tmp_path):
    # Someone lowered a role's max_ttl in Vault: the cert would be re-issued on every run,
    # so the build refuses it, and vault_setup names the drift.
    _, env, _, _ = setup_runs
    project = Project(tmp_path)
    project.write_inventory(loopback_inventory(workers=1, extra=vault_section(
        bao, extra="naming: {role: 'ttl-test-{cert}', policy: ttl-test-build}")))
    project.doit("vault_setup", env=env)
    role = f"{DOMAIN_MOUNTS['etcd']}/roles/ttl-test-etcd-peer.cp1"
    client = bao.client()
    client.write_data(role, data={**client.read(role)["data"], "max_ttl": "720h"})
    run = project.doit("pki:cp1/etcd-peer", env=env, check=False)
    fails_cleanly(run, f"{DOMAIN_MOUNTS['etcd']}/sign/ttl-test-etcd-peer.cp1 issued a cert that differs from what "
                       "was asked (lifetime changed); nothing was written")
    assert not (project.root / "build/pki/nodes/cp1/etcd-peer.crt").exists()
    report = project.doit("vault_setup", env=env)
    assert f"role {role} differs from what the inventory needs (max_ttl: 2592000 -> 31536000)" in report.stdout
