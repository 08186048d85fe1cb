"""The pki stage run through real doit: what each node gets, and what a rerun does."""

from __future__ import annotations

import base64
import os
import stat
import subprocess

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from support.project import fails_cleanly, loopback_inventory

pytestmark = pytest.mark.slow  # end to end (see pyproject's markers)

CP_SERVICE_CERTS = {"kube-apiserver/apiserver", "kube-apiserver/apiserver-kubelet-client",
                    "kube-apiserver/apiserver-etcd-client", "kube-apiserver/front-proxy-client"}
ETCD_CERTS = {"etcd/server", "etcd/peer", "etcd/healthcheck-client"}


def _certs(path):
    return x509.load_pem_x509_certificates(path.read_bytes())


def _subject(cert):
    return (next(a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)),
            [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)])


def _sans(cert):
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return set(san.get_values_for_type(x509.DNSName)) | {str(i) for i in san.get_values_for_type(x509.IPAddress)}


def _eku(cert):
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_each_node_gets_exactly_what_its_roles_need(pki_build):
    cp = pki_build.node_files("cp1")
    expected_cp = {f"/etc/k8s/{c}.{ext}" for c in CP_SERVICE_CERTS | ETCD_CERTS for ext in ("crt", "key")} | {
        "/etc/k8s/shared/kubernetes-ca.crt", "/etc/k8s/shared/etcd-ca.crt", "/etc/k8s/shared/front-proxy-ca.crt",
        "/etc/k8s/kube-controller-manager/cluster-signing-ca.crt",
        "/etc/k8s/kube-controller-manager/cluster-signing-ca.key",
        "/etc/k8s/kube-controller-manager/kubeconfig", "/etc/k8s/kube-scheduler/kubeconfig",
        "/etc/k8s/shared/admin.kubeconfig"}
    assert expected_cp <= cp
    worker = pki_build.node_files("worker1")
    expected_worker = {"/etc/k8s/shared/kubernetes-ca.crt", "/etc/k8s/kubelet/kubelet-serving.crt",
                       "/etc/k8s/kubelet/kubelet-serving.key", "/etc/k8s/kube-proxy/kubeconfig",
                       "/etc/k8s/kubelet/kubeconfig"}  # static kubelet credentials in this inventory
    assert expected_worker <= worker
    keys = {f for f in worker if f.endswith(".key")}
    assert keys == {"/etc/k8s/kubelet/kubelet-serving.key"}, "a worker holds no CA key and no other node's key"
    assert not any("etcd" in f or "apiserver" in f or "front-proxy" in f for f in worker)


@pytest.mark.parametrize("node, path, issuer, cn, orgs, eku, sans", [
    ("cp1", "etc/k8s/kube-apiserver/apiserver.crt", "kubernetes", "kube-apiserver", [],
     {ExtendedKeyUsageOID.SERVER_AUTH},
     {"cp1", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
      "localhost", "10.96.0.1", "127.0.0.1"}),
    ("cp2", "etc/k8s/kube-apiserver/apiserver-kubelet-client.crt", "kubernetes", "kube-apiserver-kubelet-client",
     [], {ExtendedKeyUsageOID.CLIENT_AUTH}, set()),
    ("cp2", "etc/k8s/kube-apiserver/apiserver-etcd-client.crt", "etcd", "kube-apiserver-etcd-client", [],
     {ExtendedKeyUsageOID.CLIENT_AUTH}, set()),
    ("cp3", "etc/k8s/kube-apiserver/front-proxy-client.crt", "front-proxy", "front-proxy-client", [],
     {ExtendedKeyUsageOID.CLIENT_AUTH}, set()),
    ("cp3", "etc/k8s/etcd/server.crt", "etcd", "cp3", [],
     {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH},
     {"cp3", "localhost", "127.0.0.3", "127.0.0.1", "::1"}),
    ("cp3", "etc/k8s/etcd/peer.crt", "etcd", "cp3", [],
     {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH},
     {"cp3", "localhost", "127.0.0.3", "127.0.0.1", "::1"}),
    ("cp1", "etc/k8s/etcd/healthcheck-client.crt", "etcd", "kube-etcd-healthcheck-client", [],
     {ExtendedKeyUsageOID.CLIENT_AUTH}, set()),
    ("worker2", "etc/k8s/kubelet/kubelet-serving.crt", "kubernetes", "system:node:worker2", ["system:nodes"],
     {ExtendedKeyUsageOID.SERVER_AUTH}, {"worker2", "127.0.0.12"}),
])
def test_service_cert_fields(pki_build, node, path, issuer, cn, orgs, eku, sans):
    chain = _certs(pki_build.node_file(node, path))
    leaf, intermediate = chain  # leaf then its intermediate
    ca = _certs(pki_build.root / "build" / "pki" / "ca" / f"{issuer}.crt")[0]
    assert intermediate == ca
    leaf.verify_directly_issued_by(ca)
    assert _subject(leaf) == (cn, orgs)
    assert _eku(leaf) == eku
    assert _sans(leaf) == sans
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert lifetime.days == 365


def test_ca_hierarchy(pki_build):
    ca_dir = pki_build.root / "build" / "pki" / "ca"
    root = _certs(ca_dir / "root.crt")[0]
    root.verify_directly_issued_by(root)
    assert (root.not_valid_after_utc - root.not_valid_before_utc).days == 3650
    for name in ("kubernetes", "etcd", "front-proxy"):
        cert = _certs(ca_dir / f"{name}.crt")[0]
        cert.verify_directly_issued_by(root)
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
        assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 1825
        # Real openssl agrees that leaf -> intermediate -> root verifies.
    leaf = pki_build.node_file("cp1", "etc/k8s/etcd/peer.crt")
    result = subprocess.run(["openssl", "verify", "-CAfile", str(ca_dir / "root.crt"), "-untrusted", str(leaf),
                             str(leaf)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_trust_bundles_hold_only_their_intermediate(built_loopback):
    for name in ("kubernetes", "etcd", "front-proxy"):
        bundle = _certs(built_loopback.node_file("cp1", f"etc/k8s/shared/{name}-ca.crt"))
        assert len(bundle) == 1 and _subject(bundle[0])[0] == f"testcluster-{name}-ca"
    for path in built_loopback.root.joinpath("build", "nodes").rglob("kubeconfig"):
        config = yaml.safe_load(path.read_text())
        ca = x509.load_pem_x509_certificates(base64.b64decode(config["clusters"][0]["cluster"]
                                                              ["certificate-authority-data"]))
        assert [_subject(c)[0] for c in ca] == ["testcluster-kubernetes-ca"]


@pytest.mark.parametrize("node, path, user, groups, server", [
    ("cp1", "etc/k8s/shared/admin.kubeconfig", "kubernetes-admin", ["system:masters"], "https://localhost:6443"),
    ("cp2", "etc/k8s/kube-controller-manager/kubeconfig", "system:kube-controller-manager", [],
     "https://127.0.0.1:6443"),
    ("cp3", "etc/k8s/kube-scheduler/kubeconfig", "system:kube-scheduler", [], "https://127.0.0.1:6443"),
    ("worker1", "etc/k8s/kube-proxy/kubeconfig", "system:kube-proxy", ["system:node-proxier"],
     "https://localhost:6443"),
    ("worker2", "etc/k8s/kubelet/kubeconfig", "system:node:worker2", ["system:nodes"], "https://localhost:6443"),
])
def test_kubeconfigs_embed_identity_and_server(pki_build, node, path, user, groups, server):
    file = pki_build.node_file(node, path)
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    config = yaml.safe_load(file.read_text())
    assert config["clusters"][0]["cluster"]["server"] == server
    credentials = config["users"][0]["user"]
    cert = x509.load_pem_x509_certificates(base64.b64decode(credentials["client-certificate-data"]))[0]
    assert _subject(cert) == (user, groups)
    assert _eku(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert b"PRIVATE KEY" in base64.b64decode(credentials["client-key-data"])


def test_private_keys_are_0600_and_never_left_half_written(pki_build):
    keys = list((pki_build.root / "build").rglob("*.key"))
    assert len(keys) > 20
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert not list((pki_build.root / "build").rglob("*.tmp")), "no temp file left behind"


def test_rerun_does_nothing_and_clean_keeps_precious_state(project):
    project.write_inventory(loopback_inventory())
    first = project.doit("pki")
    assert "pki:ca-root" in first.executed
    before = project.snapshot()

    again = project.doit("pki")
    assert again.executed == [] and again.stdout.strip() == ""
    assert project.snapshot() == before, "no file rewritten, not even its mtime"

    project.doit("clean", "pki")
    pki_after_clean = project.snapshot("build/pki")
    assert pki_after_clean == {k: v for k, v in before.items() if k.startswith("build/pki/")}
    assert not project.node_file("cp1", "etc/k8s/kube-apiserver/apiserver.key").exists()

    project.doit("pki")
    rebuilt = project.snapshot()
    for path, (digest, _) in before.items():
        assert rebuilt[path][0] == digest, f"{path} differs after clean + rebuild"


def test_corrupt_ca_key_stops_the_build_and_is_left_alone(project):
    project.write_inventory(loopback_inventory(workers=1))
    project.doit("pki")
    key = project.root / "build" / "pki" / "ca" / "etcd.key"
    garbage = b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n"
    key.write_bytes(garbage)
    # Make the CA task run: its cert is gone, so it must read the key.
    (project.root / "build" / "pki" / "ca" / "etcd.crt").unlink()
    run = project.doit("pki", check=False)
    assert run.returncode != 0
    assert f"{key}: not a readable private key" in run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    assert key.read_bytes() == garbage


def test_ca_key_not_matching_its_cert_is_an_error(project):
    project.write_inventory(loopback_inventory(workers=1))
    project.doit("pki")
    ca_dir = project.root / "build" / "pki" / "ca"
    other = (ca_dir / "front-proxy.key").read_bytes()
    (ca_dir / "kubernetes.key").write_bytes(other)
    (ca_dir / "kubernetes.crt").touch()  # the issuer of every kubernetes leaf looks changed
    before = project.snapshot("build/pki")
    run = project.doit("pki", check=False)
    assert run.returncode != 0
    assert "does not match" in run.stdout + run.stderr
    after = project.snapshot("build/pki")
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}


def test_editing_one_node_rebuilds_only_what_depends_on_it(project):
    text = loopback_inventory()
    project.write_inventory(text)
    project.doit("pki")
    keys_before = {k: v for k, v in project.snapshot("build/pki").items() if k.endswith(".key")}
    project.write_inventory(text.replace("ip: 127.0.0.12,", "ip: 127.0.0.22,"))
    run = project.doit("pki")
    assert sorted(run.executed) == ["pki:worker2/kubelet-serving"]
    keys_after = {k: v for k, v in project.snapshot("build/pki").items() if k.endswith(".key")}
    assert keys_after == keys_before, "a renewal re-signs the existing key"
    cert = _certs(project.node_file("worker2", "etc/k8s/kubelet/kubelet-serving.crt"))[0]
    assert "127.0.0.22" in _sans(cert)


def test_changing_the_api_endpoint_reissues_apiserver_certs_and_endpoint_kubeconfigs(project):
    text = loopback_inventory(workers=1)
    project.write_inventory(text)
    project.doit("pki")
    project.write_inventory(text.replace("dns: localhost,", "dns: api.testcluster.lan,"))
    run = project.doit("pki")
    assert sorted(run.executed) == sorted(
        [f"pki:cp{i}/apiserver" for i in (1, 2, 3)] + [f"pki:cp{i}/admin.kubeconfig" for i in (1, 2, 3)]
        + ["pki:worker1/kube-proxy.kubeconfig"])


# --- the store is checked, and what carries it follows it -----------------------------------------------


@pytest.mark.parametrize("damage", ["emptied", "not a key"])
def test_an_unreadable_leaf_key_stops_the_build_and_is_left_alone(project, damage):
    project.write_inventory(loopback_inventory(workers=1))
    project.doit("pki")
    key = project.root / "build/pki/nodes/cp1/apiserver.key"
    copy = project.node_file("cp1", "etc/k8s/kube-apiserver/apiserver.key")
    placed = copy.read_bytes()
    garbage = b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n"
    key.write_bytes(b"" if damage == "emptied" else garbage)
    damaged = key.read_bytes()
    report = project.doit("expiry", "--check", check=False)
    fails_cleanly(report, "bad key", f"its key {key} is not a readable private key")
    run = project.doit("pki", check=False)
    fails_cleanly(run, f"{key}: not a readable private key")
    assert key.read_bytes() == damaged, "a damaged key is left as it is"
    assert copy.read_bytes() == placed, "the node keeps the last good pair"
    assert project.doit("pki", check=False).returncode != 0, "and it stays stopped until the key is restored"


def test_a_leaf_key_that_does_not_match_its_cert_gets_its_cert_issued_again(project):
    from support.pki import assert_build_is_true
    project.write_inventory(loopback_inventory(workers=1))
    project.doit("pki")
    store = project.root / "build/pki/nodes/cp1"
    other = (store / "etcd-peer.key").read_bytes()
    (store / "apiserver.key").write_bytes(other)  # e.g. restored from the wrong backup
    report = project.doit("expiry", "--check", check=False)
    fails_cleanly(report, "bad key", "does not match it")
    run = project.doit("pki")
    assert run.executed == ["pki:cp1/apiserver"]
    assert (store / "apiserver.key").read_bytes() == other, "the key is what is kept"
    assert project.node_file("cp1", "etc/k8s/kube-apiserver/apiserver.key").read_bytes() == other
    assert_build_is_true(project)
    assert project.doit("expiry", "--check").returncode == 0


@pytest.mark.parametrize("write", [1, 11])
def test_temp_files_of_a_killed_run_are_removed_by_the_next(project, write):
    """kill -9 right after a temp file was made leaves it empty beside its target: in the
    store (write 1, the root key) or in a node's tree (write 11, a node copy)."""
    from support.pki import assert_build_is_true
    from support.project import killed_at_write
    project.write_inventory(loopback_inventory(workers=1))
    killed = project.doit("pki", env=killed_at_write(write, empty_temp=True), check=False)
    assert killed.returncode == -9
    orphans = list((project.root / "build").rglob("*.tmp"))
    assert len(orphans) == 1 and orphans[0].stat().st_size == 0, orphans
    project.doit("pki")
    assert_build_is_true(project)  # no temp file left, among the rest
    # One left in the store by hand, where this run writes nothing, goes too.
    orphan = project.root / "build/pki/nodes/cp1/.apiserver.key.k3xq9z0a.tmp"
    orphan.write_bytes(b"")
    os.utime(orphan, (0, 0))
    assert project.doit("pki").executed == []
    assert not orphan.exists()


def test_rekey_without_a_leaf_refuses_and_says_what_it_would_do(project):
    from support.pki import assert_build_is_true
    project.write_inventory(loopback_inventory(workers=1))
    project.doit("pki")
    keys = {p: p.read_bytes() for p in (project.root / "build/pki/nodes").rglob("*.key")}
    before = project.snapshot()
    run = project.doit("rekey", check=False)
    fails_cleanly(run, f"would give all {len(keys)} leaf certs of the cluster a new key", "Nothing was changed",
                  "'doit rekey:<node>/<cert>', e.g. 'doit rekey:cp1/apiserver'", "'doit rekey all=yes'")
    assert project.snapshot() == before
    listed = [line.split()[0] for line in project.doit("list").stdout.splitlines()]
    assert [name for name in listed if name.startswith("rekey")] == ["rekey"], "doit list shows one rekey entry"

    every = project.doit("rekey", "all=yes")
    assert f"rekey: {len(keys)} leaf certs have new keys" in every.stdout
    assert all(path.read_bytes() != old for path, old in keys.items()), "every leaf has a new key"
    project.doit("pki")
    assert_build_is_true(project)
