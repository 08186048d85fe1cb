"""The roles a node can have. A node's roles are a frozenset of these names, as the
inventory writes them."""

from __future__ import annotations

from typing import Literal, get_args

Role = Literal["control-plane", "etcd", "worker"]
ROLES: tuple[Role, ...] = get_args(Role)
CONTROL_PLANE, ETCD, WORKER = ROLES
