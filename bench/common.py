"""Shared by the benchmarks: scratch projects, inventories, and side-by-side timing.

The machines are shared and noisy, so every benchmark alternates baseline and ours
several times in one run and reports medians and median ratios.
"""

from __future__ import annotations

import atexit
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def inventory(workers: int, control_planes: int = 3, key_algorithm: str = "ecdsa-p256",
              arch: str | None = None) -> str:
    """Control planes are amd64; workers are ``arch``, or when None arm64 and amd64 in turn."""
    lines = ["name: bench", f'kubernetes_version: "{_example_version()}"',
             "api_endpoint: {dns: k8s.bench.lan, ip: 10.0.0.10, port: 6443}",
             "service_cidr: 10.96.0.0/12", "pod_cidr: 10.128.0.0/9", f"key_algorithm: {key_algorithm}",
             "nodes:"]
    lines += [f"  - {{name: cp{i}, roles: [control-plane, etcd], arch: amd64, zone: az{(i - 1) % 3 + 1}, "
              f"ip: 10.0.0.{10 + i}}}" for i in range(1, control_planes + 1)]
    for i in range(1, workers + 1):
        worker_arch = arch or ("arm64" if i % 2 else "amd64")
        lines.append(f"  - {{name: w{i}, roles: [worker], arch: {worker_arch}, zone: az{i % 3 + 1}, "
                     f"ip: 10.1.{i // 250}.{i % 250 + 1}, pod_cidr: 10.{128 + i // 256}.{i % 256}.0/24}}")
    return "\n".join(lines) + "\n"


def _example_version() -> str:
    for line in (REPO / "cluster.yaml").read_text().splitlines():
        if line.startswith("kubernetes_version:"):
            return line.split(":", 1)[1].strip().strip('"')
    raise SystemExit("cluster.yaml has no kubernetes_version")


def user_environment() -> dict[str, str]:
    """This environment as an operator's shell has it: Python keeps its bytecode cache.

    Some sandboxes export PYTHONDONTWRITEBYTECODE, which makes every run compile every
    module of ours from source (about 0.15 s here) - a cost no installed copy pays.
    """
    return {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}


class Scratch:
    """A fresh working directory holding one inventory, built by the dodo.py of ``checkout``
    (this one by default; a baseline's to time an earlier commit side by side)."""

    def __init__(self, text: str, checkout: Path = REPO):
        self.root = Path(tempfile.mkdtemp(prefix="kthw-bench-"))
        self.dodo = Path(checkout) / "dodo.py"
        (self.root / "cluster.yaml").write_text(text)

    def doit(self, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return _doit(["-f", str(self.dodo), "-d", str(self.root), *args, f"inventory={self.root / 'cluster.yaml'}"],
                     env=env)

    def bare_doit(self) -> subprocess.CompletedProcess:
        """Plain `doit` in the project directory, as an operator types it (no option, no
        variable): the only form that may stop early on the record of the last full check."""
        link = self.root / "dodo.py"
        if not link.is_symlink():
            link.symlink_to(self.dodo)
        return _doit([], cwd=self.root)

    def reset(self, keep: tuple[str, ...] = ("cluster.yaml",)) -> None:
        for child in self.root.iterdir():
            if child.name not in keep:
                shutil.rmtree(child) if child.is_dir() else child.unlink()

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _doit(args: list[str], cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "doit", *args], cwd=cwd, capture_output=True, text=True,
                            env={**user_environment(), **(env or {})})
    if result.returncode != 0:
        raise SystemExit(f"doit {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def baseline_checkout(path: str | None) -> Path | None:
    """``--baseline DIR``: a checkout of an earlier commit (`git worktree add DIR <commit>`, or
    `git archive <commit> | tar -x -C DIR`), timed beside this one. Its doit runs with the
    same Python and packages; the dodo.py puts its own checkout first on sys.path."""
    if path is None:
        return None
    checkout = Path(path).resolve()
    if not (checkout / "dodo.py").is_file():
        raise SystemExit(f"--baseline {path}: no dodo.py there")
    return checkout


def empty_dodo() -> Callable[[], object]:
    """doit on a dodo file with no tasks: the floor of any doit-based tool (interpreter,
    doit's imports, its plugin look-ups, its database)."""
    directory = Path(tempfile.mkdtemp(prefix="kthw-bench-empty-"))
    atexit.register(shutil.rmtree, directory, True)
    (directory / "dodo.py").write_text("DOIT_CONFIG = {'dep_file': '.doit-empty.db', 'backend': 'sqlite3'}\n")
    return lambda: subprocess.run([sys.executable, "-m", "doit", "-f", str(directory / "dodo.py"),
                                   "-d", str(directory)], check=True, capture_output=True, env=user_environment())


def python_alone() -> subprocess.CompletedProcess:
    """The interpreter starting and stopping, importing nothing of its own."""
    return subprocess.run([sys.executable, "-c", "pass"], check=True, env=user_environment())


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def alternate(contenders: Mapping[str, Callable[[], object]], rounds: int,
              before_each: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Run every contender once per round, in turn, so noise hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, action in contenders.items():
            if before_each:
                before_each()
            times[name].append(timed(action))
    return times


def report(title: str, times: dict[str, list[float]], ours: str, targets: dict[str, str] | None = None) -> None:
    print(f"\n{title}")
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, median in medians.items():
        print(f"  {name:<28} median {median:8.3f} s   ({len(times[name])} runs)")
    for name in medians:
        if name == ours:
            continue
        ratios = [b / a for a, b in zip(times[ours], times[name], strict=True)]
        print(f"  {name} / {ours}: median ratio {statistics.median(ratios):.2f}"
              + (f"   target: {targets[name]}" if targets and name in targets else ""))
