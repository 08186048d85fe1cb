"""The library's import graph follows the pipeline: a module imports only modules of its own
stage or of earlier ones, and none imports doit (the task layer, tasks/, is doit's side)."""

from __future__ import annotations

import ast
from pathlib import Path

from support.project import REPO

KTHW = REPO / "kthw"

# The stages in pipeline order: each package of kthw is one stage, and the modules at the
# top of kthw are shared by all of them.
STAGES: list[tuple[str, set[str]]] = [
    ("shared", {"errors", "clock", "fsutil", "yamldoc", "roles", "versions", "templating", "layout", "crypto",
                "kubeconfig", "lastcheck"}),
    ("supply", {"supply"}),
    ("inventory", {"inventory"}),
    ("vendor", {"vendor"}),
    ("pki", {"pki"}),
    ("secrets", {"secrets"}),
    ("render", {"render"}),
    ("bundle", {"bundle"}),
]
STAGE_OF = {name: index for index, (_, names) in enumerate(STAGES) for name in names}


def _modules() -> list[Path]:
    return sorted(path for path in KTHW.rglob("*.py") if path.name != "__init__.py")


def _name(path: Path) -> str:
    return ".".join(path.relative_to(KTHW).with_suffix("").parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, in functions too; kthw's own by their name in kthw."""
    package = path.relative_to(KTHW).parent.parts
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(("kthw", *package[:len(package) - node.level + 1]))
                target = f"{base}.{node.module}" if node.module else base
                names = [target] if node.module else [f"{target}.{alias.name}" for alias in node.names]
            else:  # "from kthw import vendor" names a module; "from kthw.vendor.fetch import x" one in the module
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            found += [(node.lineno, name) for name in names]
    return found


def _stage(name: str) -> int | None:
    return STAGE_OF.get(name.split(".")[0])


def test_every_module_has_a_stage():
    assert sorted(_name(path) for path in _modules() if _stage(_name(path)) is None) == []


def test_no_module_imports_a_later_stage():
    wrong = []
    for path in _modules():
        stage = _stage(_name(path))
        for line, name in _imports(path):
            if not name.startswith("kthw."):
                continue
            target = _stage(name.removeprefix("kthw."))
            if target is not None and stage is not None and target > stage:
                wrong.append(f"kthw/{path.relative_to(KTHW)}:{line} ({STAGES[stage][0]}) imports {name} "
                             f"({STAGES[target][0]})")
    assert wrong == []


def test_the_library_never_imports_doit():
    found = [f"kthw/{path.relative_to(KTHW)}:{line}" for path in _modules() for line, name in _imports(path)
             if name == "doit" or name.startswith("doit.")]
    assert found == []
