"""etcd membership changes on a running cluster: what the nodes' membership script knows.

Every etcd member's bundle carries :data:`MEMBER_SCRIPT` (kthw/templates/scripts/etcd-member.sh.j2),
rendered from the inventory: the members the cluster should have (name and peer URL), the
one marked ``joining: true`` (if any) and the client URLs of the running members. On a
member it compares that with ``etcdctl member list`` and prints the exact ``etcdctl member
add`` / ``member remove`` command that brings the cluster one step closer to the inventory;
``--apply`` runs it. The inventory says which member is new; the running cluster says which
members it has; nothing is guessed. One change per run, removals first: a dead member counts
towards the quorum until it is removed (https://etcd.io/docs/v3.5/op-guide/runtime-configuration/).
"""

from __future__ import annotations

from pathlib import Path

from kthw.inventory import Inventory, Node, url_host
from kthw.pki.node_paths import ETCD_CLIENT_PORT, ETCD_PEER_PORT, PATHS, UNIT_DIR

MEMBER_SCRIPT = "/etc/k8s/etcd/etcd-member.sh"
ETCD_UNIT = f"{UNIT_DIR}/etcd.service"
SCRIPT_TEMPLATE = "scripts/etcd-member.sh.j2"


def script_context(inv: Inventory, node: Node) -> dict:
    """The values the membership script of ``node`` uses."""
    members = [{"name": n.name, "peer_url": f"https://{url_host(n.ip)}:{ETCD_PEER_PORT}", "joining": n.joining}
               for n in inv.etcd_nodes]
    running = [n for n in inv.etcd_nodes if not n.joining]
    return {
        "node": node.name,
        "members": members,
        "endpoints": ",".join(f"https://{url_host(n.ip)}:{ETCD_CLIENT_PORT}" for n in running),
        "etcdctl": f"{PATHS['bin']}/etcdctl",
        "cacert": PATHS["etcd_ca"],
        "cert": PATHS["etcd_healthcheck_client_cert"],
        "key": PATHS["etcd_healthcheck_client_key"],
    }


def removal_notes(bundles: Path, trees: Path, nodes: list[str]) -> str:
    """For each node whose bundle is about to go (no longer in the inventory) and whose last
    build ran etcd: how to take it out of the cluster. The cluster keeps a member until it is
    removed, and a member that is gone but listed counts against the quorum."""
    notes = []
    for bundle in sorted(Path(bundles).glob("*.tar.gz")):
        name = bundle.name.removesuffix(".tar.gz")
        if name in nodes or not (Path(trees) / name / ETCD_UNIT.lstrip("/")).is_file():
            continue
        notes.append(f"{name} was an etcd member: if the cluster still lists it, remove it before the other "
                     f"members' new bundles are installed: on a running member, `sudo {MEMBER_SCRIPT} remove {name}` "
                     f"(it runs `etcdctl member remove <id>`, the id looked up by name in `etcdctl member list`)")
    return "\n".join(notes)
