"""PKI stage: the CA hierarchy, every node's certs, and the kubeconfigs that embed them.

    pki:ca-root ──► pki:ca-kubernetes ──┬──► pki:<node>/<cert> ──► pki:<node>/<cert>.kubeconfig
                ├─► pki:ca-etcd ────────┤
                └─► pki:ca-front-proxy ─┴──► pki:<node>/trust   (CA certs, cluster-signing key)
    pki:<node>  = everything of one node;  pki = every node
    rekey:<node>/<cert>   explicit: a new key for one leaf;  rekey all=yes: for every leaf

Staleness comes from the certs themselves (see kthw.pki.issue.pending_reason): a cert task
runs when its cert is missing, due, not valid yet, no longer fits its spec, or its issuer
changed. A leaf task also runs when its cert or key file changed since it last placed
them (an uptodate on their digest): that re-checks the key and rewrites the node copies,
so a build killed between the store and the copies converges on the next run. The
kubeconfigs depend on the content of the cert and key they embed (file_dep).
Store files under build/pki are precious; `doit clean` removes only the node copies.
Each run first removes the temp files an interrupted one left in the store.

With `ca: {backend: vault}` the root and intermediate keys stay in Vault: their CA tasks
copy the CA certs from Vault on every run (so a CA replaced there re-issues its leaves),
and the cluster signer is a CA of its own whose key is kept here (see kthw.pki.vault.client). The
build makes and renews no CA there: the admin's `doit vault_setup` / `doit vault_renew_ca`
do; a missing or stale CA stops the build, naming the command, and a due one is a warning.
"""

from __future__ import annotations

import sys

from doit import create_after, get_var
from doit.exceptions import TaskFailed

from kthw import clock
from kthw.crypto import CertSpec
from kthw.fsutil import PUBLIC_MODE, SECRET_MODE, atomic_write, remove, remove_orphans
from kthw.inventory import CASettings, Inventory, Node
from kthw.layout import KeyPairPaths, Layout
from kthw.pki.ca import open_ca, open_local_ca
from kthw.pki.catalogue import (
    INTERMEDIATES,
    LOCAL_APISERVER_URL,
    ROOT,
    VAULT_CLUSTER_SIGNER,
    NodeCert,
    ca_specs,
    key_in_vault,
    leaves_for,
    node_paths,
    trust_for,
)
from kthw.pki.issue import ensure_ca, ensure_leaf, pair_digest, pending_reason, place_all, write_cert_kubeconfig

from .common import checked, config_changed, context, guarded, signature_once, stale_task

PLACED = "placed"  # the leaf task's saved value: the digest of the cert and key it last placed


def _current(spec: CertSpec, paths: KeyPairPaths, issuer_cert, window) -> bool:
    return pending_reason(spec, paths, issuer_cert, clock.now(), window) is None


@signature_once
def _leaf_current(task, values, spec: CertSpec, paths: KeyPairPaths, issuer_cert, window) -> bool:
    """Nothing to issue, and the store pair is the one this task last checked and copied."""
    return checked(_current, spec, paths, issuer_cert, window) and values.get(PLACED) == pair_digest(paths)


@signature_once
def _placed(paths: KeyPairPaths) -> dict:
    return {PLACED: pair_digest(paths)}


def _issue_ca(spec: CertSpec, layout: Layout, parent: str | None, settings: CASettings, window) -> str:
    parent_ca = open_ca(layout, parent, settings) if parent else None
    return ensure_ca(spec, layout.ca(spec.name), parent_ca, clock.now(), window)


def _issue_leaf(spec: CertSpec, paths: KeyPairPaths, issuer: str, node: str, layout: Layout, settings: CASettings,
                window, copies: list[tuple], rekey: bool = False) -> str:
    message = ensure_leaf(spec, paths, open_ca(layout, issuer, settings, node), clock.now(), window, rekey=rekey)
    place_all(copies)
    return message


def _warnings_on_stderr(message: str) -> str:
    """Warnings (a CA due for renewal by the admin) are shown at doit's default verbosity; the rest is returned."""
    lines = message.splitlines()
    for line in lines:
        if line.startswith("warning:"):
            print(line, file=sys.stderr)
    return "\n".join(line for line in lines if not line.startswith("warning:"))


def _fetch_vault_ca(settings: CASettings, name: str, paths: KeyPairPaths, parent_cert, window) -> str:
    from kthw.pki.vault import client as vault  # hvac is loaded only when the vault backend is used
    return _warnings_on_stderr(vault.refresh_ca_cert(settings, name, paths, parent_cert, window))


def _check_vault_signer(settings: CASettings, spec: CertSpec, paths: KeyPairPaths, vault_cas: dict, window) -> str:
    from kthw.pki.vault import client as vault
    return _warnings_on_stderr(vault.check_kubelet_signer(settings, spec, paths, vault_cas, window))


def _place_trust(layout: Layout, copies: list[tuple], signer: str | None) -> None:
    """Each copy is (source files, destination, mode): a trust bundle may join several CA certs."""
    if signer:
        open_local_ca(signer, layout.ca(signer))  # never ship a CA key that does not match its cert
    for sources, destination, mode in copies:
        atomic_write(destination, b"".join(source.read_bytes() for source in sources), mode)


def _ca_task(spec: CertSpec, layout: Layout, parent: str | None, settings: CASettings, window) -> dict:
    paths = layout.ca(spec.name)
    issuer_cert = layout.ca(parent).cert if parent else None
    return {
        "name": f"ca-{spec.name}",
        "doc": f"{spec.name} CA ({spec.common_name})",
        "actions": [(guarded, [_issue_ca, spec, layout, parent, settings, window])],
        "file_dep": [issuer_cert] if issuer_cert else [],
        "targets": [paths.cert, paths.key],
        "uptodate": [(checked, [_current, spec, paths, issuer_cert, window])],
        "clean": [],  # precious: never removed
    }


def _vault_ca_task(spec: CertSpec, layout: Layout, parent: str | None, settings: CASettings, window) -> dict:
    """A CA kept in Vault: only its cert is copied here, never a key."""
    paths = layout.ca(spec.name)
    parent_cert = layout.ca(parent).cert if parent else None
    return {
        "name": f"ca-{spec.name}",
        "doc": f"{spec.name} CA ({spec.common_name}): its cert, copied from Vault",
        "actions": [(guarded, [_fetch_vault_ca, settings, spec.name, paths, parent_cert, window])],
        "file_dep": [parent_cert] if parent_cert else [],
        "targets": [paths.cert],
        # Asked on every run: an unchanged cert is not rewritten, a changed one re-issues its leaves.
        "uptodate": [False],
        "clean": [],
    }


def _vault_signer_task(spec: CertSpec, layout: Layout, settings: CASettings, window) -> dict:
    """The kubelet signer of the vault backend: a local key that Vault's root signed. The build only
    checks it, and the dates of the Vault CAs (the admin's 'doit vault_setup' makes them,
    'doit vault_renew_ca' renews them). It comes first, so a missing or stale CA stops the build
    before anything is written."""
    paths = layout.ca(spec.name)
    root_cert = layout.ca(ROOT).cert
    vault_cas = {name: layout.ca(name) for name in (ROOT, *INTERMEDIATES)}
    return {
        "name": f"ca-{spec.name}",
        "doc": f"{spec.name} CA ({spec.common_name}): checked; made and renewed by the admin's vault tasks",
        "actions": [(guarded, [_check_vault_signer, settings, spec, paths, vault_cas, window])],
        "targets": [paths.cert, paths.key],
        "uptodate": [(checked, [_current, spec, paths, root_cert, window])],
        "clean": [],
    }


def _leaf_copies(layout: Layout, node: Node, item: NodeCert) -> list[tuple]:
    """Where a service cert and its key are copied in the node's tree (none for kubeconfig identities)."""
    if not item.row.installed_as:
        return []
    paths = layout.leaf(node.name, item.spec.name)
    return [(paths.cert, layout.on_node(node.name, item.row.installed_as + ".crt"), PUBLIC_MODE),
            (paths.key, layout.on_node(node.name, item.row.installed_as + ".key"), SECRET_MODE)]


def _leaf_tasks(inv: Inventory, layout: Layout, node: Node, item: NodeCert):
    row, spec = item.row, item.spec
    paths = layout.leaf(node.name, spec.name)
    issuer_cert = layout.ca(row.issuer).cert
    copies = _leaf_copies(layout, node, item)
    yield {
        "name": f"{node.name}/{spec.name}",
        "doc": f"{spec.common_name} cert for {node.name}",
        "actions": [(guarded, [_issue_leaf, spec, paths, row.issuer, node.name, layout, inv.ca, inv.renew_before,
                               copies]),
                    (_placed, [paths])],
        "file_dep": [issuer_cert],
        "targets": [paths.cert, paths.key] + [copy[1] for copy in copies],
        "uptodate": [(_leaf_current, [spec, paths, issuer_cert, inv.renew_before])],
        "clean": [(remove, [[copy[1] for copy in copies]])],
    }
    if row.kubeconfig:
        server = inv.api_endpoint.url if row.server == "endpoint" else LOCAL_APISERVER_URL
        # Clients verify the API server's cert: trust its issuer, the kubernetes intermediate.
        ca_cert = layout.ca("kubernetes").cert
        destination = layout.on_node(node.name, row.kubeconfig)
        yield {
            "name": f"{node.name}/{spec.name}.kubeconfig",
            "doc": f"kubeconfig of {spec.common_name} on {node.name}",
            "actions": [(guarded, [write_cert_kubeconfig, destination, inv.name, server, ca_cert,
                                   spec.common_name, paths])],
            "file_dep": [paths.cert, paths.key, ca_cert],
            "targets": [destination],
            "uptodate": [config_changed({"cluster": inv.name, "server": server, "user": spec.common_name})],
            "clean": True,
        }


def _trust_task(layout: Layout, node: Node, backend: str) -> dict:
    copies, signer = [], None
    for trust in trust_for(node):
        cas = trust.cas(backend)
        copies.append((tuple(layout.ca(ca).cert for ca in cas),
                       layout.on_node(node.name, trust.installed_as + ".crt"), PUBLIC_MODE))
        if trust.with_key:
            signer = cas[0]
            copies.append(((layout.ca(signer).key,), layout.on_node(node.name, trust.installed_as + ".key"),
                           SECRET_MODE))
    return {
        "name": f"{node.name}/trust",
        "doc": f"CA certs (and the cluster-signing key on control planes) for {node.name}",
        "actions": [(guarded, [_place_trust, layout, copies, signer])],
        "file_dep": sorted({source for copy in copies for source in copy[0]}),
        "targets": [copy[1] for copy in copies],
        "clean": True,
    }


# Every node path this stage writes; what a node should not have is removed from it.
NODE_PATHS = node_paths()


def task_pki():
    """CA hierarchy, then every node's certs, keys and kubeconfigs."""
    inv, layout = context()
    remove_orphans(layout.pki)  # the precious store; other directories are tidied as they are written
    specs = ca_specs(inv)
    if inv.ca.backend == "vault":
        yield _vault_signer_task(specs[VAULT_CLUSTER_SIGNER], layout, inv.ca, inv.renew_before)
    for name, spec in specs.items():
        parent = None if name == ROOT else ROOT
        if key_in_vault(name, inv.ca.backend):
            yield _vault_ca_task(spec, layout, parent, inv.ca, inv.renew_before)
        elif not (inv.ca.backend == "vault" and name == VAULT_CLUSTER_SIGNER):
            yield _ca_task(spec, layout, parent, inv.ca, inv.renew_before)
    for node in inv.nodes:
        names, keep = [], []
        tasks = [task for item in leaves_for(inv, node) for task in _leaf_tasks(inv, layout, node, item)]
        for task in [*tasks, _trust_task(layout, node, inv.ca.backend)]:
            names.append(f"pki:{task['name']}")
            keep += task["targets"]
            yield task
        yield stale_task(node.name, layout.node_root(node.name), NODE_PATHS, keep,
                         f"remove certs, keys and kubeconfigs {node.name} no longer gets (a role it lost)", names)
        names.append(f"pki:{node.name}/stale")
        yield {"name": node.name, "doc": f"every cert, key and kubeconfig of {node.name}",
               "actions": None, "task_dep": names}


REKEY_ALL_VAR = "all"


# Explicit only, made when asked for. `creates` keeps `doit list` to the one `rekey` entry;
# each leaf's task is a task of its own, so that `rekey` itself is not the group of them all.
@create_after(creates=["rekey"])
def task_rekey():
    """Explicit: a new key for one leaf, `doit rekey:<node>/<cert>`; for every leaf, `doit rekey all=yes`.

    Never part of a plain `doit`. The next `doit` rebuilds what embeds or carries the new keys.
    """
    inv, layout = context()
    names = []
    for node in inv.nodes:
        for item in leaves_for(inv, node):
            paths = layout.leaf(node.name, item.spec.name)
            name = f"rekey:{node.name}/{item.spec.name}"
            names.append(name)
            yield {
                "basename": name,
                "doc": f"new key for {item.spec.common_name} on {node.name}",
                "actions": [(guarded, [_issue_leaf, item.spec, paths, item.row.issuer, node.name, layout, inv.ca,
                                       inv.renew_before, _leaf_copies(layout, node, item), True])],
                "file_dep": [layout.ca(item.row.issuer).cert],
                "uptodate": [False],
                "verbosity": 2,
            }
    every = get_var(REKEY_ALL_VAR, "") == "yes"
    yield {
        "basename": "rekey",
        "doc": f"new keys for every leaf, with {REKEY_ALL_VAR}=yes; else says what it would do",
        "actions": [(_rekeyed_all, [len(names)]) if every else (_refuse_all, [names])],
        "task_dep": names if every else [],
        "uptodate": [False],
        "verbosity": 2,
    }


def _refuse_all(names: list[str]) -> TaskFailed:
    example = names[0]
    certs = sorted({name.rsplit("/", 1)[1] for name in names})
    return TaskFailed(f"'doit rekey' would give all {len(names)} leaf certs of the cluster a new key, and every "
                      f"node would need its bundle installed again. Nothing was changed. For one leaf: "
                      f"'doit rekey:<node>/<cert>', e.g. 'doit {example}' (certs: {', '.join(certs)}; a node has those "
                      f"of its roles). For every leaf: 'doit rekey {REKEY_ALL_VAR}=yes'")


def _rekeyed_all(count: int) -> None:
    print(f"rekey: {count} leaf certs have new keys; run doit to rebuild the kubeconfigs and bundles that carry them")
