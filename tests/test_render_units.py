"""`systemd-analyze verify` (Debian's systemd) accepts every rendered unit.

verify loads a unit the way systemd would and reports unknown directives, bad values
and ExecStart binaries that are missing or not executable. Each node is laid out in a
temporary root as the bundle installs it: the node's build/nodes/<node>/ tree, an
executable stand-in for every binary kthw.render.node_files.binaries_for lists (the vendor stage
ships the real ones), and the host's systemd units (for targets such as
network-online.target) and the host's `ip` (iproute2, which the node's OS provides). A
unit naming a binary the node would not get fails here.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from support.render import rendered_paths
from support.tools import PROVIDERS, require

from kthw import inventory
from kthw.pki.node_paths import UNIT_DIR
from kthw.render.node_files import binaries_for

pytestmark = pytest.mark.slow  # end to end (see pyproject's markers)

SYSTEM_UNITS = Path("/usr/lib/systemd/system")


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    binary = require("systemd-analyze")
    if not SYSTEM_UNITS.is_dir():
        pytest.fail(f"{SYSTEM_UNITS} is missing; it comes from {PROVIDERS['systemd-analyze']}", pytrace=False)
    return binary


def node_root(project, node, dest: Path) -> Path:
    shutil.copytree(project.root / "build" / "nodes" / node, dest)
    # Copied, not linked: verify resolves links inside --root and these are absolute.
    shutil.copytree(SYSTEM_UNITS, dest / "usr/lib/systemd/system", symlinks=True)
    (dest / "sbin").mkdir(exist_ok=True)
    shutil.copy(Path(require("ip")).resolve(), dest / "sbin/ip")
    for binary in binaries_for(inventory.load(project.inventory).node(node)):
        stand_in = dest / binary.lstrip("/")
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_text("#!/bin/sh\nexit 0\n")
        stand_in.chmod(0o755)
    return dest


def verify(systemd_analyze: str, root: Path, unit: str) -> subprocess.CompletedProcess:
    return subprocess.run([systemd_analyze, "verify", "--man=no", f"--root={root}", unit],
                          capture_output=True, text=True, timeout=120)


def complaints(result: subprocess.CompletedProcess, unit: str) -> list[str]:
    """verify's lines about this unit (unknown keys are only warnings, exit code 0)."""
    return [line for line in result.stderr.splitlines() if unit in line]


def test_systemd_accepts_every_rendered_unit(rendered_cluster, systemd_analyze, tmp_path):
    project, _ = rendered_cluster
    checked = []
    for node, paths in rendered_paths(project).items():
        root = node_root(project, node, tmp_path / node)
        for path in paths:
            if not path.startswith(UNIT_DIR + "/"):
                continue
            unit = path.rsplit("/", 1)[1]
            result = verify(systemd_analyze, root, unit)
            assert result.returncode == 0 and not complaints(result, unit), \
                f"{node}: {unit}:\n{result.stderr}"
            checked.append(f"{node}/{unit}")
    # Each node's own units, and on each of the five the pod routes unit.
    assert len(checked) == 3 * 4 + 2 * 3 + 5, checked


def test_verify_catches_a_broken_unit_and_a_missing_binary(rendered_cluster, systemd_analyze, tmp_path):
    """The check above can fail: a typo and a binary the node does not get are both reported."""
    project, _ = rendered_cluster
    root = node_root(project, "worker1", tmp_path / "worker1")
    unit = root / "etc/systemd/system/kubelet.service"
    unit.write_text(unit.read_text().replace("Restart=on-failure", "Restart=on-failur\nLimitNOFILES=1"))
    result = verify(systemd_analyze, root, "kubelet.service")
    assert any("LimitNOFILES" in line for line in complaints(result, "kubelet.service")), result.stderr
    assert any("on-failur" in line for line in complaints(result, "kubelet.service")), result.stderr

    (root / "usr/local/bin/kube-proxy").unlink()
    result = verify(systemd_analyze, root, "kube-proxy.service")
    assert result.returncode != 0 and "/usr/local/bin/kube-proxy" in result.stderr
