"""The Jinja environment every stage renders its templates with.

The templates ship inside the package (``kthw/templates``), so an installed kthw finds them
without a checkout. A caller may name another directory instead (a test's edited copy).
"""

from __future__ import annotations

import functools
import importlib.resources
import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from kthw.errors import KthwError

if TYPE_CHECKING:  # imported where used: a doit run that renders nothing never loads jinja2
    import jinja2

# A statement that can name another template. Without one a template references none, and
# its file dependencies are known without importing jinja2 (about 20 ms) or parsing it.
_REFERENCE = re.compile(r"{%[-+]?\s*(?:include|import|from|extends)\b")


def directory() -> Path:
    """Where the package's templates are on disk (to copy and edit one, say)."""
    return Path(str(importlib.resources.files("kthw") / "templates"))


@functools.lru_cache(maxsize=4)
def environment(directory: Path | None = None, comments: bool = True) -> jinja2.Environment:
    """The package's templates, or those under ``directory``. StrictUndefined: a value missing
    from a context is an error, never an empty flag. ``comments=False``: "{#" is text, for a
    template of bash full of "${#array[@]}"."""
    import jinja2

    comment_start, comment_end = ("{#", "#}") if comments else ("<#jinja-comment", "jinja-comment#>")
    env = jinja2.Environment(loader=_loader(directory), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, autoescape=False,
                             comment_start_string=comment_start, comment_end_string=comment_end)
    env.filters["q"] = lambda value: shlex.quote(str(value))  # a shell word, in scripts
    return env


def _loader(directory: Path | None) -> jinja2.BaseLoader:
    import jinja2

    return jinja2.PackageLoader("kthw", "templates") if directory is None else jinja2.FileSystemLoader(str(directory))


def render(name: str, context: dict, directory: Path | None = None, comments: bool = True) -> str:
    """The template rendered; a template error becomes a message naming the template."""
    import jinja2

    try:
        return environment(directory, comments).get_template(name).render(**context)
    except jinja2.TemplateError as err:
        raise KthwError(f"template {name}: {err}") from None


def files(name: str, directory: Path | None = None, comments: bool = True) -> list[Path]:
    """The template and every template it includes or imports, as files (doit's file_dep)."""
    return list(_files(name, directory, comments))


@functools.cache
def _files(name: str, templates: Path | None, comments: bool) -> tuple[Path, ...]:
    path = (templates if templates is not None else directory()) / name
    try:
        if not _REFERENCE.search(path.read_text()):
            return (path,)
    except OSError:
        pass  # not a plain file (a zipped install): the loader finds it
    return _referenced_files(name, templates, comments)


def _referenced_files(name: str, templates: Path | None, comments: bool) -> tuple[Path, ...]:
    import jinja2.meta

    env = environment(templates, comments)
    loader = _loader(templates)
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
