"""`doit vault_setup`: prepare Vault for the vault CA backend (explicit; never a default task).

    doit vault_setup                  create missing mounts, CAs and roles; report roles that differ
    doit vault_setup update_roles=1   also rewrite the roles that differ from what the inventory needs

Existing mounts and CAs are never replaced. See kthw.vault for the names and the policy.
"""

from __future__ import annotations

from doit import get_var

from .common import context, guarded

UPDATE_ROLES_VAR = "update_roles"


def _flag(value: str | None) -> bool:
    return str(value or "").strip().lower() in ("1", "true", "yes", "on")


def _setup(inv, update_roles: bool) -> str:
    from kthw import vault  # hvac is loaded only when Vault is used
    return vault.setup(inv, update_roles)


def task_vault_setup():
    """Explicit: create what is missing in Vault (root, one intermediate per trust domain, roles)."""
    inv, _ = context()
    return {
        "actions": [(guarded, [_setup, inv, _flag(get_var(UPDATE_ROLES_VAR, None))])],
        "uptodate": [False],
        "verbosity": 2,
    }
