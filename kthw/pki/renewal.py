"""Renewal policy: given what a cert says (see :mod:`kthw.crypto`), must it be issued again?"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509

from kthw import clock
from kthw.crypto import CertSpec, read_facts, signed_by

# A notAfter that differs from the expected one by less than this is the same lifetime.
_LIFETIME_SLACK = timedelta(seconds=2)


@dataclass(frozen=True)
class Reason:
    """Why a cert must be issued again.

    ``due`` reasons come from the calendar (expired, or inside the renewal window);
    the others from a change of spec or issuer, or from dates that have not begun
    (``not_yet_valid``: such a cert breaks its chain today, so even the root is re-signed,
    with the same key and subject). The root CA is never renewed for a ``due`` reason:
    that is a manual procedure.
    """

    text: str
    due: bool = False
    not_yet_valid: bool = False


def renewal_reason(spec: CertSpec, cert: x509.Certificate | None, issuer: x509.Certificate | None,
                   now: datetime, window: timedelta) -> Reason | None:
    """None when ``cert`` still fits ``spec``, is signed by ``issuer`` and is outside ``window``.

    ``issuer`` is None for a self-signed cert.
    """
    if cert is None:
        return Reason("missing")
    facts = read_facts(cert)
    if facts.common_name != spec.common_name or facts.organizations != spec.organizations:
        return Reason("subject changed")
    if facts.dns_names != frozenset(spec.dns_names) or facts.ip_addresses != frozenset(spec.ip_addresses):
        return Reason("subject alternative names changed")
    if facts.usages != spec.usages:
        return Reason("key usages changed")
    if not spec.is_ca and facts.key_algorithm != spec.key_algorithm:
        return Reason(f"key algorithm changed ({facts.key_algorithm} -> {spec.key_algorithm})")
    signer = issuer if issuer is not None else cert
    if not signed_by(cert, signer):
        return Reason("issuer changed")
    expected_end = facts.not_before + spec.lifetime
    if issuer is not None:
        expected_end = min(expected_end, issuer.not_valid_after_utc)
    if abs(facts.not_after - expected_end) > _LIFETIME_SLACK:
        return Reason("lifetime changed")
    return date_reason(cert, issuer, now, window)


def date_reason(cert: x509.Certificate, issuer: x509.Certificate | None, now: datetime,
                window: timedelta) -> Reason | None:
    """What the calendar says of ``cert`` at ``now``: not valid yet, or due (see :class:`Reason`)."""
    reason = validity_reason(cert.not_valid_before_utc, cert.not_valid_after_utc, now, window)
    if reason is not None and reason.due and issuer is not None \
            and issuer.not_valid_after_utc - cert.not_valid_after_utc <= _LIFETIME_SLACK:
        # Already as long as the issuer allows: a new cert would end at the same moment.
        # The issuer is the one due; the expiry report shows it.
        return None
    return reason


def validity_reason(not_before: datetime, not_after: datetime, now: datetime, window: timedelta) -> Reason | None:
    """A cert's dates at ``now``: not valid yet (made on a clock ahead of this one), or due."""
    clock.decided_until(now, not_before)
    if not_before > now:
        return Reason(f"not valid before {not_before:%Y-%m-%d %H:%M} UTC: dated in the future", not_yet_valid=True)
    return calendar_reason(not_after, now, window)


def calendar_reason(not_after: datetime, now: datetime, window: timedelta) -> Reason | None:
    """Due when ``not_after`` has passed or is at most ``window`` away."""
    clock.decided_until(now, not_after - window, not_after)
    if not_after <= now:
        return Reason(f"expired on {not_after:%Y-%m-%d}", due=True)
    if not_after - now <= window:
        return Reason(f"expires on {not_after:%Y-%m-%d}, inside the {window.days}-day renewal window", due=True)
    return None
