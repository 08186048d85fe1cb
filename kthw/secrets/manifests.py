"""Cluster-side objects the stage hands to the control plane, and the script that applies them.

    /etc/k8s/bootstrap/kubelet-api-admin.yaml     the API server's kubelet client -> system:kubelet-api-admin
    /etc/k8s/bootstrap/tls-bootstrap-rbac.yaml    the three TLS bootstrap ClusterRoleBindings  (tls-bootstrap)
    /etc/k8s/bootstrap/cluster-info.yaml          kube-public/cluster-info + anonymous read     (tls-bootstrap)
    /etc/k8s/bootstrap/bootstrap-token-<node>.yaml  one bootstrap-token Secret per kubelet node (tls-bootstrap)
    /etc/k8s/bootstrap/coredns.yaml               cluster DNS: CoreDNS on the workers, Service kube-dns
    /etc/k8s/bootstrap/apply.sh                   `kubectl apply` of the above, on one control-plane node
    /etc/k8s/bootstrap/smoke-test.sh              checks the running cluster end to end (with workers)

Objects are built as Python data and dumped with yaml.safe_dump, so no value can
break the syntax. The directory belongs to this stage: files it no longer produces
(a replaced credential mode, a removed node) are deleted from it.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml

from kthw import templating
from kthw.errors import KthwError, StateError
from kthw.fsutil import PUBLIC_MODE, SECRET_MODE, atomic_write
from kthw.inventory import Inventory, url_host
from kthw.pki.catalogue import LOCAL_APISERVER_URL, leaf
from kthw.pki.node_paths import ETCD_CLIENT_PORT, PATHS
from kthw.secrets.tokens import BootstrapToken, kubelet_nodes
from kthw.secrets.tokens import require as require_token
from kthw.supply.pins import ImagePin
from kthw.vendor.fetch import images as pinned_images

BOOTSTRAP_DIR = "/etc/k8s/bootstrap"
APPLY_SCRIPT = "apply.sh"
APPLY_TEMPLATE = "bootstrap/apply.sh.j2"
SMOKE_SCRIPT = "smoke-test.sh"
SMOKE_TEMPLATE = "bootstrap/smoke-test.sh.j2"
SMOKE_NAMESPACE = "kthw-smoke"
SCRIPT_MODE = 0o755
ADMIN_KUBECONFIG = PATHS["admin_kubeconfig"]

RBAC = "rbac.authorization.k8s.io"
BOOTSTRAPPERS = "system:bootstrappers"
# The user kube-apiserver presents to kubelets: the CN of its kubelet-client cert.
APISERVER_KUBELET_CLIENT = leaf("apiserver-kubelet-client").common_name


def _cluster_role_binding(name: str, role: str, kind: str, subject: str) -> dict:
    return {"apiVersion": f"{RBAC}/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
            "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": RBAC, "kind": kind, "name": subject}]}


def kubelet_api_admin_binding() -> dict:
    return _cluster_role_binding("kthw:apiserver-kubelet-api-admin", "system:kubelet-api-admin", "User",
                                 APISERVER_KUBELET_CLIENT)


def tls_bootstrap_bindings() -> list[dict]:
    return [
        # Bootstrap tokens may create CSRs ...
        _cluster_role_binding("kthw:kubelet-bootstrap", "system:node-bootstrapper", "Group", BOOTSTRAPPERS),
        # ... whose first client cert is approved automatically ...
        _cluster_role_binding("kthw:node-autoapprove-bootstrap",
                              "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
                              "Group", BOOTSTRAPPERS),
        # ... and so are the renewals kubelets ask for with their own cert.
        _cluster_role_binding("kthw:node-autoapprove-certificate-rotation",
                              "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
                              "Group", "system:nodes"),
    ]


def cluster_info(server: str, ca_pem: bytes) -> list[dict]:
    """The public cluster-info ConfigMap (cluster entry only) and anonymous read access to it."""
    kubeconfig = {"apiVersion": "v1", "kind": "Config", "clusters": [
        {"name": "", "cluster": {"certificate-authority-data": base64.b64encode(ca_pem).decode("ascii"),
                                 "server": server}}]}
    name, namespace = "kthw:bootstrap-signer-clusterinfo", "kube-public"
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cluster-info", "namespace": namespace},
         "data": {"kubeconfig": yaml.safe_dump(kubeconfig, sort_keys=False)}},
        {"apiVersion": f"{RBAC}/v1", "kind": "Role", "metadata": {"name": name, "namespace": namespace},
         "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["cluster-info"],
                    "verbs": ["get"]}]},
        {"apiVersion": f"{RBAC}/v1", "kind": "RoleBinding", "metadata": {"name": name, "namespace": namespace},
         "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": name},
         "subjects": [{"apiGroup": RBAC, "kind": "User", "name": "system:anonymous"}]},
    ]


def node_group(node: str) -> str:
    """The extra group a node's token authenticates with, for audit logs. Bootstrap groups
    allow only [a-z0-9:-], so dots in a node name become dashes."""
    return f"{BOOTSTRAPPERS}:kthw:{node.replace('.', '-')}"


def token_secret(token: BootstrapToken) -> dict:
    return {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": f"bootstrap-token-{token.token_id}", "namespace": "kube-system"},
        "type": "bootstrap.kubernetes.io/token",
        "stringData": {
            "description": f"kubelet TLS bootstrap token of {token.node} (kthw-airgap)",
            "token-id": token.token_id,
            "token-secret": token.token_secret,
            "expiration": token.expiration_rfc3339,
            "usage-bootstrap-authentication": "true",
            "usage-bootstrap-signing": "true",
            "auth-extra-groups": node_group(token.node),
        },
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (cluster-info's kubeconfig) as readable literal blocks."""


_Dumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def _dump(objects: list[dict]) -> bytes:
    return ("# Generated by kthw-airgap (doit secrets); applied by apply.sh in this directory.\n"
            + yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, explicit_start=True)).encode()


# --- cluster DNS ----------------------------------------------------------------------------

COREDNS_LABELS = {"k8s-app": "kube-dns"}
# kubeadm's requests and limits for CoreDNS.
COREDNS_RESOURCES = {"requests": {"cpu": "100m", "memory": "70Mi"}, "limits": {"memory": "170Mi"}}


def corefile(cluster_domain: str) -> str:
    """Serves the cluster domain from the API, forwards the rest to the node's resolver
    (dnsPolicy: Default: the kubelet's resolvConf; on an air-gapped site, the site's DNS)."""
    return (".:53 {\n"
            "    errors\n"
            "    health {\n        lameduck 5s\n    }\n"
            "    ready\n"
            f"    kubernetes {cluster_domain} in-addr.arpa ip6.arpa {{\n"
            "        pods insecure\n        fallthrough in-addr.arpa ip6.arpa\n        ttl 30\n    }\n"
            "    prometheus :9153\n"
            "    forward . /etc/resolv.conf {\n        max_concurrent 1000\n    }\n"
            f"    cache 30 {{\n        disable success {cluster_domain}\n"
            f"        disable denial {cluster_domain}\n    }}\n"
            "    loop\n    reload\n    loadbalance\n"
            "}\n")


def coredns_replicas(workers: int) -> int:
    """Two where two workers can run them (one survives a node going down), else one."""
    return max(1, min(2, workers))


def coredns(inv: Inventory, image: ImagePin) -> list[dict]:
    """ServiceAccount, ClusterRole and binding, Corefile, Deployment and Service kube-dns, as
    kubeadm deploys CoreDNS, with the vendored image named by its pinned digest: a kubelet
    then finds it among the images install.sh imported, and never pulls."""
    namespace, name = "kube-system", "coredns"
    meta = {"name": name, "namespace": namespace, "labels": dict(COREDNS_LABELS)}
    probe: dict[str, Any] = {"httpGet": {"scheme": "HTTP"}, "timeoutSeconds": 5, "successThreshold": 1}
    container = {
        "name": name,
        "image": f"{image.reference}@{image.digest}",
        "imagePullPolicy": "IfNotPresent",
        "args": ["-conf", "/etc/coredns/Corefile"],
        "resources": COREDNS_RESOURCES,
        "volumeMounts": [{"name": "config-volume", "mountPath": "/etc/coredns", "readOnly": True}],
        "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"},
                  {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": 9153, "protocol": "TCP"}],
        "livenessProbe": {**probe, "httpGet": {**probe["httpGet"], "path": "/health", "port": 8080},
                          "initialDelaySeconds": 60, "failureThreshold": 5},
        "readinessProbe": {**probe, "httpGet": {**probe["httpGet"], "path": "/ready", "port": 8181}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]}},
    }
    spread = {"weight": 100, "podAffinityTerm": {
        "labelSelector": {"matchExpressions": [{"key": "k8s-app", "operator": "In", "values": ["kube-dns"]}]},
        "topologyKey": "kubernetes.io/hostname"}}
    pod = {
        "priorityClassName": "system-cluster-critical",
        "serviceAccountName": name,
        "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"},
                        {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}],
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [spread]}},
        "containers": [container],
        "dnsPolicy": "Default",
        "volumes": [{"name": "config-volume", "configMap": {"name": name, "items": [
            {"key": "Corefile", "path": "Corefile"}]}}],
    }
    rules = [{"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
              "verbs": ["list", "watch"]},
             {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}]
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}},
        {"apiVersion": f"{RBAC}/v1", "kind": "ClusterRole", "metadata": {"name": "system:coredns"}, "rules": rules},
        {"apiVersion": f"{RBAC}/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "system:coredns"},
         "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "system:coredns"},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace},
         "data": {"Corefile": corefile(inv.cluster_domain)}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {
            "replicas": coredns_replicas(len(inv.worker_nodes)),
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "selector": {"matchLabels": dict(COREDNS_LABELS)},
            "template": {"metadata": {"labels": dict(COREDNS_LABELS)}, "spec": pod}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {
            "name": "kube-dns", "namespace": namespace,
            "labels": {**COREDNS_LABELS, "kubernetes.io/name": "CoreDNS"},
            "annotations": {"prometheus.io/port": "9153", "prometheus.io/scrape": "true"}},
         "spec": {"selector": dict(COREDNS_LABELS), "clusterIP": str(inv.cluster_dns_ip), "ports": [
             {"name": "dns", "port": 53, "protocol": "UDP"},
             {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
             {"name": "metrics", "port": 9153, "protocol": "TCP"}]}},
    ]


KUBELET_API_ADMIN_FILE = "kubelet-api-admin.yaml"
TLS_BOOTSTRAP_RBAC_FILE = "tls-bootstrap-rbac.yaml"
CLUSTER_INFO_FILE = "cluster-info.yaml"
COREDNS_FILE = "coredns.yaml"


def token_file(node: str) -> str:
    return f"bootstrap-token-{node}.yaml"


def manifest_names(inv: Inventory) -> list[str]:
    """Which manifest files the control plane gets, in the order they are applied."""
    names = [KUBELET_API_ADMIN_FILE]
    if inv.kubelet_credentials == "tls-bootstrap":
        names += [TLS_BOOTSTRAP_RBAC_FILE, CLUSTER_INFO_FILE]
        names += [token_file(node.name) for node in kubelet_nodes(inv)]
    if inv.worker_nodes:  # CoreDNS runs on the workers
        names.append(COREDNS_FILE)
    return names


def manifests(inv: Inventory, tokens: list[BootstrapToken], ca_pem: bytes,
              coredns_image: ImagePin | None) -> dict[str, tuple[bytes, int]]:
    """File name -> (bytes, mode), in the order they are applied. ``coredns_image``: the
    pinned CoreDNS image, needed when the inventory has workers."""
    def coredns_manifest() -> list[dict]:
        if coredns_image is None:
            raise ValueError("the inventory has workers, so CoreDNS runs: its pinned image is needed")
        return coredns(inv, coredns_image)

    shared = {KUBELET_API_ADMIN_FILE: lambda: [kubelet_api_admin_binding()],
              TLS_BOOTSTRAP_RBAC_FILE: tls_bootstrap_bindings,
              CLUSTER_INFO_FILE: lambda: cluster_info(inv.api_endpoint.url, ca_pem),
              COREDNS_FILE: coredns_manifest}
    secrets = {token_file(token.node): token for token in tokens}
    files = {}
    for name in manifest_names(inv):
        if name in shared:
            files[name] = (_dump(shared[name]()), PUBLIC_MODE)
        else:
            files[name] = (_dump([token_secret(secrets[name])]), SECRET_MODE)
    return files


def _script(name: str, template: str, context: dict, templates: Path | None) -> bytes:
    try:
        return templating.render(template, {"admin_kubeconfig": ADMIN_KUBECONFIG, "server": LOCAL_APISERVER_URL,
                                            **context}, templates).encode()
    except KthwError as err:
        raise KthwError(f"control-plane: {BOOTSTRAP_DIR}/{name}: {err}") from None


def apply_script(names: list[str], templates: Path | None = None) -> bytes:
    return _script(APPLY_SCRIPT, APPLY_TEMPLATE, {"manifests": names}, templates)


def smoke_script(inv: Inventory, coredns_image: ImagePin, templates: Path | None = None) -> bytes:
    """The end-to-end check of a running cluster; it runs the CoreDNS image as its test pods."""
    return _script(SMOKE_SCRIPT, SMOKE_TEMPLATE, {
        "workers": [node.name for node in inv.worker_nodes],
        "image": f"{coredns_image.reference}@{coredns_image.digest}",
        "domain": inv.cluster_domain, "dns_ip": str(inv.cluster_dns_ip),
        "api_service_ip": str(inv.kubernetes_service_ip), "provider": inv.encryption_provider,
        "namespace": SMOKE_NAMESPACE,
        "etcd_endpoints": ",".join(f"https://{url_host(node.ip)}:{ETCD_CLIENT_PORT}" for node in inv.etcd_nodes),
        "etcd_ca": PATHS["etcd_ca"], "etcd_cert": PATHS["apiserver_etcd_client_cert"],
        "etcd_key": PATHS["apiserver_etcd_client_key"], "etcdctl": f"{PATHS['bin']}/etcdctl"}, templates)


def read_tokens(token_paths: dict[str, Path]) -> list[BootstrapToken]:
    tokens: list[BootstrapToken] = []
    for node, path in token_paths.items():
        token = require_token(path, node)
        for other in tokens:
            if other.token_id == token.token_id:
                raise StateError(f"{path} and the token file of {other.node} hold the same token id "
                                 f"{token.token_id}; delete one of them and run `doit secrets` to issue a new one")
        tokens.append(token)
    return tokens


def write_bootstrap_dir(directory: Path, inv: Inventory, token_paths: dict[str, Path], ca_cert: Path) -> None:
    """Write the manifests and apply.sh into one control-plane node's bootstrap directory.

    Files an earlier inventory put there (a removed node's token Secret) are the secrets
    stage's per-node stale task's to remove, like every other file this stage wrote.
    """
    image = pinned_images(inv)["coredns"] if inv.worker_nodes else None
    files = manifests(inv, read_tokens(token_paths), Path(ca_cert).read_bytes(), image)
    files[APPLY_SCRIPT] = (apply_script(list(files)), SCRIPT_MODE)
    if image is not None:
        files[SMOKE_SCRIPT] = (smoke_script(inv, image), SCRIPT_MODE)
    for name, (data, mode) in files.items():
        atomic_write(directory / name, data, mode)


def bootstrap_files(inv: Inventory) -> list[str]:
    """The names of the files :func:`write_bootstrap_dir` writes."""
    scripts = [APPLY_SCRIPT, SMOKE_SCRIPT] if inv.worker_nodes else [APPLY_SCRIPT]
    return manifest_names(inv) + scripts


def bootstrap_targets(inv: Inventory, directory: Path) -> list[Path]:
    """The files :func:`write_bootstrap_dir` writes (doit's targets)."""
    return [directory / name for name in bootstrap_files(inv)]
