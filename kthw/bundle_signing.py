"""The bundle-signing key: an Ed25519 key that signs every bundle's MANIFEST.

    build/state/bundle-signing.key   private key, PKCS#8 PEM, 0600 (precious: made once)
    build/state/bundle-signing.pub   public key, SubjectPublicKeyInfo PEM (shipped in bundles)

The fingerprint is ``SHA256:`` and the hex sha256 of the public key's DER bytes (the
base64 body of the .pub file), so a node can compute it with coreutils alone:

    sed '/^-----/d' signing-key.pub | base64 -d | sha256sum

The node checks the MANIFEST with OpenSSL 3 (``openssl pkeyutl -verify -pubin -inkey
signing-key.pub -rawin -in MANIFEST -sigfile MANIFEST.sig``) after comparing the key's
fingerprint with the one the operator brought from the workstation.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .crypto import private_key_pem, public_key_pem, public_key_sha256
from .errors import KthwError, StateError
from .fsutil import PUBLIC_MODE, SECRET_MODE, atomic_write

KEY_NAME = "bundle-signing.key"
PUB_NAME = "bundle-signing.pub"


def key_path(state: Path) -> Path:
    return Path(state) / KEY_NAME


def pub_path(state: Path) -> Path:
    return Path(state) / PUB_NAME


def load_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise StateError(f"{path}: the bundle-signing key is missing; run `doit bundle_signing_key` to make "
                         "it (every node then needs the new fingerprint)") from None
    except OSError as err:
        raise StateError(f"{path}: cannot read the bundle-signing key ({err.strerror}); fix its "
                         "permissions") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise StateError(f"{path}: not a readable Ed25519 private key; it was left as it is. Restore it from a "
                         "backup; if it is lost, `doit rotate_bundle_signing_key` makes a new one (the nodes "
                         "then need the new fingerprint)")
    return key


def fingerprint(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    return "SHA256:" + public_key_sha256(key)


def load_public(pem: bytes) -> Ed25519PublicKey:
    try:
        public = serialization.load_pem_public_key(pem)
    except ValueError:
        raise KthwError("the bundle's signing-key.pub is not a PEM public key") from None
    if not isinstance(public, Ed25519PublicKey):
        raise KthwError("the bundle's signing-key.pub is not an Ed25519 key")
    return public


def fingerprint_of_pem(pem: bytes) -> str:
    return fingerprint(load_public(pem))


def is_current(state: Path) -> bool:
    """The key is readable and the .pub beside it is its public half."""
    try:
        return pub_path(state).read_bytes() == public_key_pem(load_key(key_path(state)))
    except (OSError, StateError):
        return False


def ensure(state: Path) -> str:
    """Make the key once; afterwards only (re)write the .pub from it. Never replaces a key."""
    path = key_path(state)
    if path.exists():
        key = load_key(path)
        message = ""
    else:
        key = Ed25519PrivateKey.generate()
        atomic_write(path, private_key_pem(key), SECRET_MODE)
        message = f"new bundle-signing key {path}\n{announce(key)}"
    atomic_write(pub_path(state), public_key_pem(key), PUBLIC_MODE)
    return message


def rotate(state: Path) -> str:
    """Explicit replacement: the old pair is kept beside the new one as *.old."""
    path = key_path(state)
    old = None
    if path.exists():
        try:
            old = fingerprint(load_key(path))
        except StateError:
            old = "unreadable"
        for current in (path, pub_path(state)):
            if current.exists():
                os.replace(current, current.with_name(current.name + ".old"))
    key = Ed25519PrivateKey.generate()
    atomic_write(path, private_key_pem(key), SECRET_MODE)
    atomic_write(pub_path(state), public_key_pem(key), PUBLIC_MODE)
    note = f"replaced the bundle-signing key {old} (kept as {path.name}.old)\n" if old else ""
    return (note + announce(key) + "\nRebuild the bundles (`doit bundle`); bundles signed with the old key now "
            "fail the new fingerprint check.")


def announce(key: Ed25519PrivateKey) -> str:
    return (f"bundle-signing key fingerprint: {fingerprint(key)}\n"
            "  Write it down and take it to the nodes apart from the USB stick: "
            "sudo ./install.sh --fingerprint " + fingerprint(key))


def sign(key: Ed25519PrivateKey, data: bytes) -> bytes:
    return key.sign(data)


def verify(public: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        public.verify(signature, data)
    except InvalidSignature:
        return False
    return True
