"""The one clock every expiry decision reads.

``KTHW_NOW`` (an ISO 8601 date or time, UTC when no zone is given) moves it, for
tests and for "what will be due by then" questions: ``KTHW_NOW=2027-10-01 doit expiry``.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

from .errors import KthwError

ENV = "KTHW_NOW"


def now() -> datetime:
    text = os.environ.get(ENV)
    if not text:
        return datetime.now(timezone.utc).replace(microsecond=0)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise KthwError(f"{ENV}={text!r} is not an ISO 8601 date or time; use e.g. 2027-10-01 "
                        "or 2027-10-01T12:00:00+00:00, or unset it") from None
    return in_utc(moment)


def in_utc(moment: datetime) -> datetime:
    """``moment`` in UTC to the second; a time without a zone is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).replace(microsecond=0)
