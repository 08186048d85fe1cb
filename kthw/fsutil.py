"""Writing files so that a crash never leaves half of one behind."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from kthw.errors import KthwError

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644

# atomic_write's temp files: ".<name>.<8 random characters>.tmp" beside their target.
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
# A temp file older than this process was left by an interrupted run; one in use is
# newer (this run's, or a parallel worker's: workers are forked after this import).
_STARTED = time.time()
_tidied: set[str] = set()
# The errors pathlib's is_dir() and exists() take for 'not there'.
_MISSING = (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP)


@contextlib.contextmanager
def atomic_file(path: Path, mode: int = PUBLIC_MODE, *, suffix: str = ".tmp",
                sync: bool = False) -> Iterator[IO[bytes]]:
    """A binary file (read and write) that replaces ``path`` when the ``with`` block ends.

    It is a temp file beside ``path``, ".<name>.<8 random characters><suffix>", created
    with ``mode`` already set, so a key is never readable by others, not even for a
    moment. An exception in the block (or from the rename) deletes it and leaves ``path``
    as it was. Its ``name`` is the temp file's path: a caller can check what it wrote (and
    raise) before it replaces ``path``. ``sync``: flush it to the disk before the rename.
    Errors are OSError; each caller says what they mean for its file.
    """
    path = Path(path)
    try:
        handle = _temp_file(path, suffix)
    except FileNotFoundError:  # first file of its directory; mkdir only then, it is not free
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = _temp_file(path, suffix)
    try:
        with handle:
            os.fchmod(handle.fileno(), mode)
            yield handle
            handle.flush()
            if sync:
                os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(handle.name)
        raise


_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"


def _owner_only(name: str, flags: int) -> int:
    return os.open(name, flags, SECRET_MODE)


def _temp_file(path: Path, suffix: str) -> IO[bytes]:
    """What tempfile.NamedTemporaryFile(delete=False) makes (an exclusive new file, mode 0600,
    a random name), without its wrapper and name checks: a third of the cost of each write."""
    for _ in range(100):
        name = os.path.join(path.parent, f".{path.name}.{''.join(random.choices(_NAME_CHARS, k=8))}{suffix}")
        try:
            return open(name, "x+b", opener=_owner_only)
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free temp file name for {path.name}")


def atomic_write(path: Path, data: bytes, mode: int = PUBLIC_MODE) -> bool:
    """Write ``data`` to ``path`` through :func:`atomic_file`.

    Returns False (and touches nothing) when the file already holds exactly these bytes
    with this mode, so mtimes stay put on reruns. The first write into a directory removes
    the temp files an interrupted run left there. No fsync: the rename already protects
    against a killed build, and a workstation power cut is rare enough not to pay a disk
    flush per certificate.
    """
    path = Path(path)
    _tidy_once(path.parent)
    with contextlib.suppress(FileNotFoundError):
        if path.read_bytes() == data and (path.stat().st_mode & 0o777) == mode:
            return False
    try:
        with atomic_file(path, mode) as handle:
            handle.write(data)
    except OSError as err:
        raise KthwError(f"{path}: cannot write ({err.strerror}); free some disk space or fix the "
                        "directory's permissions, then run again") from None
    return True


def remove_orphans(directory: Path) -> None:
    """Remove the temp files an interrupted run left in ``directory`` and below (killed
    before its rename, so each target still holds what it held before)."""
    for parent, _, files in os.walk(directory):
        _tidy(parent, files)


def _tidy_once(directory: Path) -> None:
    key = str(directory)
    if key not in _tidied:
        _tidied.add(key)
        with contextlib.suppress(FileNotFoundError):
            _tidy(key, os.listdir(key))


def _tidy(directory: str, names) -> None:
    for name in names:
        if _TEMP_NAME.match(name):
            path = os.path.join(directory, name)
            with contextlib.suppress(FileNotFoundError):
                if os.lstat(path).st_mtime < _STARTED:
                    os.unlink(path)


def remove(paths) -> None:
    """Delete derived files; missing ones are fine."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def stale_outputs(node_root: Path, node_paths: list[str], keep: list[Path]) -> list[Path]:
    """Files a stage can write on a node (``node_paths``, a directory meaning every file in
    it) that exist but are no longer the node's (not in ``keep``): left in place, a former control plane
    would carry sa.key, the encryption keys or the cluster-signing key in its bundle."""
    keep_set = set(keep)
    found = []
    for node_path in node_paths:
        path = node_root / node_path.lstrip("/")
        # One stat per path, where is_dir() then exists() took two: at 100 nodes this check
        # runs for some 3000 paths.
        try:
            is_dir = stat.S_ISDIR(os.stat(path).st_mode)
        except OSError as err:
            if err.errno in _MISSING:  # what is_dir() and exists() answer False to
                continue
            raise
        if is_dir:
            found += sorted(p for p in path.iterdir() if p.is_file() and p not in keep_set)
        elif path not in keep_set:
            found.append(path)
    return found


def remove_stale(node_root: Path, node_paths: list[str], keep: list[Path]) -> str:
    removed = stale_outputs(node_root, node_paths, keep)
    for path in removed:
        path.unlink()
    return "\n".join(f"removed {path} (no longer part of this node)" for path in removed)
