r"""MkDocs hooks: formulas become MathML at build time; results pages get the full width.

* Math: ``pymdownx.arithmatex`` (generic mode) leaves ``\(...\)`` and ``\[...\]`` TeX in
  ``<span class="arithmatex">`` / ``<div class="arithmatex">``. :func:`on_page_content` converts
  each one to MathML with ``latex2mathml`` (the ``docs`` extra), which browsers render natively:
  the site needs no MathJax, no script and no external host, so it renders offline. A formula that
  cannot be converted fails the build with the page and the TeX in the message.
* Results pages: ``docs/results.md`` and ``docs/results/*.md`` are written by the benchmarks and
  overwritten on every run, so their front matter cannot be edited by hand; their tables have a
  dozen numeric columns that wrap "0.853 ± 0.015" in two lines beside the table of contents.

Example:
    >>> from docs.hooks import tex_to_mathml
    >>> tex_to_mathml(r"\texttt{max\_weight}", display=False)[-33:]
    '>max_weight</mtext></mrow></math>'
"""

from __future__ import annotations

import html
import re
from typing import Any

from mkdocs.exceptions import PluginError

try:
    from latex2mathml.converter import convert
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "docs/hooks.py converts the formulas with latex2mathml, part of the docs extra: "
        "pip install -c constraints.txt -e '.[docs]'"
    ) from err

# What arithmatex (generic: true) writes: the delimiters stay inside the element.
MATH_ELEMENT = re.compile(
    r'<(?P<tag>span|div) class="arithmatex">(?P<body>.*?)</(?P=tag)>', re.DOTALL
)
_DELIMITERS = {"span": ("\\(", "\\)"), "div": ("\\[", "\\]")}
# latex2mathml keeps TeX's text-mode escapes (\_ in \texttt{max\_weight}) in <mtext>.
_MTEXT = re.compile(r"(<mtext[^>]*>)(.*?)(</mtext>)", re.DOTALL)
_TEXT_ESCAPE = re.compile(r"\\([_%&#${}])")
# TeX sets |, \| and / as ordinary symbols (no space around them, no stretching); MathML's
# operator dictionary spaces an infix | and / and stretches a | that ends a row, so
# "\lvert x-y\rvert^2" would show as "| x-y|" with a long right bar. Explicit attributes fix it.
_ORDINARY_MO = re.compile(r"<mo(?P<attrs>[^>]*)>(?P<char>\||/|&#x0007C;|&#x0002F;|&#x02016;)</mo>")

# A \big) carrying a script: inside <msup> Chromium sets the enlarged bracket below the baseline;
# as the only child of an <mrow> it sits right.
_SIZED_SCRIPT_BASE = re.compile(
    r"<(?P<script>msup|msub|msubsup)><mo(?P<attrs>[^>]*minsize[^>]*)>(?P<char>[^<]*)</mo>"
)
# MathML 3 named spaces (latex2mathml writes \! as "negativethinmathspace"); MathML Core, which
# browsers implement, only knows lengths.
_NAMED_SPACES = {
    f"{sign}{name}mathspace": f"{'-' if sign else ''}{ems}em"
    for sign in ("", "negative")
    for name, ems in (
        ("veryverythin", "0.0556"),
        ("verythin", "0.1111"),
        ("thin", "0.1667"),
        ("medium", "0.2222"),
        ("thick", "0.2778"),
        ("verythick", "0.3333"),
        ("veryverythick", "0.3889"),
    )
}
_NAMED_SPACE = re.compile(r'="((?:negative)?(?:very)*(?:thin|medium|thick)mathspace)"')
# TeX puts a thin space between \log, \exp ... and a following letter or number; MathML does not.
_FUNCTION_THEN_ARGUMENT = re.compile(
    r"(<mi>(?:log|ln|lg|exp|sin|cos|tan|sinh|cosh|tanh|det|dim|ker|deg|arg|gcd|Pr)</mi>)"
    r"(?=<(?:mi|mn|msub|msup|msubsup|mrow|mfrac|msqrt)\b)"
)


def tex_to_mathml(tex: str, *, display: bool) -> str:
    r"""One TeX formula (without delimiters) as a ``<math>`` element.

    Args:
        tex: the formula, e.g. ``r"\frac{1}{B}\sum_i w_i \ell_i"``.
        display: ``True`` for a block formula, ``False`` for one inside a sentence.

    Returns:
        The MathML, with the TeX source as ``alttext``.

    Raises:
        ValueError: the formula is empty or ``latex2mathml`` cannot convert it.

    Example:
        >>> out = tex_to_mathml(r"\lambda", display=False)
        >>> out.startswith('<math xmlns="http://www.w3.org/1998/Math/MathML" display="inline"')
        True
        >>> out.endswith('alttext="\\lambda"><mrow><mi>&#x003BB;</mi></mrow></math>')
        True
    """
    tex = tex.strip()
    if not tex:
        raise ValueError("empty formula")
    try:
        mathml = convert(tex, display="block" if display else "inline")
    except Exception as err:  # latex2mathml raises its own exception types
        raise ValueError(f"latex2mathml cannot convert it: {type(err).__name__}: {err}") from err
    if "<merror" in mathml:
        raise ValueError("latex2mathml produced an <merror> element")
    mathml = _MTEXT.sub(_unescape_text, mathml)
    mathml = _ORDINARY_MO.sub(_ordinary, mathml)
    mathml = _SIZED_SCRIPT_BASE.sub(r"<\g<script>><mrow><mo\g<attrs>>\g<char></mo></mrow>", mathml)
    mathml = _NAMED_SPACE.sub(lambda m: f'="{_NAMED_SPACES[m.group(1)]}"', mathml)
    mathml = _FUNCTION_THEN_ARGUMENT.sub(r'\1<mspace width="0.167em"></mspace>', mathml)
    mode = "block" if display else "inline"
    alt = html.escape(" ".join(tex.split()), quote=True)
    return mathml.replace(f'display="{mode}">', f'display="{mode}" alttext="{alt}">', 1)


def _unescape_text(match: re.Match[str]) -> str:
    return match.group(1) + _TEXT_ESCAPE.sub(r"\1", match.group(2)) + match.group(3)


def _ordinary(match: re.Match[str]) -> str:
    attrs = match.group("attrs")
    if "stretchy" not in attrs:
        attrs += ' stretchy="false"'
    if "lspace" not in attrs:
        attrs += ' lspace="0em" rspace="0em"'
    return f"<mo{attrs}>{match.group('char')}</mo>"


def math_to_mathml(content: str, where: str = "page") -> str:
    r"""Replace every arithmatex element in rendered HTML by its MathML (the wrapper stays).

    Args:
        content: a page's HTML as Python-Markdown renders it.
        where: the page, named in errors.

    Returns:
        The HTML with ``<math>`` elements in place of the TeX.

    Raises:
        PluginError: a formula has unexpected delimiters or cannot be converted.

    Example:
        >>> out = math_to_mathml('<p>with <span class="arithmatex">\\(B\\)</span> pairs</p>')
        >>> out.startswith('<p>with <span class="arithmatex"><math ') and "<mi>B</mi>" in out
        True
    """

    def replace(match: re.Match[str]) -> str:
        tag = match.group("tag")
        body = html.unescape(match.group("body")).strip()
        start, end = _DELIMITERS[tag]
        if not (body.startswith(start) and body.endswith(end)):
            raise PluginError(
                f"{where}: formula {body[:60]!r} is not wrapped in {start} {end} "
                "(mkdocs.yml: pymdownx.arithmatex needs generic: true)"
            )
        tex = body[len(start) : -len(end)]
        try:
            mathml = tex_to_mathml(tex, display=tag == "div")
        except ValueError as err:
            raise PluginError(f"{where}: formula {tex.strip()!r}: {err}") from err
        return f'<{tag} class="arithmatex">{mathml}</{tag}>'

    return MATH_ELEMENT.sub(replace, content)


def on_page_content(html: str, page: Any, **kwargs: Any) -> str:
    """Convert the page's formulas to MathML (see :func:`math_to_mathml`)."""
    return math_to_mathml(html, where=f"docs/{page.file.src_uri}")


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    """Hide the table of contents on the results pages (Material's ``hide: [toc]``)."""
    if page.file.src_uri == "results.md" or page.file.src_uri.startswith("results/"):
        hide = list(page.meta.get("hide", []))
        page.meta["hide"] = [*hide, "toc"] if "toc" not in hide else hide
    return markdown
