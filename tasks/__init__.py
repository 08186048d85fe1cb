"""doit task creators, one module per stage. ``dodo.py`` only gathers them."""

from __future__ import annotations

import functools
import importlib
import os
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


class RecordingProgress(ProgressOnStderr):
    """ProgressOnStderr that leaves the record of a full check (see tasks.lastcheck) when the run
    found current every task the default selection reaches, executing and skipping none."""

    def __init__(self, outstream, options):
        super().__init__(outstream, options)
        self._tasks: dict = {}
        self._selected: list[str] = []
        self._current: set[str] = set()
        self._changed = False  # a task ran, failed or was ignored

    def initialize(self, tasks, selected_tasks):
        # The same dict doit adds the delayed (create_after) tasks to as it makes them.
        self._tasks, self._selected = tasks, list(selected_tasks)

    def execute_task(self, task):
        self._changed = self._changed or bool(task.actions)
        super().execute_task(task)

    def skip_uptodate(self, task):
        self._current.add(task.name)

    def skip_ignore(self, task):
        self._changed = True

    def add_failure(self, task, fail):
        self._changed = True
        super().add_failure(task, fail)

    def complete_run(self):
        super().complete_run()
        from . import lastcheck
        # doit calls this from a `finally`: on Ctrl-C or a crash too, with the exception in flight.
        interrupted = sys.exc_info()[0] is not None
        everything_current = not (interrupted or self._changed or self.failures or self.runtime_errors) \
            and set(self._selected) == set(DEFAULT_TASKS) and self._reached() <= self._current
        lastcheck.finish(everything_current)

    def _reached(self) -> set[str]:
        """The tasks with actions that the selection reaches through task_dep and setup; a
        creator doit has not run yet (create_after) counts as a task never checked."""
        reached, pending = set(), list(self._selected)
        while pending:
            name = pending.pop()
            if name in reached:
                continue
            reached.add(name)
            task = self._tasks.get(name)
            if task is not None:
                pending += [*task.task_dep, *task.setup_tasks]
        return {name for name in reached if name not in self._tasks or self._tasks[name].actions
                or (self._tasks[name].loader and not self._tasks[name].loader.created)}


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
INVENTORY_ENV = "KTHW_INVENTORY"


def inventory_file(given: str | None) -> Path:
    """``given`` (`doit inventory=PATH`), else $KTHW_INVENTORY, else ./cluster.yaml."""
    return Path(given or os.environ.get(INVENTORY_ENV) or "cluster.yaml")


# `doit vendor` is left out: it is the one stage that needs the network.
DEFAULT_TASKS = ["pki", "secrets", "render", "bundle"]

DOIT_CONFIG = {
    "default_tasks": DEFAULT_TASKS,
    "dep_file": DEP_FILE,
    "backend": "sqlite3",
    "reporter": RecordingProgress,
    "check_file_uptodate": SharedFileChecker,
}

# When the last full check holds: no task, and doit's state database left untouched.
NOTHING_CHANGED_CONFIG = {"default_tasks": [], "dep_file": ":memory:", "backend": "sqlite3",
                          "reporter": ProgressOnStderr}


@functools.cache
def namespace() -> dict:
    """What dodo.py offers doit: the config and every task creator, or, when a bare `doit`
    finds its last full check still holding (see tasks.lastcheck), a config and no task."""
    from .lastcheck import nothing_changed
    if nothing_changed():
        return {"DOIT_CONFIG": NOTHING_CHANGED_CONFIG}
    return {"DOIT_CONFIG": DOIT_CONFIG, **gather()}


@functools.cache
def gather() -> dict:
    """Every ``task_*`` creator of every module in this package.

    Runs while doit reads dodo.py, before it opens its state database: the inventory is
    read first, so a rejected one leaves nothing behind, not even build/.
    """
    import pkgutil

    from . import lastcheck
    from .common import context
    lastcheck.drop()
    inv, _ = context()
    Path(DEP_FILE).parent.mkdir(exist_ok=True)
    lastcheck.begin(inv.source, inv.vendor.site_pins, inv.warnings, inv.ca.backend == "vault")
    creators = {}
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name in ("common", "lastcheck"):
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
