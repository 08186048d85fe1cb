"""Compact JWS tokens, as a Kubernetes service account or a registry token server signs them."""

from __future__ import annotations

import base64
import json

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_jwt(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, claims: dict, **header) -> str:
    """A compact JWS of ``claims``: ES256 with a P-256 key (JOSE's raw r||s signature, not
    DER), RS256 with an RSA key. ``header`` adds fields to {"alg", "typ": "JWT"}."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        assert isinstance(key.curve, ec.SECP256R1), f"ES256 needs a P-256 key, not {key.curve.name}"
        alg = "ES256"
    else:
        alg = "RS256"
    head = {"alg": alg, "typ": "JWT", **header}
    signing_input = f"{b64url(json.dumps(head).encode())}.{b64url(json.dumps(claims).encode())}".encode()
    if alg == "ES256":
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:
        signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input.decode()}.{b64url(signature)}"
