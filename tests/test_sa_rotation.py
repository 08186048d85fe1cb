"""The service-account key rotation run through real doit, as an operator would: three
runs of `doit rotate_sa_key`, each followed by a plain `doit`, and what the control planes'
units and key files say after each; what a damaged rotation file does.

Whether an API server accepts a token is shown with the signature check it makes: a
service-account token (a JWS) is valid when its signature verifies with the public key
in one of the files its --service-account-key-file flags name. No kube-apiserver binary
can run here, so tokens are signed with `cryptography` and checked against the very
files the rendered unit lists, read from the node's tree."""

from __future__ import annotations

import json
import re
import stat
from datetime import datetime, timezone

import pytest
import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from support.bundles import stand_in_vendor
from support.jwt import sign_jwt, unb64url
from support.project import Project, changed, fails_cleanly, loopback_inventory

from kthw.errors import KthwError, StateError
from kthw.render.node_files import unit_exec_start
from kthw.secrets import sa_rotation
from kthw.secrets.state import SecretsState

CONTROL_PLANES = ("cp1", "cp2", "cp3")
APISERVER_UNIT = "/etc/systemd/system/kube-apiserver.service"
CONTROLLER_MANAGER_UNIT = "/etc/systemd/system/kube-controller-manager.service"
SA_KEY, SA_PUB = "/etc/k8s/shared/sa.key", "/etc/k8s/shared/sa.pub"
SA_NEXT_PUB, SA_PREVIOUS_PUB = "/etc/k8s/shared/sa-next.pub", "/etc/k8s/shared/sa-previous.pub"
NOW = datetime(2031, 1, 1, tzinfo=timezone.utc)
CONTROL_PLANE_TASK = re.compile(r"^((secrets|render):cp[123]/|bundle:cp[123]$)")


# --- JWTs as the API server signs and checks them --------------------------------------------


def sign_token(key_pem: bytes, subject: str = "system:serviceaccount:default:app") -> str:
    claims = {"iss": "https://kubernetes.default.svc.cluster.local", "sub": subject,
              "aud": ["https://kubernetes.default.svc.cluster.local"], "iat": 1900000000, "exp": 1900003600}
    return sign_jwt(serialization.load_pem_private_key(key_pem, None), claims)


def verifies(token: str, pub_pem: bytes) -> bool:
    header, payload, signature = token.split(".")
    alg = json.loads(unb64url(header))["alg"]
    key, signing_input, raw = serialization.load_pem_public_key(pub_pem), f"{header}.{payload}".encode(), \
        unb64url(signature)
    try:
        if alg == "ES256" and isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")),
                       signing_input, ec.ECDSA(hashes.SHA256()))
        elif alg == "RS256" and isinstance(key, rsa.RSAPublicKey):
            key.verify(raw, signing_input, padding.PKCS1v15(), hashes.SHA256())
        else:
            return False
    except InvalidSignature:
        return False
    return True


# --- what the rendered units say ----------------------------------------------------------


def flag_values(project: Project, node: str, unit: str, flag: str) -> list[str]:
    words = unit_exec_start(project.node_file(node, unit).read_text())
    return [w.split("=", 1)[1] for w in words if w.startswith(flag + "=")]


def accepted_key_files(project: Project, node: str) -> list[str]:
    return flag_values(project, node, APISERVER_UNIT, "--service-account-key-file")


def accepted_by(project: Project, node: str, token: str) -> list[str]:
    """The --service-account-key-file paths whose key (the node's copy) verifies the token."""
    return [path for path in accepted_key_files(project, node)
            if verifies(token, project.node_file(node, path).read_bytes())]


def signing_key_bytes(project: Project, node: str) -> bytes:
    """The private key both signers use on the node (API server and controller-manager name one file)."""
    apiserver, = flag_values(project, node, APISERVER_UNIT, "--service-account-signing-key-file")
    controller_manager, = flag_values(project, node, CONTROLLER_MANAGER_UNIT, "--service-account-private-key-file")
    assert apiserver == controller_manager == SA_KEY
    path = project.node_file(node, apiserver)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return path.read_bytes()


def _pub(key_pem: bytes) -> bytes:
    return serialization.load_pem_private_key(key_pem, None).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _state(project: Project, name: str):
    return project.root / "build" / "state" / name


# --- the three phases ---------------------------------------------------------------------


@pytest.mark.slow
def test_three_runs_rotate_the_key_without_a_moment_where_a_valid_token_is_refused(tmp_path):
    project = Project(tmp_path)
    project.write_inventory(loopback_inventory())
    stand_in_vendor(project.root, project.inventory)  # as after `doit vendor`, so bundles build too
    project.doit()  # every default stage: a rebuild of anything else would show below
    old_key = _state(project, "sa.key").read_bytes()
    old_token = sign_token(old_key)
    assert all(accepted_key_files(project, n) == [SA_PUB] for n in CONTROL_PLANES)

    def phase(*args):
        """One rotation run, then the `doit` that brings the nodes' files in line."""
        before = project.snapshot()
        run = project.doit("rotate_sa_key", *args)
        # The rotation only changes the precious state; the nodes' files wait for `doit`.
        assert changed(before, project.snapshot()) <= {
            f"build/state/{name}" for name in ("sa.key", "sa.pub", "sa-next.key", "sa-next.pub", "sa-previous.pub",
                                               "sa-rotation.yaml")}
        before = project.snapshot()
        rebuild = project.doit()
        assert rebuild.executed and all(CONTROL_PLANE_TASK.match(t) for t in rebuild.executed), rebuild.executed
        assert {f"render:{n}/kube-apiserver.service" for n in CONTROL_PLANES} <= set(rebuild.executed)
        rewritten = changed(before, project.snapshot())
        assert rewritten and all(p.startswith(tuple(f"build/nodes/{n}/" for n in CONTROL_PLANES)) for p in rewritten)
        for node in CONTROL_PLANES:
            # Every key file a unit names is in the node's tree (nothing dangles).
            for path in [*accepted_key_files(project, node), SA_KEY]:
                assert project.node_file(node, path).is_file(), (node, path)
        return run

    # 1. add: the new key is accepted everywhere, the old one still signs.
    first = phase()
    assert "phase 1 of 3 (add)" in first.stdout and "restart every kube-apiserver" in first.stdout
    new_key = _state(project, "sa-next.key").read_bytes()
    assert new_key != old_key and _state(project, "sa.key").read_bytes() == old_key
    assert stat.S_IMODE(_state(project, "sa-next.key").stat().st_mode) == 0o600
    new_token = sign_token(new_key)
    for node in CONTROL_PLANES:
        assert accepted_key_files(project, node) == [SA_PUB, SA_NEXT_PUB]
        assert signing_key_bytes(project, node) == old_key
        assert project.node_file(node, SA_NEXT_PUB).read_bytes() == _pub(new_key)
        assert not project.node_file(node, "/etc/k8s/shared/sa-next.key").exists()  # only its public half
        assert accepted_by(project, node, old_token) == [SA_PUB]
        assert accepted_by(project, node, new_token) == [SA_NEXT_PUB]
    for worker in ("worker1", "worker2"):
        assert not list((project.root / "build" / "nodes" / worker).rglob("sa*"))

    # 2. promote: the new key signs; tokens the old key signed are still accepted.
    second = phase()
    assert "phase 2 of 3 (promote)" in second.stdout
    assert "kube-controller-manager" in second.stdout and "old_tokens_gone=yes" in second.stdout
    assert "--service-account-max-token-expiration" in second.stdout
    assert _state(project, "sa.key").read_bytes() == new_key  # the very key of phase 1, not a new one
    assert not _state(project, "sa-next.key").exists()
    for node in CONTROL_PLANES:
        assert accepted_key_files(project, node) == [SA_PUB, SA_PREVIOUS_PUB]
        assert signing_key_bytes(project, node) == new_key
        assert project.node_file(node, SA_PREVIOUS_PUB).read_bytes() == _pub(old_key)
        assert not project.node_file(node, SA_NEXT_PUB).exists()
        assert accepted_by(project, node, old_token) == [SA_PREVIOUS_PUB]
        assert accepted_by(project, node, new_token) == [SA_PUB]

    # Dropping the old key before its tokens are gone is refused and changes nothing.
    before = project.snapshot()
    fails_cleanly(project.doit("rotate_sa_key", check=False), "old_tokens_gone=yes", "not dropping")
    assert project.snapshot() == before

    # 3. drop: one key pair again, the new one.
    third = phase("old_tokens_gone=yes")
    assert "phase 3 of 3 (drop)" in third.stdout and "complete" in third.stdout
    assert _state(project, "sa.key").read_bytes() == new_key
    assert sorted(p.name for p in _state(project, "sa.key").parent.glob("sa*")) == [
        "sa-rotation.yaml", "sa.key", "sa.pub"]
    for node in CONTROL_PLANES:
        assert accepted_key_files(project, node) == [SA_PUB]
        assert signing_key_bytes(project, node) == new_key
        assert not project.node_file(node, SA_PREVIOUS_PUB).exists()
        assert accepted_by(project, node, old_token) == []
        assert accepted_by(project, node, new_token) == [SA_PUB]

    assert project.doit().executed == []  # `doit` never rotates by itself


def test_the_rotation_task_is_explicit():
    from tasks import DOIT_CONFIG
    assert "rotate_sa_key" not in DOIT_CONFIG["default_tasks"]


@pytest.mark.slow
def test_rotating_before_there_is_a_key_is_refused(tmp_path):
    project = Project(tmp_path)
    project.write_inventory(loopback_inventory(workers=1))
    fails_cleanly(project.doit("rotate_sa_key", check=False), "run `doit secrets` first")
    assert not _state(project, "sa.key").exists() and not _state(project, "sa-rotation.yaml").exists()


# --- damaged state ----------------------------------------------------------------------------


@pytest.fixture
def in_phase_add(tmp_path) -> Project:
    project = Project(tmp_path)
    project.write_inventory(loopback_inventory(workers=1))
    stand_in_vendor(project.root, project.inventory)
    project.doit()
    project.doit("rotate_sa_key")
    project.doit()
    return project


def _fingerprint_of(path) -> str:
    return sa_rotation.fingerprint(serialization.load_pem_private_key(path.read_bytes(), None))


@pytest.mark.slow
@pytest.mark.parametrize("damage, file, needles", [
    ("not-yaml", "sa-rotation.yaml", ["not valid YAML", "restore it from a backup"]),
    ("unknown-phase", "sa-rotation.yaml", ["not a rotation record", "restore it from a backup"]),
    ("wrong-fingerprint", "sa-rotation.yaml", ["sa-next.key holds key", "in which it holds the new key",
                                               "Restore build/state from a backup"]),
    ("corrupt-next-key", "sa-next.key", ["not a readable RSA or ECDSA private key", "start the rotation again"]),
    ("corrupt-signing-key", "sa.key", ["not a readable RSA or ECDSA private key", "Restore it from a backup"]),
])
def test_a_damaged_rotation_file_stops_every_task_and_is_left_as_is(in_phase_add, damage, file, needles):
    project = in_phase_add
    path = _state(project, file)
    text = path.read_text()
    if damage == "not-yaml":
        path.write_text(text + "phase: [\n")
    elif damage == "unknown-phase":
        path.write_text(text.replace("phase: add", "phase: promoted"))
    elif damage == "wrong-fingerprint":
        path.write_text(text.replace(_fingerprint_of(_state(project, "sa-next.key")), "sha256:" + "ab" * 32))
    else:
        path.write_text(text[:70] + "garbage\n" + text[70:])
    damaged = path.read_bytes()
    keys = {name: _state(project, name).read_bytes() for name in ("sa.key", "sa-next.key")}
    nodes = project.snapshot("build/nodes")
    for args in ((), ("secrets",), ("rotate_sa_key",), ("rotate_sa_key", "old_tokens_gone=yes")):
        fails_cleanly(project.doit(*args, check=False), str(path), *needles)
        assert path.read_bytes() == damaged
        assert {name: _state(project, name).read_bytes() for name in keys} == keys
    assert not _state(project, "sa-previous.pub").exists()
    assert project.snapshot("build/nodes") == nodes  # no node file changed, none removed


@pytest.mark.slow
def test_a_damaged_record_stops_the_api_server_unit_with_the_same_message(in_phase_add):
    project = in_phase_add
    record = _state(project, "sa-rotation.yaml")
    record.write_text("phase: sideways\n")
    run = project.doit("render:cp1/kube-apiserver.service", check=False)
    fails_cleanly(run, str(record), "not a rotation record")


@pytest.mark.slow
def test_a_lost_signing_key_during_a_rotation_is_not_replaced(in_phase_add):
    project = in_phase_add
    _state(project, "sa.key").unlink()
    for args in (("secrets",), ("rotate_sa_key",)):
        fails_cleanly(project.doit(*args, check=False), "sa.key is missing", "none is made",
                       "Restore it from a backup")
        assert not _state(project, "sa.key").exists()


@pytest.mark.slow
def test_a_lost_signing_key_before_any_rotation_is_not_replaced(tmp_path):
    """sa.pub is written only from sa.key: with it still there, the key was lost, not never made."""
    project = Project(tmp_path)
    project.write_inventory(loopback_inventory(workers=1))
    project.doit("pki", "secrets")
    _state(project, "sa.key").unlink()
    fails_cleanly(project.doit("secrets", check=False), "sa.key is missing", "sa.pub", "no new key is made",
                  "Restore sa.key from a backup")
    assert not _state(project, "sa.key").exists()
    _state(project, "sa.pub").unlink()  # the named way to start over
    project.doit("secrets")
    assert _state(project, "sa.key").exists()


@pytest.mark.slow
def test_a_lost_signing_key_after_a_finished_rotation_is_not_replaced(tmp_path):
    """The record of a finished rotation names the signing key: losing it is an error, not a new key."""
    project = Project(tmp_path)
    project.write_inventory(loopback_inventory(workers=1))
    project.doit("pki", "secrets")
    project.doit("rotate_sa_key")
    project.doit("rotate_sa_key")
    project.doit("rotate_sa_key", "old_tokens_gone=yes")
    assert yaml.safe_load(_state(project, "sa-rotation.yaml").read_text())["phase"] == "drop"
    _state(project, "sa.key").unlink()
    fails_cleanly(project.doit("secrets", check=False), "sa.key is missing", "phase 'drop'", "none is made",
                  "Restore it from a backup")
    assert not _state(project, "sa.key").exists()


@pytest.mark.slow
def test_a_left_over_next_key_without_a_record_is_refused(in_phase_add):
    """E.g. the record was deleted by hand: the extra key is not silently ignored or reused."""
    project = in_phase_add
    _state(project, "sa-rotation.yaml").unlink()
    before = _state(project, "sa-next.key").read_bytes()
    fails_cleanly(project.doit("rotate_sa_key", check=False), "sa-next.key exists", "no rotation in progress")
    assert _state(project, "sa-next.key").read_bytes() == before


# --- the library, directly ----------------------------------------------------------------------


def _library_state(tmp_path, algorithm: str) -> SecretsState:
    state = SecretsState(tmp_path)
    sa_rotation.ensure(state, algorithm)
    return state


def test_the_new_key_follows_the_inventory_algorithm_and_a_second_rotation_starts_over(tmp_path):
    state = _library_state(tmp_path, "ecdsa-p256")
    first = state.sa_key.read_bytes()
    # The inventory now says rsa-2048: `doit secrets` keeps the key and names the rotation, which switches it.
    assert "run `doit rotate_sa_key` three times" in sa_rotation.ensure(state, "rsa-2048")
    assert state.sa_key.read_bytes() == first
    sa_rotation.rotate(state, "rsa-2048", NOW, False)
    assert isinstance(serialization.load_pem_private_key(state.sa_next_key.read_bytes(), None), rsa.RSAPrivateKey)
    token = sign_token(state.sa_next_key.read_bytes())
    sa_rotation.rotate(state, "rsa-2048", NOW, False)
    assert verifies(token, state.sa_pub.read_bytes())
    assert verifies(sign_token(first), state.sa_previous_pub.read_bytes())
    with pytest.raises(KthwError, match="old_tokens_gone=yes"):
        sa_rotation.rotate(state, "rsa-2048", NOW, False)
    sa_rotation.rotate(state, "rsa-2048", NOW, True)
    promoted = state.sa_key.read_bytes()
    assert sa_rotation.current(state)

    message = sa_rotation.rotate(state, "rsa-2048", NOW, False)
    assert "phase 1 of 3 (add)" in message
    record = yaml.safe_load(state.sa_rotation.read_text())
    assert record["phase"] == "add" and record["old_key"] == _fingerprint_of(state.sa_key)
    assert state.sa_key.read_bytes() == promoted


def test_public_halves_are_rewritten_from_their_keys_but_a_lost_old_public_key_is_an_error(tmp_path):
    state = _library_state(tmp_path, "ecdsa-p256")
    sa_rotation.rotate(state, "ecdsa-p256", NOW, False)
    expected = state.sa_next_pub.read_bytes()
    state.sa_next_pub.unlink()
    assert not sa_rotation.current(state)
    sa_rotation.ensure(state, "ecdsa-p256")
    assert state.sa_next_pub.read_bytes() == expected and sa_rotation.current(state)

    sa_rotation.rotate(state, "ecdsa-p256", NOW, False)
    state.sa_previous_pub.unlink()
    with pytest.raises(StateError, match=r"sa-previous\.pub is missing.*copy it back from "
                                         r"/etc/k8s/shared/sa-previous\.pub"):
        sa_rotation.ensure(state, "ecdsa-p256")
    assert sa_rotation.public_key_files(state) == ("/etc/k8s/shared/sa.pub", "/etc/k8s/shared/sa-previous.pub")
