"""`joining: true`: the one etcd member being added to a running cluster; every misuse is a
located error naming the fix, and doit stops with exit status 2 before writing anything."""

from __future__ import annotations

import pytest
from support.day2 import day2_inventory

from kthw import inventory
from kthw.errors import InventoryError


def error(text: str) -> str:
    with pytest.raises(InventoryError) as caught:
        inventory.loads(text)
    return str(caught.value)


def test_a_joining_member_is_read_and_the_others_are_not_joining():
    inv = inventory.loads(day2_inventory(["cp1", "cp2", "cp3", "cp4"], ["worker1"], joining="cp4"))
    assert [n.name for n in inv.nodes if n.joining] == ["cp4"]
    assert len(inv.etcd_nodes) == 4


@pytest.mark.parametrize("edit, needles", [
    (lambda t: t.replace("ip: 127.0.18.11,", "ip: 127.0.18.11, joining: true,"),
     ["nodes[4].joining", "'worker1' is not an etcd member", "remove 'joining'"]),
    (lambda t: t.replace("ip: 127.0.18.3}", "ip: 127.0.18.3, joining: true}"),
     ["nodes[3].joining", "'cp3' and 'cp4' are both joining", "add 'cp3' first"]),
    (lambda t: t.replace("joining: true", "joining: yes please"),
     ["nodes[3].joining", "expected true or false", "joining: true"]),
])
def test_misuse_of_joining_is_a_located_error(edit, needles):
    message = error(edit(day2_inventory(["cp1", "cp2", "cp3", "cp4"], ["worker1"], joining="cp4")))
    for needle in needles:
        assert needle in message, message


def test_a_cluster_of_only_a_joining_member_has_nothing_to_join():
    message = error(day2_inventory(["cp1"], ["worker1"], joining="cp1"))
    assert "'cp1' is joining, but no other etcd member is running to join" in message
    assert "a new cluster starts every member at once" in message


@pytest.mark.slow
def test_doit_stops_with_exit_2_and_writes_nothing(project):
    project.write_inventory(day2_inventory(["cp1", "cp2", "cp3"], ["worker1"], joining="cp2").replace(
        "ip: 127.0.18.3}", "ip: 127.0.18.3, joining: true}"))
    run = project.doit(check=False)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "'cp2' and 'cp3' are both joining" in run.stderr and "Traceback" not in run.stderr
    assert not (project.root / "build").exists()
