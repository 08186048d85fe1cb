"""Parsers of single inventory values: each takes what YAML read and returns the value or
raises :class:`~kthw.yamldoc.Bad` with the problem and the fix; the reader adds file, line and field."""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from kthw import clock
from kthw.crypto import LAST_CERT_DATE
from kthw.inventory.model import IPAddress, IPNetwork
from kthw.supply.oci import Repository
from kthw.versions import Version, VersionError
from kthw.yamldoc import Bad, Reader, kind

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_DURATION = re.compile(r"^(\d+)\s*([hdwy])$")
_DURATION_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1),
                   "y": timedelta(days=365)}
_VAULT_PATH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Bad(f"expected text, got {kind(value)}", "write a non-empty string")
    return value.strip()


def _choice(options: tuple[str, ...], aliases: dict[str, str] | None = None) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _text(value) if isinstance(value, str) else str(value)
        canon = (aliases or {}).get(text, text)
        if canon not in options:
            import difflib  # only for the error message: a valid inventory never loads it
            guess = difflib.get_close_matches(text, list(aliases or options), n=1)
            hint = f"did you mean '{guess[0]}'? " if guess else ""
            raise Bad(f"unknown value '{text}'", f"{hint}use one of: {', '.join(aliases or options)}")
        return canon
    return parse


def _dns_name(value: Any) -> str:
    text = _text(value)
    if len(text) > 253 or not _DNS_NAME.match(text):
        raise Bad(f"'{text}' is not a valid DNS name",
                  "use lowercase letters, digits, '-' and '.', each label 1-63 characters")
    return text


def _ip(value: Any) -> IPAddress:
    try:
        return ipaddress.ip_address(str(value).strip())
    except ValueError:
        raise Bad(f"'{value}' is not an IP address", "write an address such as 10.0.0.11") from None


def _cidr(value: Any) -> IPNetwork:
    try:
        return ipaddress.ip_network(str(value).strip(), strict=True)
    except ValueError as err:
        raise Bad(f"'{value}' is not a CIDR network ({err})",
                  "write a network address with its prefix, such as 10.96.0.0/12") from None


def _port(value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        raise Bad(f"'{value}' is text, not a number", f"write the port without quotes, e.g. port: {value.strip()}")
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise Bad(f"'{value}' is not a TCP port", "use a number from 1 to 65535, usually 6443")
    return value


def _version(value: Any) -> str:
    if isinstance(value, float):
        raise Bad(f"{value} was read as a number", 'quote the full version, e.g. "1.34.2"')
    try:
        return str(Version.parse(str(value).strip(), patch=True))
    except VersionError as err:
        raise Bad(err.problem, err.fix) from None


def _duration(value: Any) -> timedelta:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        count, unit = value, "d"
    else:
        match = _DURATION.match(str(value).strip()) if isinstance(value, str) else None
        if not match or int(match.group(1)) == 0:
            raise Bad(f"'{value}' is not a duration", "write a positive number of days, or e.g. 8760h, 365d, 52w, 1y")
        count, unit = int(match.group(1)), match.group(2)
    try:
        return count * _DURATION_UNITS[unit]
    except OverflowError:
        raise Bad(f"'{value}' is far too long (past the year 9999)", "write e.g. 3650d for ten years") from None


def _until_last_date(reader: Reader, key: str, duration: timedelta, what: str) -> None:
    """A duration that starts now must end by the last date a certificate or token can carry."""
    today = clock.system_now()
    room = LAST_CERT_DATE - today
    if duration > room:
        raise reader.fail(key, f"{what} of {duration.days} days from today would end after {LAST_CERT_DATE:%Y-%m-%d}, "
                          "the last date a certificate can carry", f"use at most {room.days}d (e.g. 3650d)")
    clock.decided_until(today, LAST_CERT_DATE - duration)


def _node_name(value: Any) -> str:
    text = _text(value)
    if len(text) > 63:
        raise Bad(f"node name '{text}' is longer than 63 characters ({len(text)})", "use the node's short hostname")
    return _dns_name(text)


def _san(value: Any) -> str:
    text = str(value).strip() if isinstance(value, (str, int)) else ""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if text.startswith("*."):
        _dns_name(text[2:])
        return text
    return _dns_name(text)


def _inside(inner: IPNetwork, outer: IPNetwork) -> bool:
    """``inner`` is a subnet of ``outer``; networks of two address families never are."""
    if isinstance(inner, ipaddress.IPv4Network) and isinstance(outer, ipaddress.IPv4Network):
        return inner.subnet_of(outer)
    if isinstance(inner, ipaddress.IPv6Network) and isinstance(outer, ipaddress.IPv6Network):
        return inner.subnet_of(outer)
    return False


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Bad(f"expected true or false, got {kind(value)}", "write joining: true, or leave the key out")
    return value


def _list_of(parse: Callable[[Any], Any]) -> Callable[[Any], tuple]:
    def parse_list(value: Any) -> tuple:
        if not isinstance(value, list):
            raise Bad(f"expected a list, got {kind(value)}", "write a YAML list, e.g. [a, b]")
        return tuple(parse(item) for item in value)
    return parse_list


# --- the ca: section's values -------------------------------------------------


def _vault_address(value: Any) -> str:
    text = _text(value).rstrip("/")
    if not re.match(r"^https?://[^/\s?#]+$", text):
        raise Bad(f"'{text}' is not a Vault address",
                  "write scheme, host and port, e.g. https://vault.example.lan:8200")
    return text


def _file_under(base: Path) -> Callable[[Any], Path]:
    """A local file; a relative path is relative to ``base`` (the inventory's folder)."""
    def parse_file(value: Any) -> Path:
        return (base / Path(_text(value)).expanduser()).resolve()
    return parse_file


def _env_name(value: Any) -> str:
    text = _text(value)
    if not _ENV_NAME.match(text):
        raise Bad(f"'{text}' is not an environment variable name",
                  "name the variable that holds the secret, e.g. KTHW_VAULT_PASSWORD (the secret itself never "
                  "goes in the inventory)")
    return text


def _vault_path(value: Any) -> str:
    text = _text(value).strip("/")
    if not _VAULT_PATH.match(text):
        raise Bad(f"'{text}' is not a Vault path", "use letters, digits, '_', '-' and '.', parts joined by '/'")
    return text


def _vault_path_pattern(placeholder: str) -> Callable[[Any], str]:
    """A Vault path with ``{placeholder}`` in it, and no other placeholder."""
    def parse_pattern(value: Any) -> str:
        text = _text(value)
        if "{" + placeholder + "}" not in text:
            raise Bad(f"'{text}' lacks the {{{placeholder}}} placeholder",
                      f"every trust domain / cert class needs its own name, e.g. 'k8s_pki_{{{placeholder}}}'")
        try:
            _vault_path(text.format(**{placeholder: "x"}))
        except (KeyError, IndexError, ValueError):
            raise Bad(f"'{text}' has a placeholder other than {{{placeholder}}}",
                      f"only {{{placeholder}}} is replaced") from None
        return text
    return parse_pattern


# --- the vendor: section's values ---------------------------------------------


def _location(base: Path) -> Callable[[Any], str]:
    """An http(s) URL, or a directory (relative to ``base``, the inventory's folder)."""
    def parse_location(value: Any) -> str:
        text = _text(value)
        if "://" not in text:
            return str((base / Path(text).expanduser()).resolve())
        if not re.match(r"^https?://[^/\s?#]+(/[^\s?#]*)?$", text):
            raise Bad(f"'{text}' is neither an http(s) URL nor a directory",
                      "write e.g. https://mirror.example.lan/kthw or /srv/kthw-mirror")
        return text.rstrip("/")
    return parse_location


def _folder_template(base: Path) -> Callable[[Any], str]:
    """A location with at most the {version} and {arch} placeholders."""
    location = _location(base)

    def parse_template(value: Any) -> str:
        text = location(value)
        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
        except ValueError as err:
            raise Bad(f"'{text}' has a broken placeholder ({err})",
                      "write placeholders as {version} or {arch}") from None
        if fields - {"version", "arch"}:
            raise Bad(f"unknown placeholder {{{sorted(fields - {'version', 'arch'})[0]}}}",
                      "only {version} and {arch} are replaced")
        return text
    return parse_template


def _repository(value: Any) -> str:
    try:
        return str(Repository.parse(_text(value)))
    except ValueError as err:
        raise Bad(str(err), "write the repository without tag or digest, e.g. "
                  "https://registry.example.lan/k8s/pause (http:// only for a plain-HTTP registry)") from None


def _registry(base: Path) -> Callable[[Any], str]:
    location = _location(base)

    def parse_registry(value: Any) -> str:
        text = location(value)
        if not text.startswith(("http://", "https://")):
            raise Bad(f"'{text}' is not an http(s) URL", "write e.g. https://registry.example.lan or "
                      "http://127.0.0.1:5000 (a registry, not a directory)")
        return text
    return parse_registry


def _pins_file(base: Path) -> Callable[[Any], Path]:
    def parse_pins_file(value: Any) -> Path:
        text = _text(value)
        if "://" in text:
            raise Bad(f"'{value}' is a URL", "name a local YAML file (relative to the inventory), e.g. site-pins.yaml")
        # As written, links unresolved: the path every later run opens, wherever a link then leads.
        return (base / Path(text).expanduser()).absolute()
    return parse_pins_file
