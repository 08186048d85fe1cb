"""Kubeconfig files with the credentials embedded."""

from __future__ import annotations

import base64

import yaml

# libyaml's emitter when PyYAML has it: the pure-Python one dominates a large build.
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def kubeconfig(cluster: str, server: str, ca_pem: bytes, user: str, *, cert_pem: bytes | None = None,
               key_pem: bytes | None = None, token: str | None = None) -> bytes:
    """One cluster, one user, one context, selected as current.

    ``ca_pem`` is the CA that signed the API server's cert (its intermediate only,
    never the root), so this client trusts nothing else.
    """
    credentials: dict[str, str] = {}
    if cert_pem is not None:
        if key_pem is None:
            raise ValueError(f"the client certificate of {user} needs its key")
        credentials["client-certificate-data"] = _b64(cert_pem)
        credentials["client-key-data"] = _b64(key_pem)
    if token is not None:
        credentials["token"] = token
    context = f"{user}@{cluster}"
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": {"server": server, "certificate-authority-data": _b64(ca_pem)}}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": context, "context": {"cluster": cluster, "user": user}}],
        "current-context": context,
        "preferences": {},
    }
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False).encode()
