"""Secrets stage: where its precious state lives, and the service-account key pair.

    build/state/sa.key, sa.pub                       service-account signing key pair
    build/state/sa-next.key, sa-next.pub,            the extra key of a service-account key
                sa-previous.pub, sa-rotation.yaml    rotation and its phase (kthw.secrets.sa_rotation)
    build/state/encryption/encryption-config.yaml    EncryptionConfiguration (kthw.secrets.encryption)
    build/state/encryption/rotation.yaml             phase of the current key rotation
    build/state/tokens/<node>.yaml                   kubelet bootstrap token (kthw.secrets.tokens)

All of it is precious: `doit clean` never removes it and nothing here replaces it
silently. Node copies under build/nodes are derived from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from kthw.crypto import generate_key, key_algorithm, load_private_key, private_key_pem, public_key_pem
from kthw.errors import StateError
from kthw.fsutil import PUBLIC_MODE, SECRET_MODE, atomic_write
from kthw.layout import Layout


@dataclass(frozen=True)
class SecretsState:
    """The paths of the secrets stage's state."""

    root: Path

    @property
    def sa_key(self) -> Path:
        return self.root / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.root / "sa.pub"

    @property
    def sa_next_key(self) -> Path:
        return self.root / "sa-next.key"

    @property
    def sa_next_pub(self) -> Path:
        return self.root / "sa-next.pub"

    @property
    def sa_previous_pub(self) -> Path:
        return self.root / "sa-previous.pub"

    @property
    def sa_rotation(self) -> Path:
        return self.root / "sa-rotation.yaml"

    @property
    def encryption_config(self) -> Path:
        return self.root / "encryption" / "encryption-config.yaml"

    @property
    def rotation(self) -> Path:
        return self.root / "encryption" / "rotation.yaml"

    def token(self, node: str) -> Path:
        return self.root / "tokens" / f"{node}.yaml"


def state_of(layout: Layout) -> SecretsState:
    return SecretsState(layout.state)


LOST_SA_KEY = ("Restore it from a backup. If it is lost, delete it and run `doit secrets` to make a new one: "
               "every service-account token issued with the old key then stops working")


def load_sa_key(path: Path, fix: str = LOST_SA_KEY):
    """A service-account private key; anything else is a StateError ending with ``fix``."""
    try:
        key = load_private_key(path)
    except StateError:
        key = None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise StateError(f"{path}: not a readable RSA or ECDSA private key; it was left as it is. {fix}")
    return key


def sa_keypair_current(key_path: Path, pub_path: Path) -> bool:
    """The key is readable and sa.pub is its public half."""
    if not key_path.exists() or not pub_path.exists():
        return False
    return pub_path.read_bytes() == public_key_pem(load_sa_key(key_path))


def ensure_sa_keypair(key_path: Path, pub_path: Path, algorithm: str) -> str:
    """Make the pair when there is no key; otherwise keep the key and (re)write sa.pub from it.

    A key of another algorithm than the inventory's is kept: replacing it would invalidate
    every service-account token in the cluster.
    """
    if key_path.exists():
        key = load_sa_key(key_path)
        message = ""
        if key_algorithm(key) != algorithm:
            message = (f"note: {key_path} is {key_algorithm(key)}, the inventory says {algorithm}; the key is "
                       "kept (a new one would invalidate every service-account token); to switch without "
                       "invalidating any, run `doit rotate_sa_key` three times")
    elif pub_path.exists():
        # sa.pub is written only from sa.key: the key existed and is lost, and a new one
        # would invalidate every service-account token.
        raise StateError(f"{key_path} is missing but {pub_path}, written from it, is there; no new key is made "
                         f"(it would invalidate every service-account token). Restore {key_path.name} from a "
                         f"backup of build/state; to start over with a new key anyway, delete {pub_path}")
    else:
        key = generate_key(algorithm)
        atomic_write(key_path, private_key_pem(key), SECRET_MODE)
        message = f"service-account key pair: new {algorithm} key"
    atomic_write(pub_path, public_key_pem(key), PUBLIC_MODE)
    return message

