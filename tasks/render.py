"""Render stage: per-node systemd units and component configs.

    render:<node>/<file>   one file of one node, e.g. render:node-az1/etcd.service
    render:<node>          every file of one node;  render = every node

A file is re-rendered when its template changes or when the values it uses change
(its context from kthw.render.node_files.plan: e.g. an etcd unit names every etcd member's IP,
a scheduler config names none), so editing one node's IP touches only the files that
name it. The pinned etcd, containerd and pause image are the vendor stage's: the shipped
pins table extended by the inventory's `vendor: {site_pins: FILE}`; a pins change
re-renders only the files whose values it changes.
"""

from __future__ import annotations

import functools
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from doit import create_after

from kthw.errors import KthwError

from .common import checked, config_changed, context, failing, guarded

if TYPE_CHECKING:
    from kthw.render.node_files import NodeFile

# kthw.render.node_files (and what it reads: the version table, the vendor plan) is imported
# where render or bundle tasks are made: `doit pki` and `doit list` never load it.


@functools.cache
def planned() -> tuple[dict[str, tuple[NodeFile, ...]] | None, str]:
    """The render plan of every node, made once per doit run (the bundle stage reads it too),
    or None and why it cannot be made."""
    from kthw.render.node_files import plan
    from kthw.secrets.sa_rotation import public_key_files
    from kthw.secrets.state import state_of

    inv, layout = context()
    try:
        # The API servers' service-account keys follow the rotation phase recorded by the secrets stage.
        return plan(inv, service_account_keys=functools.partial(public_key_files, state_of(layout))), ""
    except KthwError as err:
        return None, str(err)


# Made when a render task is about to run, not whenever doit loads: `doit pki` then skips
# some 700 tasks. Bundles wait for this whole group for that reason (tasks/bundle.py).
@create_after()
def task_render():
    """Systemd units and component configs for every node, only for its roles."""
    from kthw.render.node_files import remove_stale, template_files, write_node_file

    inv, layout = context()
    files, error = planned()
    if files is None:
        # e.g. a Kubernetes minor outside the version table: nothing can be rendered.
        yield failing("versions", "the inventory's Kubernetes version is not supported", error)
        return
    for node in inv.nodes:
        names = []
        for nf in files[node.name]:
            destination = layout.on_node(node.name, nf.path)
            name = f"{node.name}/{PurePosixPath(nf.path).name}"
            names.append(f"render:{name}")
            yield {
                "name": name,
                "doc": f"{nf.path} on {node.name}",
                "actions": [(guarded, [write_node_file, nf, destination])],
                "file_dep": template_files(nf.template),
                "targets": [destination],
                "uptodate": [config_changed(nf.fingerprint)],
                "clean": True,
            }
        node_root = layout.node_root(node.name)
        yield {
            "name": f"{node.name}/stale",
            "doc": f"remove files rendered earlier that {node.name} no longer gets",
            "actions": [(guarded, [remove_stale, node_root, files[node.name]])],
            "uptodate": [(checked, [_nothing_stale, node_root, files[node.name]])],
        }
        names.append(f"render:{node.name}/stale")
        yield {"name": node.name, "doc": f"every unit and config of {node.name}", "actions": None,
               "task_dep": names}


def _nothing_stale(node_root, planned) -> bool:
    from kthw.render.node_files import stale_files

    return not stale_files(node_root, planned)
