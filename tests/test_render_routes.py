"""Pod network routes: the rendered unit's commands run by the real iproute2 in a private
network namespace (util-linux unshare), where one end of a veth pair on 10.0.0.0/16 stands
for the NIC of a node of the example inventory.

Each node gets one route per other worker's pod CIDR, through that worker's address; a
worker leaving the inventory takes its route with it when the unit is restarted.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from support.project import LAST_WORKER, REPO
from support.render import TEMPLATES
from support.tools import require

from kthw import inventory
from kthw.render.node_files import POD_ROUTE_PROTO, plan, render

UNIT = "/etc/systemd/system/kthw-pod-routes.service"


def example(tmp_path: Path, edit=lambda text: text) -> inventory.Inventory:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "cluster.yaml"
    path.write_text(edit((REPO / "cluster.yaml").read_text()))
    return inventory.load(path)


def unit_of(inv: inventory.Inventory, node: str) -> str | None:
    files = {nf.path: nf for nf in plan(inv)[node]}
    return render(files[UNIT], TEMPLATES).decode() if UNIT in files else None


def commands(text: str, key: str) -> list[list[str]]:
    return [shlex.split(line.split("=", 1)[1]) for line in text.splitlines() if line.startswith(f"{key}=")]


def test_every_node_routes_the_other_workers_pod_cidrs_through_their_addresses(tmp_path):
    inv = example(tmp_path)
    workers = {w.name: (str(w.pod_cidr), str(w.ip)) for w in inv.worker_nodes}
    assert len(workers) == 3
    for node in inv.nodes:
        text = unit_of(inv, node.name)
        wanted = [["/sbin/ip", "route", "replace", cidr, "via", ip, "proto", str(POD_ROUTE_PROTO)]
                  for name, (cidr, ip) in sorted(workers.items()) if name != node.name]
        assert commands(text, "ExecStart") == wanted, node.name
        assert commands(text, "ExecStop") == [["/sbin/ip", "route", "flush", "proto", str(POD_ROUTE_PROTO)]]
        assert "Type=oneshot" in text and "RemainAfterExit=yes" in text and "WantedBy=multi-user.target" in text


def test_without_pod_cidrs_in_the_inventory_no_node_gets_a_routes_unit(tmp_path):
    def without_cidrs(text: str) -> str:
        for cidr in ("10.244.1.0/24", "10.244.2.0/24"):
            text = text.replace(f", pod_cidr: {cidr}}}", "}")
        return text.replace("    pod_cidr: 10.244.3.0/24\n", "")

    inv = example(tmp_path, without_cidrs)
    assert all(unit_of(inv, node.name) is None for node in inv.nodes)


def _in_netns(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["unshare", "-n", "bash", "-c", script], capture_output=True, text=True, timeout=60)


def test_the_units_commands_add_replace_and_remove_the_routes_with_real_iproute2(tmp_path):
    require("ip")
    inv = example(tmp_path / "all")
    text = unit_of(inv, "node-az1")
    fewer = unit_of(example(tmp_path / "fewer", lambda t: t.replace(LAST_WORKER, "")), "node-az1")
    assert len(commands(text, "ExecStart")) == 3 and len(commands(fewer, "ExecStart")) == 2

    def run(key: str, unit: str) -> str:
        return "\n".join(shlex.join(words) for words in commands(unit, key))

    script = f"""
        set -e
        ip link add nic0 type veth peer name peer0 && ip link set nic0 up && ip link set peer0 up
        ip addr add 10.0.1.11/16 dev nic0
        ip route add 192.0.2.0/24 via 10.0.0.1 dev nic0
        {run("ExecStart", text)}
        {run("ExecStart", text)}
        echo "== started"; ip route show proto {POD_ROUTE_PROTO}
        {run("ExecStop", text)}
        {run("ExecStart", fewer)}
        echo "== restarted without worker-az3-a"; ip route show proto {POD_ROUTE_PROTO}
        {run("ExecStop", fewer)}
        echo "== stopped"; ip route show proto {POD_ROUTE_PROTO}
        echo "== the node's own routes"; ip route show
        """
    result = _in_netns(script)
    assert result.returncode == 0, result.stderr
    started, restarted, stopped, own = ([line.strip() for line in part.splitlines()[1:]]
                                        for part in result.stdout.split("== ")[1:])
    route = "{} via {} dev nic0"  # `show proto N` leaves out the protocol it selects by
    assert started == [route.format("10.244.1.0/24", "10.0.1.21"), route.format("10.244.2.0/24", "10.0.2.21"),
                       route.format("10.244.3.0/24", "10.0.3.21")]  # twice run: still one each
    assert restarted == started[:2]
    assert stopped == []
    assert "192.0.2.0/24 via 10.0.0.1 dev nic0" in own  # routes the unit did not add stay
