"""doit task creators, one module per stage. ``dodo.py`` only gathers them."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

from doit.reporter import ExecutedOnlyReporter


class ProgressOnStderr(ExecutedOnlyReporter):
    """Lists only the tasks that run (a rerun with nothing stale prints nothing), on
    stderr, so that stdout carries only what tasks print (`doit expiry --json | jq`)."""

    def __init__(self, outstream, options):
        super().__init__(sys.stderr, options)


DOIT_CONFIG = {
    "default_tasks": ["pki", "secrets", "render"],
    "dep_file": "build/.doit.db",
    "backend": "sqlite3",
    "reporter": ProgressOnStderr,
}


def gather() -> dict:
    """Every ``task_*`` creator of every module in this package."""
    # doit opens its state database under build/ before any task runs.
    Path(DOIT_CONFIG["dep_file"]).parent.mkdir(exist_ok=True)
    creators = {}
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name == "common":
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        creators.update({name: value for name, value in vars(module).items() if name.startswith("task_")})
    return creators
