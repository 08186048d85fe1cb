"""A worker of the example inventory reaches the API with any one control plane down.

Real doit builds the example's bundles, real bash runs the real install.sh for
worker-az1-a into a directory, and real kubectl uses the kubeconfigs and the /etc/hosts
that it installed. No kube-apiserver binary can run here, so the three API servers are
stand-ins (tests/support/failover.py: Python HTTPS servers with each control plane's
generated cert, client certs or the bootstrap token required) on the control planes' own
addresses, in a network namespace joined to the worker's by a veth pair. Every time is
one whole `kubectl get --raw /version`, a new process and a new connection each.
"""

from __future__ import annotations

import shutil

import pytest
from support.failover import WORKER, can_run, failover, failover_config, installed_worker

pytestmark = pytest.mark.slow  # end to end (see pyproject's markers)


needs_namespaces = pytest.mark.skipif(not (shutil.which("unshare") and can_run()),
                                      reason="needs root, unshare and veth links (network namespaces)")


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    where = tmp_path_factory.mktemp("failover")
    project, root = installed_worker(where)
    return failover_config(project, root, WORKER), where


def _by_kubeconfig(rows: list[dict]) -> dict[str, dict]:
    return {row["kubeconfig"]: row for row in rows}


@needs_namespaces
def test_with_any_one_control_plane_stopped_the_workers_kubeconfigs_still_work(worker, record_property):
    config, where = worker
    first, second, third = config["servers"]  # 10.0.1.11 (the worker's zone), 10.0.2.11, 10.0.3.11
    cases = [["up", None], ["refused", first], ["refused", second], ["refused", third]]
    rows = failover({**config, "cases": cases}, where / "refused")
    for row in rows:
        assert row["ok"], row
        record_property(f"{row['case']} {row['down']} {row['kubeconfig']} seconds", row["seconds"])
        print(f"{row['case']:8} down={row['down']} {row['kubeconfig']:18} {row['seconds']:5.2f} s  "
              f"answered by {row['server']}")
    up, *down = [_by_kubeconfig(rows[n:n + 2]) for n in range(0, len(rows), 2)]
    assert {row["server"] for row in up.values()} == {first}, "the worker's own zone first"
    assert {row["server"] for row in down[0].values()} == {second}, "then the next in its /etc/hosts block"
    assert {row["server"] for row in down[1].values()} == {first}
    assert {row["server"] for row in down[2].values()} == {first}
    for row in rows:
        # A refused connection moves on at once: no slower than with every server up, give or take.
        assert row["seconds"] < max(r["seconds"] for r in up.values()) + 1.5, row


@needs_namespaces
def test_a_dead_first_control_plane_costs_its_arp_timeout_and_a_silent_one_its_share_of_the_dial_timeout(
        worker, record_property):
    config, where = worker
    first, second, _ = config["servers"]
    rows = failover({**config, "cases": [["dead", first], ["silent", first]]}, where / "dead")
    for row in rows:
        assert row["ok"] and row["server"] == second, row
        record_property(f"{row['case']} {row['kubeconfig']} seconds", row["seconds"])
        print(f"{row['case']:8} down={row['down']} {row['kubeconfig']:18} {row['seconds']:5.2f} s  "
              f"answered by {row['server']}")
    dead, silent = _by_kubeconfig(rows[:2]), _by_kubeconfig(rows[2:])
    # Linux gives up on an unanswered ARP after 3 probes a second apart: EHOSTUNREACH.
    assert all(2.5 < row["seconds"] < 6 for row in dead.values()), dead
    # client-go dials with a 30 s timeout; Go gives each of the 3 addresses an equal share.
    assert all(9.5 < row["seconds"] < 14 for row in silent.values()), silent
