"""What every stage needs: the inventory, the layout, and a guard for user errors."""

from __future__ import annotations

import functools
import inspect
import sys
from pathlib import Path

from doit import get_var
from doit import tools as doit_tools
from doit.exceptions import TaskFailed

from kthw import inventory
from kthw.errors import KthwError
from kthw.fsutil import remove_stale, stale_outputs
from kthw.layout import Layout

from . import inventory_file


def signature_once(function):
    """``function`` with its signature computed now. doit asks inspect.signature of every uptodate
    callable at every status check (and of every action it runs) for the arguments it may pass;
    inspect answers with ``__signature__`` when there is one: at 100 nodes that was 8% of a no-op."""
    function.__signature__ = inspect.signature(function)
    return function


class config_changed(doit_tools.config_changed):  # doit's name: a drop-in for it
    """doit's config_changed with its call signature computed once (see :func:`signature_once`)."""

    __signature__ = inspect.signature(doit_tools.config_changed(None).__call__)


def inventory_path() -> Path:
    """`doit inventory=PATH`, else $KTHW_INVENTORY, else ./cluster.yaml."""
    return inventory_file(get_var("inventory", None))


@functools.cache
def context() -> tuple[inventory.Inventory, Layout]:
    """The validated inventory and the output layout; a bad inventory ends doit here, with
    exit status 2, before doit opens its state database or any task runs."""
    try:
        # `doit pin version=X.Y.Z` pins the version the inventory may already name.
        inv = inventory.load(inventory_path(), pinning=get_var("version", None))
    except KthwError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    return inv, Layout(Path.cwd())


@signature_once
def guarded(function, *args, **kwargs):
    """Run a library call as a doit action: a user error fails the task with its message only."""
    try:
        message = function(*args, **kwargs)
    except KthwError as err:
        return TaskFailed(str(err))
    if isinstance(message, str) and message:
        print(message)
    return True


@signature_once
def checked(function, *args, **kwargs) -> bool:
    """An uptodate check that reads files; unreadable input means 'not up to date'."""
    try:
        return function(*args, **kwargs)
    except KthwError:
        return False


def _fail(message: str) -> TaskFailed:
    return TaskFailed(message)


def failing(name: str, doc: str, message: str) -> dict:
    """A task that fails with ``message`` when it runs: a stage that cannot plan says why
    when it is asked for, and the other stages still load."""
    return {"name": name, "doc": doc, "actions": [(_fail, [message])], "uptodate": [False]}


def _nothing_stale(node_root: Path, node_paths: list[str], keep: list[Path]) -> bool:
    return not stale_outputs(node_root, node_paths, keep)


def stale_task(node: str, node_root: Path, node_paths: list[str], keep: list[Path], doc: str,
               task_dep: list[str]) -> dict:
    """`<stage>:<node>/stale`: removes the files of ``node_paths`` the node no longer gets (not
    in ``keep``). It runs after the node's writers (``task_dep``): their temp files are not stale."""
    return {
        "name": f"{node}/stale",
        "doc": doc,
        "actions": [(guarded, [remove_stale, node_root, node_paths, keep])],
        "uptodate": [(checked, [_nothing_stale, node_root, node_paths, keep])],
        "task_dep": list(task_dep),
    }
