"""The record a full check leaves when it found nothing to do, and the test that it still holds.

A `doit` with nothing stale still reads the inventory, makes every task and checks each one.
When the last full check found nothing to do, the next `doit` may stop at once, but only
while nothing that check read can have changed. The record keeps a fingerprint of:

- every file and directory under the watched trees (the build, the bundles, the vendored
  files, the code): path, type, mode, inode, size, mtime and ctime. The ctime moves on any
  write, chmod or rename and cannot be set back, so a file edited and given its old mtime
  back still counts as changed;
- the entries of the watched listings (the project and inventory directories), one level;
- the watched files (the inventory, the site pins, the import path's directories, whose
  mtimes move when a package is installed, upgraded or removed); a missing one counts too;
- the setting the caller passes (working directory, interpreter, environment).

and the span of time in which the check's calendar decisions hold: from the moment it was
recorded (a clock set back may make a cert 'not valid yet') to the first moment one of them
would change (:func:`kthw.clock.decided_until`).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

FORMAT = 1
# Not read by any check: Python's bytecode caches and version control.
_SKIPPED = frozenset({"__pycache__", ".git"})


@dataclass(frozen=True)
class Watched:
    """What a check read, by how it is fingerprinted."""

    trees: tuple[str, ...]     # recursively, every entry
    listings: tuple[str, ...]  # one level: the files' stats, the directories' names
    files: tuple[str, ...]     # each stat'ed itself, a directory's mtime included


@dataclass(frozen=True)
class Record:
    """A full check found nothing to do; it holds while ``fingerprint`` does and the clock is in
    [``checked_at``, ``holds_until``) (no end when no calendar decision was made)."""

    watched: Watched
    fingerprint: str
    checked_at: datetime
    holds_until: datetime | None


@dataclass(frozen=True)
class Snapshot:
    """What :func:`snapshot` saw."""

    fingerprint: str       # of everything watched but the skipped names
    steady: str            # the same without the volatile names
    newest_change_ns: int  # the latest ctime among the steady files (0 when none)


def snapshot(watched: Watched, setting: Iterable[str], skipped: frozenset[str] = frozenset(),
             volatile: frozenset[str] = frozenset()) -> Snapshot:
    """One walk of ``watched``, with ``setting``. Entries named in ``skipped`` (the record's own
    file) are left out; those in ``volatile`` (a file rewritten by every run) count only in
    ``fingerprint``. Raises OSError when an entry cannot be read (such a state is not recorded)."""
    walk = _Walk(["setting", *setting, "trees"], _SKIPPED | skipped, volatile)
    for tree in watched.trees:
        walk.directory(tree, recursive=True)
    walk.lines.append("listings")
    for directory in watched.listings:
        walk.directory(directory, recursive=False)
    walk.lines.append("files")
    for path in watched.files:
        walk.lines.append(walk.stat_line(path, with_times=True))
    steady = "\n".join(walk.lines)
    return Snapshot(_digest(steady, *walk.volatile_lines), _digest(steady), walk.newest)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode("utf-8", "surrogateescape")).hexdigest()


class _Walk:
    """The lines of one snapshot as they are gathered (a plain class: a dataclass costs a
    millisecond at import, paid by every run that stops early)."""

    __slots__ = ("lines", "newest", "skip", "volatile", "volatile_lines")

    def __init__(self, lines: list[str], skip: frozenset[str], volatile: frozenset[str]):
        self.lines, self.skip, self.volatile = lines, skip, volatile
        self.volatile_lines: list[str] = []
        self.newest = 0

    def stat_line(self, path: str, with_times: bool, steady: bool = True) -> str:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return f"{path}\0absent"
        if stat.S_ISDIR(st.st_mode) and not with_times:
            return f"{path}\0{st.st_mode}"
        if steady and st.st_ctime_ns > self.newest:
            self.newest = st.st_ctime_ns
        return f"{path}\0{st.st_mode}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}"

    def directory(self, root: str, recursive: bool) -> None:
        """Every entry under ``root`` in name order. Symbolic links are followed (a check reads
        what they point to), each directory reached through one once."""
        pending: list[str] = [root]
        followed: set[tuple[int, int]] = set()
        while pending:
            directory = pending.pop()
            try:
                with os.scandir(directory) as listing:
                    entries = sorted(listing, key=_name)
            except (FileNotFoundError, NotADirectoryError):
                self.lines.append(self.stat_line(directory, with_times=True))
                continue
            for entry in entries:
                if entry.name in self.skip:
                    continue
                if entry.name in self.volatile:
                    self.volatile_lines.append(self.stat_line(entry.path, with_times=False, steady=False))
                    continue
                # A directory's mtime and ctime move when an entry is added or removed, which the
                # entries' own lines already show: left out, so writing the record is no change.
                self.lines.append(self.stat_line(entry.path, with_times=False))
                if entry.is_symlink():
                    self.lines.append(f"{entry.path}\0->\0{os.readlink(entry.path)}")
                    if recursive and entry.is_dir():
                        self._follow(entry.path, pending, followed)
                elif recursive and entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)

    @staticmethod
    def _follow(path: str, pending: list[str], followed: set[tuple[int, int]]) -> None:
        target = os.stat(path)
        if (target.st_dev, target.st_ino) not in followed:
            followed.add((target.st_dev, target.st_ino))
            pending.append(path)


def _name(entry: os.DirEntry) -> str:
    return entry.name


def to_json(record: Record) -> bytes:
    return json.dumps({
        "format": FORMAT,
        "fingerprint": record.fingerprint,
        "checked_at": record.checked_at.isoformat(),
        "holds_until": record.holds_until.isoformat() if record.holds_until else None,
        "watched": {"trees": record.watched.trees, "listings": record.watched.listings,
                    "files": record.watched.files},
    }, indent=1).encode() + b"\n"


def read(path: Path) -> Record | None:
    """The record at ``path``; None when there is none, or it is unreadable, torn or of another format."""
    try:
        data = json.loads(path.read_bytes())
        if data["format"] != FORMAT:
            return None
        watched = data["watched"]
        return Record(
            watched=Watched(*(tuple(str(item) for item in watched[kind]) for kind in ("trees", "listings", "files"))),
            fingerprint=str(data["fingerprint"]),
            checked_at=datetime.fromisoformat(data["checked_at"]),
            holds_until=datetime.fromisoformat(data["holds_until"]) if data["holds_until"] else None)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def holds(path: Path, setting: Iterable[str], now: datetime, skipped: frozenset[str],
          volatile: frozenset[str]) -> bool:
    """Whether the record at ``path`` exists and still holds: the clock is within its span and
    nothing it fingerprinted (with ``skipped`` and ``volatile`` as when it was made) changed."""
    record = read(path)
    if record is None or now < record.checked_at or (record.holds_until is not None and now >= record.holds_until):
        return False
    try:
        return snapshot(record.watched, setting, skipped, volatile).fingerprint == record.fingerprint
    except OSError:
        return False
