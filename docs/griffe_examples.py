"""Griffe extension for the API pages: the package's ``Example:`` sections become ``Examples:``.

The package's Google-style docstrings head their doctests ``Example:`` (the form ruff's
pydocstyle and the Google guide accept); griffe parses only ``Examples:`` as a doctest section
and renders ``Example:`` as an admonition of plain text, losing the code formatting. This
renames the heading in the text griffe parses; the source is not changed.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

_HEADING = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


class ExampleSections(Extension):
    """Rename ``Example:`` section headings to ``Examples:`` before the docstrings are parsed."""

    def on_instance(self, *, obj: Object, **kwargs: Any) -> None:  # noqa: D102
        if obj.docstring is not None:
            obj.docstring.value = _HEADING.sub(r"\1Examples:", obj.docstring.value)
