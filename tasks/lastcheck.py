"""The early stop of a `doit` with nothing to do (the record is kthw.lastcheck's).

    doit ──► record holds? ──yes──► no task is made: its warnings again, done
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
from kthw.errors import warn

from . import DEP_FILE, inventory_file

if TYPE_CHECKING:
    from kthw import lastcheck

RECORD = Path(DEP_FILE).parent / ".last-check.json"  # beside doit's database, in build/
FULL_CHECK_ENV = "KTHW_FULL_CHECK"
# The variables the build reads (its own, Vault's, SOURCE_DATE_EPOCH, HOME for a '~' in the
# inventory's paths), and those that change how Python, doit and OpenSSL run or decode files.
_ENV_PREFIXES = ("KTHW_", "VAULT_", "BAO_", "PYTHON", "DOIT", "LC_", "OPENSSL_")
_ENV_NAMES = frozenset({"SOURCE_DATE_EPOCH", "HOME", "LANG", "LANGUAGE"})
_IMPORT_PATH = tuple(sys.path)  # as dodo.py leaves it, before any task module is loaded
_DOIT_STATE_SUFFIXES = ("", "-journal", "-wal", "-shm")
# What doit reads in the directory it starts in, besides dodo.py.
_DOIT_CONFIG_FILES = ("dodo.py", "doit.cfg", "pyproject.toml")
# A file changed this close to the record may change again within the same timestamp tick
# (a jiffy on Linux, 1-2 s on some file systems) and look the same: such a state is not recorded.
RACY_NS = 2_000_000_000

# The full check of this run: what it reads, and how it stood before any task was checked.
_watched: lastcheck.Watched | None = None
_before: tuple[str, str] | None = None
_warnings: tuple[str, ...] = ()
_inventory_before: tuple[int, ...] | None = None  # the inventory's file before it was read


def _setting() -> list[str]:
    environment = sorted((name, value) for name, value in os.environ.items()
                         if name.startswith(_ENV_PREFIXES) or name in _ENV_NAMES)
    # The user too: what another one may read or write differs (a key readable only by its owner).
    return [os.getcwd(), f"{os.geteuid()}:{os.getegid()}:{sorted(os.getgroups())}", sys.executable, sys.version,
            repr(sys.flags), repr(_IMPORT_PATH), repr(environment)]


def _in_build(*names: str) -> frozenset[str]:
    """Absolute paths as the walk of build/ names its entries."""
    return frozenset(os.path.join(os.getcwd(), RECORD.parent, name) for name in names)


def _skipped() -> frozenset[str]:
    return _in_build(RECORD.name)


def _doit_state() -> frozenset[str]:
    # doit rewrites its database at every run, a no-op too (a group task's values, saved again
    # unchanged): a run is compared with its start by the database's rows, not its file.
    return _in_build(*(Path(DEP_FILE).name + suffix for suffix in _DOIT_STATE_SUFFIXES))


def _known_watched() -> lastcheck.Watched:
    """What every full check reads, known without the inventory: a record must watch at least this."""
    from kthw import lastcheck
    from kthw.layout import Layout
    layout = Layout(Path.cwd())
    return lastcheck.Watched(
        trees=(str(layout.build), str(layout.bundles), str(layout.vendor)),
        code=(str(Path(kthw.__file__).parent), str(Path(__file__).parent)),
        listings=(os.curdir,),
        files=(str(inventory_file(None)), *_DOIT_CONFIG_FILES, *(entry or os.curdir for entry in _IMPORT_PATH)))


def bare_doit() -> bool:
    """`doit` or `doit run` with no argument, from the command line (not doit called in-process)."""
    program, *arguments = sys.argv or [""]
    from_command_line = Path(program).name == "doit" or program.endswith(os.path.join("doit", "__main__.py"))
    return from_command_line and arguments in ([], ["run"])


def _may_stop_early() -> bool:
    return bare_doit() and not os.environ.get(clock.ENV) and os.environ.get(FULL_CHECK_ENV, "") in ("", "0")


def nothing_changed() -> bool:
    """The last full check found nothing to do and nothing it read has changed since; its
    warnings are shown again."""
    if not _may_stop_early():
        return False
    from kthw import lastcheck  # here and below: a run that cannot stop early never loads it
    record = lastcheck.holding(RECORD, _setting(), clock.system_now(), _known_watched(), _skipped())
    for text in record.warnings if record else ():
        warn(text)
    return record is not None


def drop() -> None:
    """Any run that makes its tasks starts here, before the inventory is read: whatever it
    changes, no earlier record stays; and how the inventory stands is noted first."""
    global _inventory_before
    RECORD.unlink(missing_ok=True)
    _inventory_before = _stat(inventory_file(None))


def _stat(path: Path) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def begin(inventory: Path, site_pins: Path | None, warnings: Iterable[str], vault_backend: bool) -> None:
    """Before any task is checked: when this run may leave a record, note what its check will
    read and how that stands now."""
    global _watched, _before, _warnings
    if not _may_stop_early() or vault_backend:
        return
    from kthw import lastcheck
    known = _known_watched()
    _watched = lastcheck.Watched(
        trees=known.trees, code=known.code,
        listings=tuple(dict.fromkeys((*known.listings, str(inventory.parent)))),
        files=tuple(dict.fromkeys((str(inventory), *([str(site_pins)] if site_pins else []), *known.files))))
    _warnings = tuple(warnings)
    rows = _doit_rows()
    try:
        steady = lastcheck.snapshot(_watched, _setting(), _skipped(), _doit_state()).steady
    except OSError:
        return
    # An edit between reading the inventory and this walk would be in both walks, unseen.
    unchanged_since_read = _inventory_before is not None and _stat(inventory) == _inventory_before
    if rows is not None and unchanged_since_read:
        _before = (steady, rows)


def finish(everything_current: bool) -> bool:
    """After a run that checked every task of the default selection and found each current
    (``everything_current``): write the record, unless anything it read changed during the run
    or too shortly before its end. Whether it was written."""
    if not everything_current or _watched is None or _before is None:
        return False
    from kthw import lastcheck
    from kthw.fsutil import atomic_write
    checked_at = clock.system_now()  # after every check of the run: a clock set back before it stops the record
    holds_until = clock.next_change()
    libraries = _third_party_code(_watched.code)
    watched = lastcheck.Watched(_watched.trees, _watched.code + libraries.code, _watched.listings,
                                _watched.files + libraries.files)
    try:
        # The libraries first loaded during the run count in the record, not in the comparison.
        after = lastcheck.snapshot(watched, _setting(), _skipped(),
                                   _doit_state() | set(libraries.code) | set(libraries.files))
    except OSError:
        return False
    if (after.steady, _doit_rows()) != _before or after.newest_change_ns > time.time_ns() - RACY_NS \
            or holds_until is None:  # the files' clock; a local CA's build always decides on dates
        return False
    atomic_write(RECORD, lastcheck.to_json(lastcheck.Record(watched, after.fingerprint, checked_at, holds_until,
                                                            _warnings)))
    return True


def _doit_rows() -> str | None:
    """A digest of doit's database rows (its file changes at every run); None when they cannot be read."""
    import contextlib
    import hashlib
    import sqlite3
    path = Path(DEP_FILE).absolute()
    if not path.exists():
        return "absent"
    try:
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
            rows = db.execute("SELECT task_id, task_data FROM doit ORDER BY task_id").fetchall()
    except sqlite3.Error:
        return None
    return hashlib.sha256(repr(rows).encode()).hexdigest()


def _third_party_code(ours: Iterable[str]) -> lastcheck.Watched:
    """Every package and module outside the standard library that this process loaded: a
    library changed in place (a same-version update) may decide differently. ``ours``: the
    code trees already watched."""
    import sysconfig

    from kthw import lastcheck
    paths = sysconfig.get_paths()
    standard = tuple(paths[name] + os.sep for name in ("stdlib", "platstdlib"))
    installed = tuple(paths[name] + os.sep for name in ("purelib", "platlib"))
    own = tuple(root + os.sep for root in ours)
    packages, modules = set(), set()
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if "." in name or not file or file.startswith(own) \
                or (file.startswith(standard) and not file.startswith(installed)):
            continue
        if os.path.basename(file).startswith("__init__."):
            packages.add(os.path.dirname(file))
        else:
            modules.add(file)
    return lastcheck.Watched((), tuple(sorted(packages)), (), tuple(sorted(modules)))
