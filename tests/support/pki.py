"""What a finished pki stage must hold, read back from the files: shared by the tests that
interrupt, forge or age a build. This module holds no tests of its own."""

from __future__ import annotations

import base64
import subprocess
from datetime import datetime

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kthw import inventory
from kthw.layout import Layout
from kthw.pki.catalogue import ca_specs, key_in_vault, leaves_for, trust_for
from support.project import Project


def _key(path):
    return serialization.load_pem_private_key(path.read_bytes(), None)


def _same_key(private, cert: x509.Certificate) -> bool:
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return private.public_key().public_bytes(*der) == cert.public_key().public_bytes(*der)


def assert_build_is_true(project: Project, moment: datetime | None = None) -> None:
    """Every invariant of a finished pki stage, as of ``moment`` (default: now):

    no temp file under build/; every key parses and matches its cert; every leaf file holds
    the leaf then its issuer's current cert, and real openssl verifies every leaf against
    the root; node copies are byte-identical to the store; kubeconfigs embed the current
    cert, key and CA; trust bundles hold the current CA certs (and the signer's key).
    """
    inv = inventory.load(project.inventory)
    layout = Layout(project.root)
    build = project.root / "build"
    assert not [str(p) for p in build.rglob("*.tmp")], "temp files left behind"
    ca_certs = {}
    for name in ca_specs(inv):
        paths = layout.ca(name)
        ca_certs[name] = paths.cert.read_bytes()
        if not key_in_vault(name, inv.ca.backend):
            assert _same_key(_key(paths.key), x509.load_pem_x509_certificate(ca_certs[name])), paths.key
    leaves = []
    for node in inv.nodes:
        for item in leaves_for(inv, node):
            paths = layout.leaf(node.name, item.spec.name)
            cert_pem, key_pem = paths.cert.read_bytes(), paths.key.read_bytes()
            leaf, issuer = x509.load_pem_x509_certificates(cert_pem)
            assert _same_key(_key(paths.key), leaf), f"{paths.key} does not match {paths.cert}"
            assert issuer == x509.load_pem_x509_certificate(ca_certs[item.row.issuer]), \
                f"{paths.cert} does not carry the current {item.row.issuer} CA cert"
            leaf.verify_directly_issued_by(issuer)
            leaves.append(str(paths.cert))
            if item.row.installed_as:
                for suffix, data in ((".crt", cert_pem), (".key", key_pem)):
                    copy = project.node_file(node.name, item.row.installed_as + suffix)
                    assert copy.read_bytes() == data, f"{copy} differs from the store"
            if item.row.kubeconfig:
                config = yaml.safe_load(project.node_file(node.name, item.row.kubeconfig).read_text())
                user = config["users"][0]["user"]
                assert base64.b64decode(user["client-certificate-data"]) == cert_pem, item.row.kubeconfig
                assert base64.b64decode(user["client-key-data"]) == key_pem, item.row.kubeconfig
                assert base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"]) == \
                    ca_certs["kubernetes"]
        for trust in trust_for(node):
            cas = trust.cas(inv.ca.backend)
            bundle = project.node_file(node.name, trust.installed_as + ".crt")
            assert bundle.read_bytes() == b"".join(ca_certs[name] for name in cas), bundle
            if trust.with_key:
                key = project.node_file(node.name, trust.installed_as + ".key")
                assert key.read_bytes() == layout.ca(cas[0]).key.read_bytes(), key
    # Real openssl, at the moment given: one call for every leaf, its chain from the intermediates.
    intermediates = build / "intermediates.pem.check"
    intermediates.write_bytes(b"".join(pem for name, pem in ca_certs.items() if name != "root"))
    when = ["-attime", str(int(moment.timestamp()))] if moment else []
    try:
        result = subprocess.run(["openssl", "verify", *when, "-CAfile", str(layout.ca("root").cert),
                                 "-untrusted", str(intermediates), *leaves], capture_output=True, text=True)
    finally:
        intermediates.unlink()
    assert result.returncode == 0 and result.stdout.count(": OK") == len(leaves), result.stdout + result.stderr
