"""Certificate authorities: one interface, whatever keeps the CA keys.

The cert catalogue, kubeconfigs and tasks only call :meth:`CertificateAuthority.issue`
and read :attr:`certificate`; they never learn where the key lives. :func:`open_ca` is
the one switch between the backends: local files here, Vault in :mod:`kthw.pki.vault.client`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from cryptography import x509

from kthw.crypto import CertSpec, PrivateKey, build_certificate, load_certificates, load_private_key, same_public_key
from kthw.errors import StateError
from kthw.inventory import CASettings
from kthw.layout import KeyPairPaths, Layout
from kthw.pki.catalogue import key_in_vault


class CertificateAuthority(Protocol):
    # Read-only: the CAs are frozen dataclasses.
    @property
    def name(self) -> str: ...

    @property
    def certificate(self) -> x509.Certificate: ...

    def issue(self, spec: CertSpec, key: PrivateKey, now: datetime) -> list[x509.Certificate]:
        """Certify ``key``'s public half per ``spec``; returns the new cert followed by the issuing chain.

        The private key never leaves the process: a local CA reads its public half, a remote
        CA signs a CSR made with it.
        """


@dataclass(frozen=True)
class LocalCA:
    """A CA whose key is a file on the workstation."""

    name: str
    certificate: x509.Certificate
    key: PrivateKey

    def issue(self, spec: CertSpec, key: PrivateKey, now: datetime) -> list[x509.Certificate]:
        return [build_certificate(spec, key.public_key(), now, self.certificate, self.key), self.certificate]


def open_local_ca(name: str, paths: KeyPairPaths) -> LocalCA:
    """Load a CA from its files, refusing a key that does not match its cert."""
    try:
        stamps = tuple((st.st_ino, st.st_mtime_ns, st.st_size) for st in (paths.cert.stat(), paths.key.stat()))
    except FileNotFoundError:
        raise StateError(f"CA '{name}' is missing ({paths.cert} or {paths.key}); run 'doit pki' to create it") from None
    return _load_local_ca(name, paths, stamps)


@functools.lru_cache(maxsize=16)
def _load_local_ca(name: str, paths: KeyPairPaths, stamps: tuple) -> LocalCA:
    # Keyed by the files' inode, mtime and size: a run issues hundreds of leaves from the
    # same few CAs, and a replaced CA file (always a new inode, see fsutil) is read afresh.
    cert = load_certificates(paths.cert)[0]
    key = load_private_key(paths.key)
    require_matching_pair(paths, key, cert)
    return LocalCA(name, cert, key)


def require_matching_pair(paths: KeyPairPaths, key: PrivateKey, cert: x509.Certificate) -> None:
    """A CA key that does not match its cert stops the build; neither file is touched."""
    if not same_public_key(key, cert.public_key()):
        raise StateError(f"{paths.key} does not match {paths.cert}; both were left as they are. "
                         "Restore the matching pair from a backup")


def open_ca(layout: Layout, name: str, settings: CASettings | None = None, node: str | None = None) \
        -> CertificateAuthority:
    """The CA ``name`` of the inventory's backend (``settings``; None means local files).

    ``node``: the node whose leaf it signs (Vault signs a node's certs with that node's role).
    """
    if settings is not None and key_in_vault(name, settings.backend):
        from kthw.pki.vault import client as vault  # hvac is loaded only where Vault is used
        return vault.open_vault_ca(settings, name, layout.ca(name), node)
    return open_local_ca(name, layout.ca(name))
