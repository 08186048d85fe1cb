"""A worker's kubectl against three stand-in API servers, one of them down (no tests here).

Used by test_api_failover.py and bench/api_failover.py. kube-apiserver cannot run on this
machine, so small Python HTTPS servers stand in for it: each serves with its control
plane's generated apiserver cert, requires a client cert from the kubernetes intermediate
or a bootstrap token, and answers GET /version (what `kubectl get --raw /version` asks)
with the address it listens on.

:func:`failover` runs everything in new network, mount and PID namespaces (unshare), so no
packet leaves them and nothing is left behind:

    worker namespace: the worker's address on veth-w; /etc/hosts is the installed one
         | veth (one L2 segment)
    srv namespace: every control plane's address on veth-s, one stand-in on each, port 6443

and measures, with the worker's installed kubeconfigs and real kubectl:
    up        every server up
    refused   one server stopped (host up, nothing listening: the kernel refuses at once)
    dead      one address with no host behind it (its ARP requests go unanswered)
    silent    one host that drops everything (its MAC still known, no answer: a firewall or
              a host that hung; the dial waits for its share of the dial timeout)

Run as `python -m support.failover` it is the driver (`driver <config.json>`) or one stand-in
(`serve ...`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import yaml

from kthw import inventory
from support.bundles import example_project, fingerprint, install, unpack
from support.project import Project
from support.servers import JsonHandler
from support.tools import require

PORT = 6443
WORKER_LINK, SERVER_LINK, SERVER_NS = "veth-w", "veth-s", "srv"
UNKNOWN_MAC = "02:00:00:00:00:99"   # a MAC no interface has: frames to it vanish
# The driver and the stand-ins run this module with the tests directory on PYTHONPATH, so
# that it imports `support` as it does under pytest.
TESTS = Path(__file__).resolve().parents[1]
THIS_MODULE = [sys.executable, "-m", "support.failover"]


# --- the stand-in API server ------------------------------------------------------------------


def serve(address: str, cert: str, key: str, client_ca: str, token: str) -> None:
    """Answer /version on address:PORT until SIGTERM."""
    class Handler(JsonHandler):
        def do_GET(self):
            known_cert = bool(self.connection.getpeercert())
            known_token = self.headers.get("Authorization") == f"Bearer {token}"
            if not (known_cert or known_token):
                return self._reply(401, {"kind": "Status", "status": "Failure", "code": 401})
            if self.path != "/version":
                return self._reply(404, {"kind": "Status", "status": "Failure", "code": 404})
            self._reply(200, {"major": "1", "minor": "36", "gitVersion": "v1.36.0-stand-in", "server": address})

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.load_verify_locations(client_ca)
    context.verify_mode = ssl.CERT_OPTIONAL  # bootstrap tokens come without a client cert
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the intermediate is the anchor, as in Go
    server = ThreadingHTTPServer((address, PORT), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()


# --- the driver, inside the namespaces ----------------------------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _network(worker: str, servers: list[str]) -> None:
    """The worker and the servers on one L2 segment, every address on-link (/32 routes)."""
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run"], check=True)
    os.makedirs("/run/netns")
    _ip("link", "set", "lo", "up")
    _ip("netns", "add", SERVER_NS)
    _ip("link", "add", WORKER_LINK, "type", "veth", "peer", "name", SERVER_LINK, "netns", SERVER_NS)
    _ip("addr", "add", f"{worker}/32", "dev", WORKER_LINK)
    _ip("link", "set", WORKER_LINK, "up")
    _ip("-n", SERVER_NS, "link", "set", "lo", "up")
    _ip("-n", SERVER_NS, "link", "set", SERVER_LINK, "up")
    _ip("-n", SERVER_NS, "route", "add", f"{worker}/32", "dev", SERVER_LINK)
    for address in servers:
        _ip("-n", SERVER_NS, "addr", "add", f"{address}/32", "dev", SERVER_LINK)
        _ip("route", "add", f"{address}/32", "dev", WORKER_LINK)


def _listening(address: str) -> bool:
    try:
        socket.create_connection((address, PORT), timeout=1).close()
    except OSError:
        return False
    return True


class StandIns:
    """One stand-in process per control-plane address, in the srv namespace."""

    def __init__(self, config: dict):
        self.config, self.procs = config, {}

    def start(self, address: str) -> None:
        server = self.config["servers"][address]
        self.procs[address] = subprocess.Popen(
            ["ip", "netns", "exec", SERVER_NS, *THIS_MODULE, "serve", address, server["cert"],
             server["key"], server["client_ca"], self.config["token"]])
        deadline = time.monotonic() + 30
        while not _listening(address):
            if time.monotonic() > deadline or self.procs[address].poll() is not None:
                raise RuntimeError(f"the stand-in on {address} did not start")
            time.sleep(0.05)

    def stop(self, address: str) -> None:
        proc = self.procs.pop(address)
        proc.terminate()
        proc.wait(timeout=15)

    def stop_all(self) -> None:
        for address in list(self.procs):
            self.stop(address)


def _kubectl(config: dict, kubeconfig: str) -> dict:
    """One `kubectl get --raw /version` with an installed kubeconfig: its time and who answered."""
    start = time.monotonic()
    result = subprocess.run([config["kubectl"], "--kubeconfig", kubeconfig, "get", "--raw", "/version"],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": config["home"]})
    seconds = round(time.monotonic() - start, 2)
    answer = json.loads(result.stdout)["server"] if result.returncode == 0 else None
    return {"ok": result.returncode == 0, "seconds": seconds, "server": answer, "stderr": result.stderr[-500:]}


def _dead(address: str) -> None:
    """No host behind the address any more: its ARP requests go unanswered."""
    _ip("-n", SERVER_NS, "addr", "del", f"{address}/32", "dev", SERVER_LINK)
    _ip("neigh", "flush", "dev", WORKER_LINK)


def _silent(address: str) -> None:
    """A host that answers nothing, though the worker still knows its MAC."""
    _ip("-n", SERVER_NS, "addr", "del", f"{address}/32", "dev", SERVER_LINK)
    _ip("neigh", "replace", address, "lladdr", UNKNOWN_MAC, "dev", WORKER_LINK, "nud", "permanent")


def _revive(address: str) -> None:
    _ip("neigh", "flush", "dev", WORKER_LINK)
    subprocess.run(["ip", "neigh", "del", address, "dev", WORKER_LINK], capture_output=True)
    subprocess.run(["ip", "-n", SERVER_NS, "addr", "add", f"{address}/32", "dev", SERVER_LINK], capture_output=True)


def drive(config: dict) -> list[dict]:
    """Every case of config["cases"] ([case, address]) with every kubeconfig; one row each."""
    servers = list(config["servers"])
    _network(config["worker"], servers)
    subprocess.run(["mount", "--bind", config["hosts"], "/etc/hosts"], check=True)
    stand_ins = StandIns(config)
    rows = []
    try:
        for address in servers:
            stand_ins.start(address)
        for case, down in config["cases"]:
            if down:
                stand_ins.stop(down)
                {"refused": lambda a: None, "dead": _dead, "silent": _silent}[case](down)
            for name, kubeconfig in config["kubeconfigs"].items():
                rows.append({"case": case, "down": down, "kubeconfig": name, **_kubectl(config, kubeconfig)})
            if down:
                _revive(down)
                stand_ins.start(down)
    finally:
        stand_ins.stop_all()
    return rows


# --- from the test or bench: build the namespaces and run the driver in them ------------------------


def _with_tests_on_path() -> dict:
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def failover(config: dict, work: Path) -> list[dict]:
    """Run :func:`drive` with ``config`` in new namespaces (root and util-linux unshare needed).

    config: worker (its address), servers ({address: {cert, key, client_ca}}), token (the
    bootstrap token the stand-ins accept), hosts (the /etc/hosts the installer wrote),
    kubeconfigs ({name: path}), kubectl, cases ([[case, address or None], ...]).
    """
    work.mkdir(parents=True, exist_ok=True)
    (work / "home").mkdir(exist_ok=True)
    path = work / "failover.json"
    path.write_text(json.dumps({**config, "home": str(work / "home")}))
    result = subprocess.run(["unshare", "--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc",
                             *THIS_MODULE, "driver", str(path)],
                            capture_output=True, text=True, timeout=600, env=_with_tests_on_path())
    if result.returncode != 0:
        raise RuntimeError(f"the failover driver failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return json.loads(result.stdout)


def can_run() -> bool:
    """Whether this machine lets us make network namespaces with a veth pair."""
    probe = subprocess.run(["unshare", "--net", "--fork", "ip", "link", "add", "name", "probe-w", "type", "veth",
                            "peer", "name", "probe-s"], capture_output=True)
    return probe.returncode == 0


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(*sys.argv[2:])
    elif sys.argv[1] == "driver":
        print(json.dumps(drive(json.loads(Path(sys.argv[2]).read_text()))))


# --- the worker the failover runs against (the test's and the bench's) -----------------------------

WORKER = "worker-az1-a"
KUBECONFIGS = {"kube-proxy": "/etc/k8s/kube-proxy/kubeconfig",
               "kubelet-bootstrap": "/etc/k8s/kubelet/bootstrap-kubeconfig"}


def failover_config(project: Project, root: Path, worker: str) -> dict:
    """What the driver needs: the installed files of ``worker`` under ``root``, every control
    plane's apiserver cert from the build."""
    inv = inventory.load(project.inventory)
    bootstrap = yaml.safe_load((root / KUBECONFIGS["kubelet-bootstrap"].lstrip("/")).read_text())
    servers = {str(cp.ip): {"cert": str(project.node_file(cp.name, "/etc/k8s/kube-apiserver/apiserver.crt")),
                            "key": str(project.node_file(cp.name, "/etc/k8s/kube-apiserver/apiserver.key")),
                            "client_ca": str(project.node_file(cp.name, "/etc/k8s/shared/kubernetes-ca.crt"))}
               for cp in inv.control_plane_nodes}
    return {"worker": str(inv.node(worker).ip), "servers": servers, "token": bootstrap["users"][0]["user"]["token"],
            "hosts": str(root / "etc/hosts"), "kubectl": require("kubectl"),
            "kubeconfigs": {name: str(root / path.lstrip("/")) for name, path in KUBECONFIGS.items()}}


def installed_worker(where: Path, worker: str = WORKER) -> tuple[Project, Path]:
    """The example built, and ``worker``'s bundle installed into where/root by its install.sh."""
    project = example_project(where / "project")
    project.doit("pki", f"bundle:{worker}")
    root = where / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n")
    install(unpack(project, worker, where / "bundle"), "--root", str(root), "--no-start", "--any-hostname",
            "--fingerprint", fingerprint(project), check=True)
    return project, root
