"""The two moments every cert decision reads.

Certs are dated by the system clock, always (:func:`system_now`, :func:`issue_time`).
Decisions (due, expired, not yet valid) are made for :func:`now`: the system clock, or
``KTHW_NOW`` (an ISO 8601 date or time, UTC when no zone is given) for a preview of what
will be due by then. A preview only reads: a run that would write a cert while
``KTHW_NOW`` is set refuses, since a cert renewed today for a date that has not come is
due again at once, on every run. The preview command is ``doit expiry --at 2027-10-01``.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

from kthw.errors import KthwError

ENV = "KTHW_NOW"

# The earliest moment at which a calendar decision made by this process would come out
# differently (see :func:`decided_until`): a record that nothing was due holds until then.
_next_change: datetime | None = None


def system_now() -> datetime:
    """The system clock in UTC, to the second: the only time ever written into a cert."""
    return datetime.now(timezone.utc).replace(microsecond=0)


def now() -> datetime:
    """The moment expiry decisions are made for: ``KTHW_NOW`` when set, else the system clock."""
    text = os.environ.get(ENV)
    if not text:
        return system_now()
    return parse(text, ENV, "or unset it")


def parse(text: str, what: str, alternative: str) -> datetime:
    """An ISO 8601 date or time given as ``what`` (an option or variable), in UTC."""
    try:
        return in_utc(datetime.fromisoformat(text.strip()))
    except (ValueError, OverflowError):
        raise KthwError(f"{what}={text!r} is not an ISO 8601 date or time; use e.g. 2027-10-01 "
                        f"or 2027-10-01T12:00:00+00:00, {alternative}") from None


def issue_time() -> datetime:
    """The moment a new cert starts from: the system clock. Refuses while ``KTHW_NOW`` is set."""
    preview = os.environ.get(ENV)
    if preview:
        raise KthwError(
            f"{ENV}={preview} is set: it previews decisions, but certs are always dated by the system clock "
            f"({system_now():%Y-%m-%d %H:%M} UTC), and a cert renewed now for a later date would be due again "
            f"at once. Nothing was written. To see what will be due by then, run 'doit expiry --at "
            f"{preview}'; to build, unset {ENV}")
    return system_now()


def in_utc(moment: datetime) -> datetime:
    """``moment`` in UTC to the second; a time without a zone is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).replace(microsecond=0)


def decided_until(now: datetime, *thresholds: datetime) -> None:
    """Note that a decision just made for ``now`` changes when the clock reaches the first of
    ``thresholds`` still ahead (one already passed stays passed while the clock goes forward)."""
    global _next_change
    for moment in thresholds:
        if moment > now and (_next_change is None or moment < _next_change):
            _next_change = moment


def next_change() -> datetime | None:
    """The earliest moment noted by :func:`decided_until` in this process; None when none was."""
    return _next_change
