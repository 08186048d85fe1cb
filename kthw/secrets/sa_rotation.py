"""Service-account key rotation: a new signing key pair without invalidating a token.

An API server accepts a service-account token signed by any key named by one of its
``--service-account-key-file`` flags (the flag may repeat); it signs new tokens with
``--service-account-signing-key-file``, the controller-manager signs legacy token
Secrets with ``--service-account-private-key-file``. On the nodes the signing pair is
always /etc/k8s/shared/sa.key and sa.pub; a rotation adds one more public key beside
them. One phase per run of the rotation task:

    phase 1 "add"      new pair made; its public key accepted as sa-next.pub, the old key
                       still signs (every API server must accept the new key before any
                       signs with it)
    phase 2 "promote"  the new pair signs (sa.key, sa.pub); the old public key stays
                       accepted as sa-previous.pub, so tokens signed before stay valid
    phase 3 "drop"     the old public key removed, once its tokens are gone

Workstation state (build/state, precious, see kthw.secrets.state):

    phase     sa.key, sa.pub   sa-next.key, sa-next.pub   sa-previous.pub
    idle      signing pair     -                          -
    add       old pair         new pair                   -
    promote   new pair         -                          old public key
    drop      new pair         -                          -

The phase and the two keys' fingerprints are recorded in sa-rotation.yaml; every file
is checked against that record before anything is written, and a file that does not
match stops the build with its name and the fix, leaving it as it is.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from kthw.crypto import generate_key, load_private_key, private_key_pem, public_key_pem, public_key_sha256
from kthw.errors import KthwError, StateError
from kthw.fsutil import PUBLIC_MODE, SECRET_MODE, atomic_write
from kthw.pki.node_paths import PATHS
from kthw.secrets import rotation
from kthw.secrets.state import SecretsState, ensure_sa_keypair, load_sa_key, sa_keypair_current

IDLE, ADD, PROMOTE, DROP = rotation.IDLE, "add", "promote", "drop"
NEXT_PHASE = {IDLE: ADD, DROP: ADD, ADD: PROMOTE, PROMOTE: DROP}
# The public key accepted besides the signing pair's, per phase: the name of its
# SecretsState file and of its node path in kthw.pki.node_paths.PATHS (the same name).
EXTRA_PUBLIC_KEY = {ADD: "sa_next_pub", PROMOTE: "sa_previous_pub"}
TASK = "doit rotate_sa_key"
CONFIRM = "old_tokens_gone=yes"
_FINGERPRINT = re.compile(r"^sha256:[0-9a-f]{64}$")
LEGACY_TOKEN_SECRETS = (f"kubectl --kubeconfig {PATHS['admin_kubeconfig']} get secrets --all-namespaces "
                        "--field-selector type=kubernetes.io/service-account-token")


def fingerprint(key) -> str:
    return "sha256:" + public_key_sha256(key)


# --- the record ------------------------------------------------------------------------


def read_record(path: Path) -> rotation.PhaseRecord:
    return rotation.read(path, (ADD, PROMOTE, DROP), f"the service-account key rotation, `{TASK}`, and which key signs",
                         key_ok=lambda key: bool(_FINGERPRINT.match(key)), key_form="sha256:<64 hex> fingerprints")


def phase_of(state: SecretsState) -> str:
    return read_record(state.sa_rotation).phase


def planned_phase(state: SecretsState) -> str:
    """The recorded phase, for planning which files exist; an unreadable record counts as
    none here, and the sa-keypair task, which every copy depends on, stops the build with
    its error."""
    try:
        return phase_of(state)
    except KthwError:
        return IDLE


# --- what the nodes get ------------------------------------------------------------------


def node_copies(state: SecretsState, phase: str) -> list[tuple[Path, str, int]]:
    """(state file, node path, mode) of every service-account key file a control plane gets."""
    copies = [(state.sa_key, PATHS["sa_key"], SECRET_MODE), (state.sa_pub, PATHS["sa_pub"], PUBLIC_MODE)]
    if phase in EXTRA_PUBLIC_KEY:
        name = EXTRA_PUBLIC_KEY[phase]
        copies.append((getattr(state, name), PATHS[name], PUBLIC_MODE))
    return copies


def public_key_files(state: SecretsState) -> tuple[str, ...]:
    """Node paths of every public key the API servers accept tokens from, the signing pair's
    first (kube-apiserver's --service-account-key-file, repeated). Reads only the record."""
    return tuple(path for _, path, mode in node_copies(state, phase_of(state)) if mode == PUBLIC_MODE)


def state_files(state: SecretsState, phase: str) -> list[Path]:
    """Every state file of the phase (the table in the module docstring)."""
    files = [state.sa_key, state.sa_pub]
    if phase == ADD:
        files += [state.sa_next_key, state.sa_next_pub]
    elif phase == PROMOTE:
        files.append(state.sa_previous_pub)
    return files


# --- checking the files against the record --------------------------------------------------


def _load_public(path: Path, fix: str):
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        raise StateError(f"{path} is missing. {fix}") from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise StateError(f"{path}: not a readable PEM public key ({err}); it was left as it is. {fix}") from None
    if not isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
        raise StateError(f"{path}: not an RSA or ECDSA public key; it was left as it is. {fix}")
    return key


def _restore(record_path: Path) -> str:
    return (f"Restore build/state from a backup (an interrupted `{TASK}` leaves its files out of step with "
            f"{record_path})")


def _signing_key(state: SecretsState, record: rotation.PhaseRecord):
    if not state.sa_key.exists():
        raise StateError(f"{state.sa_key} is missing while {state.sa_rotation} records rotation phase "
                         f"{record.phase!r}; a new key would invalidate every service-account token, so none is "
                         "made. Restore it from a backup of build/state")
    return load_sa_key(state.sa_key, "Restore it from a backup of build/state: it is the signing key of the "
                                       f"rotation in progress ({state.sa_rotation})")


def _expect(path: Path, key, expected: str, role: str, record: rotation.PhaseRecord, record_path: Path) -> None:
    found = fingerprint(key)
    if found != expected:
        raise StateError(f"{path} holds key {found}, but {record_path} records phase {record.phase!r}, in which it "
                         f"holds the {role} key {expected}. Both were left as they are. {_restore(record_path)}")


def check(state: SecretsState) -> tuple[rotation.PhaseRecord, object | None]:
    """Read the record and check every key file against it; returns the record and the
    signing key (None when there is none yet, before the first `doit secrets`)."""
    record = read_record(state.sa_rotation)
    present = [path for path in (state.sa_next_key, state.sa_next_pub, state.sa_previous_pub)
               if path.exists() and path not in state_files(state, record.phase)]
    if present:
        recorded = "no rotation in progress" if record.phase == IDLE else f"rotation phase {record.phase!r}"
        raise StateError(f"{present[0]} exists, but {state.sa_rotation} records {recorded}, which has no such file. "
                         f"Both were left as they are. {_restore(state.sa_rotation)}")
    if record.phase == IDLE:
        key = load_sa_key(state.sa_key) if state.sa_key.exists() else None
        return record, key
    # A recorded rotation proves a signing key existed: a lost one is never replaced.
    key = _signing_key(state, record)
    if record.phase == ADD:
        _expect(state.sa_key, key, record.old_key, "old (still signing)", record, state.sa_rotation)
        if not state.sa_next_key.exists():
            raise StateError(f"{state.sa_next_key} is missing while {state.sa_rotation} records phase 'add'. "
                             + _lost_next_key(state))
        new = load_sa_key(state.sa_next_key, "Restore it from a backup of build/state, or: " + _lost_next_key(state))
        _expect(state.sa_next_key, new, record.new_key, "new", record, state.sa_rotation)
    else:  # promote or drop: the new key signs
        _expect(state.sa_key, key, record.new_key, "new (signing)", record, state.sa_rotation)
    if record.phase == PROMOTE:
        old = _load_public(state.sa_previous_pub, f"Restore it from a backup of build/state or copy it back from "
                                                  f"{PATHS['sa_previous_pub']} on a control-plane node: it is the "
                                                  f"public half of the retired key {record.old_key}")
        _expect(state.sa_previous_pub, old, record.old_key, "old (retired)", record, state.sa_rotation)
    return record, key


def _lost_next_key(state: SecretsState) -> str:
    return (f"No token is signed with the new key before phase 'promote', so a lost one can be replaced: delete "
            f"{state.sa_next_key}, {state.sa_next_pub} and {state.sa_rotation}, run `doit` (the API servers go back "
            f"to the one key) and start the rotation again with `{TASK}`")


def _derived_pubs(state: SecretsState, record: rotation.PhaseRecord) -> list[tuple[Path, Path]]:
    """(private key, public key file written from it) pairs of the phase."""
    pairs = [(state.sa_key, state.sa_pub)]
    if record.phase == ADD:
        pairs.append((state.sa_next_key, state.sa_next_pub))
    return pairs


def current(state: SecretsState) -> bool:
    """Every file of the recorded phase is there, matches the record, and each public key
    file written from a private key holds its public half."""
    record, key = check(state)
    # check() has read the signing key already: parsing it again costs ~30 ms per RSA key.
    if key is None or not (state.sa_pub.exists() and state.sa_pub.read_bytes() == public_key_pem(key)):
        return False
    return record.phase != ADD or sa_keypair_current(state.sa_next_key, state.sa_next_pub)


def ensure(state: SecretsState, algorithm: str) -> str:
    """The `doit secrets` side: make the first pair when there is none, otherwise check the
    files against the rotation record and rewrite the public halves; never a new key."""
    record, _ = check(state)
    if record.phase in (IDLE, DROP):
        return ensure_sa_keypair(state.sa_key, state.sa_pub, algorithm)
    for private, pub in _derived_pubs(state, record):
        atomic_write(pub, public_key_pem(load_private_key(private)), PUBLIC_MODE)
    return ""


# --- the rotation ---------------------------------------------------------------------------

_INSTALL = "run `doit` (it rebuilds the control-plane nodes' files only), install the control-plane bundles"


def rotate(state: SecretsState, algorithm: str, now: datetime, old_tokens_gone: bool) -> str:
    """Advance the rotation by one phase; returns what the operator must do next."""
    record, key = check(state)
    if key is None:
        raise KthwError(f"{state.sa_key} does not exist yet; run `doit secrets` first (there is nothing to rotate)")
    phase = NEXT_PHASE[record.phase]
    if phase == ADD:
        new = generate_key(algorithm)
        old_fp, new_fp = fingerprint(key), fingerprint(new)
        atomic_write(state.sa_next_key, private_key_pem(new), SECRET_MODE)
        atomic_write(state.sa_next_pub, public_key_pem(new), PUBLIC_MODE)
        _write_record(state, phase, old_fp, new_fp, now)
        done = (f"new {algorithm} key {new_fp} made; the API servers will also accept tokens it signs "
                f"({PATHS['sa_next_pub']}), the old key {old_fp} still signs")
        then = (f"restart every kube-apiserver; once all of them run with it, run `{TASK}` again to make the new "
                "key sign")
    elif phase == PROMOTE:
        old_fp, new_fp = record.old_key, record.new_key
        new_key_pem, old_pub = state.sa_next_key.read_bytes(), public_key_pem(key)
        # The old public half first: at every moment each key is in some file.
        atomic_write(state.sa_previous_pub, old_pub, PUBLIC_MODE)
        atomic_write(state.sa_key, new_key_pem, SECRET_MODE)
        atomic_write(state.sa_pub, public_key_pem(load_private_key(state.sa_key)), PUBLIC_MODE)
        _write_record(state, phase, old_fp, new_fp, now)
        for path in (state.sa_next_key, state.sa_next_pub):
            path.unlink()
        done = (f"{new_fp} now signs ({PATHS['sa_key']}); tokens signed by the old key {old_fp} stay valid "
                f"({PATHS['sa_previous_pub']})")
        then = ("restart every kube-apiserver and kube-controller-manager. Then wait until no client uses a token "
                "signed by the old key: the kubelet refreshes the tokens it mounts in pods within 24 hours, but a "
                "bound token stays valid until it expires (at most the API server's "
                "--service-account-max-token-expiration; a client that never rereads its token file keeps one for up "
                "to a year, as --service-account-extend-token-expiration is on by default), and legacy token "
                "Secrets never expire: "
                f"delete and recreate each one ({LEGACY_TOKEN_SECRETS}). Then run `{TASK} {CONFIRM}` to drop "
                "the old key")
    else:
        old_fp, new_fp = record.old_key, record.new_key
        if not old_tokens_gone:
            raise KthwError(
                f"not dropping the old service-account key {old_fp} yet: every token it signed would be "
                "rejected. Once no client uses one (bound tokens expired or refreshed, legacy token Secrets "
                f"recreated: {LEGACY_TOKEN_SECRETS}), run `{TASK} {CONFIRM}`")
        _write_record(state, phase, old_fp, new_fp, now)
        state.sa_previous_pub.unlink()
        done = f"the old key {old_fp} dropped; {new_fp} is the only key"
        then = "restart every kube-apiserver. The rotation is complete"
    step = {ADD: 1, PROMOTE: 2, DROP: 3}[phase]
    return f"service-account key rotation, phase {step} of 3 ({phase}): {done}.\nNext: {_INSTALL}, {then}."


def _write_record(state: SecretsState, phase: str, old_fp: str, new_fp: str, now: datetime) -> None:
    rotation.write(state.sa_rotation, phase, old_fp, new_fp, now,
                   header="# Phase of the service-account key rotation (`doit rotate_sa_key`), made by kthw-airgap.\n"
                          "# Keys are named by the sha256 of their public key (DER). Never edit it by hand.\n")
