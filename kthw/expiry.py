"""The expiry report: every cert of the cluster with its dates and renewal state.

Reads the certs on disk (see :mod:`kthw.crypto`) and applies the same calendar rule
as the build (:func:`kthw.renewal.calendar_reason`), so the report and ``doit`` agree.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime

from .catalogue import ROOT, ca_specs, key_in_vault, leaves_for
from .crypto import read_facts
from .inventory import Inventory
from .layout import Layout
from .pki import ROOT_DUE_HINT, read_cert
from .renewal import calendar_reason

OK, RENEW_SOON, EXPIRED, MISSING = "ok", "renew soon", "expired", "missing"


@dataclass(frozen=True)
class ExpiryRow:
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
        if key_in_vault(name, inv.ca.backend):
            note = "its key is in Vault: renew it there; the next doit picks up the new cert"
        elif name == ROOT:
            note = ROOT_DUE_HINT
        else:
            note = "renewed by doit with the same key"
        rows.append(_row("-", name, layout.ca(name).cert, now, inv, note))
    for node in inv.nodes:
        for item in leaves_for(inv, node):
            rows.append(_row(node.name, item.spec.name, layout.leaf(node.name, item.spec.name).cert, now, inv))
    return rows


def _row(node: str, name: str, path, now: datetime, inv: Inventory, due_note: str = "") -> ExpiryRow:
    cert = read_cert(path)
    if cert is None:
        return ExpiryRow(node, name, "", "", None, MISSING, "run doit to issue it")
    facts = read_facts(cert)
    reason = calendar_reason(facts.not_after, now, inv.renew_before)
    state = OK if reason is None else (EXPIRED if facts.not_after <= now else RENEW_SOON)
    return ExpiryRow(node, name, facts.issuer_common_name, facts.not_after.isoformat(),
                     (facts.not_after - now).days, state, due_note if state != OK else "")


def needs_attention(rows: list[ExpiryRow]) -> list[ExpiryRow]:
    return [row for row in rows if row.state != OK]


def as_json(rows: list[ExpiryRow]) -> str:
    return json.dumps([asdict(row) for row in rows], indent=2)


def as_table(rows: list[ExpiryRow]) -> str:
    header = ("NODE", "CERT", "ISSUER", "EXPIRES", "DAYS LEFT", "STATE")
    lines = [(r.node, r.cert, r.issuer, r.expires[:16].replace("T", " "),
              "" if r.days_left is None else str(r.days_left), r.state) for r in rows]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines)]
    out = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in [header, *lines]]
    notes = sorted({f"{r.cert}: {r.note}" for r in rows if r.note and r.state != OK})
    return "\n".join(out + [""] + notes if notes else out)
