"""Kubelet bootstrap tokens: made from the OS CSPRNG, kept as precious state, replaced when due.

One token per kubelet node, stored in its own small YAML file under build/state/tokens/.
The file records the token and its expiration; the bootstrap kubeconfig and the
``bootstrap-token-<id>`` Secret are derived from it, so the Secret's expiration is the
recorded one. Whether a token must be replaced is decided from that recorded expiration
and the clock (:func:`pending_reason`), never from doit's memory.
"""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import yaml

from kthw import yamldoc
from kthw.clock import in_utc
from kthw.errors import StateError
from kthw.fsutil import SECRET_MODE, atomic_write
from kthw.inventory import Inventory, Node
from kthw.kubeconfig import kubeconfig
from kthw.pki.renewal import calendar_reason

TOKEN_PATTERN = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")
TOKEN_FORMAT = "[a-z0-9]{6}.[a-z0-9]{16}"
_ALPHABET = string.ascii_lowercase + string.digits


def kubelet_nodes(inv: Inventory) -> tuple[Node, ...]:
    """The nodes that run a kubelet, and so get a bootstrap token: the workers."""
    return inv.worker_nodes


def renewal_window(inv: Inventory) -> timedelta:
    """How close to its expiration a token is replaced.

    The cert window (``renew_before``, 30 days by default) is longer than a token's whole
    life (14 days by default), so it cannot be used as is: every run would replace every
    token. Half the token's lifetime, if shorter, keeps at least that half for carrying
    the bundles to the nodes.
    """
    return min(inv.renew_before, inv.bootstrap_token_ttl / 2)


@dataclass(frozen=True)
class BootstrapToken:
    """A node's kubelet bootstrap token."""

    node: str
    token_id: str
    token_secret: str
    expiration: datetime  # UTC, whole seconds

    @property
    def token(self) -> str:
        return f"{self.token_id}.{self.token_secret}"

    @property
    def expiration_rfc3339(self) -> str:
        return self.expiration.strftime("%Y-%m-%dT%H:%M:%SZ")


def generate(node: str, now: datetime, ttl: timedelta) -> BootstrapToken:
    def random_text(length: int) -> str:
        return "".join(secrets.choice(_ALPHABET) for _ in range(length))

    expiration = in_utc(now + ttl)
    return BootstrapToken(node, random_text(6), random_text(16), expiration)


def dumps(token: BootstrapToken) -> bytes:
    header = (f"# Kubelet bootstrap token of {token.node}, made by kthw-airgap (doit secrets).\n"
              "# Precious: `doit` replaces it only when it is expired or about to expire.\n")
    body = {"node": token.node, "token": token.token, "expiration": token.expiration_rfc3339}
    return (header + yaml.safe_dump(body, sort_keys=False)).encode()


def read(path: Path, node: str) -> BootstrapToken | None:
    """The token recorded in ``path``; None when the file does not exist.

    A file that does not hold a well-formed token for ``node`` is a :class:`StateError`;
    the file is never touched here.
    """
    path = Path(path)
    try:
        # libyaml's parser: the pure-Python one took 1 ms a token, and a 100-node no-op reads them all
        data = yamldoc.safe_load(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, yaml.YAMLError) as err:
        raise _bad(path, f"cannot be read as YAML ({err})") from None
    if not isinstance(data, dict) or set(data) != {"node", "token", "expiration"}:
        raise _bad(path, "must hold exactly the keys node, token and expiration")
    if data["node"] != node:
        raise _bad(path, f"is for node {data['node']!r}, not {node!r}")
    match = TOKEN_PATTERN.match(str(data["token"]))
    if not match:
        raise _bad(path, f"the token does not have the form {TOKEN_FORMAT}")  # not echoed: it is a secret
    expiration = _timestamp(data["expiration"])
    if expiration is None:
        raise _bad(path, f"expiration {data['expiration']!r} is not an RFC 3339 time such as 2026-01-31T12:00:00Z")
    return BootstrapToken(node, match.group(1), match.group(2), expiration)


def _timestamp(value) -> datetime | None:
    if isinstance(value, datetime):  # a hand-edited, unquoted timestamp
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return None
    return in_utc(moment)


def _bad(path: Path, problem: str) -> StateError:
    return StateError(f"{path}: {problem}. The file was left as it is. Fix it (token: {TOKEN_FORMAT}, "
                      "expiration: RFC 3339), restore it from a backup, or delete it to have `doit secrets` "
                      "issue a new token (the node's bootstrap kubeconfig and Secret then change too)")


def require(path: Path, node: str) -> BootstrapToken:
    """The node's token, for files that embed it: a missing one names the stage that issues it."""
    token = read(path, node)
    if token is None:
        raise StateError(f"{path} is missing; run `doit secrets` to issue the bootstrap token of {node}")
    return token


def pending_reason(path: Path, node: str, now: datetime, window: timedelta) -> str | None:
    """Why the node needs a new token now (missing, expired, inside the window), or None."""
    token = read(path, node)
    if token is None:
        return "missing"
    reason = calendar_reason(token.expiration, now, window)
    return reason.text if reason else None


def ensure(path: Path, node: str, now: datetime, ttl: timedelta, window: timedelta) -> str:
    """Keep a valid token; issue a new one when there is none or it is due."""
    reason = pending_reason(path, node, now, window)
    if reason is None:
        return ""
    token = generate(node, now, ttl)
    atomic_write(path, dumps(token), SECRET_MODE)
    return f"bootstrap token of {node}: issued {token.token_id} ({reason}), expires {token.expiration_rfc3339}"


def write_bootstrap_kubeconfig(destination: Path, cluster: str, server: str, ca_cert: Path, token_path: Path,
                               node: str) -> None:
    """The kubelet's --bootstrap-kubeconfig: the API endpoint, its CA and the node's token."""
    token = require(token_path, node)
    document = kubeconfig(cluster, server, Path(ca_cert).read_bytes(), "kubelet-bootstrap", token=token.token)
    atomic_write(destination, document, SECRET_MODE)
