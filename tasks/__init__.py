"""doit task creators, one module per stage. ``dodo.py`` only gathers them."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

DOIT_CONFIG = {
    "default_tasks": ["pki"],
    "dep_file": "build/.doit.db",
    "backend": "sqlite3",
    # Only tasks that run are listed: on a rerun with nothing stale, doit prints nothing.
    "reporter": "executed-only",
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
