"""What kthw asks of Vault / OpenBao, as data: names, role definitions, ACL policies.

Nothing here talks to Vault (no hvac), so ``doit vault_setup policies=1`` prints the
policies without a server, and the tests compare them with the README.

Roles. A cert whose names are a node's (its common name holds the node name, or it has
SANs: apiserver, etcd-server, etcd-peer, kubelet-serving, kubelet-client) gets one role
per node, ``<cert>.<node>`` through ``ca.naming.role`` (e.g. ``kubelet-serving.worker1``),
that allows exactly that node's names and addresses. The other certs (admin,
scheduler, ...) name no node: one role per cert class. Every role is written whole
(:data:`ROLE_DEFAULTS` holds every field OpenBao 2.x has, with the value kthw wants when
it does not care), so ``update_roles=1`` reverts any hand edit, and drift is reported by
field name.

What a role allows, and how OpenBao checks it:

* the common name and DNS SANs: ``allowed_domains`` as bare names only (no subdomains,
  globs, wildcards, ``localhost`` unless listed, templates); ``cn_validations=[hostname]``
  keeps the CN check on (``disabled`` would let any CN through) and refuses an e-mail CN;
  ``enforce_hostnames`` wherever every name is a host name;
* IP SANs: ``allowed_ip_sans_cidr`` with one /32 or /128 per address (OpenBao only;
  Vault ignores the field and checks no address);
* URI SANs, other SANs, UIDs and subject serial numbers: none;
* the subject's O, the usages, the key type and size (the inventory's key algorithm:
  ecdsa-p256 -> ec/256, so an Ed25519 or RSA CSR is refused; OpenBao takes key_bits as a
  minimum), the lifetime (``max_ttl``), and the dates: the requester can set neither
  ``not_after`` nor ``not_before`` (``*_bound=forbid``); every cert starts
  :data:`~kthw.crypto.BACKDATE` early, as CAs do.

Policies. The build identity (``kthw-<cluster>-build``, written by vault_setup) may
only sign with these roles: ``update`` on ``<mount>/sign/<role>``, one path per role, and
look up or revoke its own token. Reading a mount's CA cert (``<mount>/cert/ca``) needs
no grant: Vault and OpenBao serve it without authentication. The admin policy
(``kthw-<cluster>-admin``, installed by a Vault operator) holds what ``vault_setup`` and
``vault_renew_ca`` need: the mounts, the CAs, the roles and the build policy.
"""

from __future__ import annotations

import ipaddress
import re

from kthw.crypto import BACKDATE, CertSpec, key_kind_and_size
from kthw.inventory import CASettings, Inventory
from kthw.pki.catalogue import INTERMEDIATES, LEAVES, ROOT, Leaf, leaves_for

NODE_SEPARATOR = "."  # <cert>.<node>: cert names have no dot, so a node role never collides with a class role


# --- names -------------------------------------------------------------------------------


def mount_for(settings: CASettings, ca: str) -> str:
    if ca == ROOT:
        return settings.naming.root_mount
    if ca not in INTERMEDIATES:
        raise ValueError(f"{ca} is not a CA kept in Vault")
    return settings.naming.intermediate_mount.format(domain=ca.replace("-", "_"))


def node_bound(row: Leaf) -> bool:
    """Whether a cert's names are a node's: its role then allows one node only."""
    return "{node}" in row.common_name or row.sans is not None


def role_for(settings: CASettings, cert: str, node: str | None = None) -> str:
    """The name ``ca.naming.role`` gives the role of ``cert`` (of ``node``, for a node's role)."""
    return settings.naming.role.format(cert=cert if node is None else f"{cert}{NODE_SEPARATOR}{node}")


def role_of(settings: CASettings, cert: str, node: str | None) -> str:
    """The role a build uses for ``cert`` of ``node`` (None: a cert no node is bound to)."""
    return role_for(settings, cert, node if node_bound(_ROWS[cert]) else None)


def owned_role(settings: CASettings, role: str) -> tuple[str, str | None] | None:
    """(cert, node or None) when ``role`` is a name kthw gives a role under ``ca.naming.role``."""
    prefix, _, suffix = settings.naming.role.partition("{cert}")
    if not (role.startswith(prefix) and role.endswith(suffix)) or len(role) <= len(prefix) + len(suffix):
        return None
    inner = role[len(prefix):len(role) - len(suffix)]
    cert, separator, node = inner.partition(NODE_SEPARATOR)
    if cert not in _ROWS or (separator and not node):
        return None
    return cert, (node or None)


_ROWS = {row.name: row for row in LEAVES}


def build_policy_name(inv: Inventory) -> str:
    """``ca.naming.policy``, else kthw-<cluster>-build."""
    return inv.ca.naming.policy or f"kthw-{inv.name}-build"


def admin_policy_name(inv: Inventory) -> str:
    """The name the printed admin policy suggests (a Vault operator installs it)."""
    build = build_policy_name(inv)
    return (build.removesuffix("-build") if build.endswith("-build") else build) + "-admin"


# --- roles -------------------------------------------------------------------------------

# Every field of an OpenBao 2.x PKI role (as `bao read <mount>/roles/<role>` shows it), with
# the value kthw writes when the cert does not decide it: a role is always written whole.
ROLE_DEFAULTS: dict[str, object] = {
    "allow_any_name": False,
    "allow_bare_domains": True,
    "allow_glob_domains": False,
    "allow_globs_in_identity_templates": False,
    "allow_ip_sans": False,
    "allow_localhost": False,          # "localhost" is allowed where it is one of the names
    "allow_subdomains": False,
    "allow_token_displayname": False,
    "allow_wildcard_certificates": False,
    "allowed_domains": [],
    "allowed_domains_template": False,
    "allowed_ip_sans_cidr": [],        # OpenBao only
    "allowed_other_sans": [],
    "allowed_serial_numbers": [],
    "allowed_uri_sans": [],
    "allowed_uri_sans_template": False,
    "allowed_user_ids": [],
    "basic_constraints_valid_for_non_ca": True,
    "client_flag": False,
    "cn_validations": ["hostname"],    # never "disabled": that skips the CN check altogether
    "code_signing_flag": False,
    "country": [],
    "email_protection_flag": False,
    "enforce_hostnames": False,
    "ext_key_usage": [],
    "ext_key_usage_oids": [],
    "generate_lease": False,
    "issuer_ref": "default",
    "key_bits": 256,
    "key_type": "ec",
    "key_usage": ["DigitalSignature"],
    "locality": [],
    "max_ttl": 0,
    "no_store": False,                 # issued certs stay listed in Vault (and revocable)
    "not_after": "",
    "not_after_bound": "forbid",       # OpenBao: the requester cannot set not_after...
    "not_before": "",
    "not_before_bound": "forbid",      # ... nor not_before
    "not_before_duration": int(BACKDATE.total_seconds()),
    "organization": [],
    "ou": [],
    "policy_identifiers": [],
    "postal_code": [],
    "province": [],
    "require_cn": True,
    "server_flag": False,
    "signature_bits": 0,
    "street_address": [],
    "ttl": 0,
    "use_csr_common_name": True,
    "use_csr_sans": True,
    "use_pss": False,
}
_HOSTNAME = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)*[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?$")


def role_settings(inv: Inventory) -> dict[tuple[str, str], dict]:
    """(mount, role) -> the whole definition of every role this inventory's build signs with."""
    settings = inv.ca
    names: dict[tuple[str, str], set[str]] = {}
    ips: dict[tuple[str, str], set[str]] = {}
    specs: dict[tuple[str, str], CertSpec] = {}
    for node in inv.nodes:
        for item in leaves_for(inv, node):
            key = (mount_for(settings, item.row.issuer), role_of(settings, item.spec.name, node.name))
            specs.setdefault(key, item.spec)
            names.setdefault(key, set()).update({item.spec.common_name, *item.spec.dns_names})
            ips.setdefault(key, set()).update(item.spec.ip_addresses)
    key_type, key_bits = key_kind_and_size(inv.key_algorithm)
    result = {}
    for key, spec in specs.items():
        allowed = sorted(names[key])
        result[key] = {
            **ROLE_DEFAULTS,
            "allowed_domains": allowed,
            # Names such as system:node:<node> are no host names: the check is then the list alone.
            "enforce_hostnames": all(_HOSTNAME.match(name) for name in allowed),
            "allow_ip_sans": bool(ips[key]),
            "allowed_ip_sans_cidr": sorted(f"{ip}/{ipaddress.ip_address(ip).max_prefixlen}" for ip in ips[key]),
            "server_flag": "server" in spec.usages,
            "client_flag": "client" in spec.usages,
            "key_type": key_type,
            "key_bits": key_bits,
            "key_usage": ["DigitalSignature", "KeyEncipherment"] if key_type == "rsa" else ["DigitalSignature"],
            "organization": list(spec.organizations),
            "max_ttl": int(inv.lifetimes.leaf.total_seconds()),
        }
    return result


def _same(have: object, want: object) -> bool:
    if isinstance(want, list):
        if isinstance(have, str):  # a server that answers a list field as text
            have = [part for part in have.split(",") if part]
        return isinstance(have, list) and sorted(map(str, have)) == sorted(map(str, want))
    if isinstance(want, bool) or isinstance(have, bool):
        return have is want
    return have == want


def role_differences(have: dict, want: dict) -> tuple[list[str], list[str]]:
    """(each field whose value on the server differs: 'field: server -> wanted', the fields
    the server has that kthw does not know). A field the server lacks (an older server, or
    Vault for OpenBao's fields) is not compared: the server cannot hold it."""
    differences = [f"{field}: {have[field]!r} -> {value!r}" for field, value in want.items()
                   if field in have and not _same(have[field], value)]
    unknown = sorted(field for field in have if field not in want)
    return differences, unknown


# --- policies ----------------------------------------------------------------------------


def _path(path: str, *capabilities: str) -> str:
    quoted = ", ".join(f'"{capability}"' for capability in capabilities)
    return f'path "{path}" {{ capabilities = [{quoted}] }}'


def build_policy(inv: Inventory) -> str:
    """The build identity's policy: sign with this inventory's roles, and nothing else."""
    lines = [f"# {build_policy_name(inv)}: the build identity of cluster {inv.name} ('doit', 'doit pki').",
             "# 'doit vault_setup' writes it to Vault; give it to the identity that ca.auth logs in as.",
             "# It signs leaf CSRs with this inventory's roles, one path per role. The CA certs",
             "# (<mount>/cert/ca) are public in Vault and OpenBao: copying them needs no grant.",
             _path("auth/token/lookup-self", "read"),
             _path("auth/token/revoke-self", "update")]
    lines += [_path(f"{mount}/sign/{role}", "update") for mount, role in sorted(role_settings(inv))]
    return "\n".join(lines) + "\n"


def admin_policy(inv: Inventory) -> str:
    """What 'doit vault_setup' and 'doit vault_renew_ca' need, for this inventory's names."""
    settings = inv.ca
    root = mount_for(settings, ROOT)
    intermediates = [mount_for(settings, name) for name in INTERMEDIATES]
    lines = [f"# {admin_policy_name(inv)}: 'doit vault_setup' and 'doit vault_renew_ca' for cluster {inv.name}.",
             f"# A Vault operator installs it: bao policy write {admin_policy_name(inv)} <this file>",
             "# It makes and renews the CAs, writes the roles and the build policy; it signs no leaf.",
             _path("auth/token/lookup-self", "read"),
             _path("auth/token/revoke-self", "update"),
             _path("sys/mounts", "read")]
    lines += [_path(f"sys/mounts/{mount}", "create", "update") for mount in (root, *intermediates)]
    lines += [_path(f"sys/mounts/{root}/tune", "read"),
              _path(f"sys/policies/acl/{build_policy_name(inv)}", "create", "read", "update"),
              _path(f"{root}/root/generate/internal", "update"),
              _path(f"{root}/root/sign-intermediate", "update"),
              _path(f"{root}/issuer/default", "update")]
    for mount in intermediates:
        lines += [_path(f"{mount}/intermediate/generate/internal", "update"),
                  _path(f"{mount}/intermediate/generate/existing", "update"),
                  _path(f"{mount}/intermediate/set-signed", "update"),
                  _path(f"{mount}/config/issuers", "update"),
                  _path(f"{mount}/issuer/default", "update"),
                  _path(f"{mount}/roles/*", "create", "read", "update", "delete", "list")]
    return "\n".join(lines) + "\n"


def policies_text(inv: Inventory) -> str:
    """What 'doit vault_setup policies=1' prints: both policies, as the README shows them."""
    return build_policy(inv) + "\n" + admin_policy(inv)
