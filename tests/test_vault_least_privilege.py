"""Least privilege with a real OpenBao dev server: what the build identity may and may not do.

The admin (root token here) runs `doit vault_setup`; the build identity holds only the
policy vault_setup wrote (BUILD_POLICY, without Vault's default policy). Against the real
server: it cannot make a CA, a node's role refuses another node's names, a role refuses
a key of another type, a hand-edited role is reported field by field and put back, roles
of a removed node go, no login token outlives its run, and a missing or expired CA stops
the build with the admin command to run, writing nothing.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from datetime import datetime, timedelta, timezone

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from hvac import exceptions as hvac_errors
from support.project import REPO, Project, fails_cleanly, loopback_inventory, system_clock_at
from support.vault import (
    BUILD_POLICY,
    dev_server,
    no_vault_env,
    policy_token,
    project_files,
    token_accessors,
    vault_section,
)

from kthw.crypto import BACKDATE, load_private_key, same_public_key
from kthw.inventory import CASettings
from kthw.pki.vault.client import Session, VaultError
from kthw.pki.vault.policy import ROLE_DEFAULTS

pytestmark = pytest.mark.slow  # end to end (see pyproject's markers)

KUBERNETES = "k8s_pki_intermediate_ca_for_service_kubernetes"
ETCD = "k8s_pki_intermediate_ca_for_service_etcd"
ROOT_MOUNT = "k8s_pki_root_ca"


def inventory(bao, extra: str = "", workers: int = 2) -> str:
    """3 control planes (cp2 with extra SANs) and workers with static kubelet client certs."""
    text = loopback_inventory(workers=workers, kubelet_credentials="static",
                              extra=vault_section(bao, extra=extra))
    return text.replace("ip: 127.0.0.2}", "ip: 127.0.0.2, extra_sans: [cp2.example.lan, 10.9.9.2]}")


@pytest.fixture(scope="module")
def bao(tmp_path_factory):
    with dev_server(tmp_path_factory.mktemp("bao")) as server:
        yield server


@pytest.fixture(scope="module")
def admin_env(bao) -> dict:
    return no_vault_env(VAULT_TOKEN=bao.root_token)


@pytest.fixture(scope="module")
def admin(bao, admin_env, tmp_path_factory) -> Project:
    """The admin's project: vault_setup ran in it (CAs, roles, build policy, kubelet signer)."""
    project = Project(tmp_path_factory.mktemp("admin"))
    project.write_inventory(inventory(bao))
    project.doit("vault_setup", env=admin_env)
    return project


@pytest.fixture(scope="module")
def build_token(bao, admin) -> str:
    return policy_token(bao, BUILD_POLICY)


@pytest.fixture(scope="module")
def built(admin, build_token) -> Project:
    admin.doit("pki", env=no_vault_env(VAULT_TOKEN=build_token))
    return admin


def csr(common_name: str, dns=(), ips=(), key=None, uris=()) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
    names = [x509.DNSName(n) for n in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips] \
        + [x509.UniformResourceIdentifier(u) for u in uris]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM).decode()


def sign(bao, token: str, path: str, **data):
    return bao.client(token).write_data(path, data={"format": "pem", "exclude_cn_from_sans": True, **data})


def refused(bao, token: str, path: str, **data) -> str:
    """The server's reason for refusing the request (a 400 from the role)."""
    with pytest.raises(hvac_errors.InvalidRequest) as caught:
        sign(bao, token, path, **data)
    return str(caught.value)


# --- the policies ------------------------------------------------------------------------


def readme_hcl() -> list[str]:
    text = (REPO / "README.md").read_text()
    return [block.strip() for block in re.findall(r"```hcl\n(.*?)```", text, re.S)]


def test_the_build_policy_on_the_server_is_the_printed_one_and_the_readme_shows_the_same(bao, admin, tmp_path):
    printed = admin.doit("vault_setup", "policies=1").stdout.strip().split("\n\n")
    assert len(printed) == 2 and printed[0].startswith(f"# {BUILD_POLICY}:")
    on_server = bao.client().read(f"sys/policies/acl/{BUILD_POLICY}")["data"]["policy"]
    assert on_server.strip() == printed[0].strip()  # what the tests' build identity holds
    assert "cert/ca" not in printed[0].replace("(<mount>/cert/ca)", ""), "CA certs are public: no grant"
    for forbidden in ("root/", "roles/", "intermediate/", "issue/", "sign-verbatim", "/sign/*"):
        assert forbidden not in printed[0]
    # The README shows the policies of the example inventory, exactly as printed.
    example = yaml.safe_load((REPO / "cluster.yaml").read_text())
    example["ca"] = {"backend": "vault", "address": "https://vault.homelab.lan:8200"}
    project = Project(tmp_path)
    project.write_inventory(yaml.safe_dump(example, sort_keys=False))
    shown = project.doit("vault_setup", "policies=1").stdout.strip().split("\n\n")
    assert [block.strip() for block in shown] == readme_hcl()


def test_the_build_identity_can_make_no_ca_and_change_no_role(bao, built, build_token):
    evil_key = ec.generate_private_key(ec.SECP256R1())
    evil = csr("evil-ca", key=evil_key)
    for path, data in [(f"{ROOT_MOUNT}/root/sign-intermediate", {"csr": evil, "common_name": "evil-ca"}),
                       (f"{KUBERNETES}/root/sign-intermediate", {"csr": evil, "common_name": "evil-ca"}),
                       (f"{ROOT_MOUNT}/root/generate/internal", {"common_name": "evil-ca"}),
                       (f"{KUBERNETES}/intermediate/generate/internal", {"common_name": "evil-ca"}),
                       (f"{KUBERNETES}/sign-verbatim", {"csr": evil}),
                       (f"{KUBERNETES}/issue/admin", {"common_name": "kubernetes-admin"}),
                       (f"{KUBERNETES}/roles/admin", {"allow_any_name": True}),
                       (f"{KUBERNETES}/roles/evil", {"allow_any_name": True}),
                       (f"sys/policies/acl/{BUILD_POLICY}", {"policy": 'path "*" { capabilities = ["sudo"] }'}),
                       ("sys/mounts/evil", {"type": "pki"})]:
        with pytest.raises(hvac_errors.Forbidden):
            bao.client(build_token).write_data(path, data=data)
    with pytest.raises(hvac_errors.Forbidden):
        bao.client(build_token).read(f"{KUBERNETES}/roles/admin")
    # What it is for still works: a leaf of its own class.
    signed = sign(bao, build_token, f"{KUBERNETES}/sign/admin", csr=csr("kubernetes-admin"))
    assert x509.load_pem_x509_certificate(signed["data"]["certificate"].encode()).subject.rfc4514_string() == \
        "CN=kubernetes-admin,O=system:masters"


def test_a_node_s_role_refuses_another_node_s_names(bao, built, build_token):
    role = f"{KUBERNETES}/sign/kubelet-serving.worker1"
    assert "common name system:node:worker2 not allowed" in refused(bao, build_token, role,
                                                                    csr=csr("system:node:worker2", ["worker2"]))
    assert "worker2 not allowed" in refused(bao, build_token, role, csr=csr("system:node:worker1", ["worker2"]))
    assert "127.0.0.12" in refused(bao, build_token, role,
                                   csr=csr("system:node:worker1", ["worker1"], ["127.0.0.12"]))
    assert "system:node:worker2 not allowed" in refused(bao, build_token, f"{KUBERNETES}/sign/kubelet-client.worker1",
                                                        csr=csr("system:node:worker2"))
    assert "common name cp2 not allowed" in refused(bao, build_token, f"{ETCD}/sign/etcd-peer.cp1",
                                                    csr=csr("cp2", ["cp2"]))
    # The API server role of cp1 refuses cp2's extra SANs; cp2's own role signs them.
    apiserver = f"{KUBERNETES}/sign/apiserver.cp1"
    assert "cp2.example.lan not allowed" in refused(bao, build_token, apiserver,
                                                    csr=csr("kube-apiserver", ["cp1", "cp2.example.lan"]))
    assert "10.9.9.2" in refused(bao, build_token, apiserver, csr=csr("kube-apiserver", ["cp1"], ["10.9.9.2"]))
    sign(bao, build_token, f"{KUBERNETES}/sign/apiserver.cp2", csr=csr("kube-apiserver", ["cp2.example.lan"],
                                                                        ["10.9.9.2"]))
    # A class role names no node.
    assert "not allowed" in refused(bao, build_token, f"{KUBERNETES}/sign/admin", csr=csr("system:node:worker1"))
    # The good request goes through.
    sign(bao, build_token, role, csr=csr("system:node:worker1", ["worker1"], ["127.0.0.11"]))


def test_a_role_refuses_a_key_the_inventory_does_not_use_and_dates_or_names_it_does_not_give(bao, built,
                                                                                          build_token):
    peer = f"{ETCD}/sign/etcd-peer.cp1"
    assert "role requires keys of type ec" in refused(
        bao, build_token, peer, csr=csr("cp1", ["cp1"], key=ed25519.Ed25519PrivateKey.generate()))
    assert "role requires keys of type ec" in refused(
        bao, build_token, peer, csr=csr("cp1", ["cp1"], key=rsa.generate_private_key(65537, 2048)))
    assert "not_after cannot be provided" in refused(bao, build_token, peer, csr=csr("cp1"),
                                                     not_after="2099-01-01T00:00:00Z")
    assert "not_before cannot be provided" in refused(bao, build_token, peer, csr=csr("cp1"),
                                                      not_before="2001-01-01T00:00:00Z")
    assert "URI Subject Alternative Names are not allowed" in refused(bao, build_token, peer,
                                                                      csr=csr("cp1", uris=["spiffe://x/y"]))
    assert "not allowed" in refused(bao, build_token, peer, csr=csr("cp1"), user_ids=["root"])
    assert "not allowed" in refused(bao, build_token, peer, csr=csr("a@cp1"))


def test_every_field_of_every_role_is_kthw_s_and_as_it_wants(bao, built):
    client = bao.client()
    for mount in (KUBERNETES, ETCD, "k8s_pki_intermediate_ca_for_service_front_proxy"):
        for role in client.list(f"{mount}/roles")["data"]["keys"]:
            data = client.read(f"{mount}/roles/{role}")["data"]
            assert set(data) == set(ROLE_DEFAULTS), f"{role}: OpenBao has fields kthw does not write"
            assert data["cn_validations"] == ["hostname"] and data["not_before_duration"] == BACKDATE.total_seconds()
            assert (data["key_type"], data["key_bits"]) == ("ec", 256)


def test_a_hand_edited_role_is_reported_by_field_and_update_roles_puts_every_field_back(bao, admin, admin_env,
                                                                                       build_token, built):
    client = bao.client()
    path = f"{KUBERNETES}/roles/kubelet-serving.worker1"
    wanted = client.read(path)["data"]
    patched = {**wanted, "ext_key_usage_oids": ["1.3.6.1.5.5.7.3.3"], "not_after_bound": "permit",
               "allowed_domains": [*wanted["allowed_domains"], "evil.example"], "allow_subdomains": True}
    client.write_data(path, data=patched)
    sign(bao, build_token, f"{KUBERNETES}/sign/kubelet-serving.worker1", csr=csr("system:node:worker1",
                                                                                 ["evil.example"]))
    report = admin.doit("vault_setup", env=admin_env).stdout
    line = next(line for line in report.splitlines() if line.startswith(f"role {path} "))
    for field in ("ext_key_usage_oids: ['1.3.6.1.5.5.7.3.3'] -> []", "not_after_bound: 'permit' -> 'forbid'",
                  "allowed_domains:", "allow_subdomains: True -> False"):
        assert field in line, line
    assert "left as it is" in line
    assert client.read(path)["data"]["ext_key_usage_oids"] == ["1.3.6.1.5.5.7.3.3"], "a report changes nothing"
    updated = admin.doit("vault_setup", "update_roles=1", env=admin_env).stdout
    assert f"updated role {path} (" in updated
    assert client.read(path)["data"] == wanted
    assert "evil.example not allowed" in refused(bao, build_token, f"{KUBERNETES}/sign/kubelet-serving.worker1",
                                                 csr=csr("system:node:worker1", ["evil.example"]))
    assert "nothing changed" in admin.doit("vault_setup", env=admin_env).stdout


def test_the_roles_of_a_removed_node_are_reported_then_deleted(bao, admin_env, tmp_path):
    # Own role names and build policy: the module's build keeps its own.
    client = bao.client()
    naming = "naming: {role: 'gone-{cert}', policy: gone-build}"
    project = Project(tmp_path)
    project.write_inventory(inventory(bao, naming))
    project.doit("vault_setup", env=admin_env)
    # A role for every worker of a class, as kthw made them before roles were per node.
    client.write_data(f"{KUBERNETES}/roles/gone-kubelet-serving", data={"allow_any_name": True})
    project.write_inventory(inventory(bao, naming, workers=1))
    report = project.doit("vault_setup", env=admin_env).stdout
    for role in ("gone-kubelet-serving.worker2", "gone-kubelet-client.worker2"):
        assert f"role {KUBERNETES}/roles/{role} is no longer used (node worker2 is not in the inventory" in report
    assert f"role {KUBERNETES}/roles/gone-kubelet-serving is no longer used" in report
    assert "'doit vault_setup update_roles=1' to delete it" in report
    assert f"- path \"{KUBERNETES}/sign/gone-kubelet-serving.worker2\"" in report
    assert client.read(f"{KUBERNETES}/roles/gone-kubelet-serving.worker2") is not None
    updated = project.doit("vault_setup", "update_roles=1", env=admin_env).stdout
    assert f"deleted role {KUBERNETES}/roles/gone-kubelet-serving.worker2" in updated
    roles = client.list(f"{KUBERNETES}/roles")["data"]["keys"]
    assert not [role for role in roles if role.startswith("gone-") and role.endswith(("worker2", "serving"))]
    assert "gone-kubelet-serving.worker1" in roles
    policy = client.read("sys/policies/acl/gone-build")["data"]["policy"]
    assert "worker2" not in policy and "gone-kubelet-serving.worker1" in policy


# --- tokens ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["userpass", "approle"])
def test_no_token_outlives_the_run_that_logged_in(bao, admin, admin_env, tmp_path, method):
    client = bao.client()
    if f"{method}/" not in client.sys.list_auth_methods()["data"]:
        client.sys.enable_auth_method(method)
    project = Project(tmp_path)
    env = {}
    if method == "userpass":
        password = secrets.token_urlsafe(18)
        client.write_data("auth/userpass/users/kthw-build", data={"password": password,
                                                                  "token_policies": BUILD_POLICY})
        auth, env = "{method: userpass, username: kthw-build}", {"KTHW_VAULT_PASSWORD": password}
    else:
        client.write_data("auth/approle/role/kthw-build", data={"token_policies": BUILD_POLICY})
        role_id = client.read("auth/approle/role/kthw-build/role-id")["data"]["role_id"]
        secret_id = client.write_data("auth/approle/role/kthw-build/secret-id")["data"]["secret_id"]
        auth, env = f"{{method: approle, role_id: {role_id}}}", {"KTHW_VAULT_SECRET_ID": secret_id}
    project.write_inventory(inventory(bao))
    project.doit("vault_setup", env=admin_env)
    project.write_inventory(inventory(bao).replace("auth: token", f"auth: {auth}"))
    before = token_accessors(bao)
    run = project.doit("pki", env=no_vault_env(**env))
    assert "pki:worker2/kubelet-serving" in run.executed  # it logged in and signed
    assert token_accessors(bao) == before
    # A failing run revokes its token too.
    (project.root / "build/pki/nodes/cp1/etcd-peer.key").unlink()
    client.write_data(f"{ETCD}/roles/etcd-peer.cp1", data={**client.read(f"{ETCD}/roles/etcd-peer.cp1")["data"],
                                                           "key_type": "rsa", "key_bits": 2048})
    try:
        failed = project.doit("pki", env=no_vault_env(**env), check=False)
        fails_cleanly(failed, "role requires keys of type rsa")
        assert token_accessors(bao) == before
    finally:
        admin.doit("vault_setup", "update_roles=1", env=admin_env)


def test_a_token_from_the_environment_is_left_alone(bao, built, build_token):
    built.doit("pki", env=no_vault_env(VAULT_TOKEN=build_token))
    assert bao.client(build_token).auth.token.lookup_self()["data"]["policies"] == [BUILD_POLICY]


# --- CAs: the build makes none -----------------------------------------------------------


def test_a_missing_kubelet_signer_stops_the_build_and_writes_nothing(bao, admin, build_token, tmp_path):
    project = Project(tmp_path)
    project.write_inventory(inventory(bao))
    run = project.doit("pki", env=no_vault_env(VAULT_TOKEN=build_token), check=False)
    fails_cleanly(run, "CA kubelet-signer is missing", "it is made once, by the admin",
                  "run 'doit vault_setup' with an admin token")
    assert all(path.startswith("build/.doit") for path in project_files(project.root))


def test_expired_cas_stop_the_build_naming_the_admin_task_and_change_nothing(bao, built, build_token):
    before = built.snapshot()
    later = system_clock_at(datetime.now(timezone.utc) + timedelta(days=1830))
    run = built.doit("pki", env={**no_vault_env(VAULT_TOKEN=build_token), **later}, check=False)
    fails_cleanly(run, "expired on", "nothing was written", "run 'doit vault_renew_ca' with an admin token")
    assert built.snapshot() == before


def _aged(bao, csr_pem: str, common_name: str, days_left: int, lifetime_days: int = 1825) -> str:
    """The root signs a CA's CSR as if a while ago: it ends in ``days_left`` days."""
    return bao.client().write_data(f"{ROOT_MOUNT}/root/sign-intermediate", data={
        "csr": csr_pem, "common_name": common_name, "ttl": f"{days_left * 86400}s",
        "not_before_duration": f"{(lifetime_days - days_left) * 86400}s", "max_path_length": 0,
        "exclude_cn_from_sans": True, "use_csr_values": False, "format": "pem"})["data"]["certificate"]


def test_a_due_kubelet_signer_is_a_warning_and_vault_renew_ca_renews_it_with_its_key(bao, admin_env, build_token,
                                                                                     tmp_path):
    project = Project(tmp_path)
    project.write_inventory(inventory(bao))
    project.doit("vault_setup", env=admin_env)
    build_env = no_vault_env(VAULT_TOKEN=build_token)
    project.doit("pki", env=build_env)
    paths = project.root / "build/pki/ca/kubelet-signer"
    key = load_private_key(paths.with_suffix(".key"))
    request = x509.CertificateSigningRequestBuilder().subject_name(
        x509.load_pem_x509_certificate(paths.with_suffix(".crt").read_bytes()).subject).sign(key, hashes.SHA256())
    paths.with_suffix(".crt").write_text(_aged(bao, request.public_bytes(serialization.Encoding.PEM).decode(),
                                               "testcluster-kubelet-signer-ca", 10) + "\n")
    run = project.doit("pki", env=build_env)
    assert "warning: CA kubelet-signer: expires on" in run.stderr  # shown at doit's default verbosity
    assert "renew it (same key): run 'doit vault_renew_ca' with an admin token" in run.stderr
    renewed = project.doit("vault_renew_ca", env=admin_env)
    assert "CA kubelet-signer: renewed" in renewed.stdout
    cert = x509.load_pem_x509_certificate(paths.with_suffix(".crt").read_bytes())
    assert same_public_key(key, cert.public_key())
    assert cert.not_valid_after_utc - datetime.now(timezone.utc) > timedelta(days=1800)
    again = project.doit("pki", env=build_env)
    assert "warning" not in again.stderr
    shipped = project.node_file("cp1", "etc/k8s/kube-controller-manager/cluster-signing-ca.crt").read_bytes()
    assert x509.load_pem_x509_certificate(shipped) == cert
    assert "no CA is due for renewal" in project.doit("vault_renew_ca", env=admin_env).stdout


def test_a_due_intermediate_is_a_warning_and_vault_renew_ca_renews_it_with_its_key(bao, admin_env, tmp_path):
    naming = "naming: {root_mount: renew_root, intermediate_mount: 'renew_pki_{domain}', policy: renew-build}"
    project = Project(tmp_path)
    project.write_inventory(inventory(bao, naming))
    project.doit("vault_setup", env=admin_env)
    build_env = no_vault_env(VAULT_TOKEN=policy_token(bao, "renew-build"))
    project.doit("pki", env=build_env)
    # The etcd intermediate, re-signed by the root as if made long ago: ten days left.
    client = bao.client()
    old = x509.load_pem_x509_certificate(client.read("renew_pki_etcd/cert/ca")["data"]["certificate"].encode())
    request = client.write_data("renew_pki_etcd/intermediate/generate/existing", data={
        "common_name": "testcluster-etcd-ca", "key_ref": "default"})["data"]["csr"]
    aged = client.write_data("renew_root/root/sign-intermediate", data={
        "csr": request, "common_name": "testcluster-etcd-ca", "ttl": "864000s",
        "not_before_duration": f"{1815 * 86400}s", "max_path_length": 0, "format": "pem"})["data"]["certificate"]
    imported = client.write_data("renew_pki_etcd/intermediate/set-signed", data={"certificate": aged})
    client.write_data("renew_pki_etcd/config/issuers", data={"default": imported["data"]["imported_issuers"][0]})
    client.write_data("renew_pki_etcd/issuer/default", data={"leaf_not_after_behavior": "truncate"})
    run = project.doit("pki", env=build_env)
    assert "warning: CA etcd in Vault (renew_pki_etcd): expires on" in run.stderr
    assert "run 'doit vault_renew_ca' with an admin token" in run.stderr
    renewed = project.doit("vault_renew_ca", env=admin_env)
    assert "renewed intermediate CA testcluster-etcd-ca in renew_pki_etcd with the same key" in renewed.stdout
    new = x509.load_pem_x509_certificate(client.read("renew_pki_etcd/cert/ca")["data"]["certificate"].encode())
    assert new.public_key() == old.public_key() and new.subject == old.subject
    assert new.not_valid_after_utc - datetime.now(timezone.utc) > timedelta(days=1800)
    again = project.doit("pki", env=build_env)
    assert "warning" not in again.stderr and "pki:cp1/etcd-peer" in again.executed
    peer = x509.load_pem_x509_certificates(project.node_file("cp1", "etc/k8s/etcd/peer.crt").read_bytes())
    assert peer[1] == new and peer[0].not_valid_after_utc - datetime.now(timezone.utc) > timedelta(days=360)


def test_the_admin_policy_is_all_vault_setup_and_vault_renew_ca_need(bao, tmp_path):
    naming = "naming: {root_mount: adm_root, intermediate_mount: 'adm_pki_{domain}', policy: adm-build}"
    project = Project(tmp_path)
    project.write_inventory(inventory(bao, naming))
    build_policy, admin_policy = project.doit("vault_setup", "policies=1").stdout.strip().split("\n\n")
    assert admin_policy.startswith("# adm-admin:")
    client = bao.client()
    client.sys.create_or_update_policy("adm-admin", admin_policy)
    env = no_vault_env(VAULT_TOKEN=policy_token(bao, "adm-admin"))
    setup = project.doit("vault_setup", env=env)
    assert "generated root CA" in setup.stdout and "created policy adm-build" in setup.stdout
    assert client.read("sys/policies/acl/adm-build")["data"]["policy"].strip() == build_policy.strip()
    assert "no CA is due" in project.doit("vault_renew_ca", env=env).stdout
    project.write_inventory(inventory(bao, naming, workers=1))
    assert "deleted role" in project.doit("vault_setup", "update_roles=1", env=env).stdout
    project.doit("pki", env=no_vault_env(VAULT_TOKEN=policy_token(bao, "adm-build")))
    # The admin signs no leaf.
    with pytest.raises(hvac_errors.Forbidden):
        sign(bao, policy_token(bao, "adm-admin"), "adm_pki_kubernetes/sign/admin", csr=csr("kubernetes-admin"))


# --- dates and small things --------------------------------------------------------------


def test_no_cert_starts_before_its_issuer(built):
    # The CAs were made moments before the leaves: they are backdated by the same BACKDATE.
    ca_dir = built.root / "build/pki/ca"
    root = x509.load_pem_x509_certificate((ca_dir / "root.crt").read_bytes())
    for name in ("kubernetes", "etcd", "front-proxy", "kubelet-signer"):
        cert = x509.load_pem_x509_certificate((ca_dir / f"{name}.crt").read_bytes())
        assert cert.not_valid_before_utc >= root.not_valid_before_utc, name
    for path in (built.root / "build/pki/nodes").rglob("*.crt"):
        leaf, issuer = x509.load_pem_x509_certificates(path.read_bytes())[:2]
        assert leaf.not_valid_before_utc >= issuer.not_valid_before_utc, path
        assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(days=365), path


def test_no_local_cert_starts_before_its_issuer(tmp_path):
    project = Project(tmp_path)
    project.write_inventory(loopback_inventory(workers=1))
    project.doit("pki")
    ca_dir = project.root / "build/pki/ca"
    root = x509.load_pem_x509_certificate((ca_dir / "root.crt").read_bytes())
    for path in [*ca_dir.glob("*.crt"), *(project.root / "build/pki/nodes").rglob("*.crt")]:
        chain = x509.load_pem_x509_certificates(path.read_bytes())
        issuer = chain[1] if len(chain) > 1 else root
        assert chain[0].not_valid_before_utc >= issuer.not_valid_before_utc, path


@pytest.mark.parametrize("content", [b"", b"not a certificate\n", b"-----BEGIN CERTIFICATE-----\nAAAA\n"
                                     b"-----END CERTIFICATE-----\n"])
def test_a_ca_bundle_without_a_certificate_is_named_with_the_fix(bao, tmp_path, content):
    bundle = tmp_path / "vault-ca.pem"
    bundle.write_bytes(content)
    with pytest.raises(VaultError) as caught:
        Session(CASettings(backend="vault", address=bao.address, ca_bundle=bundle))
    message = str(caught.value)
    assert message.startswith(f"{bundle}: holds no readable PEM certificate (ca.ca_bundle")
    assert "-----BEGIN CERTIFICATE-----" in message and "fix ca.ca_bundle in the inventory" in message
    project = Project(tmp_path)
    project.write_inventory(loopback_inventory(workers=1, extra=vault_section(bao, extra=f"ca_bundle: '{bundle}'")))
    run = project.doit("pki", env=no_vault_env(VAULT_TOKEN=bao.root_token), check=False)
    fails_cleanly(run, f"{bundle}: holds no readable PEM certificate")
    for openssl_words in ("X509", "PEM routines", "NO_CERTIFICATE", "SSL"):
        assert openssl_words not in run.stdout + run.stderr
