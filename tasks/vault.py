"""The admin's Vault tasks for the vault CA backend (explicit; never part of a plain `doit`).

    doit vault_setup                  create missing mounts, CAs, roles and the build policy; report drift
    doit vault_setup update_roles=1   also rewrite drifted roles and the build policy, delete unused roles
    doit vault_setup policies=1       print the build identity's and the admin's policies (HCL); no Vault
    doit vault_renew_ca               renew, with the same keys, the CAs that are due (not the root)

They run with an admin token; `doit` itself runs as the build identity, which may only sign
leaf CSRs. Existing mounts and CAs are never replaced. See kthw.pki.vault.setup and
kthw.pki.vault.policy.
"""

from __future__ import annotations

from doit import get_var

from kthw.errors import KthwError

from .common import context, guarded

UPDATE_ROLES_VAR = "update_roles"
POLICIES_VAR = "policies"


def _flag(value: str | None) -> bool:
    return str(value or "").strip().lower() in ("1", "true", "yes", "on")


def _setup(inv, layout, update_roles: bool) -> str:
    from kthw.pki.vault import setup as vault_setup  # hvac is loaded only when Vault is used
    return vault_setup.setup(inv, layout, update_roles)


def _policies(inv) -> str:
    from kthw.pki.vault.policy import policies_text
    if inv.ca.backend != "vault":
        raise KthwError(f"{inv.source}: ca.backend is '{inv.ca.backend}'; the Vault policies only apply with "
                        "'ca: {backend: vault, ...}'")
    return policies_text(inv).rstrip("\n")


def _renew(inv, layout) -> str:
    from kthw.pki.vault import setup as vault_setup
    return vault_setup.renew_ca(inv, layout)


def task_vault_setup():
    """Explicit, admin token: create what is missing in Vault (CAs, roles, build policy); policies=1 prints them."""
    inv, layout = context()
    if _flag(get_var(POLICIES_VAR, None)):
        action = (guarded, [_policies, inv])
    else:
        action = (guarded, [_setup, inv, layout, _flag(get_var(UPDATE_ROLES_VAR, None))])
    return {
        "actions": [action],
        "uptodate": [False],
        "verbosity": 2,
    }


def task_vault_renew_ca():
    """Explicit, admin token: renew the CAs that are due (Vault intermediates, kubelet signer), same keys."""
    inv, layout = context()
    return {
        "actions": [(guarded, [_renew, inv, layout])],
        "uptodate": [False],
        "verbosity": 2,
    }
