"""A scratch project run through the real doit graph, the inventories it is given, and what a
test reads back from its runs and its installed nodes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class Installed:
    """The installed nodes: <root>/<node>/ is that node's /."""

    def __init__(self, root: Path):
        self.root = root

    def node_file(self, node: str, path: str) -> Path:
        return self.root / node / path.lstrip("/")

    def tree(self, node: str) -> dict[str, str]:
        """sha256 of every installed file, leaving out install.sh's backups and records."""
        base = self.root / node
        return {str(p.relative_to(base)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(base.rglob("*")) if p.is_file()
                and not str(p.relative_to(base)).startswith(("var/backups/kthw/", "var/lib/kthw/"))}


def loopback_inventory(*, workers: int = 2, api_port: int = 6443, extra: str = "", kubernetes_version: str = "",
                       kubelet_credentials: str = "tls-bootstrap", key_algorithm: str = "ecdsa-p256") -> str:
    """Three control-plane+etcd nodes on 127.0.0.1-3 and workers on 127.0.0.11+, one of them arm64."""
    version = kubernetes_version or default_kubernetes_version()
    lines = [
        "name: testcluster",
        f'kubernetes_version: "{version}"',
        f"api_endpoint: {{mode: external, dns: localhost, ip: 127.0.0.1, port: {api_port}}}",
        "service_cidr: 10.96.0.0/12",
        "pod_cidr: 10.244.0.0/16",
        f"key_algorithm: {key_algorithm}",
        f"kubelet_credentials: {kubelet_credentials}",
        extra,
        "nodes:",
    ]
    lines += [f"  - {{name: cp{index}, roles: [control-plane, etcd], arch: amd64, zone: az{index}, "
              f"ip: 127.0.0.{index}}}" for index in (1, 2, 3)]
    lines += [f"  - {{name: worker{index}, roles: [worker], arch: {'arm64' if index % 2 == 0 else 'amd64'}, "
              f"zone: az{(index - 1) % 3 + 1}, ip: 127.0.0.{10 + index}, pod_cidr: 10.244.{index}.0/24}}"
              for index in range(1, workers + 1)]
    return "\n".join(line for line in lines if line) + "\n"


DOIT_HOOKS = REPO / "tests" / "doit_hooks"


def _hooked(**values: str) -> dict:
    """Environment for Project.doit that loads tests/doit_hooks/sitecustomize.py into doit."""
    path = os.pathsep.join(p for p in (str(DOIT_HOOKS), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, **values}


def system_clock_at(moment) -> dict:
    """Environment for Project.doit: doit's system clock stands at ``moment`` (a datetime), as on
    a machine whose clock says so; certs are dated by it. Combine with killed_at_write."""
    return _hooked(KTHW_TEST_SYSTEM_CLOCK=moment.isoformat())


def killed_at_write(n: int, *, empty_temp: bool = False) -> dict:
    """Environment for Project.doit: doit SIGKILLs itself at its n-th rename into build/, leaving
    that write's temp file behind (emptied with ``empty_temp``, as a kill right after its
    creation leaves it)."""
    return _hooked(KTHW_TEST_KILL_AT_WRITE=str(n), KTHW_TEST_KILL_EMPTY_TEMP="1" if empty_temp else "0")


def counting_writes(path: Path) -> dict:
    """Environment for Project.doit: the number of renames into build/ is written to ``path``."""
    return _hooked(KTHW_TEST_COUNT_WRITES=str(path))


def default_kubernetes_version() -> str:
    """The example inventory's version: the one the shipped tables are known to cover."""
    import yaml
    return yaml.safe_load((REPO / "cluster.yaml").read_text())["kubernetes_version"]


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def executed(self) -> list[str]:
        """Task names doit ran (its '.  name' progress lines, on stderr)."""
        return [line[3:].strip() for line in self.stderr.splitlines() if line.startswith(".  ")]


def changed(before: dict, after: dict) -> set[str]:
    """Paths whose snapshot entry differs (added, removed or rewritten)."""
    return {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}


def fails_cleanly(run: Run, *needles: str) -> None:
    """A user error: non-zero exit, no traceback, and the message says each of ``needles``."""
    output = run.stdout + run.stderr
    assert run.returncode != 0, output
    assert "Traceback" not in output, output
    for needle in needles:
        assert needle in output, output


@dataclass
class Project:
    """A scratch working directory with its own inventory, build/ and doit state."""

    root: Path

    @property
    def inventory(self) -> Path:
        return self.root / "cluster.yaml"

    def write_inventory(self, text: str) -> None:
        self.inventory.write_text(text)

    def doit(self, *args: str, env: dict | None = None, check: bool = True, timeout: int = 600) -> Run:
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.run(
            [sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), "-d", str(self.root), *args,
             f"inventory={self.inventory}"],
            capture_output=True, text=True, env=full_env, timeout=timeout)
        run = Run(proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(f"doit {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return run

    def node_file(self, node: str, path: str) -> Path:
        return self.root / "build" / "nodes" / node / path.lstrip("/")

    def node_files(self, node: str) -> set[str]:
        """The node paths (/etc/...) of every file built for ``node``."""
        base = self.root / "build" / "nodes" / node
        return {"/" + str(p.relative_to(base)) for p in base.rglob("*") if p.is_file()}

    def snapshot(self, under: str = "build") -> dict[str, tuple[str, int]]:
        """sha256 and mtime_ns of every file under a directory; doit's own state and the bundle
        serial records (bookkeeping that moves with every bundle rebuilt) excluded."""
        result = {}
        base = self.root / under
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.startswith(".doit") and path.parent.name != "bundle-serials":
                result[str(path.relative_to(self.root))] = (hashlib.sha256(path.read_bytes()).hexdigest(),
                                                            path.stat().st_mtime_ns)
        return result


# The example inventory's (cluster.yaml) last worker, as written there: a test edits it out.
LAST_WORKER = """  - name: worker-az3-a
    roles: [worker]
    arch: aarch64
    zone: az3
    ip: 10.0.3.21
    pod_cidr: 10.244.3.0/24
    extra_sans: [worker-az3-a.homelab.lan]
"""
