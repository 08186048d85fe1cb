"""Vault / OpenBao as the CA backend, through hvac: the build's side.

What lives where (mount and role names come from the inventory's ``ca.naming``; shown
here with its defaults)::

    k8s_pki_root_ca                                  the root CA; its key is made in Vault and stays there
    k8s_pki_intermediate_ca_for_service_<domain>     one intermediate per trust domain (kubernetes, etcd,
                                                     front_proxy: '-' becomes '_'), signed by the root
    <intermediate mount>/roles/<cert>                one role per cert class that names no node (admin, ...)
    <intermediate mount>/roles/<cert>.<node>         one role per node for the certs whose names are a
                                                     node's (apiserver, etcd-peer, kubelet-serving, ...)

Two identities. The admin (``doit vault_setup``, ``doit vault_renew_ca``: see
:mod:`kthw.pki.vault.setup`) makes and renews every CA and writes the roles and the build
policy. The build identity (``doit``) only signs leaf CSRs with those roles; what each role
allows and both policies are in :mod:`kthw.pki.vault.policy`. A CA that is missing, due or
stale is never made or renewed by the build: it stops (or warns, while the CA is still
valid) naming the admin command to run.

Leaf certs: the key pair is made locally and Vault signs a CSR (``sign/<role>``), so a
private key never travels. The issuing chain below the root is appended to the PEM.
The CA certs are copied to ``build/pki/ca/<name>.crt`` by the CA tasks on every run
(``<mount>/cert/ca`` is public in Vault), so the renewal rules, ``file_dep`` and the trust
bundles work as with local files.

The kubelet signer: kube-controller-manager signs kubelet CSRs itself
(``--cluster-signing-key-file``), so it must hold the key of that CA, and a Vault CA's
key cannot leave Vault. With this backend the cluster signer is therefore a dedicated
intermediate, ``kubelet-signer``: its key is generated locally (``build/pki/ca/
kubelet-signer.key``, precious, like a local CA key) and the Vault root signs its CSR
(``root/sign-intermediate``, by the admin). It is a sibling of the ``kubernetes``
intermediate, not a child, so every intermediate keeps path length 0. Kubelet client
certs it signs must verify against the API server's ``--client-ca-file``, so the
kubernetes trust bundle holds both intermediates (see ``catalogue.TRUST``); kubeconfigs
still trust the ``kubernetes`` intermediate only, as it alone signs the API server's cert.

Every failure becomes a :class:`VaultError` naming the server, the path and the fix;
secrets (tokens, passwords, secret-ids) are read from the environment or files at the
moment they are needed and never appear in a message or a file. A token this process got
by logging in (userpass, AppRole) is revoked when the process ends; a token given by the
environment or a token file is the caller's and is left alone.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta
from multiprocessing import util as multiprocessing_util
from pathlib import Path

import hvac
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hvac import exceptions as hvac_errors

from kthw import clock
from kthw.crypto import (
    BACKDATE,
    CertSpec,
    PrivateKey,
    build_csr,
    certs_pem,
    load_certificates,
    load_private_key,
    read_facts,
    same_public_key,
    signed_by,
)
from kthw.errors import KthwError, StateError
from kthw.fsutil import PUBLIC_MODE, atomic_write
from kthw.inventory import CASettings, VaultAuth
from kthw.layout import KeyPairPaths
from kthw.pki.catalogue import ROOT
from kthw.pki.renewal import renewal_reason, validity_reason
from kthw.pki.vault.policy import mount_for, role_for, role_of  # noqa: F401 - role_for: the names, re-exported

TOKEN_ENVS = ("VAULT_TOKEN", "BAO_TOKEN")
TIMEOUT = 30  # seconds per request
ADMIN = "with an admin token (its policy: 'doit vault_setup policies=1')"
SETUP_HINT = f"run 'doit vault_setup' {ADMIN} to create it"
RENEW_HINT = f"run 'doit vault_renew_ca' {ADMIN}"
ROLE_HINT = "if the inventory changed, update the roles with 'doit vault_setup update_roles=1'"
# Line breaks and other control characters (C0, DEL, C1, and the Unicode line and paragraph
# separators that str.splitlines also breaks on): refused in a token, password or secret-id.
# A token holding one makes the HTTP library refuse the X-Vault-Token header with an error
# that repeats the header's value.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_LINE_BREAK = re.compile("[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
# Every error a request may raise: hvac's, requests' (an OSError), and the ValueError that
# requests, urllib3 or http.client raise for a header value they refuse.
_REQUEST_ERRORS = (hvac_errors.VaultError, requests.exceptions.RequestException, OSError, ValueError)


class VaultError(KthwError):
    """Vault refused or could not be reached; local files were left as they were."""


# --- talking to Vault ----------------------------------------------------------------


def _first_line(text: str) -> str:
    lines = [line.strip(" \t*") for line in str(text).splitlines() if line.strip(" \t*")]
    lines = [line for line in lines if not line.endswith("error occurred:")]
    return lines[0] if lines else str(text).strip()


def _translate(err: Exception, server: str, path: str, secrets: tuple[str, ...] = ()) -> VaultError:
    """One line naming the server, the path and the fix, for any hvac/requests failure.

    The message never carries one of ``secrets`` (the credentials this session sent): should
    a library's text hold one, a fixed description replaces the whole message.
    """
    message = str(_describe(err, server, path))
    if any(_shows(secret, message) for secret in secrets):
        return VaultError(f"Vault at {server}: request to {path} failed (the client library's error text is not "
                          "shown: it repeats a credential); check ca.address and the credentials given by ca.auth")
    return VaultError(message)


def _shows(secret: str, message: str) -> bool:
    """Whether ``message`` holds ``secret``, as it is or escaped as repr() shows it."""
    if len(secret) < 4:  # shorter values match by chance; _describe's checks by error type still hold
        return False
    return secret in message or repr(secret)[1:-1] in message


def _describe(err: Exception, server: str, path: str) -> VaultError:
    where = f"Vault at {server}"
    if not isinstance(err, hvac_errors.VaultError):
        return _describe_transport(err, where, path)
    detail = _first_line("; ".join(err.errors) if getattr(err, "errors", None) else str(err).split(", on ")[0])
    for describe in (_describe_state, _describe_forbidden, _describe_missing, _describe_role):
        described = describe(err, where, path, detail)
        if described is not None:
            return described
    return VaultError(f"{where}: {path}: {detail}")


def _describe_transport(err: Exception, where: str, path: str) -> VaultError:
    """A request that got no answer from Vault: refused before sending, TLS, the network."""
    # requests' InvalidHeader and http.client's ValueError quote the refused header value,
    # which for every request is the X-Vault-Token: their text is never repeated.
    if isinstance(err, requests.exceptions.InvalidHeader) or (
            isinstance(err, ValueError) and not isinstance(err, requests.exceptions.RequestException)):
        return VaultError(f"{where}: request to {path} could not be sent: the HTTP client refused a header value "
                          "(its text is not shown, as the value may be the token); check the Vault token given by "
                          "VAULT_TOKEN, BAO_TOKEN or ca.auth.token_file")
    if isinstance(err, requests.exceptions.SSLError) and "WRONG_VERSION_NUMBER" in str(err):
        return VaultError(f"{where} does not speak TLS on this port; use http:// in ca.address, or enable TLS "
                          "on Vault's listener")
    if isinstance(err, requests.exceptions.SSLError):
        return VaultError(f"{where}: TLS verification failed ({_ssl_reason(err)}); set ca.ca_bundle in the "
                          "inventory to the PEM of the CA that signed Vault's certificate, or use an address "
                          "that Vault's certificate names")
    if isinstance(err, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return VaultError(f"{where} is unreachable ({_connection_reason(err)}); check ca.address in the "
                          "inventory and that Vault is running")
    if isinstance(err, requests.exceptions.RequestException):
        return VaultError(f"{where}: request to {path} failed ({_library_text(err)}); check ca.address")
    return VaultError(f"{where}: {path}: {_library_text(err)}")


def _describe_state(err: hvac_errors.VaultError, where: str, path: str, detail: str) -> VaultError | None:
    """Vault answered, but is not in a state to serve: plain HTTP to HTTPS, sealed, down, uninitialised."""
    if "HTTP request to an HTTPS server" in detail:
        return VaultError(f"{where} expects HTTPS; use https:// in ca.address (and ca.ca_bundle if its "
                          "certificate is not signed by a system CA)")
    if isinstance(err, hvac_errors.VaultDown) and "sealed" in detail.lower():
        return VaultError(f"{where}: Vault is sealed ({path}); unseal it ('bao operator unseal' or "
                          "'vault operator unseal') and run again")
    if isinstance(err, hvac_errors.VaultDown):
        return VaultError(f"{where} is not serving requests ({path}: {detail}); check its status "
                          "('bao status') and run again")
    if isinstance(err, hvac_errors.VaultNotInitialized):
        return VaultError(f"{where} is not initialised ({path}); initialise and unseal it first")
    return None


def _describe_forbidden(err: hvac_errors.VaultError, where: str, path: str, detail: str) -> VaultError | None:
    if isinstance(err, hvac_errors.Forbidden) and path.endswith("/cert/ca"):
        # A PKI mount serves its CA cert to anyone: a refusal means there is no such mount
        # (Vault answers "permission denied" for a path it cannot route, unless the token may go there).
        return VaultError(f"{where}: mount '{_mount_of(path)}' does not exist ({path}: permission denied, which "
                          f"is how Vault answers for a mount it does not have); {SETUP_HINT}, or fix ca.naming")
    if isinstance(err, hvac_errors.Forbidden):
        return VaultError(f"{where}: permission denied on {path}: the token is expired or revoked, or its "
                          f"policy does not allow this path; grant it in the policy of the identity in ca.auth "
                          f"(the build policy 'doit vault_setup' writes allows every role of the inventory)")
    return None


def _describe_missing(err: hvac_errors.VaultError, where: str, path: str, detail: str) -> VaultError | None:
    """What 'doit vault_setup' creates is not there: an auth method, a mount, a mount's CA."""
    if isinstance(err, hvac_errors.InvalidPath) and "no handler for route" in detail:
        if path.startswith("auth/"):
            return VaultError(f"{where}: no auth method is enabled at {path.rsplit('/login', 1)[0]}; enable it or "
                              "fix ca.auth.method / ca.auth.mount in the inventory")
        return VaultError(f"{where}: mount '{_mount_of(path)}' does not exist ({path}); {SETUP_HINT}")
    if "no default issuer" in detail:
        return VaultError(f"{where}: mount '{_mount_of(path)}' has no CA yet ({path}); {SETUP_HINT}")
    return None


def _describe_role(err: hvac_errors.VaultError, where: str, path: str, detail: str) -> VaultError | None:
    if "unknown role" in detail:
        return VaultError(f"{where}: {path}: {detail}; {SETUP_HINT}")
    if "not allowed by this role" in detail or "not allowed by role" in detail or "role requires" in detail:
        return VaultError(f"{where}: the role refuses the request at {path}: {detail}; {ROLE_HINT}")
    return None


def _library_text(err: Exception) -> str:
    """The first line of a library's error text, unless it speaks of headers (and so may quote one)."""
    text = _first_line(str(err))[:200]
    if "header" in text.lower() or "vault-token" in text.lower():
        return f"{type(err).__name__} about a request header; its text is not shown, as it may hold the token"
    return text


def _mount_of(path: str) -> str:
    for marker in ("/cert/", "/sign/", "/root/", "/roles/", "/intermediate/", "/issuer/"):
        if marker in path:
            return path.split(marker)[0]
    return path.split("/")[0]


def _ssl_reason(err: Exception) -> str:
    match = re.search(r"certificate verify failed: (.*?)(?: \(_ssl\.c|'\)|\)\)|$)", str(err))
    return match.group(1).strip() if match else _library_text(err)


def _connection_reason(err: Exception) -> str:
    text = str(err)
    for known in ("Connection refused", "Name or service not known", "timed out", "No route to host",
                  "Temporary failure in name resolution"):
        if known in text:
            return known.lower()
    return _library_text(err)


class Session:
    """An hvac client for one inventory's Vault; logs in on first use."""

    def __init__(self, settings: CASettings):
        if settings.address is None:
            raise VaultError("the vault backend needs Vault's address: set ca.address in the inventory")
        self.settings = settings
        self.server = settings.address
        if settings.ca_bundle is not None:
            _check_ca_bundle(settings.ca_bundle)
        # verify=None lets hvac fall back to $VAULT_CACERT / $VAULT_CAPATH, then the system CAs.
        # token="" keeps hvac from picking a token up on its own (~/.vault-token).
        self.client = hvac.Client(url=settings.address, token="", namespace=settings.namespace, timeout=TIMEOUT,
                                  verify=str(settings.ca_bundle) if settings.ca_bundle else None)
        self._logged_in = False
        self._secrets: tuple[str, ...] = ()  # the credentials sent, kept out of every message
        # Set once this process holds a token it logged in for.
        self._revoker: multiprocessing_util.Finalize | None = None

    def _error(self, err: Exception, path: str) -> VaultError:
        return _translate(err, self.server, path, self._secrets)

    def call(self, path: str, function, /, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except _REQUEST_ERRORS as err:
            raise self._error(err, path) from None

    def login(self) -> None:
        if self._logged_in:
            return
        auth = self.settings.auth
        mount = auth.mount or auth.method
        if auth.method == "token":
            self.client.token = _token(auth)
            self._secrets = (self.client.token,)
            # Check it once, here, so a bad token is reported as such, not as a denied path.
            try:
                self.client.auth.token.lookup_self()
            except hvac_errors.Forbidden:
                raise VaultError(f"Vault at {self.server}: the token was refused (auth/token/lookup-self: permission "
                                 "denied): it is expired, revoked or mistyped; set VAULT_TOKEN or BAO_TOKEN, or the "
                                 "file named by ca.auth.token_file, to a valid token") from None
            except _REQUEST_ERRORS as err:
                raise self._error(err, "auth/token/lookup-self") from None
        elif auth.method == "userpass":
            password = _secret("password", auth.password_env, auth.password_file)
            self._secrets = (password,)
            path = f"auth/{mount}/login/{auth.username}"
            self._login(path, "the user name or password", self.client.auth.userpass.login,
                        auth.username, password, mount_point=mount)
        else:
            role_id = _role_id(auth)
            secret_id = _secret("secret-id", auth.secret_id_env, auth.secret_id_file)
            self._secrets = (secret_id,)
            self._login(f"auth/{mount}/login", "the role-id or secret-id", self.client.auth.approle.login,
                        role_id, secret_id, mount_point=mount)
        self._logged_in = True
        if self.client.token:
            self._secrets += (self.client.token,)
        if auth.method != "token" and self.client.token:
            # The token is this process's own: revoked when the process ends (doit's worker
            # processes included: multiprocessing runs these finalizers in each, for its own).
            self._revoker = multiprocessing_util.Finalize(self, _revoke_self, args=(self.client, self.server),
                                                          exitpriority=10)

    def close(self) -> None:
        """Revoke the token this session logged in for (none for a token from the environment or a file)."""
        if self._revoker is not None:
            self._revoker()
            self._revoker = None
            self._logged_in = False

    def _login(self, path: str, what: str, function, *args, **kwargs) -> None:
        try:
            function(*args, **kwargs)
        except hvac_errors.InvalidRequest as err:
            detail = _first_line("; ".join(err.errors or []) or str(err))
            if "invalid" in detail.lower():
                raise VaultError(f"Vault at {self.server}: login refused at {path} ({detail}): wrong credentials; "
                                 f"check {what} given by ca.auth in the inventory") from None
            raise self._error(err, path) from None
        except _REQUEST_ERRORS as err:
            raise self._error(err, path) from None

    def read(self, path: str, *, missing_ok: bool = False) -> dict | None:
        # Logged in even for public paths: without a token Vault answers "permission denied"
        # for a mount that does not exist, which would hide the real problem.
        self.login()
        try:
            response = self.client.adapter.get(f"/v1/{path}")
        except hvac_errors.InvalidPath as err:
            if missing_ok and "no handler for route" not in str(err):
                return None
            raise self._error(err, path) from None
        except _REQUEST_ERRORS as err:
            raise self._error(err, path) from None
        return response.get("data") if isinstance(response, dict) else None

    def write(self, path: str, data: dict) -> dict:
        self.login()
        response = self.call(path, self.client.adapter.post, f"/v1/{path}", json=data)
        return (response.get("data") or {}) if isinstance(response, dict) else {}

    def list(self, path: str) -> list[str]:
        """The keys under ``path`` (LIST); none when there is nothing to list."""
        self.login()
        try:
            response = self.client.adapter.list(f"/v1/{path}")
        except hvac_errors.InvalidPath as err:
            if "no handler for route" not in str(err):
                return []
            raise self._error(err, path) from None
        except _REQUEST_ERRORS as err:
            raise self._error(err, path) from None
        data = response.get("data") if isinstance(response, dict) else None
        return sorted((data or {}).get("keys") or [])

    def delete(self, path: str) -> None:
        self.login()
        self.call(path, self.client.adapter.delete, f"/v1/{path}")

    def ca_pem(self, mount: str) -> bytes:
        """The default issuer's cert of a PKI mount."""
        data = self.read(f"{mount}/cert/ca") or {}
        pem = (data.get("certificate") or "").strip()
        if not pem:
            raise VaultError(f"Vault at {self.server}: mount '{mount}' has no CA yet ({mount}/cert/ca); {SETUP_HINT}")
        return pem.encode() + b"\n"


def _revoke_self(client: hvac.Client, server: str) -> None:
    try:
        client.auth.token.revoke_self()
    except _REQUEST_ERRORS:
        print(f"warning: Vault at {server}: the token this run logged in for could not be revoked "
              "(auth/token/revoke-self); it lapses at the end of its TTL", file=sys.stderr)
    client.token = ""


def _check_ca_bundle(path: Path) -> None:
    """ca.ca_bundle must hold a PEM certificate: else the TLS library's own words would be all the user sees."""
    fix = ("put in it the PEM certificate (-----BEGIN CERTIFICATE-----) of the CA that signed Vault's TLS "
           "certificate, or fix ca.ca_bundle in the inventory")
    try:
        data = Path(path).read_bytes()
    except IsADirectoryError:
        raise VaultError(f"{path}: is a directory, not a PEM file (ca.ca_bundle, to verify Vault's TLS certificate); "
                         f"{fix}") from None
    except FileNotFoundError:
        raise VaultError(f"{path}: no such file (ca.ca_bundle, to verify Vault's TLS certificate); fix the path in "
                         "the inventory") from None
    except OSError as err:
        raise VaultError(f"{path}: cannot read the ca.ca_bundle ({err.strerror}); {fix}") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise VaultError(f"{path}: holds no readable PEM certificate (ca.ca_bundle, to verify Vault's TLS "
                         f"certificate); {fix}")


# Secrets are checked where they are read, so a bad one is reported by where it came from
# (an environment variable or a file) and the fix, never by its value.


def _token(auth) -> str:
    if auth.token_file is not None:
        token = _read_secret_file(auth.token_file, "token_file", "token")
        where = f"{auth.token_file}: the Vault token_file"
    else:
        name = next((name for name in TOKEN_ENVS if os.environ.get(name, "").strip()), None)
        if name is None:
            raise VaultError("no Vault token: set VAULT_TOKEN or BAO_TOKEN, or name a file with ca.auth.token_file "
                             "in the inventory")
        token = _checked_env(name, os.environ[name].strip(), "token")
        where = f"the environment variable {name}"
    # The token travels in an HTTP header, which takes ASCII only.
    if not token.isascii():
        raise VaultError(f"{where} holds a character that is not ASCII, which no Vault token has; check that it "
                         "holds the token and nothing else (the value is not shown)")
    return token


def _role_id(auth: VaultAuth) -> str:
    if auth.role_id:
        return auth.role_id
    if auth.role_id_file is None:
        raise VaultError("approle login needs ca.auth.role_id or ca.auth.role_id_file")
    return _read_secret_file(auth.role_id_file, "role_id_file", "role-id")


def _secret(what: str, env: str, file: Path | None) -> str:
    if file is not None:
        return _read_secret_file(file, f"{what} file", what)
    value = os.environ.get(env, "")
    if not value:
        raise VaultError(f"no Vault {what}: set the environment variable {env}, or name a file in the inventory's "
                         f"ca.auth ({what.replace('-', '_')}_file)")
    # One trailing line ending is dropped (VAR="$(cat file)" leaves none, a pasted value may
    # carry one); spaces stay, as they may belong to a password.
    return _checked_env(env, value.removesuffix("\n").removesuffix("\r"), what)


def _checked_env(name: str, value: str, what: str) -> str:
    if _CONTROL.search(value):
        raise VaultError(f"the environment variable {name} holds a line break (CR or LF) or another control "
                         f"character inside the Vault {what}; set it to the {what} alone, on one line (the value "
                         "is not shown)")
    return value


def _read_secret_file(path: Path, what: str, secret: str) -> str:
    """The secret in a file, without the whitespace around it; ``what`` names the file, ``secret`` its content."""
    try:
        value = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or "not text"
        raise VaultError(f"{path}: cannot read the Vault {what} ({reason}); fix the path in ca.auth") from None
    if not value:
        raise VaultError(f"{path}: the Vault {what} is empty; write the secret into it")
    if _LINE_BREAK.search(value):
        raise VaultError(f"{path}: the Vault {what} holds more than one line; put only the {secret} in it, on one "
                         "line (the content is not shown)")
    if _CONTROL.search(value):
        raise VaultError(f"{path}: the Vault {what} holds a control character; put only the {secret} in it, on one "
                         "line (the content is not shown)")
    return value


@functools.cache
def session(settings: CASettings) -> Session:
    """One session (one login) per process and settings: a doit run signs many certs."""
    return Session(settings)


# --- the CA ----------------------------------------------------------------------------


def _csr(spec: CertSpec, key: PrivateKey) -> str:
    return build_csr(spec, key).public_bytes(serialization.Encoding.PEM).decode()


def seconds(delta: timedelta) -> str:
    return f"{int(delta.total_seconds())}s"


def _self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


@dataclass(frozen=True)
class VaultCA:
    """A CA whose key stays in Vault; ``certificate`` is the local copy the CA task refreshed.

    ``node`` names the node whose leaf this CA signs: node-bound certs have a role per node.
    """

    name: str
    certificate: x509.Certificate
    settings: CASettings
    node: str | None = None

    @property
    def mount(self) -> str:
        return mount_for(self.settings, self.name)

    def issue(self, spec: CertSpec, key: PrivateKey, now: datetime) -> list[x509.Certificate]:
        vault = session(self.settings)
        # Every cert starts BACKDATE before Vault's now: the role's not_before_duration for a
        # leaf, the request's for a CA, so a leaf never starts before its issuer. It ends ttl
        # after now: the lifetime is exactly the spec's. Past the issuer's own end the issuer
        # truncates (vault_setup sets leaf_not_after_behavior), as locally.
        ttl = seconds(spec.lifetime - BACKDATE)
        if spec.is_ca:
            # Only the admin's tasks sign a CA (vault_setup, vault_renew_ca): the build's policy
            # has no root/sign-intermediate.
            path = f"{self.mount}/root/sign-intermediate"
            data = {"csr": _csr(spec, key), "common_name": spec.common_name, "ttl": ttl,
                    "not_before_duration": seconds(BACKDATE), "max_path_length": spec.path_length or 0,
                    "exclude_cn_from_sans": True, "use_csr_values": False, "format": "pem"}
            if spec.organizations:
                data["organization"] = ",".join(spec.organizations)
        else:
            path = f"{self.mount}/sign/{role_of(self.settings, spec.name, self.node)}"
            data = {"csr": _csr(spec, key), "ttl": ttl, "exclude_cn_from_sans": True, "format": "pem"}
        response = vault.write(path, data)
        try:
            cert = x509.load_pem_x509_certificate(response["certificate"].encode())
            chain = x509.load_pem_x509_certificates("\n".join(response.get("ca_chain") or [response["issuing_ca"]])
                                                   .encode())
        except (KeyError, ValueError, TypeError):
            raise VaultError(f"Vault at {vault.server}: {path} answered without a readable certificate") from None
        if not signed_by(cert, self.certificate):
            raise VaultError(f"Vault at {vault.server}: {path} signed with another CA than the copy in "
                             f"build/pki/ca/{self.name}.crt (was the CA replaced in Vault?); run doit again to "
                             "refresh the copy and re-issue what it signed")
        reason = renewal_reason(spec, cert, self.certificate, cert.not_valid_before_utc, timedelta(0))
        if reason is not None:
            raise VaultError(f"Vault at {vault.server}: {path} issued a cert that differs from what was asked "
                             f"({reason.text}); nothing was written. Check the mount's max_lease_ttl "
                             f"('bao secrets tune -max-lease-ttl=... {self.mount}'); {ROLE_HINT}")
        return [cert] + [c for c in chain if not _self_signed(c) and c != cert]


def open_vault_ca(settings: CASettings, name: str, paths: KeyPairPaths, node: str | None = None) -> VaultCA:
    """The Vault CA ``name`` with its local cert copy (written by the CA task)."""
    if not paths.cert.exists():
        raise StateError(f"{paths.cert} is missing (the local copy of Vault's {name} CA); run 'doit pki' "
                         "to fetch it")
    return VaultCA(name, load_certificates(paths.cert)[0], settings, node)


def read_vault_ca(vault: Session, settings: CASettings, name: str) -> x509.Certificate:
    """The current cert of a CA kept in Vault, as Vault serves it."""
    mount = mount_for(settings, name)
    pem = vault.ca_pem(mount)
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise VaultError(f"Vault at {vault.server}: {mount}/cert/ca is not a readable certificate") from None


def _local_key_guard(name: str, paths: KeyPairPaths) -> None:
    if paths.key.exists():
        raise StateError(f"{paths.key} belongs to a local {name} CA, but the inventory's CA backend is vault. "
                         "Switching a build to Vault replaces its whole PKI: move build/pki aside (keep it as a "
                         "backup) and run again, or set ca.backend back to local")


def _dates_note(vault: Session, settings: CASettings, name: str, cert: x509.Certificate, window: timedelta) -> str:
    """A warning for a Vault CA due for renewal; a :class:`VaultError` for one expired or not valid yet."""
    mount = mount_for(settings, name)
    dates = validity_reason(cert.not_valid_before_utc, cert.not_valid_after_utc, clock.now(), window)
    if dates is None:
        return ""
    fix = ("doit never replaces the root: see README, 'Replacing the root CA'" if name == ROOT
           else f"{RENEW_HINT}; the next doit re-issues what it signed")
    if dates.due and cert.not_valid_after_utc > clock.now():
        return f"warning: CA {name} in Vault ({mount}): {dates.text}; {fix}"
    raise VaultError(f"Vault at {vault.server}: CA {name} ({mount}): {dates.text}; nothing was written: {fix}")


def refresh_ca_cert(settings: CASettings, name: str, paths: KeyPairPaths, parent: Path | None,
                    window: timedelta) -> str:
    """Copy a Vault CA's cert to ``paths.cert``; unchanged bytes leave the file (and its mtime) alone.

    The build renews no CA: one due for renewal is reported with the admin command that
    renews it; one expired or not valid yet stops the build before anything is written.
    """
    _local_key_guard(name, paths)
    vault = session(settings)
    mount = mount_for(settings, name)
    cert = read_vault_ca(vault, settings, name)
    if "ca" not in read_facts(cert).usages:
        raise VaultError(f"Vault at {vault.server}: the cert of mount '{mount}' is not a CA certificate")
    if parent is not None:
        issuer = load_certificates(parent)[0]
        if not signed_by(cert, issuer):
            raise VaultError(f"Vault at {vault.server}: the CA of mount '{mount}' is not signed by the root of "
                             f"mount '{settings.naming.root_mount}'; have the root sign its key ({RENEW_HINT}), "
                             "or fix ca.naming in the inventory")
    elif not _self_signed(cert):
        raise VaultError(f"Vault at {vault.server}: the CA of mount '{mount}' is not a self-signed root; "
                         "fix ca.naming.root_mount in the inventory")
    note = _dates_note(vault, settings, name, cert, window)
    changed = atomic_write(paths.cert, certs_pem(cert), PUBLIC_MODE)
    notes = [f"CA {name}: fetched from Vault ({mount})"] if changed else []
    return "\n".join(notes + ([note] if note else []))


def check_kubelet_signer(settings: CASettings, spec: CertSpec, paths: KeyPairPaths,
                         vault_cas: dict[str, KeyPairPaths], window: timedelta) -> str:
    """The build's first look at its CAs, before it writes anything: the Vault CAs (``vault_cas``:
    their local copies) exist and are in date, and the locally-keyed kubelet signer, which
    Vault's root signs, exists and is current.

    The build never makes or renews a CA (its identity may not sign one): a missing or stale
    one stops the build, one merely due is a warning; both name the admin command. The
    issuer is read from Vault, not from the local copy, which this run has not refreshed yet.
    """
    for name, ca_paths in vault_cas.items():
        _local_key_guard(name, ca_paths)
    vault = session(settings)
    notes = []
    for name in vault_cas:
        note = _dates_note(vault, settings, name, read_vault_ca(vault, settings, name), window)
        notes += [note] if note else []
    name = spec.name
    if not paths.cert.exists() and not paths.key.exists():
        raise StateError(f"CA {name} is missing ({paths.cert}, {paths.key}): it is made once, by the admin, as "
                         f"Vault's root signs it; {SETUP_HINT}, then run doit again")
    if not paths.key.exists():
        raise StateError(f"{paths.cert} exists but its key {paths.key} is missing. Restore the key from a backup; "
                         "a CA is never re-created silently")
    if not paths.cert.exists():
        raise StateError(f"{paths.key} exists but its cert {paths.cert} is missing: {RENEW_HINT} to have the "
                         "root sign that key again")
    cert = load_certificates(paths.cert)[0]
    if not same_public_key(load_private_key(paths.key), cert.public_key()):
        raise StateError(f"{paths.key} does not match {paths.cert}; both were left as they are. Restore the "
                         "matching pair from a backup")
    root = read_vault_ca(vault, settings, ROOT)
    now = clock.now()
    reason = renewal_reason(spec, cert, root, now, window)
    if reason is not None and reason.due and cert.not_valid_after_utc > now:
        notes.append(f"warning: CA {name}: {reason.text}; renew it (same key): {RENEW_HINT}")
    elif reason is not None:
        raise StateError(f"CA {name}: {reason.text}; nothing was written. The build does not sign CAs: "
                         f"{RENEW_HINT}, then run doit again")
    return "\n".join(notes)
