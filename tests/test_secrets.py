"""The secrets stage run through real doit, as an operator would: what each node gets,
what a rerun or `doit clean` keeps, key rotation phase by phase, token renewal with a
moved clock, and what a damaged precious file does."""

from __future__ import annotations

import base64
import re
import stat
import subprocess
from datetime import datetime, timedelta, timezone

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from support.bundles import stand_in_vendor
from support.project import Project, changed, fails_cleanly, loopback_inventory, system_clock_at
from support.tools import require, require_module

from kthw.errors import StateError
from kthw.secrets import encryption, tokens
from kthw.secrets.manifests import node_group

CONTROL_PLANES = ("cp1", "cp2", "cp3")
WORKERS = ("worker1", "worker2")
SA_KEY, SA_PUB = "etc/k8s/shared/sa.key", "etc/k8s/shared/sa.pub"
ENCRYPTION_CONFIG = "etc/k8s/kube-apiserver/encryption-config.yaml"
BOOTSTRAP_KUBECONFIG = "etc/k8s/kubelet/bootstrap-kubeconfig"
BOOTSTRAP_DIR = "etc/k8s/bootstrap"
TOKEN_RE = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")


def _state(project: Project, *parts: str):
    return project.root.joinpath("build", "state", *parts)


def _token_file(project: Project, node: str) -> dict:
    return yaml.safe_load(_state(project, "tokens", f"{node}.yaml").read_text())


def _encryption_keys(path) -> list[tuple[str, str, bytes]]:
    """(provider, key name, decoded key) in the order the API server tries them; identity must be last."""
    doc = yaml.safe_load(path.read_text())
    providers = doc["resources"][0]["providers"]
    assert providers[-1] == {"identity": {}}
    return [(provider, key["name"], base64.b64decode(key["secret"]))
            for entry in providers[:-1] for provider, settings in entry.items() for key in settings["keys"]]


def _build(project: Project, **inventory) -> None:
    project.write_inventory(loopback_inventory(**inventory))
    project.doit("pki", "secrets")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Project:
    project = Project(tmp_path_factory.mktemp("secrets"))
    _build(project)
    return project


def _manifest_objects(project: Project, node: str = "cp1") -> dict[str, list[dict]]:
    directory = project.node_file(node, BOOTSTRAP_DIR)
    return {path.name: list(yaml.safe_load_all(path.read_text())) for path in sorted(directory.glob("*.yaml"))}


# --- what each node gets --------------------------------------------------------------


@pytest.mark.slow
def test_control_planes_get_the_sa_key_pair_and_the_same_encryption_config(built):
    key = serialization.load_pem_private_key(_state(built, "sa.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)  # the inventory's ecdsa-p256
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    config = _state(built, "encryption", "encryption-config.yaml").read_bytes()
    for node in CONTROL_PLANES:
        assert built.node_file(node, SA_KEY).read_bytes() == _state(built, "sa.key").read_bytes()
        assert built.node_file(node, SA_PUB).read_bytes() == public
        assert built.node_file(node, ENCRYPTION_CONFIG).read_bytes() == config
        assert stat.S_IMODE(built.node_file(node, SA_KEY).stat().st_mode) == 0o600
        assert stat.S_IMODE(built.node_file(node, ENCRYPTION_CONFIG).stat().st_mode) == 0o600
    for path in (_state(built, "sa.key"), _state(built, "encryption", "encryption-config.yaml")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.slow
def test_no_worker_holds_the_sa_key_or_the_encryption_config(built):
    sa_key = _state(built, "sa.key").read_bytes()
    (_, _, key), = _encryption_keys(_state(built, "encryption", "encryption-config.yaml"))
    secret = base64.b64encode(key)
    for node in WORKERS:
        root = built.root / "build" / "nodes" / node
        for path in root.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert path.name not in ("sa.key", "encryption-config.yaml"), path
                assert sa_key not in data and secret not in data, path
        assert not (root / BOOTSTRAP_DIR).exists()


@pytest.mark.slow
@pytest.mark.parametrize("provider", ["secretbox", "aesgcm", "aescbc"])
def test_the_encryption_key_has_the_providers_length_and_identity_comes_last(tmp_path, provider):
    project = Project(tmp_path)
    _build(project, extra=f"encryption_provider: {provider}", workers=1)
    keys = _encryption_keys(project.node_file("cp2", ENCRYPTION_CONFIG))
    assert [(p, name) for p, name, _ in keys] == [(provider, "key1")]
    assert len(keys[0][2]) == 32  # secretbox and aescbc need 32 bytes; aesgcm takes 16/24/32, we make 32
    doc = yaml.safe_load(project.node_file("cp2", ENCRYPTION_CONFIG).read_text())
    assert doc["apiVersion"] == "apiserver.config.k8s.io/v1" and doc["kind"] == "EncryptionConfiguration"
    assert doc["resources"][0]["resources"] == ["secrets"]


@pytest.mark.slow
def test_each_worker_gets_a_bootstrap_kubeconfig_with_its_own_token(built):
    ca = built.node_file("cp1", "etc/k8s/shared/kubernetes-ca.crt").read_bytes()
    seen = set()
    for node in WORKERS:
        path = built.node_file(node, BOOTSTRAP_KUBECONFIG)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        config = yaml.safe_load(path.read_text())
        cluster = config["clusters"][0]["cluster"]
        assert cluster["server"] == "https://localhost:6443"  # the inventory's api_endpoint
        assert base64.b64decode(cluster["certificate-authority-data"]) == ca  # the kubernetes intermediate
        token = config["users"][0]["user"]["token"]
        assert set(config["users"][0]["user"]) == {"token"}  # no pre-issued client key
        assert TOKEN_RE.match(token) and token == _token_file(built, node)["token"]
        seen.add(token)
        # Its serving cert is still pre-issued, and there is no static kubelet kubeconfig.
        assert built.node_file(node, "etc/k8s/kubelet/kubelet-serving.crt").exists()
        assert not built.node_file(node, "etc/k8s/kubelet/kubeconfig").exists()
    assert len(seen) == len(WORKERS)


@pytest.mark.slow
def test_tokens_expire_after_the_inventory_ttl(tmp_path):
    project = Project(tmp_path)
    project.write_inventory(loopback_inventory(workers=1, extra="bootstrap_token_ttl: 5d"))
    project.doit("pki", "secrets", env=system_clock_at(datetime(2031, 3, 1, 8, 0, tzinfo=timezone.utc)))
    assert _token_file(project, "worker1")["expiration"] == "2031-03-06T08:00:00Z"


# --- the manifests ----------------------------------------------------------------------

RBAC = "rbac.authorization.k8s.io"


def _binding(name, role, kind, subject):
    return {"apiVersion": f"{RBAC}/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
            "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": RBAC, "kind": kind, "name": subject}]}


@pytest.mark.slow
def test_manifests_have_the_objects_and_fields_of_tls_bootstrap(built):
    files = _manifest_objects(built)
    assert set(files) == {"kubelet-api-admin.yaml", "tls-bootstrap-rbac.yaml", "cluster-info.yaml", "coredns.yaml",
                          "bootstrap-token-worker1.yaml", "bootstrap-token-worker2.yaml"}
    assert files["kubelet-api-admin.yaml"] == [_binding(
        "kthw:apiserver-kubelet-api-admin", "system:kubelet-api-admin", "User", "kube-apiserver-kubelet-client")]
    assert files["tls-bootstrap-rbac.yaml"] == [
        _binding("kthw:kubelet-bootstrap", "system:node-bootstrapper", "Group", "system:bootstrappers"),
        _binding("kthw:node-autoapprove-bootstrap", "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
                 "Group", "system:bootstrappers"),
        _binding("kthw:node-autoapprove-certificate-rotation",
                 "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient", "Group", "system:nodes"),
    ]
    config_map, role, role_binding = files["cluster-info.yaml"]
    assert (config_map["apiVersion"], config_map["kind"], config_map["metadata"]) == (
        "v1", "ConfigMap", {"name": "cluster-info", "namespace": "kube-public"})
    kubeconfig = yaml.safe_load(config_map["data"]["kubeconfig"])
    assert set(kubeconfig) == {"apiVersion", "kind", "clusters"}  # the cluster entry only: no user, no secret
    cluster = kubeconfig["clusters"][0]["cluster"]
    assert cluster["server"] == "https://localhost:6443"
    assert base64.b64decode(cluster["certificate-authority-data"]) == \
        built.node_file("cp1", "etc/k8s/shared/kubernetes-ca.crt").read_bytes()
    assert role["kind"] == "Role" and role["metadata"]["namespace"] == "kube-public"
    assert role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["cluster-info"],
                              "verbs": ["get"]}]
    assert role_binding["kind"] == "RoleBinding" and role_binding["metadata"] == role["metadata"]
    assert role_binding["roleRef"] == {"apiGroup": RBAC, "kind": "Role", "name": role["metadata"]["name"]}
    assert role_binding["subjects"] == [{"apiGroup": RBAC, "kind": "User", "name": "system:anonymous"}]

    for node in WORKERS:
        recorded = _token_file(built, node)
        token_id, token_secret = recorded["token"].split(".")
        secret, = files[f"bootstrap-token-{node}.yaml"]
        assert (secret["apiVersion"], secret["kind"], secret["type"]) == ("v1", "Secret",
                                                                          "bootstrap.kubernetes.io/token")
        assert secret["metadata"] == {"name": f"bootstrap-token-{token_id}", "namespace": "kube-system"}
        data = secret["stringData"]
        assert data["token-id"] == token_id and data["token-secret"] == token_secret
        assert data["expiration"] == recorded["expiration"]  # the recorded expiration, RFC 3339
        datetime.strptime(data["expiration"], "%Y-%m-%dT%H:%M:%SZ")
        assert data["usage-bootstrap-authentication"] == "true" and data["usage-bootstrap-signing"] == "true"
        assert data["auth-extra-groups"] == f"system:bootstrappers:kthw:{node}"
        assert set(data) == {"token-id", "token-secret", "expiration", "usage-bootstrap-authentication",
                             "usage-bootstrap-signing", "auth-extra-groups", "description"}
        assert stat.S_IMODE(built.node_file("cp1", f"{BOOTSTRAP_DIR}/bootstrap-token-{node}.yaml").stat().st_mode) \
            == 0o600


@pytest.mark.slow
def test_every_manifest_validates_strictly_against_the_kubernetes_schemas(built):
    # The schemas published for the inventory's Kubernetes minor (kubernetes-validate ships
    # them); strict: an unknown or misplaced field fails. kubectl's own check needs an API
    # server and runs in test_secrets_kubectl.py against a stand-in.
    kubernetes_validate = require_module("kubernetes_validate")
    version = ".".join(yaml.safe_load(built.inventory.read_text())["kubernetes_version"].split(".")[:2])
    count = 0
    for objects in _manifest_objects(built).values():
        for obj in objects:
            kubernetes_validate.validate(obj, version, strict=True)
            count += 1
    assert count == 1 + 3 + 3 + len(WORKERS) + 6  # CoreDNS: account, role, binding, Corefile, Deployment, Service


@pytest.mark.slow
def test_every_control_plane_gets_the_same_manifests_and_apply_script(built):
    reference = {p.name: p.read_bytes() for p in built.node_file("cp1", BOOTSTRAP_DIR).iterdir()}
    assert "apply.sh" in reference
    for node in CONTROL_PLANES[1:]:
        assert {p.name: p.read_bytes() for p in built.node_file(node, BOOTSTRAP_DIR).iterdir()} == reference


@pytest.mark.slow
def test_apply_script_is_strict_bash_and_shellcheck_clean(built):
    script = built.node_file("cp1", f"{BOOTSTRAP_DIR}/apply.sh")
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    assert "/etc/k8s/shared/admin.kubeconfig" in text and "https://127.0.0.1:6443" in text
    subprocess.run(["bash", "-n", str(script)], check=True)
    result = subprocess.run([require("shellcheck"), "--severity=style", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.slow
def test_static_kubelet_credentials_make_no_tokens_and_only_the_kubelet_api_admin_binding(tmp_path):
    project = Project(tmp_path)
    _build(project, kubelet_credentials="static")
    assert set(_manifest_objects(project)) == {"kubelet-api-admin.yaml", "coredns.yaml"}
    assert not _state(project, "tokens").exists()
    for node in WORKERS:
        assert not project.node_file(node, BOOTSTRAP_KUBECONFIG).exists()
        assert project.node_file(node, "etc/k8s/kubelet/kubeconfig").exists()  # made by the pki stage
    script = project.node_file("cp1", f"{BOOTSTRAP_DIR}/apply.sh").read_text()
    assert "kubelet-api-admin.yaml" in script and "bootstrap-token" not in script


@pytest.mark.slow
def test_a_node_that_loses_a_role_or_its_token_loses_the_files(tmp_path):
    project = Project(tmp_path)
    _build(project)
    text = project.inventory.read_text()
    # cp3 stops being a control plane; the kubelets switch to static client certs.
    project.write_inventory(text.replace("{name: cp3, roles: [control-plane, etcd]", "{name: cp3, roles: [etcd]")
                            .replace("kubelet_credentials: tls-bootstrap", "kubelet_credentials: static"))
    run = project.doit("pki", "secrets")
    assert "secrets:cp3/stale" in run.executed
    cp3 = project.root / "build" / "nodes" / "cp3"
    leftovers = [p.name for p in cp3.rglob("*") if p.is_file()
                 and p.name in ("sa.key", "sa.pub", "encryption-config.yaml", "apply.sh")]
    assert leftovers == [] and not list(project.node_file("cp3", BOOTSTRAP_DIR).glob("*"))
    for node in WORKERS:
        assert not project.node_file(node, BOOTSTRAP_KUBECONFIG).exists()
    assert set(_manifest_objects(project, "cp1")) == {"kubelet-api-admin.yaml", "coredns.yaml"}
    assert project.node_file("cp1", SA_KEY).exists()
    assert project.doit("pki", "secrets").executed == []


# --- reruns, clean, rotation, renewal ----------------------------------------------------


def _precious(project: Project) -> dict[str, bytes]:
    return {str(p.relative_to(project.root)): p.read_bytes()
            for p in (project.root / "build" / "state").rglob("*") if p.is_file()}


def _secret_outputs(project: Project) -> dict[str, bytes]:
    paths = [project.node_file(n, p) for n in CONTROL_PLANES for p in (SA_KEY, SA_PUB, ENCRYPTION_CONFIG)]
    paths += [project.node_file(n, BOOTSTRAP_KUBECONFIG) for n in WORKERS]
    paths += sorted(project.node_file("cp1", BOOTSTRAP_DIR).iterdir())
    return {str(p.relative_to(project.root)): p.read_bytes() for p in paths}


@pytest.mark.slow
def test_a_rerun_changes_nothing_and_clean_keeps_every_precious_byte(tmp_path):
    project = Project(tmp_path)
    _build(project)
    precious, outputs, before = _precious(project), _secret_outputs(project), project.snapshot()
    assert {"build/state/sa.key", "build/state/sa.pub", "build/state/encryption/encryption-config.yaml",
            "build/state/tokens/worker1.yaml", "build/state/tokens/worker2.yaml"} <= set(precious)

    rerun = project.doit("pki", "secrets")
    assert rerun.executed == [] and rerun.stdout == ""
    assert project.snapshot() == before  # same bytes and same mtimes

    project.doit("clean")
    assert _precious(project) == precious
    assert not project.node_file("cp1", SA_KEY).exists()
    assert not project.node_file("worker1", BOOTSTRAP_KUBECONFIG).exists()
    assert not project.node_file("cp1", BOOTSTRAP_DIR + "/apply.sh").exists()

    rebuilt = project.doit("pki", "secrets")
    assert not any(name.startswith(("secrets:sa-keypair", "secrets:encryption-config", "secrets:bootstrap-token"))
                   for name in rebuilt.executed)
    assert _precious(project) == precious
    assert _secret_outputs(project) == outputs


@pytest.mark.slow
def test_a_lost_encryption_config_after_a_rotation_is_not_replaced(tmp_path):
    """The rotation record proves keys existed: new ones would leave every Secret unreadable."""
    project = Project(tmp_path)
    _build(project)
    for args in ((), (), ("secrets_rewritten=yes",)):
        project.doit("rotate_encryption_key", *args)
    config = _state(project, "encryption", "encryption-config.yaml")
    config.unlink()
    fails_cleanly(project.doit("secrets", check=False), "encryption-config.yaml is missing",
                  "old-key-removed", "none is made", "Restore it from a backup")
    assert not config.exists()


@pytest.mark.slow
def test_rotation_walks_three_phases_and_each_run_between_rebuilds_only_control_planes(tmp_path):
    project = Project(tmp_path)
    _build(project)
    stand_in_vendor(project.root, project.inventory)  # as after `doit vendor`, so bundles build too
    project.doit()  # every default stage, so that a rebuild elsewhere would show
    config = _state(project, "encryption", "encryption-config.yaml")
    (_, _, key1), = _encryption_keys(config)
    cp_config = {node: f"build/nodes/{node}/{ENCRYPTION_CONFIG}" for node in CONTROL_PLANES}

    def phase(*args, expect):
        before = project.snapshot()
        run = project.doit("rotate_encryption_key", *args)
        assert [(p, name) for p, name, _ in _encryption_keys(config)] == expect
        # The rotation task itself only records the phase; the next `doit` installs it.
        assert changed(before, project.snapshot()) <= {"build/state/encryption/encryption-config.yaml",
                                                        "build/state/encryption/rotation.yaml"}
        before = project.snapshot()
        rebuild = project.doit()
        assert sorted(rebuild.executed) == sorted([f"secrets:{n}/encryption-config" for n in CONTROL_PLANES]
                                                  + [f"bundle:{n}" for n in CONTROL_PLANES])
        assert changed(before, project.snapshot()) == set(cp_config.values())
        for node in CONTROL_PLANES:
            assert project.node_file(node, ENCRYPTION_CONFIG).read_bytes() == config.read_bytes()
        return run

    first = phase(expect=[("secretbox", "key1"), ("secretbox", "key2")])
    assert "phase 1 of 3" in first.stdout and "restart every kube-apiserver" in first.stdout
    assert yaml.safe_load(_state(project, "encryption", "rotation.yaml").read_text())["phase"] == "new-key-added"
    keys = _encryption_keys(config)
    assert keys[0][2] == key1 and len(keys[1][2]) == 32 and keys[1][2] != key1

    second = phase(expect=[("secretbox", "key2"), ("secretbox", "key1")])
    assert "kubectl --kubeconfig /etc/k8s/shared/admin.kubeconfig get secrets --all-namespaces -o json" \
        in second.stdout and "replace -f -" in second.stdout
    assert yaml.safe_load(_state(project, "encryption", "rotation.yaml").read_text())["phase"] == "new-key-first"

    # Dropping the old key before the Secrets were rewritten is refused and changes nothing.
    before = config.read_bytes()
    refused = project.doit("rotate_encryption_key", check=False)
    assert refused.returncode != 0 and "secrets_rewritten=yes" in refused.stdout + refused.stderr
    assert "Traceback" not in refused.stdout + refused.stderr and config.read_bytes() == before

    third = phase("secrets_rewritten=yes", expect=[("secretbox", "key2")])
    assert "phase 3 of 3" in third.stdout and "complete" in third.stdout
    assert _encryption_keys(config)[0][2] == keys[1][2]
    assert project.doit().executed == []  # `doit` never rotates by itself


def test_the_rotation_task_is_not_a_default_task():
    from tasks import DOIT_CONFIG
    assert "secrets" in DOIT_CONFIG["default_tasks"]
    assert "rotate_encryption_key" not in DOIT_CONFIG["default_tasks"]


def _all_output_bytes(project: Project) -> bytes:
    roots = [project.root / "build" / "nodes", project.root / "bundles"]
    return b"\n".join(p.read_bytes() for root in roots if root.exists() for p in root.rglob("*") if p.is_file())


@pytest.mark.slow
def test_an_expired_token_is_replaced_everywhere_and_a_valid_one_never(tmp_path):
    project = Project(tmp_path)
    project.write_inventory(loopback_inventory())
    start = datetime(2031, 3, 1, 8, 0, tzinfo=timezone.utc)
    project.doit("pki", "secrets", env=system_clock_at(start))
    old = {node: _token_file(project, node) for node in WORKERS}
    assert old["worker1"]["expiration"] == "2031-03-15T08:00:00Z"  # default ttl: 14 days

    # Six days later the token still has eight days: outside the 7-day window, kept.
    kept = project.doit("pki", "secrets", env=system_clock_at(start + timedelta(days=6)))
    assert not [name for name in kept.executed if name.startswith("secrets:")]
    assert {node: _token_file(project, node) for node in WORKERS} == old

    # Past the expiration: a new token, and the old one is gone from every output.
    later = start + timedelta(days=14, seconds=1)
    renewed = project.doit("pki", "secrets", env=system_clock_at(later))
    assert "secrets:bootstrap-token-worker1" in renewed.executed
    outputs = _all_output_bytes(project)
    for node in WORKERS:
        new = _token_file(project, node)
        assert new["token"] != old[node]["token"] and TOKEN_RE.match(new["token"])
        assert new["expiration"] == "2031-03-29T08:00:01Z"
        old_id, old_secret = old[node]["token"].split(".")
        assert old_id.encode() not in outputs and old_secret.encode() not in outputs
        assert yaml.safe_load(project.node_file(node, BOOTSTRAP_KUBECONFIG).read_text())[
            "users"][0]["user"]["token"] == new["token"]
        for cp in CONTROL_PLANES:
            secret, = _manifest_objects(project, cp)[f"bootstrap-token-{node}.yaml"]
            assert secret["stringData"]["token-id"] == new["token"].split(".")[0]
            assert secret["stringData"]["expiration"] == new["expiration"]
    # Control planes' other secrets were not touched.
    assert not [name for name in renewed.executed if name.endswith(("/sa-keypair", "/encryption-config"))]


@pytest.mark.slow
def test_a_token_inside_the_renewal_window_is_replaced(tmp_path):
    project = Project(tmp_path)
    project.write_inventory(loopback_inventory(workers=1))
    start = datetime(2031, 3, 1, 8, 0, tzinfo=timezone.utc)
    project.doit("pki", "secrets", env=system_clock_at(start))
    old = _token_file(project, "worker1")["token"]
    run = project.doit("pki", "secrets", env=system_clock_at(start + timedelta(days=8)))
    assert "secrets:bootstrap-token-worker1" in run.executed
    assert _token_file(project, "worker1")["token"] != old


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.slow
def test_an_unknown_provider_in_the_inventory_is_refused(tmp_path):
    project = Project(tmp_path)
    project.write_inventory(loopback_inventory(extra="encryption_provider: aesgsm"))
    run = project.doit("secrets", check=False)
    fails_cleanly(run, "cluster.yaml", "encryption_provider", "did you mean 'aesgcm'")
    assert not (project.root / "build" / "state").exists()


@pytest.mark.slow
@pytest.mark.parametrize("damage, needles", [
    ("short-key", ["encryption-config.yaml", "24 bytes long; secretbox needs 32", "Restore it from a backup"]),
    ("unknown-provider", ["encryption-config.yaml", "unknown provider 'aesxyz'"]),
    ("identity-first", ["encryption-config.yaml", "must end with 'identity: {}'"]),
])
def test_a_damaged_encryption_config_stops_the_build_and_is_left_as_is(tmp_path, damage, needles):
    project = Project(tmp_path)
    _build(project, workers=1)
    path = _state(project, "encryption", "encryption-config.yaml")
    doc = yaml.safe_load(path.read_text())
    providers = doc["resources"][0]["providers"]
    if damage == "short-key":
        providers[0]["secretbox"]["keys"][0]["secret"] = base64.b64encode(b"k" * 24).decode()
    elif damage == "unknown-provider":
        providers[0] = {"aesxyz": providers[0]["secretbox"]}
    else:
        providers.reverse()
    path.write_text(yaml.safe_dump(doc))
    damaged = path.read_bytes()
    installed = project.node_file("cp1", ENCRYPTION_CONFIG).read_bytes()
    for args in (("secrets",), ("rotate_encryption_key",)):
        fails_cleanly(project.doit(*args, check=False), *needles)
        assert path.read_bytes() == damaged
    assert project.node_file("cp1", ENCRYPTION_CONFIG).read_bytes() == installed


@pytest.mark.slow
def test_a_corrupt_sa_key_stops_the_build_and_is_left_as_is(tmp_path):
    project = Project(tmp_path)
    _build(project, workers=1)
    path = _state(project, "sa.key")
    path.write_bytes(path.read_bytes()[:60] + b"garbage\n")
    damaged = path.read_bytes()
    run = project.doit("secrets", check=False)
    fails_cleanly(run, str(path), "Restore it from a backup", "delete it")
    assert path.read_bytes() == damaged


@pytest.mark.slow
@pytest.mark.parametrize("edit, needle", [
    (lambda text: text.replace("token: ", "token: X"), "does not have the form [a-z0-9]{6}.[a-z0-9]{16}"),
    (lambda text: re.sub(r"expiration: .*", "expiration: next tuesday", text), "not an RFC 3339 time"),
    (lambda text: text.replace("node: worker1", "node: worker2"), "is for node 'worker2'"),
    (lambda text: text + "extra: 1\n", "exactly the keys node, token and expiration"),
])
def test_a_hand_edited_token_file_stops_the_build_and_is_left_as_is(tmp_path, edit, needle):
    project = Project(tmp_path)
    _build(project, workers=1)
    path = _state(project, "tokens", "worker1.yaml")
    token_secret = _token_file(project, "worker1")["token"].split(".")[1]
    path.write_text(edit(path.read_text()))
    damaged = path.read_bytes()
    run = project.doit("secrets", check=False)
    fails_cleanly(run, str(path), needle, "delete it")
    assert token_secret not in run.stdout + run.stderr  # a secret is never echoed to the terminal
    assert path.read_bytes() == damaged


@pytest.mark.slow
def test_a_provider_change_keeps_the_key_warns_and_the_rotation_switches_it(tmp_path):
    project = Project(tmp_path)
    _build(project, workers=1)
    config = _state(project, "encryption", "encryption-config.yaml")
    before = config.read_bytes()
    project.write_inventory(loopback_inventory(workers=1, extra="encryption_provider: aesgcm"))
    run = project.doit("secrets")
    assert "warning: encryption_provider is aesgcm but secretbox key key1 encrypts" in run.stderr
    assert config.read_bytes() == before
    project.doit("rotate_encryption_key")
    assert [(p, n) for p, n, _ in _encryption_keys(config)] == [("secretbox", "key1"), ("aesgcm", "key2")]
    project.doit("rotate_encryption_key")
    project.doit("rotate_encryption_key", "secrets_rewritten=yes")
    assert [(p, n) for p, n, _ in _encryption_keys(config)] == [("aesgcm", "key2")]
    assert "warning" not in project.doit("secrets").stderr


# --- the library, directly ----------------------------------------------------------------


def test_generated_tokens_have_the_bootstrap_format_and_differ():
    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    made = [tokens.generate("n", now, timedelta(days=14)) for _ in range(50)]
    assert all(TOKEN_RE.match(t.token) for t in made)
    assert len({t.token for t in made}) == 50


def test_aesgcm_accepts_16_24_and_32_byte_keys_and_nothing_else(tmp_path):
    path = tmp_path / "encryption-config.yaml"
    for length, ok in ((16, True), (24, True), (32, True), (31, False), (64, False)):
        key = encryption.Key("aesgcm", "key1", base64.b64encode(b"x" * length).decode())
        data = encryption.EncryptionConfig((key,)).dumps()
        if ok:
            assert encryption.parse(data, path).keys == (key,)
        else:
            with pytest.raises(StateError, match=f"{length} bytes long; aesgcm needs 16 or 24 or 32"):
                encryption.parse(data, path)


def test_a_rsa_inventory_makes_an_rsa_sa_key(tmp_path):
    from kthw.secrets.state import ensure_sa_keypair, sa_keypair_current
    key, pub = tmp_path / "sa.key", tmp_path / "sa.pub"
    assert "new rsa-2048 key" in ensure_sa_keypair(key, pub, "rsa-2048")
    assert isinstance(serialization.load_pem_private_key(key.read_bytes(), None), rsa.RSAPrivateKey)
    assert sa_keypair_current(key, pub)
    pub.unlink()  # sa.pub is derived from the key: it comes back identical
    first = key.read_bytes()
    ensure_sa_keypair(key, pub, "ecdsa-p256")
    assert key.read_bytes() == first and sa_keypair_current(key, pub)


def test_bootstrap_groups_follow_the_allowed_pattern():
    pattern = re.compile(r"\Asystem:bootstrappers:[a-z0-9:-]{0,255}[a-z0-9]\Z")  # kube-apiserver's rule
    for node in ("worker1", "w-1.example.lan"):
        assert pattern.match(node_group(node))
