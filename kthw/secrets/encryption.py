"""Encryption at rest: the API servers' EncryptionConfiguration and its key rotation.

The EncryptionConfiguration under build/state is itself the precious state: every
control-plane node gets a byte copy of it. It is read back strictly (provider, key
names, key lengths, ``identity`` last) and never rewritten except by :func:`ensure`
when it does not exist yet, or by one explicit rotation phase (:func:`rotate`).

Rotation (Kubernetes' documented procedure, one phase per run of the rotation task):

    phase 1 "new-key-added"   the new key second: every API server can read with it
    phase 2 "new-key-first"   the new key first: new writes use it
                              (the operator then rewrites every Secret with it)
    phase 3 "old-key-removed" the old key dropped

The phase is recorded in a small file beside the configuration.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml

from kthw.errors import KthwError, StateError
from kthw.fsutil import SECRET_MODE, atomic_write
from kthw.pki.node_paths import PATHS
from kthw.secrets import rotation

API_VERSION = "apiserver.config.k8s.io/v1"
KIND = "EncryptionConfiguration"
# Key lengths in bytes each provider accepts
# (https://kubernetes.io/docs/tasks/administer-cluster/encrypt-data/#providers); new keys are 32 bytes.
KEY_LENGTHS: dict[str, tuple[int, ...]] = {"secretbox": (32,), "aesgcm": (16, 24, 32), "aescbc": (32,)}
NEW_KEY_BYTES = 32
_KEY_NAME = re.compile(r"^key(\d+)$")

IDLE, ADDED, FIRST, REMOVED = rotation.IDLE, "new-key-added", "new-key-first", "old-key-removed"
NEXT_PHASE = {IDLE: ADDED, REMOVED: ADDED, ADDED: FIRST, FIRST: REMOVED}

REWRITE_SECRETS = (f"kubectl --kubeconfig {PATHS['admin_kubeconfig']} get secrets --all-namespaces -o json"
                   f" | kubectl --kubeconfig {PATHS['admin_kubeconfig']} replace -f -")
INSTALL = ("run `doit` (it rebuilds the control-plane nodes' files only), install "
           f"{PATHS['encryption_config']} on every control-plane node and restart every kube-apiserver")


@dataclass(frozen=True)
class Key:
    """One key of the encryption config."""

    provider: str
    name: str
    secret: str  # base64, as in the file


@dataclass(frozen=True)
class EncryptionConfig:
    """The keys in the order the API server tries them; the first one encrypts new writes.
    ``identity`` always follows them, so data written before encryption stays readable."""

    keys: tuple[Key, ...]

    def dumps(self) -> bytes:
        providers: list[dict] = []
        for key in self.keys:
            entry = {"name": key.name, "secret": key.secret}
            if providers and key.provider in providers[-1]:
                providers[-1][key.provider]["keys"].append(entry)
            else:
                providers.append({key.provider: {"keys": [entry]}})
        providers.append({"identity": {}})
        document = {"apiVersion": API_VERSION, "kind": KIND,
                    "resources": [{"resources": ["secrets"], "providers": providers}]}
        header = ("# Encryption at rest for kube-apiserver (--encryption-provider-config), made by kthw-airgap.\n"
                  "# Precious: losing these keys makes every stored Secret unreadable. Rotate with\n"
                  "# `doit rotate_encryption_key`; never edit it by hand.\n")
        return (header + yaml.safe_dump(document, sort_keys=False)).encode()

    def with_new_key(self, provider: str) -> EncryptionConfig:
        """Phase 1: a fresh key second, so every API server can read data written with it."""
        numbers = [int(match.group(1)) for k in self.keys if (match := _KEY_NAME.match(k.name))]
        key = new_key(provider, f"key{max(numbers, default=0) + 1}")
        return EncryptionConfig((self.keys[0], key, *self.keys[1:]))


def new_key(provider: str, name: str) -> Key:
    if provider not in KEY_LENGTHS:
        raise KthwError(f"unknown encryption provider {provider!r}; use one of: {', '.join(KEY_LENGTHS)}")
    return Key(provider, name, base64.b64encode(os.urandom(NEW_KEY_BYTES)).decode("ascii"))


# --- reading a configuration back ----------------------------------------------------


def _bad(path: Path, problem: str) -> StateError:
    return StateError(f"{path}: {problem}. The file was left as it is. Restore it from a backup: the API "
                      "servers need exactly these keys to read the Secrets they stored (if the cluster holds "
                      "no data yet, delete the file and run `doit secrets` to make a new one)")


def parse(data: bytes, path: Path) -> EncryptionConfig:
    keys = [key for entry in _providers(data, path) for key in _provider_keys(entry, path)]
    if not keys:
        raise _bad(path, "it holds no encryption key, only 'identity'")
    names = [k.name for k in keys]
    if len(set(names)) != len(names):
        raise _bad(path, f"key names repeat ({', '.join(names)}); each key needs its own name")
    return EncryptionConfig(tuple(keys))


def _providers(data: bytes, path: Path) -> list:
    """The provider entries of the one resource entry, the closing ``identity`` left out."""
    try:
        document = yaml.safe_load(data)
    except yaml.YAMLError as err:
        raise _bad(path, f"not valid YAML ({err})") from None
    if not isinstance(document, dict) or document.get("kind") != KIND or document.get("apiVersion") != API_VERSION:
        raise _bad(path, f"not an {KIND} of apiVersion {API_VERSION}")
    resources = document.get("resources")
    if not isinstance(resources, list) or len(resources) != 1 or not isinstance(resources[0], dict) \
            or resources[0].get("resources") != ["secrets"]:
        raise _bad(path, "expected one 'resources' entry covering [secrets]")
    providers = resources[0].get("providers")
    if not isinstance(providers, list) or not providers or providers[-1] != {"identity": {}}:
        raise _bad(path, "the provider list must end with 'identity: {}' (so data stored unencrypted stays "
                         "readable)")
    return providers[:-1]


def _provider_keys(entry: object, path: Path) -> list[Key]:
    """The keys of one provider entry, e.g. ``{secretbox: {keys: [...]}}``."""
    if not isinstance(entry, dict) or len(entry) != 1:
        raise _bad(path, f"provider entry {entry!r} must name exactly one provider")
    (provider, settings), = entry.items()
    if provider not in KEY_LENGTHS:
        raise _bad(path, f"unknown provider {provider!r} (known: {', '.join(KEY_LENGTHS)}; 'identity' only last)")
    entries = settings.get("keys") if isinstance(settings, dict) else None
    if not isinstance(entries, list) or not entries:
        raise _bad(path, f"provider {provider} has no keys")
    return [_key(provider, item, path) for item in entries]


def _key(provider: str, item: object, path: Path) -> Key:
    """One key, its secret base64 of a length the provider takes."""
    if not isinstance(item, dict) or set(item) != {"name", "secret"}:
        raise _bad(path, f"a {provider} key must have exactly 'name' and 'secret'")
    key = Key(provider, str(item["name"]), str(item["secret"]))
    try:
        length = len(base64.b64decode(key.secret, validate=True))
    except (binascii.Error, ValueError):
        raise _bad(path, f"key {key.name!r} ({provider}) is not valid base64") from None
    if length not in KEY_LENGTHS[provider]:
        allowed = " or ".join(str(n) for n in KEY_LENGTHS[provider])
        raise _bad(path, f"key {key.name!r} ({provider}) is {length} bytes long; {provider} needs {allowed}")
    return key


def read(path: Path) -> EncryptionConfig | None:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise _bad(path, f"cannot be read ({err.strerror})") from None
    return parse(data, path)


# --- the rotation record -------------------------------------------------------------


def read_rotation(path: Path) -> rotation.PhaseRecord:
    return rotation.read(path, (ADDED, FIRST, REMOVED), "the encryption key rotation, `doit rotate_encryption_key`")


def _check_phase(config: EncryptionConfig, record: rotation.PhaseRecord, config_path: Path,
                 rotation_path: Path) -> None:
    """The configuration must be in the shape the recorded phase left it in."""
    names = [k.name for k in config.keys]
    expected = {ADDED: [record.old_key, record.new_key], FIRST: [record.new_key, record.old_key],
                REMOVED: [record.new_key]}.get(record.phase)
    if record.phase == IDLE:
        expected = names[:1]
    if names != expected:
        raise StateError(f"{config_path} holds keys {names} but {rotation_path} records phase "
                         f"{record.phase!r} (expected keys {expected}). Both were left as they are: restore "
                         "the pair from a backup")


# --- the two operations ----------------------------------------------------------------


def ensure(path: Path, rotation_path: Path, provider: str) -> str:
    """Create the configuration when there is none; otherwise only check it."""
    config = read(path)
    record = read_rotation(rotation_path)
    if config is None and record.phase != IDLE:
        # A recorded rotation proves keys existed: new ones would leave every Secret unreadable.
        raise StateError(f"{path} is missing while {rotation_path} records rotation phase {record.phase!r}; a new "
                         "key would leave every Secret encrypted with the recorded keys unreadable, so none is "
                         "made. Restore it from a backup of build/state")
    if config is None:
        config = EncryptionConfig((new_key(provider, "key1"),))
        atomic_write(path, config.dumps(), SECRET_MODE)
        return f"encryption config: new {provider} key {config.keys[0].name}"
    return provider_note(config, record, provider)


def provider_note(config: EncryptionConfig, record: rotation.PhaseRecord, provider: str) -> str:
    """A warning when the inventory asks for another provider than the one that encrypts."""
    writer = config.keys[0].provider
    if writer == provider or record.phase in (ADDED, FIRST):
        return ""
    return (f"warning: encryption_provider is {provider} but {writer} key {config.keys[0].name} encrypts; the key "
            f"is kept. To switch, run `doit rotate_encryption_key` three times (the new key uses {provider})")


def rotate(path: Path, rotation_path: Path, provider: str, now: datetime, secrets_rewritten: bool) -> str:
    """Advance the rotation by one phase; returns what the operator must do next."""
    config = read(path)
    if config is None:
        raise KthwError(f"{path} does not exist yet; run `doit secrets` first (there is nothing to rotate)")
    record = read_rotation(rotation_path)
    _check_phase(config, record, path, rotation_path)
    phase = NEXT_PHASE[record.phase]
    if phase == ADDED:
        config = config.with_new_key(provider)
        old, new = config.keys[0].name, config.keys[1].name
        done = f"new {provider} key {new} added second; {old} still encrypts"
        then = f"then run `doit rotate_encryption_key` again to make {new} the key that encrypts"
    elif phase == FIRST:
        old, new = record.old_key, record.new_key
        config = EncryptionConfig((config.keys[1], config.keys[0]))
        done = f"{new} now encrypts; {old} still decrypts"
        then = (f"then rewrite every Secret so it is encrypted with {new}, on one control-plane node:\n"
                f"    {REWRITE_SECRETS}\n"
                f"and run `doit rotate_encryption_key secrets_rewritten=yes` to remove {old}")
    else:
        old, new = record.old_key, record.new_key
        if not secrets_rewritten:
            raise KthwError(
                f"not removing {old} yet: Secrets still encrypted with it would become unreadable. Once every "
                f"API server runs with {new} listed first, rewrite every Secret on one "
                f"control-plane node:\n    {REWRITE_SECRETS}\nthen run `doit rotate_encryption_key "
                "secrets_rewritten=yes`")
        config = EncryptionConfig(config.keys[:1])
        done = f"{old} removed; {new} is the only key"
        then = "the rotation is complete"
    # Configuration first: a crash between the two writes is reported by _check_phase next time.
    atomic_write(path, config.dumps(), SECRET_MODE)
    rotation.write(rotation_path, phase, old, new, now)
    step = {ADDED: 1, FIRST: 2, REMOVED: 3}[phase]
    return f"encryption key rotation, phase {step} of 3 ({phase}): {done}.\nNext: {INSTALL}; {then}."
