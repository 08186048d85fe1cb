"""The Jinja environment every stage renders its templates with.

The templates ship inside the package (``kthw/templates``), so an installed kthw finds them
without a checkout. A caller may name another directory instead (a test's edited copy).
"""

from __future__ import annotations

import functools
import importlib.resources
import shlex
from pathlib import Path

import jinja2
import jinja2.meta

from kthw.errors import KthwError


def directory() -> Path:
    """Where the package's templates are on disk (to copy and edit one, say)."""
    return Path(str(importlib.resources.files("kthw") / "templates"))


@functools.lru_cache(maxsize=4)
def environment(directory: Path | None = None, comments: bool = True) -> jinja2.Environment:
    """The package's templates, or those under ``directory``. StrictUndefined: a value missing
    from a context is an error, never an empty flag. ``comments=False``: "{#" is text, for a
    template of bash full of "${#array[@]}"."""
    comment_start, comment_end = ("{#", "#}") if comments else ("<#jinja-comment", "jinja-comment#>")
    env = jinja2.Environment(loader=_loader(directory), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, autoescape=False,
                             comment_start_string=comment_start, comment_end_string=comment_end)
    env.filters["q"] = lambda value: shlex.quote(str(value))  # a shell word, in scripts
    return env


def _loader(directory: Path | None) -> jinja2.BaseLoader:
    return jinja2.PackageLoader("kthw", "templates") if directory is None else jinja2.FileSystemLoader(str(directory))


def render(name: str, context: dict, directory: Path | None = None, comments: bool = True) -> str:
    """The template rendered; a template error becomes a message naming the template."""
    try:
        return environment(directory, comments).get_template(name).render(**context)
    except jinja2.TemplateError as err:
        raise KthwError(f"template {name}: {err}") from None


def files(name: str, directory: Path | None = None, comments: bool = True) -> list[Path]:
    """The template and every template it includes or imports, as files (doit's file_dep)."""
    return list(_files(name, directory, comments))


@functools.cache
def _files(name: str, directory: Path | None, comments: bool) -> tuple[Path, ...]:
    env = environment(directory, comments)
    loader = _loader(directory)
    seen: dict[str, Path] = {}
    todo = [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        source, filename, _ = loader.get_source(env, current)
        if filename is None:  # the loaders above always read files; this one would not be a file_dep
            raise KthwError(f"template {current}: not a file on disk")
        seen[current] = Path(filename)
        todo.extend(ref for ref in jinja2.meta.find_referenced_templates(env.parse(source)) if ref)
    return tuple(seen.values())
