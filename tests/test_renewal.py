"""A year later: `doit` renews exactly what is due, from the certs' own dates."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from support.bundles import stand_in_vendor
from support.etcd import wait_etcd_healthy
from support.project import Project, fails_cleanly, loopback_inventory, system_clock_at
from support.servers import free_port, stop_processes
from support.tools import require

pytestmark = pytest.mark.slow  # end to end (see pyproject's markers)

# The first build happened 1800 days ago, so "4 years 11 months later" (day 1795) is
# just behind the real clock: real etcd, which reads the real clock, can then check
# certs issued on the test's timeline.
START = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=1800)


def at(days: int) -> dict:
    """doit runs on a machine whose clock says START + ``days``: certs are dated by it."""
    return system_clock_at(START + timedelta(days=days))


def _hashes(project: Project, under: str) -> dict[str, str]:
    return {k: v[0] for k, v in project.snapshot(under).items()}


@pytest.fixture
def built(project):
    project.write_inventory(loopback_inventory(kubelet_credentials="static"))
    project.doit("pki", env=at(0))
    return project


def test_eleven_months_later_only_leaves_and_their_kubeconfigs_are_reissued(built):
    pki_before = _hashes(built, "build/pki")
    assert built.doit("pki", env=at(300)).executed == [], "nothing is due yet"

    run = built.doit("pki", env=at(335))
    executed = set(run.executed)
    leaf_tasks = {name for name in executed if not name.endswith(".kubeconfig")}
    kubeconfig_tasks = executed - leaf_tasks
    assert not any(name.startswith("pki:ca-") or name.endswith("/trust") for name in executed)
    expected_leaves = {f"pki:{p.parent.name}/{p.stem}" for p in (built.root / "build/pki/nodes").rglob("*.crt")}
    assert leaf_tasks == expected_leaves
    assert kubeconfig_tasks == {f"pki:{n}/{c}.kubeconfig" for n, c in [
        ("cp1", "admin"), ("cp2", "admin"), ("cp3", "admin"), ("cp1", "controller-manager"),
        ("cp2", "controller-manager"), ("cp3", "controller-manager"), ("cp1", "scheduler"), ("cp2", "scheduler"),
        ("cp3", "scheduler"), ("worker1", "kube-proxy"), ("worker2", "kube-proxy"), ("worker1", "kubelet-client"),
        ("worker2", "kubelet-client")]}

    pki_after = _hashes(built, "build/pki")
    for path, digest in pki_before.items():
        if path.startswith("build/pki/ca/") or path.endswith(".key"):
            assert pki_after[path] == digest, f"{path} must stay byte-identical"
        else:
            assert pki_after[path] != digest, f"{path} should have been re-issued"
    assert built.doit("pki", env=at(335)).executed == []


def test_eleven_months_later_a_full_doit_runs_exactly_leaves_kubeconfigs_and_bundles(project):
    project.write_inventory(loopback_inventory(kubelet_credentials="static"))  # no bootstrap tokens to expire
    stand_in_vendor(project.root, project.inventory)  # as after `doit vendor`
    project.doit(env=at(0))
    state_before = _hashes(project, "build/state")
    ca_before = _hashes(project, "build/pki/ca")
    bundles_before = _hashes(project, "bundles")

    run = project.doit(env=at(335))
    leaves = {f"pki:{p.parent.name}/{p.stem}" for p in (project.root / "build/pki/nodes").rglob("*.crt")}
    kubeconfigs = {f"pki:{p.parent.name}/{p.stem}.kubeconfig" for p in (project.root / "build/pki/nodes").rglob("*.crt")
                   if p.stem in ("admin", "controller-manager", "scheduler", "kube-proxy", "kubelet-client")}
    bundles = {f"bundle:{node}" for node in ("cp1", "cp2", "cp3", "worker1", "worker2")}
    assert set(run.executed) == leaves | kubeconfigs | bundles
    assert _hashes(project, "build/state") == state_before, "SA key, encryption config, signing key"
    assert _hashes(project, "build/pki/ca") == ca_before
    assert all(_hashes(project, "bundles")[p] != h for p, h in bundles_before.items())
    assert project.doit(env=at(335)).executed == []


def test_intermediates_renew_with_the_same_key_and_old_leaves_still_verify(built, tmp_path):
    ca = built.root / "build/pki/ca"
    built.doit("pki", env=at(1460))  # leaves of year 4: capped at the intermediates' end
    old_leaves = tmp_path / "old"
    shutil.copytree(built.root / "build/nodes/cp1/etc/k8s", old_leaves)
    old_etcd_ca = (ca / "etcd.crt").read_bytes()
    keys_before = {p.name: p.read_bytes() for p in ca.glob("*.key")}
    root_before = (ca / "root.crt").read_bytes()

    run = built.doit("pki", env=at(1795))  # 4 years 11 months
    assert {"pki:ca-kubernetes", "pki:ca-etcd", "pki:ca-front-proxy"} <= set(run.executed)
    assert "pki:ca-root" not in run.executed
    assert (ca / "root.crt").read_bytes() == root_before
    assert {p.name: p.read_bytes() for p in ca.glob("*.key")} == keys_before
    new_etcd_ca = (ca / "etcd.crt").read_bytes()
    assert new_etcd_ca != old_etcd_ca
    old, new = x509.load_pem_x509_certificate(old_etcd_ca), x509.load_pem_x509_certificate(new_etcd_ca)
    assert old.subject == new.subject and new.not_valid_after_utc > old.not_valid_after_utc

    # A leaf signed before the renewal verifies against the new trust bundle (real openssl).
    new_bundle = built.node_file("cp1", "etc/k8s/shared/etcd-ca.crt")
    assert new_bundle.read_bytes() == new_etcd_ca
    verify = subprocess.run(["openssl", "verify", "-partial_chain", "-CAfile", str(new_bundle),
                             str(old_leaves / "etcd/server.crt")], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr

    # And a real etcd TLS handshake: old server and client certs, new trust bundle.
    port = free_port()
    log = tmp_path / "etcd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([
            require("etcd"), "--name", "cp1", "--data-dir", str(tmp_path / "data"),
            "--listen-client-urls", f"https://127.0.0.1:{port}", "--advertise-client-urls", f"https://127.0.0.1:{port}",
            "--listen-peer-urls", f"http://127.0.0.1:{free_port()}", "--initial-cluster", "cp1=http://localhost:2380",
            "--initial-advertise-peer-urls", "http://localhost:2380",
            "--client-cert-auth", "--trusted-ca-file", str(new_bundle),
            "--cert-file", str(old_leaves / "etcd/server.crt"), "--key-file", str(old_leaves / "etcd/server.key"),
            "--listen-metrics-urls", ""], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_etcd_healthy([require("etcdctl"), "--endpoints", f"https://127.0.0.1:{port}", "--cacert", str(new_bundle),
                           "--cert", str(old_leaves / "etcd/healthcheck-client.crt"),
                           "--key", str(old_leaves / "etcd/healthcheck-client.key"), "--dial-timeout", "2s"],
                          1, {"cp1": log}, timeout=30)
    finally:
        stop_processes([proc])


def test_root_is_never_renewed_and_nothing_loops_near_its_end(built):
    root = built.root / "build/pki/ca/root.crt"
    before = root.read_bytes()
    late = at(3650 - 20)  # the root is inside its window
    built.doit("pki", env=late)
    assert root.read_bytes() == before
    assert built.doit("pki", env=late).executed == [], "certs capped by the root are not re-issued forever"
    report = built.doit("expiry", env=late, check=False)
    assert "doit never renews the root CA" in report.stdout


def _report(project, days, *flags):
    return project.doit("expiry", *flags, env=at(days), check=False)


def test_expiry_report_states_and_check_exit_codes(built):
    rows = json.loads(_report(built, 10, "--json").stdout)
    assert {row["state"] for row in rows} == {"ok"}
    assert _report(built, 10, "--check").returncode == 0

    rows = {(r["node"], r["cert"]): r for r in json.loads(_report(built, 340, "--json").stdout)}
    assert rows[("cp1", "apiserver")]["state"] == "renew soon"
    assert rows[("cp1", "apiserver")]["days_left"] == 24
    assert rows[("-", "kubernetes")]["state"] == "ok"
    assert _report(built, 340, "--check").returncode != 0

    table = _report(built, 400).stdout
    line = next(line for line in table.splitlines() if line.startswith("worker1") and "kubelet-serving" in line)
    assert line.split()[-1] == "expired"
    assert "NODE" in table.splitlines()[0] and "DAYS LEFT" in table
    assert _report(built, 400, "--check").returncode != 0


def test_rekey_makes_a_new_key_only_when_asked(built):
    key = built.root / "build/pki/nodes/worker1/kube-proxy.key"
    before = key.read_bytes()
    built.doit("pki", env=at(335))
    assert key.read_bytes() == before, "renewal keeps the key"
    run = built.doit("rekey:worker1/kube-proxy", env=at(336))
    assert key.read_bytes() != before
    after = built.doit("pki", env=at(336))
    # The leaf task checks the new pair once, then the kubeconfig embeds it.
    assert after.executed == ["pki:worker1/kube-proxy", "pki:worker1/kube-proxy.kubeconfig"]
    from tasks import DOIT_CONFIG
    assert not any(t.startswith(("rekey", "expiry")) for t in DOIT_CONFIG["default_tasks"]), run.stderr


# --- one rule for time: certs carry the system clock's date; KTHW_NOW and --at only preview ---------


def _dated_later(cert_path, issuer_cert_path, issuer_key_path, days: int, chain: bool) -> None:
    """Sign the cert again by hand, as an older version run with KTHW_NOW did: same key, names
    and lifetime, but valid only from ``days`` from now. Leaf files keep their issuer after it."""
    old = x509.load_pem_x509_certificates(cert_path.read_bytes())
    issuer_pem = issuer_cert_path.read_bytes()
    issuer_key = serialization.load_pem_private_key(issuer_key_path.read_bytes(), None)
    start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=days)
    builder = (x509.CertificateBuilder().subject_name(old[0].subject).issuer_name(old[0].issuer)
               .public_key(old[0].public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start)
               .not_valid_after(start + (old[0].not_valid_after_utc - old[0].not_valid_before_utc)))
    for extension in old[0].extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    forged = builder.sign(issuer_key, old[0].signature_hash_algorithm)
    cert_path.write_bytes(forged.public_bytes(serialization.Encoding.PEM) + (issuer_pem if chain else b""))


def test_a_cert_dated_in_the_future_is_stale_and_issued_again(project):
    from support.pki import assert_build_is_true
    project.write_inventory(loopback_inventory(workers=1))
    project.doit("pki")
    pki = project.root / "build/pki"
    ca = pki / "ca"
    _dated_later(ca / "etcd.crt", ca / "root.crt", ca / "root.key", days=300, chain=False)
    _dated_later(pki / "nodes/cp1/apiserver.crt", ca / "kubernetes.crt", ca / "kubernetes.key", days=300, chain=True)
    keys = {k: v for k, v in _hashes(project, "build/pki").items() if k.endswith(".key")}
    # What a node would see: the cert is not valid yet (real openssl).
    leaf = pki / "nodes/cp1/apiserver.crt"
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(ca / "root.crt"), "-untrusted", str(leaf),
                             str(leaf)], capture_output=True, text=True)
    assert verify.returncode != 0 and "not yet valid" in verify.stdout + verify.stderr

    report = project.doit("expiry", "--json", "--check", check=False)
    assert report.returncode != 0, "a cert that is not valid yet needs attention"
    states = {(row["node"], row["cert"]): row["state"] for row in json.loads(report.stdout)}
    assert {key for key, state in states.items() if state != "ok"} == {("-", "etcd"), ("cp1", "apiserver")}
    assert states[("cp1", "apiserver")] == "not yet valid"

    run = project.doit("pki")
    assert "pki:ca-etcd" in run.executed and "pki:cp1/apiserver" in run.executed
    # Leaves of the etcd CA carry its new cert; nothing else is issued.
    assert "pki:ca-root" not in run.executed and "pki:cp1/admin" not in run.executed
    assert {k: v for k, v in _hashes(project, "build/pki").items() if k.endswith(".key")} == keys, \
        "issued again with the same keys"
    assert_build_is_true(project)
    assert project.doit("expiry", "--check").returncode == 0
    assert project.doit("pki").executed == []


def test_a_run_that_would_write_certs_refuses_while_kthw_now_is_set(project):
    project.write_inventory(loopback_inventory(workers=1))
    later = (datetime.now(timezone.utc) + timedelta(days=340)).date().isoformat()
    run = project.doit("pki", env={"KTHW_NOW": later}, check=False)
    fails_cleanly(run, f"KTHW_NOW={later} is set", "Nothing was written", f"doit expiry --at {later}")
    assert not list((project.root / "build").rglob("*.crt")) and not list((project.root / "build").rglob("*.key"))

    project.doit("pki")
    soon = (datetime.now(timezone.utc) + timedelta(days=10)).isoformat()
    assert project.doit("pki", env={"KTHW_NOW": soon}).executed == [], "nothing to write, nothing refused"
    before = project.snapshot()
    run = project.doit("pki", env={"KTHW_NOW": later}, check=False)  # every leaf is due by then
    fails_cleanly(run, "certs are always dated by the system clock", f"doit expiry --at {later}")
    assert project.snapshot() == before


def test_expiry_at_previews_a_later_date_and_writes_nothing(project):
    project.write_inventory(loopback_inventory(workers=1))
    project.doit("pki")
    before = project.snapshot()
    later = (datetime.now(timezone.utc) + timedelta(days=340)).date().isoformat()
    rows = {(r["node"], r["cert"]): r for r in json.loads(project.doit("expiry", "--json", "--at", later).stdout)}
    assert rows[("cp1", "apiserver")]["state"] == "renew soon" and rows[("cp1", "apiserver")]["days_left"] in (24, 25)
    assert rows[("-", "kubernetes")]["state"] == "ok"
    assert project.doit("expiry", "--check", "--at", later, check=False).returncode != 0
    assert project.doit("expiry", "--check").returncode == 0, "today nothing is due"
    assert project.snapshot() == before
    fails_cleanly(project.doit("expiry", "--at", "next year", check=False),
                  "--at='next year' is not an ISO 8601 date or time")
