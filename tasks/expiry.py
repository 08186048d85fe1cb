"""Expiry report: `doit expiry [--json] [--check] [--at DATE]`. Reads certs and keys only;
never part of `doit`.

    build/pki/** ──► expiry   (table, or JSON; --check exits non-zero when anything is
                               expired, due, not yet valid or has a bad key, for cron;
                               --at previews a later date: what a run then would renew)
"""

from __future__ import annotations

from doit.exceptions import TaskFailed

from kthw import clock
from kthw.errors import KthwError

from .common import context


def _report(json: bool, check: bool, at: str):
    from kthw.pki import expiry  # loaded when the report runs, not by every doit command

    inv, layout = context()
    try:
        moment = clock.parse(at, "--at", "or leave --at out for now") if at else clock.now()
        rows = expiry.collect(inv, layout, moment)
    except KthwError as err:
        return TaskFailed(str(err))
    print(expiry.as_json(rows) if json else expiry.as_table(rows))
    attention = expiry.needs_attention(rows)
    if check and attention:
        return TaskFailed(f"{len(attention)} cert(s) need attention (expired, missing, inside the "
                          f"{inv.renew_before.days}-day renewal window, not yet valid, or with a bad key); "
                          "run doit to renew them")
    return True


def task_expiry():
    """Table of every cert with its expiry and state (ok / renew soon / expired / not yet valid / bad key)."""
    return {
        "actions": [_report],
        "params": [
            {"name": "json", "long": "json", "type": bool, "default": False, "help": "print JSON"},
            {"name": "check", "long": "check", "type": bool, "default": False,
             "help": "exit non-zero when any cert is expired, due, not yet valid or has a bad key"},
            {"name": "at", "long": "at", "type": str, "default": "",
             "help": "report as of this date or time (ISO 8601, UTC unless a zone is given): "
                     "what a run then would renew; writes nothing"},
        ],
        "uptodate": [False],
        "verbosity": 2,
    }
