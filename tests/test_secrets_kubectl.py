"""Real kubectl and real bash with the secrets stage's outputs, against a loopback API server.

kube-apiserver cannot run on this machine, so a small Python HTTPS server stands in for
it. It does what these tests rely on the way kube-apiserver does:
- TLS with the generated apiserver cert (leaf + kubernetes intermediate); clients verify it
  against the CA in their kubeconfig;
- authentication by client cert (trusting the kubernetes intermediate as the anchor, like
  Go does) or by a bootstrap token, checked against the stored `bootstrap-token-<id>`
  Secret's token-id, token-secret, usage and expiration;
- only system:masters may write; discovery for the kinds the manifests use, and an
  OpenAPI v3 index that tells kubectl the server validates fields itself, so kubectl
  sends `fieldValidation=Strict` and the stand-in checks every object against the
  published Kubernetes schemas (kubernetes-validate, strict) before storing it.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
from contextlib import contextmanager
from datetime import datetime, timezone
from urllib.parse import urlsplit

import pytest
import yaml
from support.project import Project, loopback_inventory
from support.servers import JsonHandler, free_port, tls_stand_in
from support.tools import require, require_module

pytestmark = pytest.mark.slow  # end to end (see pyproject's markers)

BOOTSTRAP_DIR = "etc/k8s/bootstrap"
BOOTSTRAP_KUBECONFIG = "etc/k8s/kubelet/bootstrap-kubeconfig"
WORKERS = ("worker1", "worker2")

# kind -> (API path prefix, plural, namespaced)
RESOURCES = {
    ("v1", "Secret"): ("/api/v1", "secrets", True),
    ("v1", "ConfigMap"): ("/api/v1", "configmaps", True),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): ("/apis/rbac.authorization.k8s.io/v1",
                                                             "clusterrolebindings", False),
    ("rbac.authorization.k8s.io/v1", "Role"): ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    ("v1", "ServiceAccount"): ("/api/v1", "serviceaccounts", True),
    ("v1", "Service"): ("/api/v1", "services", True),
    ("apps/v1", "Deployment"): ("/apis/apps/v1", "deployments", True),
}


def _discovery() -> dict[str, dict]:
    lists: dict[str, list] = {}
    for (_, kind), (prefix, plural, namespaced) in RESOURCES.items():
        lists.setdefault(prefix, []).append({"name": plural, "singularName": kind.lower(), "namespaced": namespaced,
                                             "kind": kind, "verbs": ["create", "get", "list", "patch", "update"]})
    docs = {prefix: {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": prefix.split("/", 2)[-1]
                     if prefix.startswith("/apis/") else "v1", "resources": resources}
            for prefix, resources in lists.items()}
    rbac = {"groupVersion": "rbac.authorization.k8s.io/v1", "version": "v1"}
    apps = {"groupVersion": "apps/v1", "version": "v1"}
    docs["/api"] = {"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}
    docs["/apis"] = {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
        {"name": "rbac.authorization.k8s.io", "versions": [rbac], "preferredVersion": rbac},
        {"name": "apps", "versions": [apps], "preferredVersion": apps}]}
    return docs


def _openapi(prefix: str) -> dict:
    """An OpenAPI v3 document with just what kubectl reads to learn that the server does field
    validation: each kind's PATCH operation and its fieldValidation query parameter."""
    paths = {}
    for (api_version, kind), (kind_prefix, plural, namespaced) in RESOURCES.items():
        if kind_prefix != prefix:
            continue
        group, _, version = api_version.rpartition("/")
        path = f"{prefix}/" + ("namespaces/{namespace}/" if namespaced else "") + plural + "/{name}"
        paths[path] = {"patch": {
            "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": kind},
            "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
            "responses": {}}}
    return {"openapi": "3.0.0", "info": {"title": "stand-in", "version": "v"}, "paths": paths}


class StandIn(JsonHandler):
    """One class per server (see :func:`serve`): ``store`` and ``seen`` are its state."""

    store: dict
    seen: list
    schema_version: str


    def _status(self, code: int, reason: str, message: str = "") -> None:
        self._reply(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                           "message": message or reason, "code": code})

    def _bootstrap_user(self, token: str):
        """kube-apiserver's bootstrap token authenticator, on the stored Secrets."""
        token_id, _, token_secret = token.partition(".")
        secret = self.store.get(f"/api/v1/namespaces/kube-system/secrets/bootstrap-token-{token_id}")
        if not secret or secret.get("type") != "bootstrap.kubernetes.io/token":
            return None
        data = secret.get("stringData", {})
        if data.get("token-id") != token_id or data.get("token-secret") != token_secret \
                or data.get("usage-bootstrap-authentication") != "true":
            return None
        expiration = datetime.fromisoformat(data["expiration"].replace("Z", "+00:00"))
        if expiration <= datetime.now(timezone.utc):
            return None
        extra = [g for g in data.get("auth-extra-groups", "").split(",") if g]
        return f"system:bootstrap:{token_id}", ["system:bootstrappers", *extra]

    def _authenticate(self):
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            identity = self._bootstrap_user(auth[len("Bearer "):])
        else:
            cert = self.connection.getpeercert()
            identity = None
            if cert:
                fields = [item for rdn in cert["subject"] for item in rdn]
                identity = (next(v for k, v in fields if k == "commonName"),
                            [v for k, v in fields if k == "organizationName"])
        if identity is None:
            self._status(401, "Unauthorized")
        return identity

    def _handle(self, method: str) -> None:
        identity = self._authenticate()
        if identity is None:
            self.seen.append((method, self.path, None, None))
            return
        user, groups = identity
        self.seen.append((method, self.path, user, groups, self.headers.get("Authorization", "")))
        url = urlsplit(self.path)
        path = url.path
        if method == "GET":
            self._get(path)
            return
        if "system:masters" not in groups:
            self._status(403, "Forbidden", f"{user} may not {method} {path}")
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        if method == "POST":
            self._create(path, body)
        else:
            self._status(405, "MethodNotAllowed", "the stand-in stores objects once")

    def _get(self, path: str) -> None:
        if path == "/readyz":
            body = b"ok"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif path in DISCOVERY:
            self._reply(200, DISCOVERY[path])
        elif path == "/openapi/v3":
            self._reply(200, {"paths": {p.lstrip("/"): {"serverRelativeURL": f"/openapi/v3{p}?hash=1"}
                                        for p in {prefix for prefix, _, _ in RESOURCES.values()}}})
        elif path.startswith("/openapi/v3/"):
            self._reply(200, _openapi(path[len("/openapi/v3"):]))
        elif path in self.store:
            self._reply(200, self.store[path])
        else:
            self._status(404, "NotFound")

    def _create(self, path: str, body: dict) -> None:
        try:
            self.kubernetes_validate.validate(body, self.schema_version, strict=True)
        except self.kubernetes_validate.ValidationError as err:
            self._status(422, "Invalid", str(err).splitlines()[0])
            return
        key = f"{path}/{body['metadata']['name']}"
        if key in self.store:
            self._status(409, "AlreadyExists")
            return
        body["metadata"].setdefault("resourceVersion", "1")
        self.store[key] = body
        self._reply(201, body)

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PATCH(self):
        self._handle("PATCH")

    def do_PUT(self):
        self._handle("PUT")


DISCOVERY = _discovery()


@contextmanager
def serve(project: Project, port: int, cert: str = "etc/k8s/kube-apiserver/apiserver"):
    """The stand-in on 127.0.0.1:``port`` with one of cp1's certs; yields its handler class."""
    version = ".".join(yaml.safe_load(project.inventory.read_text())["kubernetes_version"].split(".")[:2])
    # The published Kubernetes schemas the stand-in validates objects with.
    handler = type("Handler", (StandIn,), {"store": {}, "seen": [], "schema_version": version,
                                           "kubernetes_validate": require_module("kubernetes_validate")})
    # Client certs optional: bootstrap tokens come without one.
    with tls_stand_in(project, handler, port=port, cert=cert, client_cert=ssl.CERT_OPTIONAL):
        yield handler


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Built with the API endpoint on localhost:<free port>, and a stand-in listening there."""
    require("kubectl")  # apply.sh runs it from PATH
    project = Project(tmp_path_factory.mktemp("kubectl-secrets"))
    port = free_port()
    project.write_inventory(loopback_inventory(api_port=port))
    project.doit("pki", "secrets")
    with serve(project, port) as handler:
        yield project, port, handler


def _apply(project: Project, port: int, **env):
    script = project.node_file("cp1", f"{BOOTSTRAP_DIR}/apply.sh")
    return subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120, env={
        **os.environ,
        "KTHW_KUBECONFIG": str(project.node_file("cp1", "etc/k8s/shared/admin.kubeconfig")),
        "KTHW_APISERVER": f"https://127.0.0.1:{port}", **env})


def _kubectl(kubeconfig, *args):
    return subprocess.run([require("kubectl"), "--kubeconfig", str(kubeconfig), "--request-timeout=20s",
                           *args], capture_output=True, text=True, timeout=60)


def _manifests(project: Project) -> list[dict]:
    directory = project.node_file("cp1", BOOTSTRAP_DIR)
    return [obj for path in sorted(directory.glob("*.yaml")) for obj in yaml.safe_load_all(path.read_text())]


def _url(obj: dict) -> str:
    prefix, plural, namespaced = RESOURCES[(obj["apiVersion"], obj["kind"])]
    namespace = f"/namespaces/{obj['metadata']['namespace']}" if namespaced else ""
    return f"{prefix}{namespace}/{plural}/{obj['metadata']['name']}"


def test_apply_script_creates_every_object_and_a_second_run_changes_nothing(cluster):
    project, port, handler = cluster
    handler.store.clear()
    handler.seen.clear()
    first = _apply(project, port)
    assert first.returncode == 0, first.stderr
    expected = _manifests(project)
    assert len(expected) == 1 + 3 + 3 + len(WORKERS) + 6  # + CoreDNS
    for obj in expected:
        stored = handler.store[_url(obj)]
        assert {k: v for k, v in stored.items() if k != "metadata"} == \
            {k: v for k, v in obj.items() if k != "metadata"}
    assert first.stdout.count(" created") == len(expected)
    writes = [entry for entry in handler.seen if entry[0] == "POST"]
    assert all("fieldValidation=Strict" in entry[1] for entry in writes)  # validated with the schemas
    assert {entry[2] for entry in writes} == {"kubernetes-admin"}  # as admin, by client cert

    second = _apply(project, port)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("unchanged") == len(expected) and "created" not in second.stdout


def test_kubectl_sends_each_bootstrap_token_and_the_server_matches_it_to_its_secret(cluster):
    project, port, handler = cluster
    assert _apply(project, port).returncode == 0  # the Secrets the server checks tokens against
    for node in WORKERS:
        kubeconfig = project.node_file(node, BOOTSTRAP_KUBECONFIG)
        token = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
        handler.seen.clear()
        result = _kubectl(kubeconfig, "get", "--raw", "/api")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["kind"] == "APIVersions"
        (_, _, user, groups, auth), = handler.seen
        assert auth == f"Bearer {token}"
        assert user == f"system:bootstrap:{token.split('.')[0]}"
        assert groups == ["system:bootstrappers", f"system:bootstrappers:kthw:{node}"]


def test_a_wrong_token_is_rejected(cluster, tmp_path):
    project, port, _ = cluster
    assert _apply(project, port).returncode == 0
    config = yaml.safe_load(project.node_file("worker1", BOOTSTRAP_KUBECONFIG).read_text())
    token_id, secret = config["users"][0]["user"]["token"].split(".")
    config["users"][0]["user"]["token"] = f"{token_id}.{secret[::-1]}"
    forged = tmp_path / "forged-kubeconfig"
    forged.write_text(yaml.safe_dump(config))
    result = _kubectl(forged, "get", "--raw", "/api")
    assert result.returncode != 0 and "Unauthorized" in result.stderr


def test_the_bootstrap_kubeconfig_trusts_only_the_kubernetes_ca(cluster):
    project, _, _ = cluster
    # A server presenting cp1's etcd server cert: valid for 127.0.0.1, but issued by the etcd CA.
    port = free_port()
    with serve(project, port, cert="etc/k8s/etcd/server") as handler:
        config = yaml.safe_load(project.node_file("worker1", BOOTSTRAP_KUBECONFIG).read_text())
        config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
        other = project.root / "other-server-kubeconfig"
        other.write_text(yaml.safe_dump(config))
        result = _kubectl(other, "get", "--raw", "/api")
        assert result.returncode != 0 and "certificate" in result.stderr
        assert handler.seen == []  # the token never left the client


def test_kubectl_create_dry_run_accepts_every_manifest(cluster):
    # `kubectl create --dry-run=client` needs an API server for discovery (it cannot map a
    # kind to a resource without one): it asks the stand-in, then prints what it would send.
    project, port, handler = cluster
    admin = project.node_file("cp1", "etc/k8s/shared/admin.kubeconfig")
    for path in sorted(project.node_file("cp1", BOOTSTRAP_DIR).glob("*.yaml")):
        before = len(handler.store)
        result = _kubectl(admin, "--server", f"https://127.0.0.1:{port}", "create", "--dry-run=client",
                          "-o", "yaml", "-f", str(path))
        assert result.returncode == 0, result.stderr
        printed = [obj for obj in yaml.safe_load_all(result.stdout) if obj]
        if len(printed) == 1 and printed[0].get("kind") == "List":
            printed = printed[0]["items"]
        assert [(o["kind"], o["metadata"]["name"]) for o in printed] == \
            [(o["kind"], o["metadata"]["name"]) for o in yaml.safe_load_all(path.read_text())]
        assert len(handler.store) == before  # a dry run stores nothing


def test_apply_script_waits_for_the_api_server_then_says_what_to_check(cluster):
    project, _, _ = cluster
    nobody = free_port()
    result = _apply(project, nobody, KTHW_APISERVER_WAIT="0")
    assert result.returncode == 1
    assert f"https://127.0.0.1:{nobody} is not ready" in result.stderr and "kube-apiserver" in result.stderr
