"""The expiry report: every cert of the cluster with its dates and renewal state.

Reads the certs and keys on disk (see :mod:`kthw.crypto`) and applies the same date
rule as the build (:func:`kthw.pki.renewal.validity_reason`), so the report and ``doit``
agree. It only reads, so it may look at any moment: ``doit expiry --at 2027-10-01``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime

from kthw.crypto import read_facts
from kthw.inventory import Inventory
from kthw.layout import KeyPairPaths, Layout
from kthw.pki.catalogue import ROOT, ca_specs, key_in_vault, leaves_for
from kthw.pki.issue import ROOT_DUE_HINT, key_problem, read_cert
from kthw.pki.renewal import validity_reason

OK, RENEW_SOON, EXPIRED, MISSING = "ok", "renew soon", "expired", "missing"
NOT_YET_VALID, BAD_KEY = "not yet valid", "bad key"


@dataclass(frozen=True)
class ExpiryRow:
    """One row of the expiry report."""

    node: str          # "-" for the CA hierarchy
    cert: str
    issuer: str
    expires: str       # ISO 8601, "" when missing
    days_left: int | None
    state: str
    note: str = ""


def collect(inv: Inventory, layout: Layout, now: datetime) -> list[ExpiryRow]:
    rows = []
    for name in ca_specs(inv):  # the root, the intermediates, and Vault's local kubelet signer
        in_vault = key_in_vault(name, inv.ca.backend)
        if in_vault and name == ROOT:
            note = f"its key is in Vault; {ROOT_DUE_HINT}"
        elif in_vault:
            note = "its key is in Vault: renewed by doit vault_renew_ca (admin token); the next doit picks it up"
        elif name == ROOT:
            note = ROOT_DUE_HINT
        elif inv.ca.backend == "vault":
            note = "renewed by doit vault_renew_ca (admin token) with the same key: Vault's root signs it"
        else:
            note = "renewed by doit with the same key"
        rows.append(_row("-", name, layout.ca(name), now, inv, note, has_local_key=not in_vault))
    rows.extend(_row(node.name, item.spec.name, layout.leaf(node.name, item.spec.name), now, inv)
                for node in inv.nodes for item in leaves_for(inv, node))
    return rows


def _row(node: str, name: str, paths: KeyPairPaths, now: datetime, inv: Inventory, due_note: str = "",
         has_local_key: bool = True) -> ExpiryRow:
    cert = read_cert(paths.cert)
    if cert is None:
        return ExpiryRow(node, name, "", "", None, MISSING, "run doit to issue it")
    facts = read_facts(cert)
    dates = (facts.issuer_common_name, facts.not_after.isoformat(), (facts.not_after - now).days)
    problem = key_problem(paths, cert) if has_local_key else None
    if problem is not None:
        return ExpiryRow(node, name, *dates, BAD_KEY, f"{problem}; run doit, which says what to do")
    reason = validity_reason(facts.not_before, facts.not_after, now, inv.renew_before)
    if reason is None:
        return ExpiryRow(node, name, *dates, OK)
    if reason.not_yet_valid:
        return ExpiryRow(node, name, *dates, NOT_YET_VALID, f"{reason.text}; run doit to issue it again")
    return ExpiryRow(node, name, *dates, EXPIRED if facts.not_after <= now else RENEW_SOON, due_note)


def needs_attention(rows: list[ExpiryRow]) -> list[ExpiryRow]:
    return [row for row in rows if row.state != OK]


def as_json(rows: list[ExpiryRow]) -> str:
    return json.dumps([asdict(row) for row in rows], indent=2)


def as_table(rows: list[ExpiryRow]) -> str:
    header = ("NODE", "CERT", "ISSUER", "EXPIRES", "DAYS LEFT", "STATE")
    lines = [(r.node, r.cert, r.issuer, r.expires[:16].replace("T", " "),
              "" if r.days_left is None else str(r.days_left), r.state) for r in rows]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines, strict=True)]
    out = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
           for line in [header, *lines]]
    notes = sorted({f"{r.cert}: {r.note}" for r in rows if r.note and r.state != OK})
    return "\n".join([*out, "", *notes] if notes else out)
