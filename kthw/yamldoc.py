"""YAML documents whose every value knows its line: the inventory and the pins files.

``parse`` refuses duplicate keys (plain YAML keeps the last silently) and turns syntax
errors into :class:`InventoryError` with the line; ``Reader`` walks one mapping and
reports a bad value with its file, line, dotted field name and fix.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kthw.errors import InventoryError


class Map(dict):
    line: int
    key_lines: dict


class Seq(list):
    line: int
    item_lines: list


# libyaml's parser, when PyYAML was built with it, reads the inventory ten times faster.
# The type checker sees SafeLoader: it cannot follow a base class chosen at run time.
if TYPE_CHECKING:
    _SafeLoader = yaml.SafeLoader
else:
    _SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_load(data: bytes | str) -> Any:
    """yaml.safe_load with libyaml's parser where PyYAML has it (for files read on every run)."""
    return yaml.load(data, Loader=_SafeLoader)


class Loader(_SafeLoader):
    """SafeLoader that remembers lines and refuses duplicate keys."""

    def construct_mapping(self, node, deep=False):
        result = Map()
        result.line = node.start_mark.line + 1
        result.key_lines = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise InventoryError(self.name, key_node.start_mark.line + 1, "",
                                     "a mapping key must be a plain word",
                                     "write keys as plain names such as 'nodes:'")
            if key in result:
                raise InventoryError(self.name, key_node.start_mark.line + 1, str(key),
                                     f"key '{key}' appears twice in the same mapping",
                                     f"keep one '{key}:' entry (the first is on line {result.key_lines[key]})")
            result[key] = self.construct_object(value_node, deep=True)
            result.key_lines[key] = key_node.start_mark.line + 1
        return result

    def construct_sequence(self, node, deep=False):
        result = Seq(self.construct_object(child, deep=True) for child in node.value)
        result.line = node.start_mark.line + 1
        result.item_lines = [child.start_mark.line + 1 for child in node.value]
        return result


Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, Loader.construct_mapping)
Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, Loader.construct_sequence)


def read_text(path: Path, what: str, fix: str) -> str:
    """The file's text; ``what`` names it in the error, ``fix`` says where its path came from."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise InventoryError(str(path), None, "", f"cannot read {what} ({err.strerror})", fix) from None
    except UnicodeDecodeError:
        raise InventoryError(str(path), None, "", f"{what} is not UTF-8 text", "save it as UTF-8") from None


def parse(text: str, source: str) -> Any:
    """The document, with lines recorded; ``source`` names it in messages."""
    loader = None
    try:
        loader = Loader(text)  # the reader already rejects non-printable characters here
        loader.name = source
        return loader.get_single_data()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        raise InventoryError(source, mark.line + 1 if mark else None, "",
                             f"YAML syntax error: {err.problem or err.context}",
                             "fix the indentation or quoting at that line") from None
    except yaml.YAMLError as err:
        raise InventoryError(source, None, "", f"not valid YAML: {err}",
                             "save the file as plain UTF-8 text and fix the YAML syntax") from None
    finally:
        if loader is not None:
            loader.dispose()


class Bad(Exception):
    """Raised by a value parser; the Reader adds file, line and field."""

    def __init__(self, problem: str, fix: str = ""):
        self.problem, self.fix = problem, fix


def kind(value: Any) -> str:
    return {dict: "a mapping", Map: "a mapping", list: "a list", Seq: "a list",
            str: "text", bool: "true/false", int: "a number", float: "a number"}.get(type(value), type(value).__name__)


class Reader:
    """Reads one mapping, knowing where each value sits in the file."""

    def __init__(self, source: str, mapping: Any, path: str, line: int | None):
        self.source, self.path = source, path
        if not isinstance(mapping, dict):
            raise InventoryError(source, line, path or "(top level)", f"expected a mapping, got {kind(mapping)}",
                                 "write 'key: value' lines here")
        self.mapping = mapping
        self.line = getattr(mapping, "line", line)

    def where(self, key: str) -> int | None:
        return getattr(self.mapping, "key_lines", {}).get(key, self.line)

    def fail(self, key: str, problem: str, fix: str = "") -> InventoryError:
        return InventoryError(self.source, self.where(key), self._name(key), problem, fix)

    def _name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def check_keys(self, allowed: tuple[str, ...]) -> None:
        for key in self.mapping:
            if key not in allowed:
                import difflib  # only for the error message: a valid inventory never loads it
                guess = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"did you mean '{guess[0]}'? " if guess else ""
                raise self.fail(str(key), f"unknown key '{key}'", f"{hint}allowed keys here: {', '.join(allowed)}")

    def get(self, key: str, parse_value: Callable[[Any], Any], default: Any = ...) -> Any:
        if key not in self.mapping or self.mapping[key] is None:
            if default is ...:
                raise self.fail(key, "required key is missing", f"add '{key}:' under {self.path or 'the top level'}")
            return default
        try:
            return parse_value(self.mapping[key])
        except Bad as bad:
            raise self.fail(key, bad.problem, bad.fix) from None

    def sub(self, key: str) -> Reader:
        value = self.mapping.get(key)
        return Reader(self.source, Map() if value is None else value, self._name(key), self.where(key))
