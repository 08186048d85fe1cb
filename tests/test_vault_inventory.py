"""The inventory's `ca:` section for the vault backend: accepted forms and clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.project import loopback_inventory

from kthw.errors import InventoryError
from kthw.inventory import VaultAuth, VaultNaming, loads
from kthw.pki.vault.client import mount_for, role_for
from kthw.pki.vault.policy import build_policy_name, owned_role, role_of


def ca(section: str):
    return loads(loopback_inventory(workers=1, extra=section), source="/srv/site/cluster.yaml").ca


def test_defaults_follow_the_seed_naming():
    settings = ca("ca: {backend: vault, address: 'https://vault.example.lan:8200/'}")
    assert settings.address == "https://vault.example.lan:8200"
    assert settings.auth == VaultAuth(method="token") and settings.naming == VaultNaming()
    assert mount_for(settings, "root") == "k8s_pki_root_ca"
    assert mount_for(settings, "etcd") == "k8s_pki_intermediate_ca_for_service_etcd"
    assert mount_for(settings, "front-proxy") == "k8s_pki_intermediate_ca_for_service_front_proxy"
    assert role_for(settings, "etcd-peer") == "etcd-peer"


def test_every_setting_and_relative_files():
    settings = ca("""ca:
  backend: vault
  address: https://vault.example.lan:8200
  namespace: infra/k8s
  ca_bundle: vault-ca.pem
  auth: {method: approle, mount: approle-k8s, role_id_file: ids/role-id, secret_id_env: SITE_SECRET_ID}
  naming: {root_mount: pki/root, intermediate_mount: 'pki/{domain}', role: 'kthw-{cert}', policy: k8s-prod-build}
""")
    assert settings.namespace == "infra/k8s"
    assert settings.ca_bundle == Path("/srv/site/vault-ca.pem")
    assert settings.auth.role_id_file == Path("/srv/site/ids/role-id")
    assert (settings.auth.method, settings.auth.mount, settings.auth.secret_id_env) == (
        "approle", "approle-k8s", "SITE_SECRET_ID")
    assert mount_for(settings, "front-proxy") == "pki/front_proxy" and role_for(settings, "admin") == "kthw-admin"
    assert settings.naming.policy == "k8s-prod-build"


def test_a_node_s_cert_has_a_role_per_node_and_kthw_knows_its_own_role_names():
    settings = ca("ca: {backend: vault, address: 'https://v:8200', naming: {role: 'kthw-{cert}'}}")
    assert role_of(settings, "kubelet-serving", "worker1") == "kthw-kubelet-serving.worker1"
    assert role_of(settings, "apiserver", "cp1.example.lan") == "kthw-apiserver.cp1.example.lan"
    assert role_of(settings, "admin", "cp1") == "kthw-admin"  # names no node: one role for the class
    assert owned_role(settings, "kthw-etcd-peer.cp1.example.lan") == ("etcd-peer", "cp1.example.lan")
    assert owned_role(settings, "kthw-admin") == ("admin", None)
    for foreign in ("admin", "kthw-", "kthw-evil", "kthw-evil.cp1", "other-kubelet-serving.worker1"):
        assert owned_role(settings, foreign) is None, foreign
    inv = loads(loopback_inventory(workers=1, extra="ca: {backend: vault, address: 'https://v:8200'}"),
                source="/srv/site/cluster.yaml")
    assert build_policy_name(inv) == "kthw-testcluster-build"


@pytest.mark.parametrize("section, field, words", [
    ("ca: {backend: vault}", "ca.address", "required key is missing"),
    ("ca: {backend: vault, address: vault.lan}", "ca.address", "not a Vault address"),
    ("ca: {backend: local, address: 'https://v:8200'}", "ca.address", "set 'backend: vault', or remove"),
    ("ca: {backend: vault, address: 'https://v:8200', auth: {method: kerberos}}", "ca.auth.method",
     "unknown value 'kerberos'"),
    ("ca: {backend: vault, address: 'https://v:8200', auth: userpass}", "ca.auth.username", "needs a username"),
    ("ca: {backend: vault, address: 'https://v:8200', auth: {method: userpass, username: u, role_id: x}}",
     "ca.auth.role_id", "unknown key 'role_id'"),
    ("ca: {backend: vault, address: 'https://v:8200', auth: {method: userpass, username: u, password_env: 'a b'}}",
     "ca.auth.password_env", "not an environment variable name"),
    ("ca: {backend: vault, address: 'https://v:8200', naming: {intermediate_mount: k8s_pki}}",
     "ca.naming.intermediate_mount", "lacks the {domain} placeholder"),
    ("ca: {backend: vault, address: 'https://v:8200', naming: {role: '{cert}-{node}'}}", "ca.naming.role",
     "a placeholder other than {cert}"),
    ("ca: {backend: vault, address: 'https://v:8200', naming: {root_mount: 'bad mount'}}", "ca.naming.root_mount",
     "not a Vault path"),
])
def test_bad_settings_name_the_field_and_the_fix(section, field, words):
    with pytest.raises(InventoryError) as err:
        ca(section)
    assert err.value.field == field and words in str(err.value)
    assert err.value.fix


@pytest.mark.parametrize("key", ["password", "secret_id", "token"])
def test_a_secret_in_the_inventory_is_refused_without_echoing_it(key):
    method = {"password": "userpass, username: u", "secret_id": "approle, role_id: r", "token": "token"}[key]
    with pytest.raises(InventoryError) as err:
        ca(f"ca: {{backend: vault, address: 'https://v:8200', auth: {{method: {method}, {key}: hunter2-s3cret}}}}")
    assert "a secret does not belong in the inventory" in str(err.value)
    assert "hunter2-s3cret" not in str(err.value)
