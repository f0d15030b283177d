"""The documentation site works offline: formulas are MathML, nothing loads from another host.

The site is built once (``mkdocs build --strict``, as CI does) and checked with
``docs/check_offline.py``: statically (pure Python, always) and in headless Chromium (skipped
cleanly when no Chromium is installed). The TeX-to-MathML conversion of ``docs/hooks.py`` and
the Sphinx-math conversion of ``docs/griffe_examples.py`` are checked on their own, the MathML
by parsing it as XML.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MATHML = "{http://www.w3.org/1998/Math/MathML}"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"docs_{name}", DOCS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


check = _load("check_offline")


def formulas_in(markdown: str) -> int:
    """Formulas a page's Markdown source holds: ``\\(...\\)`` inline, ``$$...$$`` blocks."""
    return len(re.findall(r"\\\(", markdown)) + markdown.count("$$") // 2


# ------------------------------------------------------------------------------------------------
# the checker itself, on hand-written pages
# ------------------------------------------------------------------------------------------------
def test_checker_flags_external_loads_and_raw_tex(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text(
        "<html><head>"
        '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>'
        '<link rel="stylesheet" href="//fonts.googleapis.com/css?family=Roboto">'
        '<link rel="preconnect" href="https://fonts.gstatic.com">'
        '<link rel="stylesheet" href="assets/site.css">'
        '<style>@import url("https://x.org/a.css");</style>'
        "</head><body>"
        '<a href="https://arxiv.org/abs/2505.03153">paper</a>'
        '<img srcset="a.png 1x, https://img.example/b.png 2x">'
        '<p>objective <span class="arithmatex">\\(\\frac{1}{B}\\)</span></p>'
        "<p>max\\_weight and <code>\\(kept in code\\)</code></p>"
        "</body></html>",
        encoding="utf-8",
    )
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "site.css").write_text(
        "@font-face{src:url(https://fonts.gstatic.com/r.woff2)} b{background:url(i.png)}"
    )
    problems = check.static_problems(tmp_path)
    external = sorted(p.detail for p in problems if p.kind == "external load")
    assert external == [
        "//fonts.googleapis.com/css?family=Roboto",
        "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js",
        "https://fonts.gstatic.com",
        "https://fonts.gstatic.com/r.woff2",
        "https://img.example/b.png",
        "https://x.org/a.css",
    ]
    assert {p.file for p in problems if p.detail == "https://fonts.gstatic.com/r.woff2"} == {
        "assets/site.css"
    }
    raw = [p.detail for p in problems if p.kind == "raw TeX"]
    assert len(raw) == 4  # \(, \frac and \) of the formula, \_ in the prose; code is exempt
    assert any("max\\_weight" in r for r in raw)


def test_checker_passes_a_clean_page(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text(
        '<link rel="stylesheet" href="a.css"><script src="./s.js"></script>'
        '<link rel="canonical" href="https://example.org/">'
        '<p><a href="https://example.org">x</a> <math><mi>x</mi></math> costs $5</p>'
    )
    (tmp_path / "a.css").write_text("b{background:url(data:image/png;base64,AAAA)}")
    assert check.static_problems(tmp_path) == []


def test_checker_needs_a_built_site(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no index.html"):
        check.static_problems(tmp_path)


# ------------------------------------------------------------------------------------------------
# the conversions
# ------------------------------------------------------------------------------------------------
def test_tex_becomes_mathml_with_the_structure_of_the_formula() -> None:
    pytest.importorskip("latex2mathml")
    hooks = _load("hooks")
    root = ET.fromstring(hooks.tex_to_mathml(r"\frac{1}{B}\sum_{i=1}^{B} w_i", display=True))
    assert root.tag == MATHML + "math" and root.get("display") == "block"
    frac = root.find(f".//{MATHML}mfrac")
    assert frac is not None
    assert ["".join(child.itertext()) for child in frac] == ["1", "B"]
    under_over = root.find(f".//{MATHML}munderover")
    assert under_over is not None
    assert [("".join(c.itertext())) for c in under_over] == ["∑", "i=1", "B"]
    assert root.get("alttext") == r"\frac{1}{B}\sum_{i=1}^{B} w_i"

    # text-mode escapes are resolved ("max\_weight" shows as max_weight)
    text = ET.fromstring(hooks.tex_to_mathml(r"\min(1, \texttt{max\_weight})", display=False))
    assert [t.text for t in text.iter(MATHML + "mtext")] == ["max_weight"]
    # | is ordinary as in TeX: no operator space, no stretching
    bars = ET.fromstring(hooks.tex_to_mathml(r"\lvert x-y\rvert^2", display=False))
    attrs = [
        (m.get("lspace"), m.get("stretchy")) for m in bars.iter(f"{MATHML}mo") if m.text == "|"
    ]
    assert attrs == [("0em", "false")] * 2


def test_mathml_is_mathml_core_and_spaced_as_tex() -> None:
    pytest.importorskip("latex2mathml")
    hooks = _load("hooks")
    # \big) with an exponent: the sized bracket is an <mrow> base (Chromium drops it otherwise)
    root = ET.fromstring(hooks.tex_to_mathml(r"\big(F\big)^2", display=True))
    msup = root.find(f".//{MATHML}msup")
    assert msup is not None and msup[0].tag == f"{MATHML}mrow" and msup[0][0].text == ")"
    # MathML 3 named spaces are not MathML Core: lengths instead
    spaced = hooks.tex_to_mathml(r"\exp\!\Big(x\Big)\;y", display=False)
    assert "mathspace" not in spaced
    widths = [m.get("width") for m in ET.fromstring(spaced).iter(f"{MATHML}mspace")]
    assert widths == ["-0.1667em", "0.278em"]
    # a thin space between \log and its argument, as TeX sets it; none before a parenthesis
    log = ET.fromstring(hooks.tex_to_mathml(r"\log\sigma + \log(x)", display=False))
    row = list(log[0])
    assert [e.tag.removeprefix(MATHML) for e in row[:3]] == ["mi", "mspace", "mi"]
    assert row[-4].text == "log" and row[-3].text == "("


def test_unconvertible_formula_fails_the_build_naming_page_and_tex() -> None:
    pytest.importorskip("latex2mathml")
    from mkdocs.exceptions import PluginError

    hooks = _load("hooks")
    html = '<p>a <span class="arithmatex">\\(\\frac{1}{\\)</span></p>'
    with pytest.raises(PluginError, match=r"docs/x\.md: formula '\\\\frac\{1\}\{'"):
        hooks.math_to_mathml(html, where="docs/x.md")
    with pytest.raises(PluginError, match="generic: true"):
        hooks.math_to_mathml('<span class="arithmatex">$x$</span>', where="docs/x.md")


def test_sphinx_math_in_docstrings_becomes_arithmatex() -> None:
    pytest.importorskip("griffe")
    griffe_examples = _load("griffe_examples")
    text = (
        "Loss :math:`\\ell_i` per pair:\n\n.. math:: L = \\tfrac1B \\sum_i w_i \\ell_i\n"
        "    + \\lambda S\n\nwhere :math:`a` is an attribute.\n"
    )
    out = griffe_examples.sphinx_math_to_arithmatex(text)
    assert ":math:" not in out
    assert "\\(\\ell_i\\)" in out and "\\(a\\)" in out
    assert "\n\\[\nL = \\tfrac1B \\sum_i w_i \\ell_i + \\lambda S\n\\]\n" in out


# ------------------------------------------------------------------------------------------------
# the real site
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for module in ("mkdocs", "material", "mkdocstrings", "latex2mathml"):
        pytest.importorskip(module, reason="the docs extra: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_built_site_loads_nothing_from_another_host_and_has_no_raw_tex(site: Path) -> None:
    assert check.static_problems(site) == []


@pytest.mark.parametrize("page", ["method", "quickstart"])
def test_every_formula_of_the_source_is_mathml_in_the_site(site: Path, page: str) -> None:
    source = (DOCS / f"{page}.md").read_text(encoding="utf-8")
    built = (site / page / "index.html").read_text(encoding="utf-8")
    assert formulas_in(source) > 0
    assert built.count("<math ") == formulas_in(source)
    assert "mathjax" not in built.lower()


def test_site_in_offline_chromium_renders_every_formula(site: Path) -> None:
    chromium = check.find_chromium()
    if chromium is None:
        pytest.skip("no chromium on PATH (apt-get install chromium, or set $CHROMIUM)")
    pages = ["method/", "quickstart/", "api/module/"]
    probes = check.probe_pages(site, pages, chromium=chromium)
    for page in ("method", "quickstart"):
        probe = probes[f"{page}/"]
        assert probe is not None, page
        source = (DOCS / f"{page}.md").read_text(encoding="utf-8")
        assert probe["math"] == formulas_in(source)
        assert "FairVLM Math" in probe["fontsLoaded"]
    assert probes["method/"]["fractions"] > 0  # type: ignore[index]
    assert probes["api/module/"]["math"] > 0  # type: ignore[index]  # docstring :math: roles
    assert check.browser_problems(site, pages, chromium=chromium) == []
