"""Logging in to a real OpenBao dev server: token, userpass, AppRole, TLS and namespaces.

The test writes the policies; each login then builds certs through `doit pki`. Secrets
come from environment variables or files and must never show up in doit's output or in
any file under build/ (doit's own state included). Faults (wrong credentials, a token
whose policy denies a role, an unreachable server, a failed TLS verification) end doit
with one clear line and leave build/ as it was.
"""

from __future__ import annotations

import re
import secrets

import pytest
from cryptography import x509
from support.project import Project, fails_cleanly, loopback_inventory
from support.servers import free_port
from support.vault import (
    BUILD_POLICY,
    dev_server,
    no_vault_env,
    policy_token,
    project_files,
    token_accessors,
    vault_section,
)

from kthw.inventory import CASettings
from kthw.pki.vault.client import Session, VaultError

pytestmark = pytest.mark.slow  # end to end (see pyproject's markers)

INVENTORY_ARGS = {"workers": 1}
KUBERNETES_MOUNT = "k8s_pki_intermediate_ca_for_service_kubernetes"


@pytest.fixture(scope="module")
def bao(tmp_path_factory):
    """A dev server prepared by `doit vault_setup` (root token) for the 3+1 loopback inventory: it
    wrote the build policy (BUILD_POLICY) that the identities below log in with."""
    with dev_server(tmp_path_factory.mktemp("bao")) as server:
        admin = Project(tmp_path_factory.mktemp("admin"))
        admin.write_inventory(loopback_inventory(**INVENTORY_ARGS, extra=vault_section(server)))
        admin.doit("vault_setup", env=no_vault_env(VAULT_TOKEN=server.root_token))
        yield server


def prepared(project: Project, bao) -> Project:
    """The admin ran `doit vault_setup` in this project: its kubelet signer exists (Vault's root signed it)."""
    project.write_inventory(loopback_inventory(**INVENTORY_ARGS, extra=vault_section(bao)))
    project.doit("vault_setup", env=no_vault_env(VAULT_TOKEN=bao.root_token))
    return project


def build(project: Project, bao, auth: str, env: dict, *tasks: str, check: bool = True):
    """Write the inventory with this login and run doit (default: the whole pki stage)."""
    project.write_inventory(loopback_inventory(**INVENTORY_ARGS, extra=vault_section(bao, auth)))
    return project.doit(*(tasks or ("pki",)), env=env, check=check)


def assert_never_leaked(project: Project, run, *values: str):
    everything = run.stdout + run.stderr
    files = project_files(project.root)
    assert files, "the build wrote files"
    for value in values:
        assert value not in everything
        for path, data in files.items():
            assert value.encode() not in data, f"a secret was written to {path}"


def only_doit_state(project: Project) -> bool:
    return all(path.startswith("build/.doit") for path in project_files(project.root))


def test_userpass_login_builds_the_certs_and_the_password_never_leaks(bao, project):
    client = bao.client()
    if "userpass/" not in client.sys.list_auth_methods()["data"]:
        client.sys.enable_auth_method("userpass")
    password = secrets.token_urlsafe(18)
    client.write_data("auth/userpass/users/kthw", data={"password": password, "token_policies": BUILD_POLICY})
    prepared(project, bao)
    before = token_accessors(bao)
    run = build(project, bao, "{method: userpass, username: kthw}",
                no_vault_env(KTHW_VAULT_PASSWORD=password))
    cert = x509.load_pem_x509_certificates(
        project.node_file("cp2", "etc/k8s/etcd/server.crt").read_bytes())
    assert cert[0].issuer.rfc4514_string() == "CN=testcluster-etcd-ca"
    assert_never_leaked(project, run, password, bao.root_token)
    # The token the login made was revoked as doit ended: none outlives its run.
    assert token_accessors(bao) == before


def test_userpass_with_a_wrong_password_is_refused_clearly(bao, project):
    wrong = secrets.token_urlsafe(18)
    run = build(project, bao, "{method: userpass, username: kthw}", no_vault_env(KTHW_VAULT_PASSWORD=wrong),
                check=False)
    fails_cleanly(run, f"Vault at {bao.address}: login refused at auth/userpass/login/kthw (invalid "
                              "username or password): wrong credentials")
    assert wrong not in run.stdout + run.stderr
    assert only_doit_state(project)


def test_approle_login_with_a_secret_id_file_builds_the_certs(bao, project):
    client = bao.client()
    if "approle/" not in client.sys.list_auth_methods()["data"]:
        client.sys.enable_auth_method("approle")
    client.write_data("auth/approle/role/kthw", data={"token_policies": BUILD_POLICY})
    role_id = client.read("auth/approle/role/kthw/role-id")["data"]["role_id"]
    secret_id = client.write_data("auth/approle/role/kthw/secret-id")["data"]["secret_id"]
    (project.root / "secret-id").write_text(secret_id + "\n")
    prepared(project, bao)
    before = token_accessors(bao)
    run = build(project, bao, f"{{method: approle, role_id: {role_id}, secret_id_file: secret-id}}",
                no_vault_env())
    assert project.node_file("worker1", "etc/k8s/kubelet/kubelet-serving.crt").exists()
    assert_never_leaked(project, run, secret_id, bao.root_token)
    assert token_accessors(bao) == before

    other = Project(project.root / "wrong")
    other.root.mkdir()
    run = build(other, bao, f"{{method: approle, role_id: {role_id}}}", no_vault_env(KTHW_VAULT_SECRET_ID="not-it"),
                check=False)
    fails_cleanly(run, "login refused at auth/approle/login (invalid role or secret ID): wrong credentials")
    assert only_doit_state(other)


def test_a_token_limited_to_one_role_is_refused_on_another(bao, project):
    client = bao.client()
    # No read on <mount>/cert/ca: Vault serves a mount's CA cert to anyone.
    client.sys.create_or_update_policy("kube-proxy-only", f"""
path "{KUBERNETES_MOUNT}/sign/kube-proxy" {{ capabilities = ["update"] }}
""")
    token = client.auth.token.create(policies=["kube-proxy-only"], ttl="1h")["auth"]["client_token"]
    (project.root / "token").write_text(token)
    auth = "{method: token, token_file: token}"
    build(project, bao, auth, no_vault_env(), "pki:worker1/kube-proxy.kubeconfig")
    assert project.node_file("worker1", "etc/k8s/kube-proxy/kubeconfig").exists()
    before = project.snapshot()
    run = build(project, bao, auth, no_vault_env(), "pki:worker1/kubelet-serving", check=False)
    fails_cleanly(run, f"Vault at {bao.address}: permission denied on {KUBERNETES_MOUNT}/sign/kubelet-serving.worker1: "
                              "the token is expired or revoked, or its policy does not allow this path")
    assert project.snapshot() == before
    assert not (project.root / "build/pki/nodes/worker1/kubelet-serving.key").exists()


def test_token_from_bao_token_and_a_bad_or_missing_token(bao, project):
    build(project, bao, "token", no_vault_env(BAO_TOKEN=bao.root_token), "pki:ca-root")
    assert (project.root / "build/pki/ca/root.crt").exists()
    before = project.snapshot()
    run = build(project, bao, "token", no_vault_env(VAULT_TOKEN="s.not-a-token"), "pki:ca-root", check=False)
    fails_cleanly(run, f"Vault at {bao.address}: the token was refused")
    run = build(project, bao, "token", no_vault_env(), "pki:ca-root", check=False)
    fails_cleanly(run, "no Vault token: set VAULT_TOKEN or BAO_TOKEN")
    assert project.snapshot() == before


def issuer_token(bao) -> str:
    return policy_token(bao, BUILD_POLICY)


def assert_refused_without_leak(project: Project, run, secret: str, *needles: str):
    """Refused with a clear message, and neither the secret nor any piece of it shown.

    The pieces matter: an HTTP library that echoes a header value prints it escaped
    ('abc\\ndef'), so the whole secret never appears but each of its lines does.
    """
    pieces = [secret, repr(secret)[1:-1], *(piece for piece in re.split(r"[\x00-\x1f\x7f]+", secret) if piece)]
    everything = run.stdout + run.stderr
    for piece in pieces:
        assert piece not in everything, f"a piece of the secret is shown: {everything}"
    for path, data in project_files(project.root).items():
        for piece in pieces:
            assert piece.encode() not in data, f"a secret was written to {path}"
    fails_cleanly(run, *needles)
    assert only_doit_state(project)


def test_a_token_with_a_line_break_in_the_environment_is_refused_and_never_shown(bao, project):
    token = issuer_token(bao)
    broken = f"{token[:10]}\n{token[10:]}"
    run = build(project, bao, "token", no_vault_env(VAULT_TOKEN=broken), check=False)
    assert_refused_without_leak(
        project, run, broken,
        "the environment variable VAULT_TOKEN holds a line break (CR or LF) or another control character",
        "set it to the token alone, on one line")


def test_a_two_line_token_file_is_refused_and_neither_line_is_shown(bao, project):
    token, second = issuer_token(bao), issuer_token(bao)
    (project.root / "token").write_text(f"{token}\n{second}\n")
    run = build(project, bao, "{method: token, token_file: token}", no_vault_env(), check=False)
    assert_refused_without_leak(
        project, run, f"{token}\n{second}",
        f"{project.root / 'token'}: the Vault token_file holds more than one line",
        "put only the token in it, on one line")


def test_a_password_with_a_carriage_return_is_refused_and_never_shown(bao, project):
    client = bao.client()
    if "userpass/" not in client.sys.list_auth_methods()["data"]:
        client.sys.enable_auth_method("userpass")
    password = secrets.token_urlsafe(18)
    client.write_data("auth/userpass/users/kthw-cr", data={"password": password, "token_policies": BUILD_POLICY})
    broken = f"{password[:9]}\r{password[9:]}"
    run = build(project, bao, "{method: userpass, username: kthw-cr}", no_vault_env(KTHW_VAULT_PASSWORD=broken),
                check=False)
    assert_refused_without_leak(
        project, run, broken,
        "the environment variable KTHW_VAULT_PASSWORD holds a line break (CR or LF) or another control character",
        "set it to the password alone, on one line")


def test_a_library_error_that_echoes_the_token_header_is_not_repeated(bao):
    # The token checks above keep such a token from being sent at all; this is the
    # net below them: whatever requests says about a refused header is not repeated.
    session = Session(CASettings(backend="vault", address=bao.address))
    token = issuer_token(bao)
    session.client.token = f"{token[:10]}\n{token[10:]}"
    with pytest.raises(VaultError) as caught:
        session.call("auth/token/lookup-self", session.client.auth.token.lookup_self)
    message = str(caught.value)
    for piece in (token, token[:10], token[10:]):
        assert piece not in message, message
    assert message.startswith(f"Vault at {bao.address}: request to auth/token/lookup-self could not be sent")


def test_plain_http_to_a_tls_port_is_named_with_the_fix(tls_bao, tmp_path):
    project = Project(tmp_path)
    project.write_inventory(loopback_inventory(**INVENTORY_ARGS, extra=(
        f"ca: {{backend: vault, address: '{tls_bao.address.replace('https', 'http')}', auth: token}}")))
    run = project.doit("pki", env=no_vault_env(VAULT_TOKEN=tls_bao.root_token), check=False)
    fails_cleanly(run, f"Vault at {tls_bao.address.replace('https', 'http')} expects HTTPS; use https:// "
                              "in ca.address")


def test_an_unreachable_vault_is_named_with_the_fix(project, bao):
    port = free_port()
    project.write_inventory(loopback_inventory(**INVENTORY_ARGS, extra=(
        f"ca: {{backend: vault, address: 'http://127.0.0.1:{port}', auth: token}}")))
    run = project.doit("pki", env=no_vault_env(VAULT_TOKEN="anything"), check=False)
    fails_cleanly(run, f"Vault at http://127.0.0.1:{port} is unreachable (connection refused); check "
                              "ca.address in the inventory")
    assert only_doit_state(project)


def test_namespace_keeps_the_pki_inside_it(bao, project):
    client = bao.client()
    client.sys.create_namespace("team-k8s")
    env = no_vault_env(VAULT_TOKEN=bao.root_token)
    project.write_inventory(loopback_inventory(**INVENTORY_ARGS, extra=vault_section(
        bao, extra="namespace: team-k8s")))
    setup = project.doit("vault_setup", env=env)
    assert "created mount k8s_pki_root_ca" in setup.stdout
    project.doit("pki:cp1/etcd-peer", env=env)
    inside = bao.client(namespace="team-k8s")
    etcd_ca = x509.load_pem_x509_certificate(
        inside.read("k8s_pki_intermediate_ca_for_service_etcd/cert/ca")["data"]["certificate"].encode())
    outside = x509.load_pem_x509_certificate(
        client.read("k8s_pki_intermediate_ca_for_service_etcd/cert/ca")["data"]["certificate"].encode())
    assert etcd_ca != outside
    peer = x509.load_pem_x509_certificates(project.node_file("cp1", "etc/k8s/etcd/peer.crt").read_bytes())
    peer[0].verify_directly_issued_by(etcd_ca)
    assert peer[1] == etcd_ca


@pytest.fixture(scope="module")
def tls_bao(tmp_path_factory):
    with dev_server(tmp_path_factory.mktemp("bao-tls"), tls=True) as server:
        yield server


def test_tls_verification_failure_and_the_ca_bundle_option(tls_bao, tmp_path):
    project = Project(tmp_path)
    env = no_vault_env(VAULT_TOKEN=tls_bao.root_token)
    project.write_inventory(loopback_inventory(**INVENTORY_ARGS, extra=vault_section(tls_bao)))
    run = project.doit("vault_setup", env=env, check=False)
    fails_cleanly(run, f"Vault at {tls_bao.address}: TLS verification failed (")
    assert "issuer certificate); set ca.ca_bundle in the inventory to the PEM" in run.stderr
    assert tls_bao.client().sys.list_mounted_secrets_engines()["data"].get("k8s_pki_root_ca/") is None

    project.write_inventory(loopback_inventory(**INVENTORY_ARGS, extra=vault_section(
        tls_bao, extra=f"ca_bundle: '{tls_bao.ca_pem}'")))
    project.doit("vault_setup", env=env)
    project.doit("pki:cp1/apiserver", env=env)
    chain = x509.load_pem_x509_certificates(project.node_file("cp1", "etc/k8s/kube-apiserver/apiserver.crt")
                                            .read_bytes())
    assert chain[1].subject.rfc4514_string() == "CN=testcluster-kubernetes-ca"


def test_https_to_a_plain_http_port_is_named_with_the_fix(bao, project):
    https = bao.address.replace("http://", "https://")
    project.write_inventory(loopback_inventory(**INVENTORY_ARGS, extra=(
        f"ca: {{backend: vault, address: '{https}', auth: token}}")))
    run = project.doit("pki", env=no_vault_env(VAULT_TOKEN=bao.root_token), check=False)
    fails_cleanly(run, f"Vault at {https} does not speak TLS on this port; use http:// in ca.address")
    assert only_doit_state(project)
