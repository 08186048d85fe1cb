"""Keeping the cert store current: issue what is missing, renew what is due, keep keys.

Keys are precious: an existing key is never replaced here unless the spec asks for
another algorithm (leaves) or a rekey is explicit. A key file that is unreadable stops
everything and stays as it was; so does a CA key that does not match its cert. A leaf
cert that does not match its key is issued again for the key on disk: that re-signs one
leaf, where a CA re-issued for another key would orphan every cert it signed.

New certs are dated by the system clock (:func:`kthw.clock.issue_time`); whether one is
needed is decided for ``now``, which a preview may move (see :mod:`kthw.clock`).
"""

from __future__ import annotations

import functools
import hashlib
import os
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509

from kthw import clock
from kthw.crypto import (
    CertSpec,
    build_certificate,
    certs_pem,
    generate_key,
    key_algorithm,
    load_certificates,
    load_private_key,
    parse_certificates,
    private_key_pem,
    same_public_key,
)
from kthw.errors import KthwError, StateError
from kthw.fsutil import PUBLIC_MODE, SECRET_MODE, atomic_write
from kthw.kubeconfig import kubeconfig
from kthw.layout import KeyPairPaths
from kthw.pki.ca import CertificateAuthority, require_matching_pair
from kthw.pki.renewal import Reason, date_reason, renewal_reason

ROOT_DUE_HINT = ("doit never renews the root CA: replacing it means distributing a new trust anchor "
                 "to every node (see README, 'Replacing the root CA')")


@functools.lru_cache(maxsize=1024)
def _contents(path: str, stamp: tuple[int, int, int]) -> bytes:
    return Path(path).read_bytes()


def _read(path: Path) -> bytes | None:
    """A store file's bytes, or None when it is missing.

    Read once per run: keyed by inode, mtime and size (a rewritten file is a new inode,
    see fsutil), so the staleness check and the content digest share one read.
    """
    try:
        stat = os.stat(path)
        return _contents(str(path), (stat.st_ino, stat.st_mtime_ns, stat.st_size))
    except FileNotFoundError:
        return None


@functools.lru_cache(maxsize=1024)
def _parsed_chain(path: str, data: bytes) -> tuple[x509.Certificate, ...]:
    return tuple(parse_certificates(data, Path(path)))


def read_chain(path: Path) -> tuple[x509.Certificate, ...]:
    """The certs of a PEM file (a leaf then its issuer), or () when it is missing or unreadable.

    Cached: a doit run checks every leaf against the same few issuers.
    """
    data = _read(path)
    if data is None:
        return ()
    try:
        return _parsed_chain(str(path), data)
    except StateError:
        return ()


def read_cert(path: Path) -> x509.Certificate | None:
    """The first cert of a PEM file, or None if the file is missing or unreadable."""
    chain = read_chain(path)
    return chain[0] if chain else None


def pair_digest(paths: KeyPairPaths) -> str | None:
    """sha256 of a cert file and its key file as stored, None while either is missing.

    What node copies and kubeconfigs were made from: when it changes, they are made again.
    """
    cert, key = _read(paths.cert), _read(paths.key)
    if cert is None or key is None:
        return None
    return hashlib.sha256(len(cert).to_bytes(8, "big") + cert + key).hexdigest()


def key_problem(paths: KeyPairPaths, cert: x509.Certificate) -> str | None:
    """What is wrong with a cert's key file (missing, unreadable, another key's), or None."""
    if not paths.key.exists():
        return f"its key {paths.key} is missing"
    try:
        key = load_private_key(paths.key)
    except StateError:
        return f"its key {paths.key} is not a readable private key"
    if not same_public_key(key, cert.public_key()):
        return f"its key {paths.key} does not match it"
    return None


def pending_reason(spec: CertSpec, paths: KeyPairPaths, issuer_cert: Path | None, now: datetime,
                   window: timedelta) -> Reason | None:
    """Why this cert must be (re)issued now, or None. Reads certs, and the keys of CAs only.

    ``issuer_cert`` is None for the root, which is never renewed for a ``due`` reason.
    A leaf's key is checked when it changes (see :func:`pair_digest`), not on every run.
    """
    if not paths.key.exists():
        return Reason("key missing")
    issuer = read_cert(issuer_cert) if issuer_cert is not None else None
    if issuer_cert is not None and issuer is None:
        return Reason("issuer missing")
    chain = read_chain(paths.cert)
    if spec.is_ca and chain:
        problem = key_problem(paths, chain[0])
        if problem is not None:
            # Let the CA task run: it reports the problem and stops the build.
            return Reason(problem)
    reason = stored_reason(spec, chain, issuer, now, window)
    if issuer_cert is None and reason is not None and reason.due:
        return None
    return reason


def stored_reason(spec: CertSpec, chain: tuple[x509.Certificate, ...], issuer: x509.Certificate | None,
                  now: datetime, window: timedelta) -> Reason | None:
    """:func:`~kthw.pki.renewal.renewal_reason` for a cert file, which for a leaf also carries its issuer."""
    return renewal_reason(spec, chain[0] if chain else None, issuer, now, window) \
        or _chain_reason(spec, chain, issuer)


def _chain_reason(spec: CertSpec, chain: tuple[x509.Certificate, ...],
                  issuer: x509.Certificate | None) -> Reason | None:
    """A leaf's file holds its issuer's current cert after the leaf: servers present the two."""
    if spec.is_ca or issuer is None or chain[1:2] == (issuer,):
        return None
    return Reason("its file carries an earlier cert of its issuer")


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
    issuer = parent.certificate if parent else None
    reason = renewal_reason(spec, cert, issuer, now, window)
    if reason is None:
        return f"CA {spec.name}: current"
    if parent is None and cert is not None and reason.due:
        return f"CA {spec.name}: {reason.text}; {ROOT_DUE_HINT}"
    issued_at = clock.issue_time()
    ca_key = generate_key(spec.key_algorithm) if key is None else key
    if parent is None:
        new = build_certificate(spec, ca_key.public_key(), issued_at, None, ca_key)
    else:
        new = parent.issue(spec, ca_key, issued_at)[0]
    _require_current(spec, (new,), issuer, now, window, parent.name if parent else spec.name)
    # The key only once its cert exists: a CA key without a cert is a CA nobody can use.
    if key is None:
        atomic_write(paths.key, private_key_pem(ca_key), SECRET_MODE)
    atomic_write(paths.cert, certs_pem(new), PUBLIC_MODE)
    return f"CA {spec.name}: {'issued' if cert is None else 'renewed'} ({reason.text})"


def ensure_leaf(spec: CertSpec, paths: KeyPairPaths, ca: CertificateAuthority, now: datetime,
                window: timedelta, *, rekey: bool = False) -> str:
    """Issue or renew one leaf; renewal re-signs the existing key unless ``rekey``."""
    key = load_private_key(paths.key) if paths.key.exists() else None
    chain = read_chain(paths.cert)
    new_key = key is None or rekey or key_algorithm(key) != spec.key_algorithm
    reason: Reason | None
    if key is None:
        reason = Reason("missing" if not chain else "its key is missing: a new key")
    elif rekey:
        reason = Reason("new key requested")
    elif new_key:
        reason = Reason(f"key algorithm changed ({key_algorithm(key)} -> {spec.key_algorithm})")
    elif chain and not same_public_key(key, chain[0].public_key()):
        # The key is what we keep: its cert is issued again for it.
        reason = Reason(f"{paths.cert.name} does not match the key {paths.key}: issued again for that key")
    else:
        reason = stored_reason(spec, chain, ca.certificate, now, window)
    if reason is None:
        return f"{spec.name}: current"
    issued_at = clock.issue_time()
    leaf_key = generate_key(spec.key_algorithm) if new_key or key is None else key
    new_chain = tuple(ca.issue(spec, leaf_key, issued_at))
    _require_current(spec, new_chain, ca.certificate, now, window, ca.name)
    # Key before cert: if the build dies in between, the next run sees a cert that does
    # not match the key and issues it again for the key now on disk.
    if new_key:
        atomic_write(paths.key, private_key_pem(leaf_key), SECRET_MODE)
    atomic_write(paths.cert, certs_pem(*new_chain), PUBLIC_MODE)
    return f"{spec.name}: {'issued' if not chain else 'renewed'} ({reason.text})"


def _require_current(spec: CertSpec, chain: tuple[x509.Certificate, ...], issuer: x509.Certificate | None,
                     now: datetime, window: timedelta, ca_name: str) -> None:
    """Never write a cert the next run would issue again: that run would do the same, forever.

    Its names and signature are its issuer's to get right (a remote CA's answer is checked
    where it arrives, see kthw.pki.vault.client); its dates come from the issuer's clock.
    """
    reason = date_reason(chain[0], issuer, now, window) or _chain_reason(spec, chain, issuer)
    if reason is not None:
        raise KthwError(f"{spec.name}: CA {ca_name} issued a cert that would have to be issued again at once "
                        f"({reason.text}); nothing was written. Certs are dated by their issuer's clock: check "
                        "that it agrees with this machine's (Vault signs on its own clock)")


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
