"""doit task creators, one module per stage. ``dodo.py`` only gathers them."""

from __future__ import annotations

import functools
import importlib
import os
import pkgutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from doit.dependency import MD5Checker, get_file_md5
from doit.reporter import ExecutedOnlyReporter


class ProgressOnStderr(ExecutedOnlyReporter):
    """Lists only the tasks that run (a rerun with nothing stale prints nothing), on
    stderr, so that stdout carries only what tasks print (`doit expiry --json | jq`)."""

    def __init__(self, outstream, options):
        super().__init__(sys.stderr, options)


class SharedFileChecker(MD5Checker):
    """doit's md5 checker, hashing each changed file once per run instead of once per task
    that depends on it: every bundle of an arch depends on the same ~300 MB of binaries."""

    _md5: ClassVar[dict[tuple, str]] = {}  # shared by every checker of the run

    def _hash(self, path: str, stat: os.stat_result) -> str:
        key = (path, stat.st_mtime_ns, stat.st_size)
        if key not in self._md5:
            self._md5[key] = get_file_md5(path)
        return self._md5[key]

    def check_modified(self, file_path, file_stat, state):
        timestamp, size, file_md5 = state
        if file_stat.st_mtime == timestamp:
            return False
        if file_stat.st_size != size:
            return True
        return file_md5 != self._hash(file_path, file_stat)

    def get_state(self, dep, current_state):
        stat = os.stat(dep)
        if current_state and current_state[0] == stat.st_mtime:
            return None
        return stat.st_mtime, stat.st_size, self._hash(dep, stat)


DEP_FILE = "build/.doit.db"

DOIT_CONFIG = {
    # `doit vendor` is left out: it is the one stage that needs the network.
    "default_tasks": ["pki", "secrets", "render", "bundle"],
    "dep_file": DEP_FILE,
    "backend": "sqlite3",
    "reporter": ProgressOnStderr,
    "check_file_uptodate": SharedFileChecker,
}


@functools.cache
def gather() -> dict:
    """Every ``task_*`` creator of every module in this package.

    Runs while doit reads dodo.py, before it opens its state database: the inventory is
    read first, so a rejected one leaves nothing behind, not even build/.
    """
    from .common import context
    context()
    Path(DEP_FILE).parent.mkdir(exist_ok=True)
    creators = {}
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name == "common":
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        creators.update({name: value for name, value in vars(module).items() if name.startswith("task_")})
    # The order doit gave them (it sorts creators by their first line), kept by the wrappers.
    ordered = sorted(creators.items(), key=lambda item: item[1].__code__.co_firstlineno)
    return {name: _quickly_located(creator) for name, creator in ordered}


def _quickly_located(creator: Callable) -> Callable:
    """``creator`` behind a two-line function. doit orders creators by the line each starts on,
    found with inspect.getsourcelines, which tokenizes the whole body: for our long creators
    that was about 4% of the instructions of a `doit pki` run."""
    def task_creator():
        return creator()

    task_creator.__doc__ = creator.__doc__  # the doc `doit list` shows
    task_creator.__dict__.update(creator.__dict__)  # create_after's mark
    return task_creator
