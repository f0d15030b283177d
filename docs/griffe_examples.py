"""Griffe extension for the API pages: docstring conventions griffe would render as plain text.

The package's Google-style docstrings head their doctests ``Example:`` (the form ruff's
pydocstyle and the Google guide accept); griffe parses only ``Examples:`` as a doctest section
and renders ``Example:`` as an admonition of plain text, losing the code formatting. This
renames the heading in the text griffe parses; the source is not changed.

The docstrings also use Sphinx roles (``:func:`~fairvlm_lightning.metrics.functional.x```), which
Markdown shows verbatim; they become code spans (the last component with ``~``, as Sphinx).
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

_HEADING = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_ROLE = re.compile(r":(?:py:)?(?:mod|func|class|meth|attr|data|obj|exc|const):`(~?)([^`]+)`")


def _role_to_code(match: re.Match[str]) -> str:
    target = match.group(2).strip()
    return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"


class ExampleSections(Extension):
    """Before the docstrings are parsed: ``Example:`` -> ``Examples:``, Sphinx roles -> code."""

    def on_instance(self, *, obj: Object, **kwargs: Any) -> None:  # noqa: D102
        if obj.docstring is not None:
            value = _HEADING.sub(r"\1Examples:", obj.docstring.value)
            obj.docstring.value = _ROLE.sub(_role_to_code, value)
