"""The record of a three-phase key rotation, kept in build/state between explicit runs.

The encryption-key and the service-account key rotations both go: add the new key,
put it first (it signs / encrypts), drop the old one; one `doit rotate_*` run per phase.
The record says which phase was reached and which key is old and which new.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml

from kthw.errors import StateError
from kthw.fsutil import PUBLIC_MODE, atomic_write

IDLE = "idle"
_FIELDS = {"phase", "old_key", "new_key", "at"}


@dataclass(frozen=True)
class PhaseRecord:
    """Where a key rotation stands, as recorded in the state file."""

    phase: str
    old_key: str
    new_key: str
    at: str


def _bad(path: Path, problem: str, what: str) -> StateError:
    return StateError(f"{path}: {problem}. It was left as it is: restore it from a backup of build/state "
                      f"(it records the phase of {what})")


def read(path: Path, phases: tuple[str, ...], what: str,
         key_ok: Callable[[str], bool] = lambda key: bool(key), key_form: str = "key names") -> PhaseRecord:
    """The recorded phase, or IDLE when no rotation ever ran. ``what`` names the rotation."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_bytes())
    except FileNotFoundError:
        return PhaseRecord(IDLE, "", "", "")
    except OSError as err:
        raise _bad(path, f"cannot be read ({err.strerror})", what) from None
    except yaml.YAMLError as err:
        raise _bad(path, f"not valid YAML ({err})", what) from None
    if not isinstance(data, dict) or set(data) != _FIELDS or data["phase"] not in phases \
            or not all(isinstance(data[k], str) and key_ok(data[k]) for k in ("old_key", "new_key")) \
            or data["old_key"] == data["new_key"]:
        raise _bad(path, f"not a rotation record (phase: {'|'.join(phases)}; old_key and new_key: two different "
                         f"{key_form}; at)", what)
    return PhaseRecord(data["phase"], data["old_key"], data["new_key"], str(data["at"]))


def write(path: Path, phase: str, old_key: str, new_key: str, now: datetime, header: str = "") -> None:
    record = {"phase": phase, "old_key": old_key, "new_key": new_key, "at": now.strftime("%Y-%m-%dT%H:%M:%SZ")}
    atomic_write(path, (header + yaml.safe_dump(record, sort_keys=False)).encode(), PUBLIC_MODE)
