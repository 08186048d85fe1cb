"""The bundle-signing key: an Ed25519 key that signs every bundle's MANIFEST.

    build/state/bundle-signing.key           private key, PKCS#8 PEM, 0600 (precious: made once)
    build/state/bundle-signing.pub           public key, SubjectPublicKeyInfo PEM
    build/state/bundle-signing.endorsements  one line per key replacement: the old key signs the new

The fingerprint the operator carries to the nodes *is* the public key: ``ed25519:`` and the
64 hex digits of its 32 raw bytes. A verifier builds the key it checks with from that
value alone (DER SubjectPublicKeyInfo = :data:`SPKI_PREFIX` + the raw bytes), never from
anything in the bundle, so no file on the stick can change which key is trusted:

    key=$(mktemp) && printf '%b' "$(printf '%s%s' 302a300506032b6570032100 <hex> | sed 's/../\\\\x&/g')" >"$key"
    openssl pkeyutl -verify -pubin -keyform DER -inkey "$key" -rawin -in MANIFEST -sigfile MANIFEST.sig

Replacing the key (:func:`rotate`) appends an endorsement: the old key's signature over
:func:`endorsement_message` naming the old and the new key. Bundles carry the endorsements,
so a node that trusts an old key follows them, each checked with the key before it, to
the key that signed the bundle.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from kthw.crypto import private_key_pem, public_key_pem
from kthw.errors import KthwError, StateError
from kthw.fsutil import PUBLIC_MODE, SECRET_MODE, atomic_write

KEY_NAME = "bundle-signing.key"
PUB_NAME = "bundle-signing.pub"
ENDORSEMENTS_NAME = "bundle-signing.endorsements"
# DER of an Ed25519 SubjectPublicKeyInfo up to the 32 key bytes (RFC 8410).
SPKI_PREFIX = "302a300506032b6570032100"
FINGERPRINT_PREFIX = "ed25519:"
FINGERPRINT_FORM = re.compile(r"^ed25519:[0-9a-f]{64}$")
ENDORSEMENT_HEADER = "kthw-airgap bundle-signing key endorsement 1"


def key_path(state: Path) -> Path:
    return Path(state) / KEY_NAME


def pub_path(state: Path) -> Path:
    return Path(state) / PUB_NAME


def endorsements_path(state: Path) -> Path:
    return Path(state) / ENDORSEMENTS_NAME


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
    """``ed25519:<hex of the 32 raw public-key bytes>``: the key itself, short enough to carry."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return FINGERPRINT_PREFIX + public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def public_key(fingerprint_text: str) -> Ed25519PublicKey:
    """The public key a fingerprint stands for; an error that names the expected form."""
    text = fingerprint_text.strip().lower()
    if not FINGERPRINT_FORM.match(text):
        hint = (" (that is the old SHA256 form; `doit fingerprint` prints the ed25519: value)"
                if text.startswith("sha256:") else "")
        raise KthwError(f"fingerprint {fingerprint_text!r}: expected ed25519: and 64 hex digits, as `doit "
                        f"fingerprint` prints it{hint}")
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text.removeprefix(FINGERPRINT_PREFIX)))


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
    """Explicit replacement: the old pair is kept beside the new one as *.old, and a readable
    old key endorses the new one, so installed nodes accept the new key's bundles."""
    path = key_path(state)
    old_key = None
    note = ""
    if path.exists():
        try:
            old_key = load_key(path)
        except StateError:
            note = (f"the old key {path} is unreadable, so it cannot endorse the new one: installed nodes "
                    "need `kthw-install --fingerprint <new> --replace-pinned-key`\n")
    key = Ed25519PrivateKey.generate()
    endorsements = endorsements_path(state)
    if old_key is not None:
        lines = [*read_endorsements(endorsements), endorse(old_key, key.public_key())]
        # The endorsement first: were the key written first and the run killed, the old key
        # would be gone (*.old) without having endorsed its successor.
        atomic_write(endorsements, "".join(line + "\n" for line in lines).encode(), PUBLIC_MODE)
        note = (f"replaced the bundle-signing key {fingerprint(old_key)} (kept as {path.name}.old; "
                "it endorses the new key)\n")
    for current in (path, pub_path(state)):
        if current.exists():
            os.replace(current, current.with_name(current.name + ".old"))
    atomic_write(path, private_key_pem(key), SECRET_MODE)
    atomic_write(pub_path(state), public_key_pem(key), PUBLIC_MODE)
    return (note + announce(key) + "\nRebuild the bundles (`doit bundle`). Installed nodes follow the "
            "endorsement to the new key; a new node needs the new fingerprint.")


def announce(key: Ed25519PrivateKey) -> str:
    fp = fingerprint(key)
    return (f"bundle-signing key fingerprint: {fp}\n"
            "  Write it down and take it to the nodes apart from the USB stick. First installation:\n"
            f"    sudo ./install.sh --fingerprint {fp}\n"
            "  Or check the unpacked bundle by hand first, trusting nothing on the stick (OpenSSL 3):\n"
            f"    {check_signature_command(fp)}\n"
            "  then compare each file with the MANIFEST: see README in the bundle.")


def check_signature_command(fp: str) -> str:
    """Shell commands that check MANIFEST.sig with the key built from ``fp`` alone."""
    hex_key = fp.removeprefix(FINGERPRINT_PREFIX)
    return (f"key=$(mktemp) && printf '%b' \"$(printf '%s%s' {SPKI_PREFIX} {hex_key} | sed 's/../\\\\x&/g')\" "
            ">\"$key\" && openssl pkeyutl -verify -pubin -keyform DER -inkey \"$key\" -rawin -in MANIFEST "
            "-sigfile MANIFEST.sig")


def sign(key: Ed25519PrivateKey, data: bytes) -> bytes:
    return key.sign(data)


def verify(public: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        public.verify(signature, data)
    except InvalidSignature:
        return False
    return True


# --- endorsements: the old key vouches for the new one ------------------------------------------


def endorsement_message(old: str, new: str) -> bytes:
    return f"{ENDORSEMENT_HEADER}\nold {old}\nnew {new}\n".encode()


def endorse(old_key: Ed25519PrivateKey, new: Ed25519PublicKey) -> str:
    """One endorsements line: ``<old fingerprint> <new fingerprint> <base64 signature>``."""
    old_fp, new_fp = fingerprint(old_key), fingerprint(new)
    return f"{old_fp} {new_fp} {base64.b64encode(old_key.sign(endorsement_message(old_fp, new_fp))).decode()}"


def read_endorsements(path: Path) -> list[str]:
    try:
        return [line for line in Path(path).read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def follow(trusted: str, endorsements: bytes | None) -> str:
    """The key a bundle is signed with, reached from the ``trusted`` fingerprint through the
    endorsements in order (each checked with the key before it); ``trusted`` when none applies.
    The same walk as install.sh's."""
    key = trusted.strip().lower()
    public_key(key)
    for number, line in enumerate((endorsements or b"").decode("ascii", "replace").splitlines(), start=1):
        words = line.split()
        if not words:
            continue
        if len(words) != 3 or not FINGERPRINT_FORM.match(words[0]) or not FINGERPRINT_FORM.match(words[1]):
            raise KthwError(f"KEY-ENDORSEMENTS line {number}: expected '<old key> <new key> <signature>'")
        old, new, signature = words
        if old != key:
            continue
        try:
            raw = base64.b64decode(signature, validate=True)
        except binascii.Error:
            raw = b""
        if not verify(public_key(old), raw, endorsement_message(old, new)):
            raise KthwError(f"KEY-ENDORSEMENTS line {number}: the endorsement of {new} by {old} does not verify")
        key = new
    return key
