r"""Griffe extension for the API pages: docstring conventions griffe would render as plain text.

The package's Google-style docstrings head their doctests ``Example:`` (the form ruff's
pydocstyle and the Google guide accept); griffe parses only ``Examples:`` as a doctest section
and renders ``Example:`` as an admonition of plain text, losing the code formatting. This
renames the heading in the text griffe parses; the source is not changed.

The docstrings also use Sphinx roles (``:func:`~fairvlm_lightning.metrics.functional.x```), which
Markdown shows verbatim; they become code spans (the last component with ``~``, as Sphinx).
Math in Sphinx form (``:math:`\ell_i``` and ``.. math::`` blocks) becomes the ``\(...\)`` /
``\[...\]`` that ``pymdownx.arithmatex`` marks and ``docs/hooks.py`` turns into MathML.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

_HEADING = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_ROLE = re.compile(r":(?:py:)?(?:mod|func|class|meth|attr|data|obj|exc|const):`(~?)([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
# ``.. math:: first line`` and its more-indented continuation lines.
_MATH_BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<first>.*)\n"
    r"(?P<rest>(?:(?P=indent)[ \t]+\S.*(?:\n|$))*)",
    re.MULTILINE,
)


def _role_to_code(match: re.Match[str]) -> str:
    target = match.group(2).strip()
    return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"


def _math_block(match: re.Match[str]) -> str:
    indent = match.group("indent")
    lines = [match.group("first"), *match.group("rest").splitlines()]
    tex = " ".join(line.strip() for line in lines if line.strip())
    return f"\n{indent}\\[\n{indent}{tex}\n{indent}\\]\n\n"


def sphinx_math_to_arithmatex(text: str) -> str:
    r"""Sphinx math (``:math:`x``` roles, ``.. math::`` blocks) as arithmatex delimiters.

    Example:
        >>> sphinx_math_to_arithmatex("loss :math:`x_i` is\n\n.. math:: a +\n    b\n").split()
        ['loss', '\\(x_i\\)', 'is', '\\[', 'a', '+', 'b', '\\]']
    """
    return _MATH_ROLE.sub(r"\\(\1\\)", _MATH_BLOCK.sub(_math_block, text))


class ExampleSections(Extension):
    """Before the docstrings are parsed: ``Example:`` -> ``Examples:``, roles -> code/math."""

    def on_instance(self, *, obj: Object, **kwargs: Any) -> None:  # noqa: D102
        if obj.docstring is not None:
            value = _HEADING.sub(r"\1Examples:", obj.docstring.value)
            value = sphinx_math_to_arithmatex(value)
            obj.docstring.value = _ROLE.sub(_role_to_code, value)
