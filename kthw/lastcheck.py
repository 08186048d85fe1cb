"""The record a full check leaves when it found nothing to do, and the test that it still holds.

A `doit` with nothing stale still reads the inventory, makes every task and checks each one.
When the last full check found nothing to do, the next `doit` may stop at once, but only
while nothing that check read can have changed. The record keeps a fingerprint of:

- every file and directory under the watched trees (the build, the bundles, the vendored
  files) and code trees (ours, and every third-party package the check loaded; their
  bytecode caches left out): path, type, mode, owner, inode, size, mtime and ctime. The
  ctime moves on any write, chmod or rename and cannot be set back, so a file edited and
  given its old mtime back still counts as changed;
- the names and kinds of the entries of the watched listings (the project and inventory
  directories): an entry added or removed counts, a log written there does not;
- the watched files (the inventory, the site pins, doit's configuration files, the import
  path's directories, whose mtimes move when a package is installed, upgraded or removed);
  a missing one counts too;
- the setting the caller passes (working directory, user, interpreter, environment).

and the span of time in which the check's calendar decisions hold: from the moment it was
recorded (a clock set back may make a cert 'not valid yet') to the first moment one of them
would change (:func:`kthw.clock.decided_until`).

Paths are compared as written: relative ones are relative to the working directory, which
is part of the setting.
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

FORMAT = 2
# Left out of code trees: Python's bytecode caches and version control, which no check reads.
_NOT_CODE = frozenset({"__pycache__", ".git"})
_NOTHING: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Watched:
    """What a check read, by how it is fingerprinted."""

    trees: tuple[str, ...]     # recursively, every entry
    code: tuple[str, ...]      # the same, bytecode caches and version control left out
    listings: tuple[str, ...]  # one level: the entries' names and kinds
    files: tuple[str, ...]     # each stat'ed itself, a directory's mtime included

    def covers(self, other: Watched) -> bool:
        """Whether every path ``other`` watches is watched here the same way."""
        return all(set(getattr(other, kind)) <= set(getattr(self, kind)) for kind in ("trees", "code", "listings",
                                                                                     "files"))


@dataclass(frozen=True)
class Record:
    """A full check found nothing to do; it holds while ``fingerprint`` does and the clock is in
    [``checked_at``, ``holds_until``). ``warnings``: what that check warned of, as a run that
    stops on the record warns again."""

    watched: Watched
    fingerprint: str
    checked_at: datetime
    holds_until: datetime
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Snapshot:
    """What :func:`snapshot` saw."""

    fingerprint: str       # of everything watched but the skipped paths
    steady: str            # the same without the volatile paths
    newest_change_ns: int  # the latest ctime among the steady files (0 when none)


def snapshot(watched: Watched, setting: Iterable[str], skipped: frozenset[str] = _NOTHING,
             volatile: frozenset[str] = _NOTHING) -> Snapshot:
    """One walk of ``watched``, with ``setting``. The entries at the paths in ``skipped`` (the
    record's own file) are left out; those in ``volatile`` (a file rewritten by every run, or
    a whole tree) count only in ``fingerprint``, which does not depend on ``volatile``.
    Raises OSError when an entry cannot be read (such a state is not recorded)."""
    walk = _Walk(skipped, volatile)
    for line in ("setting", *setting, "trees"):
        walk.add(line)
    for tree in watched.trees:
        walk.directory(tree)
    walk.add("code")
    for tree in watched.code:
        walk.directory(tree, not_code=_NOT_CODE)
    walk.add("listings")
    for directory in watched.listings:
        walk.names(directory)
    walk.add("files")
    for path in watched.files:
        walk.add(walk.stat_line(path, with_times=True, steady=path not in volatile), path not in volatile)
    return Snapshot(_digest(walk.lines), _digest(walk.steady_lines), walk.newest)


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


class _Walk:
    """The lines of one snapshot as they are gathered (a plain class: a dataclass costs a
    millisecond at import, paid by every run that stops early)."""

    __slots__ = ("lines", "newest", "skipped", "steady_lines", "volatile")

    def __init__(self, skipped: frozenset[str], volatile: frozenset[str]):
        self.skipped, self.volatile = skipped, volatile
        self.lines: list[str] = []
        self.steady_lines: list[str] = []
        self.newest = 0

    def add(self, line: str, steady: bool = True) -> None:
        self.lines.append(line)
        if steady:
            self.steady_lines.append(line)

    def stat_line(self, path: str, with_times: bool, steady: bool = True) -> str:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return f"{path}\0absent"
        owner = f"{path}\0{st.st_mode}\0{st.st_uid}\0{st.st_gid}"
        if stat.S_ISDIR(st.st_mode) and not with_times:
            return owner
        if steady and st.st_ctime_ns > self.newest:
            self.newest = st.st_ctime_ns
        return f"{owner}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}"

    def directory(self, root: str, not_code: frozenset[str] = _NOTHING) -> None:
        """Every entry under ``root`` in name order, but those named in ``not_code``. Symbolic
        links are followed (a check reads what they point to), each directory reached through
        one once."""
        steady_tree = root not in self.volatile
        pending: list[str] = [root]
        followed: set[tuple[int, int]] = set()
        while pending:
            directory = pending.pop()
            try:
                with os.scandir(directory) as listing:
                    entries = sorted(listing, key=_name)
            except (FileNotFoundError, NotADirectoryError):
                self.add(self.stat_line(directory, with_times=True, steady=steady_tree), steady_tree)
                continue
            for entry in entries:
                if entry.name in not_code or entry.path in self.skipped:
                    continue
                steady = steady_tree and entry.path not in self.volatile
                # A directory's mtime and ctime move when an entry is added or removed, which the
                # entries' own lines already show: left out, so writing the record is no change.
                self.add(self.stat_line(entry.path, with_times=False, steady=steady), steady)
                if entry.is_symlink():
                    self.add(f"{entry.path}\0->\0{os.readlink(entry.path)}", steady)
                    if entry.is_dir():
                        self._follow(entry.path, pending, followed)
                elif entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)

    def names(self, directory: str) -> None:
        """The names and kinds of the entries of ``directory``: one added, removed or replaced by
        another kind counts, a file written in place (a log, a shell history) does not."""
        try:
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=_name)
        except (FileNotFoundError, NotADirectoryError):
            self.add(f"{directory}\0absent")
            return
        for entry in entries:
            if entry.path in self.skipped:
                continue
            kind = f"->{os.readlink(entry.path)}" if entry.is_symlink() else "dir" if entry.is_dir() else "file"
            self.add(f"{entry.path}\0{kind}")

    @staticmethod
    def _follow(path: str, pending: list[str], followed: set[tuple[int, int]]) -> None:
        target = os.stat(path)
        if (target.st_dev, target.st_ino) not in followed:
            followed.add((target.st_dev, target.st_ino))
            pending.append(path)


def _name(entry: os.DirEntry) -> str:
    return entry.name


_KINDS = ("trees", "code", "listings", "files")


def to_json(record: Record) -> bytes:
    return json.dumps({
        "format": FORMAT,
        "fingerprint": record.fingerprint,
        "checked_at": record.checked_at.isoformat(),
        "holds_until": record.holds_until.isoformat(),
        "warnings": record.warnings,
        "watched": {kind: getattr(record.watched, kind) for kind in _KINDS},
    }, indent=1).encode() + b"\n"


def read(path: Path) -> Record | None:
    """The record at ``path``; None when there is none, or it is unreadable, torn or of another format."""
    try:
        data = json.loads(path.read_bytes())
        if data["format"] != FORMAT:
            return None
        return Record(
            watched=Watched(*(tuple(str(item) for item in data["watched"][kind]) for kind in _KINDS)),
            fingerprint=str(data["fingerprint"]),
            checked_at=datetime.fromisoformat(data["checked_at"]),
            holds_until=datetime.fromisoformat(data["holds_until"]),
            warnings=tuple(str(text) for text in data["warnings"]))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def holding(path: Path, setting: Iterable[str], now: datetime, at_least: Watched,
            skipped: frozenset[str]) -> Record | None:
    """The record at ``path`` when it still holds: it watches at least ``at_least``, the clock
    is within its span, and nothing it fingerprinted (with ``skipped`` as when it was made)
    changed. None otherwise."""
    record = read(path)
    if record is None or not record.watched.covers(at_least) or not record.checked_at <= now < record.holds_until:
        return None
    try:
        current = snapshot(record.watched, setting, skipped).fingerprint
    except OSError:
        return None
    return record if current == record.fingerprint else None
