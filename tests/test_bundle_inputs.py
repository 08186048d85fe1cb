"""The bundle stage's list of a node's files (kthw.bundle.build.expected_files) is exactly what the
other stages' doit tasks write into the node's tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from support.project import REPO, Project, loopback_inventory

pytestmark = pytest.mark.slow  # end to end (see pyproject's markers)

# Run in a process of its own: the task creators read the inventory once per process.
COMPARE = """
import json, sys
from pathlib import Path
from tasks import gather
from tasks.common import context
from tasks.render import planned
from kthw.bundle import build as bundle

inv, layout = context()
roots = {str(layout.node_root(n.name)): n.name for n in inv.nodes}
written = {n.name: set() for n in inv.nodes}
for name, creator in gather().items():
    if name == "task_bundle":
        continue
    made = creator()
    for task in [made] if isinstance(made, dict) else list(made or ()):
        for target in map(Path, task.get("targets", ())):
            node = next((roots[str(p)] for p in target.parents if str(p) in roots), None)
            if node:
                written[node].add("/" + target.relative_to(layout.node_root(node)).as_posix())
rendered, _ = planned()
json.dump({n.name: [sorted(written[n.name]),
                    sorted(bundle.expected_files(inv, layout, n, rendered and rendered[n.name]))]
           for n in inv.nodes}, sys.stdout)
"""


@pytest.mark.parametrize("credentials", ["tls-bootstrap", "static"])
def test_expected_files_are_the_files_the_stages_write(project: Project, credentials):
    project.write_inventory(loopback_inventory(kubelet_credentials=credentials))
    env = {**os.environ, "PYTHONPATH": str(REPO), "KTHW_INVENTORY": str(project.inventory)}
    result = subprocess.run([sys.executable, "-c", COMPARE], cwd=project.root, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for node, (written, expected) in json.loads(result.stdout).items():
        assert written and expected == written, node
