"""The early stop of a `doit` with nothing to do (the record is kthw.lastcheck's).

    doit ──► record holds? ──yes──► no task is made: done, nothing printed (as a no-op prints)
                   └──no──► record dropped ──► every task made and checked
                                 └──► every selected task current, nothing changed meanwhile,
                                      local CA ──► record written

Only a bare `doit` (or `doit run`) from the command line stops early: any argument, any
other command, ``KTHW_NOW`` or ``KTHW_FULL_CHECK=1`` makes the full check. With the Vault
backend nothing is recorded: the CAs live in Vault, which no fingerprint here can see.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import kthw
from kthw import clock

from . import DEP_FILE

if TYPE_CHECKING:
    from kthw import lastcheck

RECORD = Path("build") / ".last-check.json"
FULL_CHECK_ENV = "KTHW_FULL_CHECK"
# The variables the build reads (its own, Vault's, SOURCE_DATE_EPOCH), and those that
# change how Python and doit run or decode files.
_ENV_PREFIXES = ("KTHW_", "VAULT_", "BAO_", "PYTHON", "DOIT", "LC_")
_ENV_NAMES = frozenset({"SOURCE_DATE_EPOCH", "LANG", "LANGUAGE"})
_IMPORT_PATH = tuple(sys.path)  # as dodo.py leaves it, before any task module is loaded
_RECORD_ONLY = frozenset({RECORD.name})
# doit rewrites its database at every run, a no-op too (a group task's values, saved again
# unchanged), so the run is compared with its start without it; the record has it as it is left.
_DOIT_STATE = frozenset(Path(DEP_FILE).name + suffix for suffix in ("", "-journal", "-wal", "-shm"))

# A file changed this close to the record may change again within the same timestamp tick
# (a jiffy on Linux, 1-2 s on some file systems) and look the same: such a state is not recorded.
_RACY_NS = 2_000_000_000

# The full check of this run: what it reads, and their fingerprint before any task was checked.
_watched: lastcheck.Watched | None = None
_before: str | None = None


def _setting() -> list[str]:
    environment = sorted((name, value) for name, value in os.environ.items()
                         if name.startswith(_ENV_PREFIXES) or name in _ENV_NAMES)
    # The user too: what another one may read or write differs (a key readable only by its owner).
    return [os.getcwd(), f"{os.geteuid()}:{os.getegid()}:{sorted(os.getgroups())}", sys.executable, sys.version,
            repr(_IMPORT_PATH), repr(environment)]


def bare_doit() -> bool:
    """`doit` or `doit run` with no argument, from the command line (not doit called in-process)."""
    program, *arguments = sys.argv or [""]
    from_command_line = Path(program).name == "doit" or program.endswith(os.path.join("doit", "__main__.py"))
    return from_command_line and arguments in ([], ["run"])


def _may_stop_early() -> bool:
    return bare_doit() and not os.environ.get(clock.ENV) and not os.environ.get(FULL_CHECK_ENV)


def nothing_changed() -> bool:
    """The last full check found nothing to do and nothing it read has changed since."""
    if not _may_stop_early():
        return False
    from kthw import lastcheck  # here and below: a run that cannot stop early never loads it
    return lastcheck.holds(RECORD, _setting(), clock.system_now(), _RECORD_ONLY, _DOIT_STATE)


def begin(inventory_file: Path, site_pins: Path | None, vault_backend: bool, trees: Iterable[Path]) -> None:
    """Before any task is checked: drop the record (a run that changes anything must leave none)
    and, when this run may leave one, fingerprint what its check will read."""
    global _watched, _before
    RECORD.unlink(missing_ok=True)
    if not _may_stop_early() or vault_backend:
        return
    from kthw import lastcheck
    code = (Path(kthw.__file__).parent, Path(__file__).parent)
    _watched = lastcheck.Watched(
        trees=tuple(str(tree) for tree in (*trees, *code)),
        listings=tuple(dict.fromkeys((os.curdir, str(inventory_file.parent)))),
        files=(str(inventory_file), *([str(site_pins)] if site_pins else []),
               *(entry or os.curdir for entry in _IMPORT_PATH)))
    try:
        _before = lastcheck.snapshot(_watched, _setting(), _RECORD_ONLY, _DOIT_STATE).steady
    except OSError:
        _before = None


def finish(everything_current: bool) -> bool:
    """After a run that checked every task of the default selection and found each current
    (``everything_current``): write the record, unless anything it read changed during the run
    or too shortly before its end. Whether it was written."""
    if not everything_current or _watched is None or _before is None:
        return False
    from kthw import lastcheck
    from kthw.fsutil import atomic_write
    checked_at = clock.system_now()  # after every check of the run: a clock set back before it stops the record
    try:
        after = lastcheck.snapshot(_watched, _setting(), _RECORD_ONLY, _DOIT_STATE)
    except OSError:
        return False
    if after.steady != _before or after.newest_change_ns > time.time_ns() - _RACY_NS:  # the files' clock
        return False
    record = lastcheck.Record(_watched, after.fingerprint, checked_at, clock.next_change())
    atomic_write(RECORD, lastcheck.to_json(record))
    return True
