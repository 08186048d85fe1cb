"""Keys and X.509 certificates: making them from a spec, and reading facts back.

This module only builds and reads. Whether a cert must be re-issued is decided in
:mod:`kthw.pki.renewal`.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kthw.errors import KthwError, StateError

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

# Certs start a little in the past so a node whose clock lags the workstation's
# still accepts them on first boot.
BACKDATE = timedelta(minutes=5)
# The last moment a certificate can name: X.509 dates have four year digits.
LAST_CERT_DATE = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)

_CURVES = {"ecdsa-p256": ec.SECP256R1, "ecdsa-p384": ec.SECP384R1}
_RSA_BITS = {"rsa-2048": 2048, "rsa-3072": 3072, "rsa-4096": 4096}
_CURVE_NAMES = {curve().name: name for name, curve in _CURVES.items()}  # "secp256r1" -> "ecdsa-p256"
KEY_ALGORITHMS = (*_CURVES, *_RSA_BITS)  # the names the inventory's key_algorithm accepts
_EKU = {"server": ExtendedKeyUsageOID.SERVER_AUTH, "client": ExtendedKeyUsageOID.CLIENT_AUTH}


@dataclass(frozen=True)
class CertSpec:
    """Everything that defines one certificate, independent of who signs it."""

    name: str
    common_name: str
    organizations: tuple[str, ...]
    usages: frozenset[str]            # "server", "client" for leaves; "ca" for authorities
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    lifetime: timedelta
    key_algorithm: str
    path_length: int | None = None    # CAs only

    @property
    def is_ca(self) -> bool:
        return "ca" in self.usages


@dataclass(frozen=True)
class CertFacts:
    """What a cert says about itself, as plain values."""

    common_name: str
    organizations: tuple[str, ...]
    usages: frozenset[str]
    dns_names: frozenset[str]
    ip_addresses: frozenset[str]
    not_before: datetime
    not_after: datetime
    key_algorithm: str
    issuer_common_name: str


def generate_key(algorithm: str) -> PrivateKey:
    if algorithm in _CURVES:
        return ec.generate_private_key(_CURVES[algorithm]())
    if algorithm in _RSA_BITS:
        return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS[algorithm])
    raise ValueError(f"unknown key algorithm {algorithm!r}")


def key_kind_and_size(algorithm: str) -> tuple[str, int]:
    """("ec", curve bits) or ("rsa", modulus bits): Vault's key_type and key_bits."""
    if algorithm in _CURVES:
        return "ec", _CURVES[algorithm]().key_size
    return "rsa", _RSA_BITS[algorithm]


def key_algorithm(key) -> str:
    """The inventory name of a private or public key's algorithm."""
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return _CURVE_NAMES.get(key.curve.name, key.curve.name)
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return f"rsa-{key.key_size}"
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return "ed25519"
    return type(key).__name__


def private_key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_key_pem(key) -> bytes:
    public = key.public_key() if hasattr(key, "public_key") else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_key_sha256(key) -> str:
    """Hex sha256 of the public key's DER SubjectPublicKeyInfo: names a key without showing it."""
    public = key.public_key() if hasattr(key, "public_key") else key
    return hashlib.sha256(public.public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def certs_pem(*certs: x509.Certificate) -> bytes:
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certs)


def same_public_key(a, b) -> bool:
    return public_key_pem(a) == public_key_pem(b)


def load_private_key(path: Path):
    """Read an unencrypted PEM private key; a corrupt file is a :class:`StateError`."""
    try:
        return serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (ValueError, TypeError, UnicodeDecodeError) as err:
        raise StateError(f"{path}: not a readable private key ({err}). It was left as it is: restore it "
                         "from a backup, or replace it on purpose with the matching rekey/rotate task") from None


def load_certificates(path: Path) -> list[x509.Certificate]:
    """Read a PEM file holding one cert or a chain (leaf first)."""
    return parse_certificates(Path(path).read_bytes(), path)


def parse_certificates(data: bytes, path: Path) -> list[x509.Certificate]:
    """The certs of a PEM file's bytes (leaf first); ``path`` names the file in the error."""
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as err:
        raise StateError(f"{path}: not a readable PEM certificate ({err}). Restore it from a backup, "
                         "or delete it to have it issued again") from None


def build_certificate(spec: CertSpec, public_key: PublicKey, now: datetime,
                      issuer_cert: x509.Certificate | None, issuer_key: PrivateKey) -> x509.Certificate:
    """Sign ``public_key`` per ``spec``; with no ``issuer_cert`` the cert is self-signed."""
    subject = _subject(spec)
    not_before = now.replace(microsecond=0) - BACKDATE
    if spec.lifetime > LAST_CERT_DATE - not_before:
        raise KthwError(f"{spec.name}: a lifetime of {spec.lifetime.days} days from {not_before:%Y-%m-%d} ends after "
                        f"{LAST_CERT_DATE:%Y-%m-%d}, the last date a certificate can carry; shorten it under "
                        "'lifetimes:' in the inventory")
    not_after = not_before + spec.lifetime
    if issuer_cert is not None:
        # A cert never outlives its issuer: verifiers would reject the tail anyway.
        not_after = min(not_after, issuer_cert.not_valid_after_utc)
    is_rsa = isinstance(public_key, rsa.RSAPublicKey)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert is not None else subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=spec.is_ca, path_length=spec.path_length if spec.is_ca else None),
                       critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False,
            key_encipherment=is_rsa and not spec.is_ca, data_encipherment=False, key_agreement=False,
            key_cert_sign=spec.is_ca, crl_sign=spec.is_ca, encipher_only=False, decipher_only=False),
            critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    authority_key = issuer_key.public_key()
    builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(authority_key),
                                    critical=False)
    eku = [_EKU[u] for u in sorted(spec.usages) if u in _EKU]
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if spec.dns_names or spec.ip_addresses:
        builder = builder.add_extension(_alt_names(spec), critical=False)
    return builder.sign(issuer_key, _signature_hash(issuer_key))


def build_csr(spec: CertSpec, key: PrivateKey) -> x509.CertificateSigningRequest:
    """A request for ``spec``'s subject and names, for a CA that signs elsewhere (Vault)."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(_subject(spec))
    if spec.dns_names or spec.ip_addresses:
        builder = builder.add_extension(_alt_names(spec), critical=False)
    return builder.sign(key, _signature_hash(key))


def _subject(spec: CertSpec) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in spec.organizations]
                     + [x509.NameAttribute(NameOID.COMMON_NAME, spec.common_name)])


def _alt_names(spec: CertSpec) -> x509.SubjectAlternativeName:
    return x509.SubjectAlternativeName([x509.DNSName(n) for n in spec.dns_names]
                                       + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in spec.ip_addresses])


def _signature_hash(key) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def read_facts(cert: x509.Certificate) -> CertFacts:
    def ext(kind):
        try:
            return cert.extensions.get_extension_for_class(kind).value
        except x509.ExtensionNotFound:
            return None

    usages = set()
    basic = ext(x509.BasicConstraints)
    if basic is not None and basic.ca:
        usages.add("ca")
    for oid in ext(x509.ExtendedKeyUsage) or ():
        usages.update(name for name, known in _EKU.items() if known == oid)
    san = ext(x509.SubjectAlternativeName)
    return CertFacts(
        common_name=_first(cert.subject, NameOID.COMMON_NAME),
        organizations=tuple(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)),
        usages=frozenset(usages),
        dns_names=frozenset(san.get_values_for_type(x509.DNSName)) if san else frozenset(),
        ip_addresses=frozenset(str(ip) for ip in san.get_values_for_type(x509.IPAddress)) if san else frozenset(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        key_algorithm=key_algorithm(cert.public_key()),
        issuer_common_name=_first(cert.issuer, NameOID.COMMON_NAME),
    )


def _first(name: x509.Name, oid) -> str:
    attrs = name.get_attributes_for_oid(oid)
    return str(attrs[0].value) if attrs else ""


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when ``issuer``'s key made ``cert``'s signature and the names chain."""
    if cert.issuer != issuer.subject:
        return False
    public = issuer.public_key()
    algorithm = cert.signature_hash_algorithm  # None only for Ed25519/Ed448 signatures, which no CA here makes
    if algorithm is None:
        return False
    try:
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), algorithm)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
        else:
            return False
    except InvalidSignature:
        return False
    return True
