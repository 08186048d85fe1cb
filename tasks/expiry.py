"""Expiry report: `doit expiry [--json] [--check]`. Reads certs only; never part of `doit`.

    build/pki/**.crt ──► expiry   (table, or JSON; --check exits non-zero when anything
                                   is expired or inside the renewal window, for cron)
"""

from __future__ import annotations

from doit.exceptions import TaskFailed

from kthw import clock, expiry
from kthw.errors import KthwError

from .common import context


def _report(json: bool, check: bool):
    inv, layout = context()
    try:
        rows = expiry.collect(inv, layout, clock.now())
    except KthwError as err:
        return TaskFailed(str(err))
    print(expiry.as_json(rows) if json else expiry.as_table(rows))
    attention = expiry.needs_attention(rows)
    if check and attention:
        return TaskFailed(f"{len(attention)} cert(s) expired, missing or inside the "
                          f"{inv.renew_before.days}-day renewal window; run doit to renew them")
    return True


def task_expiry():
    """Table of every cert with its expiry and state (ok / renew soon / expired)."""
    return {
        "actions": [_report],
        "params": [
            {"name": "json", "long": "json", "type": bool, "default": False, "help": "print JSON"},
            {"name": "check", "long": "check", "type": bool, "default": False,
             "help": "exit non-zero when any cert is expired or due"},
        ],
        "uptodate": [False],
        "verbosity": 2,
    }
