"""Shared test helpers: run the real doit graph in a scratch directory."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def stop_processes(procs) -> None:
    """Terminate every server a test started, and make sure none is left behind."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class JsonHandler(BaseHTTPRequestHandler):
    """Base of the stand-in API servers: quiet, and JSON replies."""

    def log_message(self, *args):
        pass

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def loopback_inventory(*, workers: int = 2, api_port: int = 6443, extra: str = "", kubernetes_version: str = "",
                       kubelet_credentials: str = "tls-bootstrap", key_algorithm: str = "ecdsa-p256") -> str:
    """Three control-plane+etcd nodes on 127.0.0.1-3 and workers on 127.0.0.11+, one of them arm64."""
    version = kubernetes_version or default_kubernetes_version()
    lines = [
        "name: testcluster",
        f'kubernetes_version: "{version}"',
        "api_endpoint: {dns: localhost, ip: 127.0.0.1, port: %d}" % api_port,
        "service_cidr: 10.96.0.0/12",
        "pod_cidr: 10.244.0.0/16",
        f"key_algorithm: {key_algorithm}",
        f"kubelet_credentials: {kubelet_credentials}",
        extra,
        "nodes:",
    ]
    for index in (1, 2, 3):
        lines.append(f"  - {{name: cp{index}, roles: [control-plane, etcd], arch: amd64, zone: az{index}, "
                     f"ip: 127.0.0.{index}}}")
    for index in range(1, workers + 1):
        arch = "arm64" if index % 2 == 0 else "amd64"
        lines.append(f"  - {{name: worker{index}, roles: [worker], arch: {arch}, zone: az{(index - 1) % 3 + 1}, "
                     f"ip: 127.0.0.{10 + index}, pod_cidr: 10.244.{index}.0/24}}")
    return "\n".join(line for line in lines if line) + "\n"


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

    def snapshot(self, under: str = "build") -> dict[str, tuple[str, int]]:
        """sha256 and mtime_ns of every file under a directory (doit's own state excluded)."""
        result = {}
        base = self.root / under
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.startswith(".doit"):
                result[str(path.relative_to(self.root))] = (hashlib.sha256(path.read_bytes()).hexdigest(),
                                                            path.stat().st_mtime_ns)
        return result


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)


@pytest.fixture(scope="module")
def built_loopback(tmp_path_factory) -> Project:
    """A loopback inventory with its pki stage built once per test module."""
    proj = Project(tmp_path_factory.mktemp("loopback"))
    proj.write_inventory(loopback_inventory(kubelet_credentials="static"))
    proj.doit("pki")
    return proj
