"""Keeping the cert store current: issue what is missing, renew what is due, keep keys.

Keys are precious: an existing key is never replaced here unless the spec asks for
another algorithm (leaves) or a rekey is explicit. A CA key that is unreadable or does
not match its cert stops everything, and both files stay as they were.
"""

from __future__ import annotations

import functools
import os
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509

from .ca import CertificateAuthority, require_matching_pair
from .crypto import CertSpec, build_certificate, certs_pem, generate_key, key_algorithm, load_certificates, \
    load_private_key, private_key_pem, same_public_key
from .errors import StateError
from .fsutil import PUBLIC_MODE, SECRET_MODE, atomic_write
from .kubeconfig import kubeconfig
from .layout import KeyPairPaths
from .renewal import Reason, renewal_reason

ROOT_DUE_HINT = ("doit never renews the root CA: replacing it means distributing a new trust anchor "
                 "to every node (see README, 'Replacing the root CA')")


@functools.lru_cache(maxsize=64)
def _cached_cert(path: str, mtime_ns: int) -> x509.Certificate:
    return load_certificates(Path(path))[0]


def read_cert(path: Path) -> x509.Certificate | None:
    """The first cert of a PEM file, or None if the file is missing or unreadable.

    Cached by mtime: a doit run checks every leaf against the same few issuers.
    """
    try:
        return _cached_cert(str(path), os.stat(path).st_mtime_ns)
    except (FileNotFoundError, StateError):
        return None


def pending_reason(spec: CertSpec, paths: KeyPairPaths, issuer_cert: Path | None, now: datetime,
                   window: timedelta) -> Reason | None:
    """Why this cert must be (re)issued now, or None. Reads certs only, so it is cheap.

    ``issuer_cert`` is None for the root, which is never renewed for a ``due`` reason.
    """
    if not paths.key.exists():
        return Reason("key missing")
    issuer = read_cert(issuer_cert) if issuer_cert is not None else None
    if issuer_cert is not None and issuer is None:
        return Reason("issuer missing")
    cert = read_cert(paths.cert)
    if spec.is_ca and cert is not None and not _key_matches(paths.key, cert):
        # Let the CA task run: it reports the mismatch and stops the build.
        return Reason("key does not match cert")
    reason = renewal_reason(spec, cert, issuer, now, window)
    if issuer_cert is None and reason is not None and reason.due:
        return None
    return reason


def _key_matches(key_path: Path, cert: x509.Certificate) -> bool:
    try:
        return same_public_key(load_private_key(key_path), cert.public_key())
    except StateError:
        return False


def ensure_ca(spec: CertSpec, paths: KeyPairPaths, parent: CertificateAuthority | None, now: datetime,
              window: timedelta) -> str:
    """Create or renew a CA in local files; with no ``parent`` it is the self-signed root.

    Renewal keeps the key and subject, so certs it signed before still verify.
    """
    key = load_private_key(paths.key) if paths.key.exists() else None
    cert = load_certificates(paths.cert)[0] if paths.cert.exists() else None
    if key is None and cert is not None:
        raise StateError(f"{paths.cert} exists but its key {paths.key} is missing. Restore the key from "
                         "a backup; a CA is never re-created silently")
    if key is not None and cert is not None:
        require_matching_pair(paths, key, cert)
    reason = renewal_reason(spec, cert, parent.certificate if parent else None, now, window)
    if reason is None:
        return f"CA {spec.name}: current"
    if parent is None and cert is not None and reason.due:
        return f"CA {spec.name}: {reason.text}; {ROOT_DUE_HINT}"
    if key is None:
        key = generate_key(spec.key_algorithm)
        atomic_write(paths.key, private_key_pem(key), SECRET_MODE)
    if parent is None:
        new = build_certificate(spec, key.public_key(), now, None, key)
    else:
        new = parent.issue(spec, key, now)[0]
    atomic_write(paths.cert, certs_pem(new), PUBLIC_MODE)
    return f"CA {spec.name}: {'issued' if cert is None else 'renewed'} ({reason.text})"


def ensure_leaf(spec: CertSpec, paths: KeyPairPaths, ca: CertificateAuthority, now: datetime,
                window: timedelta, *, rekey: bool = False) -> str:
    """Issue or renew one leaf; renewal re-signs the existing key unless ``rekey``."""
    key = load_private_key(paths.key) if paths.key.exists() else None
    new_key = key is None or rekey or key_algorithm(key) != spec.key_algorithm
    cert = read_cert(paths.cert)
    if not new_key and cert is not None and not same_public_key(key, cert.public_key()):
        cert = None  # the key is what we keep; a cert for another key is just re-issued
    reason = Reason("new key requested") if new_key and key is not None else \
        renewal_reason(spec, cert, ca.certificate, now, window)
    if reason is None and not new_key:
        return f"{spec.name}: current"
    if new_key:
        key = generate_key(spec.key_algorithm)
    chain = ca.issue(spec, key, now)
    # Key before cert: if the build dies in between, the next run sees a cert that does
    # not match the key and simply issues it again for the key now on disk.
    if new_key:
        atomic_write(paths.key, private_key_pem(key), SECRET_MODE)
    atomic_write(paths.cert, certs_pem(*chain), PUBLIC_MODE)
    return f"{spec.name}: {'issued' if cert is None else 'renewed'} ({reason.text if reason else 'missing'})"


def place_all(copies: list[tuple[Path, Path, int]]) -> None:
    """Copy store files into nodes' trees: (source, destination, mode) each, atomic, the
    mode set before the rename."""
    for source, destination, mode in copies:
        atomic_write(destination, Path(source).read_bytes(), mode)


def write_cert_kubeconfig(destination: Path, cluster: str, server: str, ca_cert: Path, user: str,
                          leaf: KeyPairPaths) -> None:
    document = kubeconfig(cluster, server, Path(ca_cert).read_bytes(), user,
                          cert_pem=leaf.cert.read_bytes(), key_pem=leaf.key.read_bytes())
    atomic_write(destination, document, SECRET_MODE)
