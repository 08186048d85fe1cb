"""The library's import graph follows the pipeline: a module imports only modules of its own
stage or of earlier ones, and none imports doit (the task layer, tasks/, is doit's side)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

KTHW = REPO / "kthw"

# The stages in pipeline order, each with its modules. The supply stage comes in two parts:
# the tables the inventory is checked against, and the fetching that reads the inventory.
STAGES: list[tuple[str, set[str]]] = [
    ("shared", {"errors", "clock", "fsutil", "yamldoc", "roles", "versions", "templating", "layout", "crypto",
                "tarball", "rotation", "renewal", "kubeconfig"}),
    ("supply tables", {"components", "download", "oci", "pins"}),
    ("inventory", {"inventory"}),
    ("pki", {"catalogue", "node_paths", "ca", "pki", "expiry", "vault", "vault_policy", "vault_setup"}),
    ("supply", {"vendor", "pinning"}),
    ("secrets", {"secret_state", "sa_rotation", "encryption", "tokens", "manifests", "secret_files"}),
    ("render", {"render", "membership", "upgrade"}),
    ("bundle", {"bundle", "bundle_signing"}),
]
STAGE_OF = {module: index for index, (_, modules) in enumerate(STAGES) for module in modules}


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
            else:  # "from kthw import vendor" names a module; "from kthw.vendor import x" one in the module
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            found += [(node.lineno, name) for name in names]
    return found


def test_every_module_has_a_stage():
    assert sorted(_name(path) for path in _modules() if _name(path) not in STAGE_OF) == []


def test_no_module_imports_a_later_stage():
    wrong = []
    for path in _modules():
        stage = STAGE_OF.get(_name(path))
        for line, name in _imports(path):
            if not name.startswith("kthw."):
                continue
            target = name.removeprefix("kthw.").split(".")[0]
            if target in STAGE_OF and stage is not None and STAGE_OF[target] > stage:
                wrong.append(f"kthw/{path.relative_to(KTHW)}:{line} ({STAGES[stage][0]}) imports {name} "
                             f"({STAGES[STAGE_OF[target]][0]})")
    assert wrong == []


def test_the_library_never_imports_doit():
    found = [f"kthw/{path.relative_to(KTHW)}:{line}" for path in _modules() for line, name in _imports(path)
             if name == "doit" or name.startswith("doit.")]
    assert found == []
