"""Secrets stage: service-account keys, encryption at rest, kubelet bootstrap tokens.

    secrets:sa-keypair ──────────► secrets:<cp>/sa-keypair           /etc/k8s/shared/sa.{key,pub}
                                                                     (+ sa-next.pub | sa-previous.pub)
    secrets:encryption-config ───► secrets:<cp>/encryption-config    /etc/k8s/kube-apiserver/encryption-config.yaml
    secrets:bootstrap-token-<w> ─┬► secrets:<w>/bootstrap-kubeconfig /etc/k8s/kubelet/bootstrap-kubeconfig
                                 └► secrets:<cp>/bootstrap-manifests /etc/k8s/bootstrap/*.yaml + apply.sh
    secrets:<node> = everything of one node;  secrets = every node
    rotate_encryption_key  explicit, never a default task: one rotation phase per run
    rotate_sa_key          explicit, never a default task: one rotation phase per run

The first three rows are precious state under build/state (kthw.secrets.state): never
cleaned, never replaced silently. A token is replaced when its recorded expiration is
past or inside the renewal window (kthw.secrets.tokens.pending_reason); everything derived
from it follows through file_dep. Node copies are derived and cleanable.
"""

from __future__ import annotations

import sys
from pathlib import Path

from doit import get_var

from kthw import clock, templating
from kthw.fsutil import SECRET_MODE
from kthw.inventory import Inventory, Node
from kthw.layout import Layout
from kthw.pki.issue import place_all
from kthw.pki.node_paths import PATHS
from kthw.secrets import encryption, sa_rotation, tokens
from kthw.secrets.files import NODE_PATHS
from kthw.secrets.manifests import APPLY_TEMPLATE, BOOTSTRAP_DIR, SMOKE_TEMPLATE, bootstrap_targets, write_bootstrap_dir
from kthw.secrets.state import SecretsState, state_of
from kthw.vendor.fetch import pin_files

from .common import checked, config_changed, context, guarded, stale_task


def _ensure_encryption(config: Path, rotation: Path, provider: str) -> str:
    message = encryption.ensure(config, rotation, provider)
    if message.startswith("warning:"):
        print(message, file=sys.stderr)  # shown at doit's default verbosity
        return ""
    return message


def _encryption_current(config: Path, rotation: Path, provider: str) -> bool:
    current = encryption.read(config)
    return current is not None and not encryption.provider_note(current, encryption.read_rotation(rotation), provider)


def _rotate(config: Path, rotation: Path, provider: str, secrets_rewritten: bool) -> str:
    return encryption.rotate(config, rotation, provider, clock.now(), secrets_rewritten)


def _rotate_sa_key(state: SecretsState, algorithm: str, old_tokens_gone: bool) -> str:
    return sa_rotation.rotate(state, algorithm, clock.now(), old_tokens_gone)


def _issue_token(path: Path, node: str, ttl, window) -> str:
    return tokens.ensure(path, node, clock.now(), ttl, window)


def _token_current(path: Path, node: str, window) -> bool:
    return tokens.pending_reason(path, node, clock.now(), window) is None


def _state_tasks(inv: Inventory, state: SecretsState):
    yield {
        "name": "sa-keypair",
        "doc": "service-account signing key pair, and the other key during a rotation (precious)",
        "actions": [(guarded, [sa_rotation.ensure, state, inv.key_algorithm])],
        "targets": sa_rotation.state_files(state, sa_rotation.planned_phase(state)),
        "uptodate": [(checked, [sa_rotation.current, state])],
        "clean": [],  # precious: never removed
    }
    yield {
        "name": "encryption-config",
        "doc": "EncryptionConfiguration of the API servers (precious)",
        "actions": [(guarded, [_ensure_encryption, state.encryption_config, state.rotation,
                               inv.encryption_provider])],
        "targets": [state.encryption_config],
        "uptodate": [(checked, [_encryption_current, state.encryption_config, state.rotation,
                                inv.encryption_provider])],
        "clean": [],
    }
    if inv.kubelet_credentials != "tls-bootstrap":
        return
    window = tokens.renewal_window(inv)
    for node in tokens.kubelet_nodes(inv):
        path = state.token(node.name)
        yield {
            "name": f"bootstrap-token-{node.name}",
            "doc": f"kubelet bootstrap token of {node.name} (precious while valid)",
            "actions": [(guarded, [_issue_token, path, node.name, inv.bootstrap_token_ttl, window])],
            "targets": [path],
            "uptodate": [(checked, [_token_current, path, node.name, window])],
            "clean": [],
        }


def _copy_task(name: str, doc: str, copies: list[tuple]) -> dict:
    return {"name": name, "doc": doc, "actions": [(guarded, [place_all, copies])],
            "file_dep": [copy[0] for copy in copies], "targets": [copy[1] for copy in copies], "clean": True}


def _node_tasks(inv: Inventory, layout: Layout, state: SecretsState, node: Node):
    on_node = layout.on_node
    ca_cert = layout.ca("kubernetes").cert  # the API server's issuer: what kubelets must trust
    bootstrap = inv.kubelet_credentials == "tls-bootstrap"
    if node.is_control_plane:
        yield _copy_task(f"{node.name}/sa-keypair", f"service-account keys on {node.name}", [
            (source, on_node(node.name, node_path), mode)
            for source, node_path, mode in sa_rotation.node_copies(state, sa_rotation.planned_phase(state))])
        yield _copy_task(f"{node.name}/encryption-config", f"EncryptionConfiguration on {node.name}", [
            (state.encryption_config, on_node(node.name, PATHS["encryption_config"]), SECRET_MODE)])
        token_paths = {n.name: state.token(n.name) for n in tokens.kubelet_nodes(inv)} if bootstrap else {}
        directory = on_node(node.name, BOOTSTRAP_DIR)
        yield {
            "name": f"{node.name}/bootstrap-manifests",
            "doc": f"cluster-side manifests and apply.sh on {node.name}",
            "actions": [(guarded, [write_bootstrap_dir, directory, inv, token_paths, ca_cert])],
            # The pins name the CoreDNS image: read by the action, followed here as files.
            "file_dep": [*token_paths.values(), ca_cert, *templating.files(APPLY_TEMPLATE),
                         *templating.files(SMOKE_TEMPLATE), *pin_files(inv)],
            "targets": bootstrap_targets(inv, directory),
            "uptodate": [config_changed({"credentials": inv.kubelet_credentials, "server": inv.api_endpoint.url,
                                         "kubelets": sorted(token_paths), "domain": inv.cluster_domain,
                                         "dns": str(inv.cluster_dns_ip), "services": str(inv.service_cidr),
                                         "provider": inv.encryption_provider,
                                         "workers": [n.name for n in inv.worker_nodes],
                                         "etcd": [str(n.ip) for n in inv.etcd_nodes],
                                         "version": inv.kubernetes_version})],
            "clean": True,
        }
    if node in tokens.kubelet_nodes(inv) and bootstrap:
        destination = on_node(node.name, PATHS["kubelet_bootstrap_kubeconfig"])
        token_path = state.token(node.name)
        yield {
            "name": f"{node.name}/bootstrap-kubeconfig",
            "doc": f"kubelet bootstrap kubeconfig of {node.name}",
            "actions": [(guarded, [tokens.write_bootstrap_kubeconfig, destination, inv.name, inv.api_endpoint.url,
                                   ca_cert, token_path, node.name])],
            "file_dep": [token_path, ca_cert],
            "targets": [destination],
            "uptodate": [config_changed({"cluster": inv.name, "server": inv.api_endpoint.url})],
            "clean": True,
        }


def task_secrets():
    """Service-account keys, EncryptionConfiguration, bootstrap tokens and their manifests."""
    inv, layout = context()
    state = state_of(layout)
    yield from _state_tasks(inv, state)
    for node in inv.nodes:
        names = []
        keep = []
        for task in _node_tasks(inv, layout, state, node):
            names.append(f"secrets:{task['name']}")
            keep += task["targets"]
            yield task
        # What to keep follows the key rotation's phase: never prune while its state is unreadable.
        yield stale_task(node.name, layout.node_root(node.name), NODE_PATHS, keep,
                         f"remove secret files {node.name} no longer gets (a changed role or credential mode)",
                         ["secrets:sa-keypair", *names])
        names.append(f"secrets:{node.name}/stale")
        yield {"name": node.name, "doc": f"every secret file of {node.name}", "actions": None, "task_dep": names}


def task_rotate_encryption_key():
    """Explicit: advance the encryption key rotation by one phase (run it three times, see its output)."""
    inv, layout = context()
    state = state_of(layout)
    rewritten = get_var("secrets_rewritten", "") == "yes"
    return {
        "actions": [(guarded, [_rotate, state.encryption_config, state.rotation, inv.encryption_provider,
                               rewritten])],
        "uptodate": [False],
        "verbosity": 2,  # the output says what to do next
    }


def task_rotate_sa_key():
    """Explicit: advance the service-account key rotation by one phase (run it three times, see its output)."""
    inv, layout = context()
    gone = get_var("old_tokens_gone", "") == "yes"
    return {
        "actions": [(guarded, [_rotate_sa_key, state_of(layout), inv.key_algorithm, gone])],
        "uptodate": [False],
        "verbosity": 2,  # the output says what to do next
    }
