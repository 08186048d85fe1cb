"""The admin's side of the Vault backend: ``doit vault_setup`` and ``doit vault_renew_ca``.

Both run with an admin token (its policy: :func:`kthw.pki.vault.policy.admin_policy`, printed
by ``doit vault_setup policies=1``), never with the build identity.

:func:`setup` creates what is missing and leaves what exists: a mount or a CA is never
replaced. It makes the root, one intermediate per trust domain, the locally-keyed
kubelet signer (``build/pki/ca/kubelet-signer.*``, signed by the root), every role the
inventory's build signs with (:func:`kthw.pki.vault.policy.role_settings`) and the build
policy. A role or the policy that differs from what the inventory needs is reported
field by field; ``update_roles=1`` writes it back whole, and deletes the roles kthw
named that this inventory no longer uses (a removed node's, say).

:func:`renew_ca` renews, with the same key and subject, the CAs due for renewal (inside
``renew_before`` of their end, expired, not valid yet, or no longer signed by the root):
the Vault intermediates and the kubelet signer. The root is never renewed (README,
'Replacing the root CA').
"""

from __future__ import annotations

from datetime import timedelta

from cryptography import x509

from kthw import clock
from kthw.crypto import BACKDATE, CertSpec, key_kind_and_size, signed_by
from kthw.errors import KthwError, StateError
from kthw.inventory import Inventory
from kthw.layout import Layout
from kthw.pki.catalogue import INTERMEDIATES, ROOT, VAULT_CLUSTER_SIGNER, ca_specs
from kthw.pki.issue import ensure_ca
from kthw.pki.renewal import validity_reason
from kthw.pki.vault.client import RENEW_HINT, Session, VaultCA, VaultError, read_vault_ca, seconds, session
from kthw.pki.vault.policy import (
    build_policy,
    build_policy_name,
    mount_for,
    owned_role,
    role_differences,
    role_settings,
)

UPDATE = "run 'doit vault_setup update_roles=1'"


def _session(inv: Inventory, task: str) -> Session:
    if inv.ca.backend != "vault":
        raise KthwError(f"{inv.source}: ca.backend is '{inv.ca.backend}'; {task} only applies with "
                        "'ca: {backend: vault, ...}'")
    vault = session(inv.ca)
    vault.login()
    return vault


def _local_root_guard(layout: Layout) -> None:
    for name in (ROOT, *INTERMEDIATES):
        key = layout.ca(name).key
        if key.exists():
            raise StateError(f"{key} belongs to a local {name} CA, but the inventory's CA backend is vault. "
                             "Switching a build to Vault replaces its whole PKI: move build/pki aside (keep it as a "
                             "backup) and run again, or set ca.backend back to local")


def setup(inv: Inventory, layout: Layout, update_roles: bool = False) -> str:
    """Create in Vault what is missing: mounts, the root, the intermediates, the roles, the build policy;
    and the kubelet signer in build/pki/ca."""
    vault = _session(inv, "vault_setup")
    specs = ca_specs(inv)
    _local_root_guard(layout)
    report = _mounts(vault, inv, specs)
    key_kind = key_kind_and_size(inv.key_algorithm)
    root_pem, created = _root_ca(vault, inv, specs, key_kind)
    report += created
    root = x509.load_pem_x509_certificate(root_pem)
    report += _intermediate_cas(vault, inv, specs, key_kind, root_pem, root)
    report += _kubelet_signer(inv, layout, root, create_only=True)
    report += _roles(vault, inv, update_roles)
    report += _build_policy(vault, inv, update_roles)
    return "\n".join(report) if report else f"Vault at {vault.server}: everything in place, nothing changed"


def _mounts(vault: Session, inv: Inventory, specs: dict[str, CertSpec]) -> list[str]:
    """Enable the PKI mounts that are missing; refuse a mount of another engine."""
    report = []
    mounts = vault.call("sys/mounts", vault.client.sys.list_mounted_secrets_engines).get("data") or {}
    for name in (ROOT, *INTERMEDIATES):
        mount = mount_for(inv.ca, name)
        # The root mount's max_lease_ttl caps the root and every CA it signs; leaves are
        # capped by their role's max_ttl instead.
        lifetime = specs[name].lifetime
        existing = mounts.get(f"{mount}/")
        if existing is None:
            vault.call(f"sys/mounts/{mount}", vault.client.sys.enable_secrets_engine, "pki", path=mount,
                       description=f"kthw {inv.name}: {name} CA", config={"max_lease_ttl": seconds(lifetime)})
            report.append(f"created mount {mount}")
        elif existing.get("type") != "pki":
            raise VaultError(f"Vault at {vault.server}: mount '{mount}' exists but is a {existing.get('type')} "
                             "engine, not pki; choose another name in ca.naming")
        elif name == ROOT:
            report += _check_root_mount_ttl(vault, mount, lifetime)
    return report


def _check_root_mount_ttl(vault: Session, mount: str, lifetime: timedelta) -> list[str]:
    """An existing root mount whose max_lease_ttl is shorter than the root's lifetime: refused
    while it has no CA yet, reported once it has one."""
    tune = vault.call(f"sys/mounts/{mount}/tune", vault.client.sys.read_mount_configuration, mount)
    max_ttl = (tune.get("data") or tune).get("max_lease_ttl", 0)
    if max_ttl >= lifetime.total_seconds():
        return []
    fix = f"raise it with 'bao secrets tune -max-lease-ttl={seconds(lifetime)} {mount}'"
    if _existing_ca(vault, mount) is None:
        raise VaultError(f"Vault at {vault.server}: mount '{mount}' allows at most {max_ttl}s "
                         f"(max_lease_ttl), less than the root CA's lifetime ({seconds(lifetime)}); "
                         f"nothing was generated: {fix}, then run vault_setup again")
    return [f"mount {mount}: max_lease_ttl {max_ttl}s is shorter than the root lifetime "
            f"({seconds(lifetime)}): the CAs it signs would be cut short. Left as it is: {fix}"]


def _root_ca(vault: Session, inv: Inventory, specs: dict[str, CertSpec],
             key_kind: tuple[str, int]) -> tuple[bytes, list[str]]:
    """The root CA's PEM, generated in its mount unless it is there."""
    key_type, key_bits = key_kind
    root_mount = mount_for(inv.ca, ROOT)
    root_pem = _existing_ca(vault, root_mount)
    if root_pem is not None:
        return root_pem, []
    spec = specs[ROOT]
    clock.issue_time()  # refuses while KTHW_NOW is set, as every cert written
    # Backdated as every cert is (BACKDATE), so no cert starts before its issuer; it ends its
    # lifetime after now (Vault's start and end may differ by a second in the dates: no cut).
    vault.write(f"{root_mount}/root/generate/internal", {
        "common_name": spec.common_name, "ttl": seconds(spec.lifetime),
        "not_before_duration": seconds(BACKDATE), "key_type": key_type, "key_bits": key_bits,
        "max_path_length": spec.path_length, "exclude_cn_from_sans": True})
    _truncate_leaves(vault, root_mount)
    return vault.ca_pem(root_mount), [f"generated root CA {spec.common_name} in {root_mount}"]


def _intermediate_cas(vault: Session, inv: Inventory, specs: dict[str, CertSpec], key_kind: tuple[str, int],
                      root_pem: bytes, root: x509.Certificate) -> list[str]:
    """Generate the intermediates missing from their mounts, each signed by the root; warn of one it did not sign."""
    key_type, key_bits = key_kind
    root_mount = mount_for(inv.ca, ROOT)
    report = []
    for name in INTERMEDIATES:
        mount = mount_for(inv.ca, name)
        pem = _existing_ca(vault, mount)
        if pem is not None:
            if not signed_by(x509.load_pem_x509_certificate(pem), root):
                report.append(f"warning: the CA of {mount} is not signed by the root of {root_mount}; left as it "
                              f"is (vault_setup never replaces a CA): {RENEW_HINT} to have the root sign its key")
            continue
        spec = specs[name]
        clock.issue_time()
        csr = vault.write(f"{mount}/intermediate/generate/internal", {
            "common_name": spec.common_name, "key_type": key_type, "key_bits": key_bits,
            "exclude_cn_from_sans": True})["csr"]
        _install_intermediate(vault, mount, root_mount, root_pem, spec, csr)
        report.append(f"generated intermediate CA {spec.common_name} in {mount}, signed by {root_mount}")
    return report


def _install_intermediate(vault: Session, mount: str, root_mount: str, root_pem: bytes, spec: CertSpec,
                          csr: str) -> None:
    """Have the root sign an intermediate's CSR and make the result the mount's default issuer."""
    signed = vault.write(f"{root_mount}/root/sign-intermediate", {
        "csr": csr, "common_name": spec.common_name, "ttl": seconds(spec.lifetime),
        "not_before_duration": seconds(BACKDATE), "max_path_length": spec.path_length,
        "exclude_cn_from_sans": True, "use_csr_values": False, "format": "pem"})
    imported = vault.write(f"{mount}/intermediate/set-signed",
                           {"certificate": signed["certificate"].strip() + "\n" + root_pem.decode().strip()})
    issuers = imported.get("imported_issuers") or []
    if issuers:
        # A renewal imports a second issuer for the same key: the new one signs from now on.
        vault.write(f"{mount}/config/issuers", {"default": issuers[0]})
    _truncate_leaves(vault, mount)


def _kubelet_signer(inv: Inventory, layout: Layout, root: x509.Certificate, *, create_only: bool) -> list[str]:
    """Make (and with ``create_only=False`` renew) the kubelet signer: a local key, signed by Vault's root."""
    spec = ca_specs(inv)[VAULT_CLUSTER_SIGNER]
    paths = layout.ca(VAULT_CLUSTER_SIGNER)
    if create_only and (paths.cert.exists() or paths.key.exists()):
        from kthw.pki.vault.client import check_kubelet_signer  # the build's own check: what would it say?
        try:
            note = check_kubelet_signer(inv.ca, spec, paths, {}, inv.renew_before)
        except KthwError as err:
            return [f"warning: {err}"]
        return [note] if note else []
    message = ensure_ca(spec, paths, VaultCA(ROOT, root, inv.ca), clock.now(), inv.renew_before)
    return [] if message.endswith(": current") else [message]


def _roles(vault: Session, inv: Inventory, update_roles: bool) -> list[str]:
    report = []
    wanted = role_settings(inv)
    for (mount, role), want in sorted(wanted.items()):
        path = f"{mount}/roles/{role}"
        have = vault.read(path, missing_ok=True)
        if have is None:
            vault.write(path, want)
            report.append(f"created role {path}")
            continue
        differences, unknown = role_differences(have, want)
        if unknown:
            report.append(f"role {path}: fields this kthw does not know, not checked: {', '.join(unknown)}")
        if not differences:
            continue
        if update_roles:
            vault.write(path, want)
            report.append(f"updated role {path} ({'; '.join(differences)})")
        else:
            report.append(f"role {path} differs from what the inventory needs ({'; '.join(differences)}); "
                          f"left as it is: {UPDATE} to update it")
    for mount in sorted({mount for mount, _ in wanted} | {mount_for(inv.ca, name) for name in INTERMEDIATES}):
        for role in vault.list(f"{mount}/roles"):
            owned = owned_role(inv.ca, role)
            if owned is None or (mount, role) in wanted:
                continue
            cert, node = owned
            what = f"node {node} is not in the inventory, or no longer gets {cert}" if node else \
                f"this inventory signs no {cert} cert with it"
            if update_roles:
                vault.delete(f"{mount}/roles/{role}")
                report.append(f"deleted role {mount}/roles/{role} ({what})")
            else:
                report.append(f"role {mount}/roles/{role} is no longer used ({what}); left as it is: {UPDATE} "
                              f"to delete it (or 'bao delete {mount}/roles/{role}')")
    return report


def _build_policy(vault: Session, inv: Inventory, update_roles: bool) -> list[str]:
    name = build_policy_name(inv)
    want = build_policy(inv)
    path = f"sys/policies/acl/{name}"
    have = vault.read(path, missing_ok=True)
    if have is None:
        vault.write(path, {"policy": want})
        return [f"created policy {name} (the build identity's: give it to the identity in ca.auth)"]
    current = have.get("policy") or ""
    if current.strip() == want.strip():
        return []
    old, new = set(current.strip().splitlines()), set(want.strip().splitlines())
    changes = [f"- {line}" for line in sorted(old - new)] + [f"+ {line}" for line in sorted(new - old)]
    if update_roles:
        vault.write(path, {"policy": want})
        return [f"updated policy {name}:\n  " + "\n  ".join(changes)]
    return [f"policy {name} differs from what the inventory needs; left as it is: {UPDATE} to update it:\n  "
            + "\n  ".join(changes)]


def renew_ca(inv: Inventory, layout: Layout) -> str:
    """Renew, with the same keys, the CAs that are due: the Vault intermediates and the kubelet signer."""
    vault = _session(inv, "vault_renew_ca")
    settings = inv.ca
    specs = ca_specs(inv)
    _local_root_guard(layout)
    now, window = clock.now(), inv.renew_before
    report = []
    root_mount = mount_for(settings, ROOT)
    root = read_vault_ca(vault, settings, ROOT)
    dates = validity_reason(root.not_valid_before_utc, root.not_valid_after_utc, now, window)
    if dates is not None:
        report.append(f"warning: root CA ({root_mount}): {dates.text}; doit never replaces the root: see README, "
                      "'Replacing the root CA'")
    root_pem = vault.ca_pem(root_mount)
    for name in INTERMEDIATES:
        mount = mount_for(settings, name)
        cert = read_vault_ca(vault, settings, name)
        reason = validity_reason(cert.not_valid_before_utc, cert.not_valid_after_utc, now, window)
        why = reason.text if reason is not None else (None if signed_by(cert, root) else "not signed by the root")
        if why is None:
            continue
        clock.issue_time()
        csr = vault.write(f"{mount}/intermediate/generate/existing", {
            "common_name": specs[name].common_name, "key_ref": "default", "exclude_cn_from_sans": True})["csr"]
        _install_intermediate(vault, mount, root_mount, root_pem, specs[name], csr)
        report.append(f"renewed intermediate CA {specs[name].common_name} in {mount} with the same key ({why})")
    report += _kubelet_signer(inv, layout, root, create_only=False)
    if not report:
        return f"Vault at {vault.server}: no CA is due for renewal, nothing changed"
    report.append("run doit to fetch the renewed CAs and re-issue what they signed")
    return "\n".join(report)


def _existing_ca(vault: Session, mount: str) -> bytes | None:
    try:
        return vault.ca_pem(mount)
    except VaultError as err:
        if "has no CA yet" in str(err):
            return None
        raise


def _truncate_leaves(vault: Session, mount: str) -> None:
    """Certs asked to outlive this CA end with it (as the local CA does) instead of failing."""
    vault.write(f"{mount}/issuer/default", {"leaf_not_after_behavior": "truncate"})
