"""The files the secrets stage writes into a node's tree (its state under build/state: kthw.secrets.state)."""

from __future__ import annotations

from kthw.inventory import Inventory, Node
from kthw.pki.node_paths import PATHS
from kthw.secrets import sa_rotation, tokens
from kthw.secrets.manifests import BOOTSTRAP_DIR, bootstrap_files
from kthw.secrets.state import SecretsState

# Every node path the stage may write on some node; what a node should not have is removed from it.
NODE_PATHS = [PATHS["sa_key"], PATHS["sa_pub"], *(PATHS[name] for name in sa_rotation.EXTRA_PUBLIC_KEY.values()),
              PATHS["encryption_config"], PATHS["kubelet_bootstrap_kubeconfig"], BOOTSTRAP_DIR]


def node_files(inv: Inventory, node: Node, state: SecretsState) -> list[str]:
    """The node paths the stage writes for ``node``: a control plane's service-account keys (as
    the key rotation's phase has them), EncryptionConfiguration and bootstrap directory, and a
    kubelet's bootstrap kubeconfig."""
    files = []
    if node.is_control_plane:
        files += [path for _, path, _ in sa_rotation.node_copies(state, sa_rotation.planned_phase(state))]
        files.append(PATHS["encryption_config"])
        files += [f"{BOOTSTRAP_DIR}/{name}" for name in bootstrap_files(inv)]
    if inv.kubelet_credentials == "tls-bootstrap" and node in tokens.kubelet_nodes(inv):
        files.append(PATHS["kubelet_bootstrap_kubeconfig"])
    return files
