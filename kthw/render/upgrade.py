"""Moving the cluster to another Kubernetes release: what runs now, what the inventory asks
for, and in which order the bundles go to the nodes.

What runs now is what the last build put in the bundles: each node's
``build/nodes/<node>/etc/k8s/versions`` (:data:`kthw.pki.node_paths.VERSIONS_FILE`, the file its
bundle installs). The workstation cannot ask the nodes (no network reaches them), so the
plan is made after ``kubernetes_version`` is changed and before ``doit`` rebuilds those files.

The rules are the Kubernetes version skew policy
(https://kubernetes.io/releases/version-skew-policy/): the control plane moves one minor at
a time and never back; kube-apiserver instances differ by at most one minor while they are
updated one by one; a kubelet is never newer than kube-apiserver, so workers go last. etcd
members go first when their version changes: with etcd on the control-plane nodes, each
such node's installation restarts etcd and waits until it is healthy before the API server.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kthw.errors import KthwError
from kthw.inventory import Inventory, Node
from kthw.layout import Layout
from kthw.pki.node_paths import VERSIONS_FILE
from kthw.render.node_files import node_versions
from kthw.supply.pins import Pins
from kthw.versions import minor_of, version_key

SKEW_POLICY = "https://kubernetes.io/releases/version-skew-policy/"


def parse_versions(text: str) -> dict[str, str]:
    """The "<component>=<version>" lines of a versions file."""
    result = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and not key.startswith("#"):
            result[key.strip()] = value.strip()
    return result


def built_versions(inv: Inventory, layout: Layout) -> dict[str, dict[str, str]]:
    """Each node's versions as the last build left them ({} for a node never built)."""
    result = {}
    for node in inv.nodes:
        path = layout.on_node(node.name, VERSIONS_FILE)
        try:
            result[node.name] = parse_versions(path.read_text())
        except FileNotFoundError:
            result[node.name] = {}
        except OSError as err:
            raise KthwError(f"{path}: cannot read it ({err}); run `doit render` to write it again") from None
    return result


def running_version(built: dict[str, dict[str, str]]) -> str | None:
    """The Kubernetes version the last build carries (one build: one version on every node)."""
    found = sorted({versions["kubernetes"] for versions in built.values() if "kubernetes" in versions},
                   key=version_key)
    return found[-1] if found else None


def check_move(running: str, target: str, pins: Pins | None = None) -> None:
    """A downgrade, or a move by more than one minor, is a KthwError naming the fix
    (with ``pins``: naming the pinned releases of the next minor)."""
    fresh = (f" If no node runs the bundles of {running} yet (built, never installed), delete "
             f"build/nodes/*{VERSIONS_FILE} and run doit again: the build then starts afresh at {target}")
    if version_key(target) < version_key(running):
        raise KthwError(
            f"kubernetes_version {target} is older than {running}, which the last build carries: Kubernetes does "
            f"not support going back ({SKEW_POLICY}). Set kubernetes_version back to {running}. Going back "
            "is a recovery, not an upgrade: the older bundles with the etcd snapshot the control-plane installs "
            "saved before the upgrade (/var/backups/kthw/etcd-snapshot-*.db)." + fresh)
    (major, minor), (to_major, to_minor) = minor_of(running), minor_of(target)
    if to_major != major or to_minor > minor + 1:
        following = f"{major}.{minor + 1}"
        if pins is None:
            pick = f"a pinned {following} release (`doit upgrade_plan` names them)"
        else:
            pinned = [v for v in sorted(pins.releases, key=version_key) if minor_of(v) == (major, minor + 1)]
            pick = (f"a pinned {following} release ({', '.join(pinned)})" if pinned
                    else f"a {following} release (none is pinned: `doit pin version={following}.<patch>` first)")
        raise KthwError(
            f"kubernetes_version {target} skips minors: the last build carries {running}, and the control plane "
            f"moves one minor at a time ({SKEW_POLICY}). Set kubernetes_version to {pick}, run `doit`, install "
            "every bundle, then move on to the next minor." + fresh)


def check_rebuild(previous: Path, new: bytes) -> None:
    """Before a node's versions file is rewritten: the move from the release it records to the
    new one must be allowed, so that `doit` never builds bundles for a skip or a downgrade."""
    try:
        before = parse_versions(previous.read_text()).get("kubernetes")
    except FileNotFoundError:
        return
    except OSError as err:
        raise KthwError(f"{previous}: cannot read it ({err}); delete it and run doit again") from None
    after = parse_versions(new.decode()).get("kubernetes")
    if before and after and before != after:
        check_move(before, after)


@dataclass(frozen=True)
class NodeStep:
    """What an upgrade changes on one node."""

    node: Node
    moves: tuple[tuple[str, str | None, str], ...]  # component, from (None: new), to; only what changes

    def text(self) -> str:
        parts = [f"{name} {before} -> {after}" if before else f"{name} {after} (new)" for name, before, after
                 in self.moves]
        return f"{self.node.name}: {', '.join(parts)}"


def _steps(nodes: tuple[Node, ...], built: dict, wanted: dict) -> list[NodeStep]:
    steps = []
    for node in nodes:
        before, after = built[node.name], wanted[node.name]
        moves = tuple((name, before.get(name), version) for name, version in after.items()
                      if before.get(name) != version)
        if moves:
            steps.append(NodeStep(node, moves))
    return steps


def plan_text(inv: Inventory, pins: Pins, built: dict[str, dict[str, str]]) -> str:
    """The upgrade order for the nodes, or a KthwError when the move is refused."""
    target = inv.kubernetes_version
    running = running_version(built)
    if running is None:
        return (f"no earlier build to compare with (no {VERSIONS_FILE} under build/nodes): `doit` builds the "
                f"cluster at Kubernetes {target}; there is nothing to upgrade")
    check_move(running, target, pins)
    wanted = {node.name: node_versions(inv, pins, node) for node in inv.nodes}
    etcd_only = tuple(n for n in inv.etcd_nodes if not n.is_control_plane)
    control_planes = inv.control_plane_nodes
    workers = tuple(n for n in inv.worker_nodes if not n.is_control_plane)
    phases = [
        ("etcd members, one at a time (install.sh saves an etcd snapshot first)", _steps(etcd_only, built, wanted)),
        ("control planes, one at a time: on an etcd member the install saves an etcd snapshot before it replaces "
         "the binaries, and etcd is healthy again before the API server restarts; wait until `kubectl get --raw "
         "/readyz` answers ok before the next node", _steps(control_planes, built, wanted)),
        ("workers, once every control plane runs the new release (a kubelet is never newer than the API "
         "servers); drain each first: kubectl drain <node> --ignore-daemonsets, and uncordon it after",
         _steps(workers, built, wanted))]
    headline = (f"Kubernetes {running} -> {target}" if running != target else f"Kubernetes {target} (unchanged)")
    lines = [f"{headline}; what runs now is what the last build carries ({VERSIONS_FILE} under build/nodes)"]
    if not any(steps for _, steps in phases):
        lines.append("nothing to upgrade: every node's last build already carries these versions (if `doit` ran "
                     "since kubernetes_version changed, this compared with that new build)")
        return "\n".join(lines)
    lines.append("Run `doit`, then install the bundles in this order:")
    number = 0
    for title, steps in phases:
        if not steps:
            continue
        number += 1
        lines.append(f"{number}. {title}:")
        lines += [f"     {step.text()}" for step in steps]
    unchanged = sorted(n.name for n in inv.nodes if all(s.node.name != n.name for _, st in phases for s in st))
    if unchanged:
        lines.append(f"Unchanged: {', '.join(unchanged)}")
    return "\n".join(lines)


def describe(inv: Inventory, pins: Pins, root: Path) -> str:
    return plan_text(inv, pins, built_versions(inv, Layout(Path(root))))
