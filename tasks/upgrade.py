"""Upgrade planning: `doit upgrade_plan` prints the order in which the rebuilt bundles go to
the nodes, and refuses a downgrade or a move by more than one minor (kthw.render.upgrade).

Run it after changing kubernetes_version and before `doit`: it compares the inventory with
what the last build put in the bundles.
"""

from __future__ import annotations

from .common import context, guarded


def _plan(inv, root) -> str:
    from kthw.render import upgrade  # the render and vendor modules load only when the plan is asked for
    from kthw.vendor import fetch as vendor

    return upgrade.describe(inv, vendor.load_pins(inv), root)


def task_upgrade_plan():
    """Print the upgrade order (etcd, control planes one at a time, workers); refuse skips and downgrades."""
    inv, layout = context()
    return {
        "actions": [(guarded, [_plan, inv, layout.root])],
        "uptodate": [False],
        "verbosity": 2,
    }
