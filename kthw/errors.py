"""Errors meant for the operator: one message that names the problem and the fix."""

from __future__ import annotations

import sys


def warn(text: str) -> None:
    """A warning for the operator, on stderr: the build goes on."""
    print(f"warning: {text}", file=sys.stderr)


class KthwError(Exception):
    """A failure caused by input or state the operator controls.

    Task wrappers print ``str(err)`` and exit non-zero; no traceback is shown.
    """


class InventoryError(KthwError):
    """The inventory file is not valid."""

    def __init__(self, source: str, line: int | None, field: str, problem: str, fix: str = ""):
        self.source, self.line, self.field, self.problem, self.fix = source, line, field, problem, fix
        where = f"{source}:{line}" if line else source
        text = f"{where}: {field}: {problem}" if field else f"{where}: {problem}"
        if fix:
            text += f"\n  fix: {fix}"
        super().__init__(text)


class StateError(KthwError):
    """Precious state on disk is unusable; it is left exactly as it was."""
