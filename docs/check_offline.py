r"""Check that a built documentation site works offline: no external host, every formula rendered.

Two checks on the output of ``mkdocs build`` (``site/`` by default):

* **static** (pure Python, no browser; CI runs it through ``tests/test_docs_offline.py``): every
  URL the site would *load* -- ``<script src>``, ``<link href>`` (stylesheets, icons, preconnect,
  fonts), ``<img>``/``<source>``/``<iframe>``/media sources, ``url(...)`` and ``@import`` in CSS
  files, ``<style>`` elements and ``style`` attributes -- is relative or ``data:``; no text outside
  code shows raw TeX (``$$``, ``\(``, ``\[``, ``\frac``, ``:math:`` ...) or a stray Markdown
  escape (``\_``, ``\|``). Ordinary hyperlinks (``<a href>``) to other sites are allowed: they load
  nothing.
* **browser** (needs Chromium; skipped with a message when there is none): each page is served
  from ``127.0.0.1`` to headless Chromium with every other host name unresolvable, and a probe
  script reports what the page really loaded, whether each ``<math>`` element is laid out as
  math (MathML display, non-empty box, fractions with the numerator above the denominator) and
  whether any raw TeX is visible. ``--screenshots DIR`` also saves a PNG of each page.

Example:
    ``mkdocs build --strict && python docs/check_offline.py site --browser --screenshots shots``
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import html
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

# Attributes through which an element loads something, per tag.
LOADING_ATTRIBUTES = {
    "script": ("src",),
    "link": ("href",),
    "img": ("src", "srcset"),
    "source": ("src", "srcset"),
    "iframe": ("src",),
    "embed": ("src",),
    "object": ("data",),
    "video": ("src", "poster"),
    "audio": ("src",),
    "track": ("src",),
    "input": ("src",),
}
# <link rel=...> values that name a page rather than load one.
NON_LOADING_LINKS = {"canonical", "alternate", "author", "license", "help", "search"}
CSS_URL = re.compile(r"""url\(\s*(['"]?)([^'")]*)\1\s*\)|@import\s+(['"])([^'"]+)\3""", re.I)
# Raw TeX or a Markdown escape left in visible text.
RAW_TEX = re.compile(
    r"\$\$|\\[()\[\]_|]|\\(?:frac|tfrac|mathrm|mathcal|sum|text|left|right|ell)\b|:math:"
)
SKIP_TEXT_IN = {"code", "pre", "script", "style", "kbd", "samp", "math", "textarea"}
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@dataclass(frozen=True)
class Problem:
    """One offline problem: the file (relative to the site), what is wrong and the evidence."""

    file: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.file}: {self.kind}: {self.detail}"


def is_external(url: str) -> bool:
    """Whether loading ``url`` from a page would contact another host.

    Example:
        >>> [is_external(u) for u in ("https://cdn.x/a.js", "//fonts.x/css", "../a.css",
        ...                           "data:font/woff2;base64,AA", "#top")]
        [True, True, False, False, False]
    """
    url = url.strip()
    if not url or url.startswith(("#", "data:", "blob:", "about:")):
        return False
    return url.startswith("//") or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", url) is not None


def css_urls(css: str) -> list[str]:
    """Every URL a stylesheet loads (``url(...)`` and ``@import``).

    Example:
        >>> css_urls("@import 'https://x/y.css'; a{background:url( ../i.png )}")
        ['https://x/y.css', '../i.png']
    """
    found = []
    for match in CSS_URL.finditer(css):
        found.append((match.group(2) if match.group(2) is not None else match.group(4)).strip())
    return found


class _PageScanner(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.loads: list[str] = []
        self.text: list[str] = []
        self._skip: list[str] = []
        self._style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        names = LOADING_ATTRIBUTES.get(tag, ())
        rel = set(values.get("rel", "").lower().split())
        if tag == "link" and rel and rel <= NON_LOADING_LINKS:
            names = ()
        for name in names:
            if name in values:
                value = values[name]
                if name == "srcset":
                    self.loads += [u.split()[0] for u in value.split(",") if u.strip()]
                else:
                    self.loads.append(value)
        if "style" in values:
            self.loads += css_urls(values["style"])
        if tag == "meta" and values.get("http-equiv", "").lower() == "refresh":
            self.loads.append(values.get("content", "").partition("url=")[2])
        if tag == "style":
            self._style = True
        if tag in SKIP_TEXT_IN:
            self._skip.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._style = False
        if self._skip and self._skip[-1] == tag:
            self._skip.pop()

    def handle_data(self, data: str) -> None:
        if self._style:
            self.loads += css_urls(data)
        if not self._skip:
            self.text.append(data)


def scan_html(html: str) -> tuple[list[str], str]:
    r"""The URLs a page loads and its visible text outside code/math.

    Example:
        >>> loads, text = scan_html('<link rel="stylesheet" href="https://f/c.css">'
        ...                         '<p>x <code>\\(y\\)</code> z</p>')
        >>> loads, text.split()
        (['https://f/c.css'], ['x', 'z'])
    """
    scanner = _PageScanner()
    scanner.feed(html)
    scanner.close()
    return scanner.loads, " ".join(scanner.text)


def static_problems(site: str | os.PathLike[str]) -> list[Problem]:
    """External loads and raw TeX in every ``.html`` and ``.css`` file of a built site.

    Args:
        site: the folder ``mkdocs build`` wrote.

    Returns:
        The problems found (empty when the site works offline).

    Raises:
        FileNotFoundError: ``site`` has no ``index.html``.
    """
    root = Path(site)
    if not (root / "index.html").is_file():
        raise FileNotFoundError(f"{root}: no index.html (run `mkdocs build` first)")
    problems = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.suffix == ".html":
            loads, text = scan_html(path.read_text(encoding="utf-8"))
            problems += [Problem(rel, "external load", u) for u in loads if is_external(u)]
            for match in RAW_TEX.finditer(text):
                context = text[max(0, match.start() - 30) : match.end() + 30]
                problems.append(Problem(rel, "raw TeX", " ".join(context.split())))
        elif path.suffix == ".css":
            urls = css_urls(path.read_text(encoding="utf-8", errors="replace"))
            problems += [Problem(rel, "external load", u) for u in urls if is_external(u)]
    return problems


# ------------------------------------------------------------------------------------------------
# browser check
# ------------------------------------------------------------------------------------------------
PROBE_ID = "offline-check-result"
PROBE = """<script>
window.addEventListener("load", () => setTimeout(() => {
  const maths = [...document.querySelectorAll("math")];
  const box = (e) => e.getBoundingClientRect();
  const result = {
    origin: location.origin,
    resources: performance.getEntriesByType("resource").map((e) => e.name),
    fontsFailed: [...document.fonts].filter((f) => f.status === "error").map((f) => f.family),
    fontsLoaded: [...document.fonts].filter((f) => f.status === "loaded").map((f) => f.family),
    math: maths.length,
    notMath: maths.filter((m) => !getComputedStyle(m).display.includes("math")).length,
    empty: maths.filter((m) => box(m).width < 1 || box(m).height < 1).length,
    fractions: document.querySelectorAll("mfrac").length,
    flatFractions: [...document.querySelectorAll("mfrac")].filter((f) => f.children.length !== 2
      || box(f.children[0]).bottom > box(f.children[1]).top + 1).length,
    rawTex: (document.body.innerText.match(/\\$\\$|\\\\[()\\[\\]]|\\\\frac/g) || []).length,
  };
  const out = document.createElement("pre");
  out.id = "PROBE_ID";
  out.hidden = true;  // measured, not shown (screenshots stay clean)
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
}, 300));
</script>""".replace("PROBE_ID", PROBE_ID)


def find_chromium() -> str | None:
    """The path of a Chromium/Chrome executable (``$CHROMIUM`` first), or ``None``."""
    candidates = [os.environ.get("CHROMIUM", ""), *CHROMIUM_NAMES]
    for name in candidates:
        path = shutil.which(name) if name else None
        if path:
            return path
    return None


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """Serve ``folder`` on ``127.0.0.1`` (a free port) for the duration; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def _chromium(chromium: str, *args: str, timeout: float = 60) -> str:
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        # Offline: every host name but the local server's fails to resolve.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{chromium} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def probe_pages(
    site: str | os.PathLike[str],
    pages: Sequence[str],
    *,
    chromium: str,
    screenshots: str | os.PathLike[str] | None = None,
    width: int = 1280,
) -> dict[str, dict[str, Any] | None]:
    """Open pages of a built site in offline headless Chromium; what the probe script measured.

    Args:
        site: the folder ``mkdocs build`` wrote.
        pages: page folders relative to the site (``""`` is the home page, ``"method/"`` ...).
        chromium: the browser executable (see :func:`find_chromium`).
        screenshots: folder for one PNG per page (``method_.png`` ...), or ``None``.
        width: the browser window width in CSS pixels.

    Returns:
        Per page ``None`` (missing or did not load) or a dict: ``origin``, ``resources`` (every
        URL loaded), ``fontsFailed`` / ``fontsLoaded`` (families), ``math`` (``<math>`` count),
        ``notMath`` (without MathML display), ``empty`` (zero-size), ``fractions``,
        ``flatFractions`` (numerator not above the denominator), ``rawTex`` (visible TeX marks).
    """
    results: dict[str, dict[str, Any] | None] = {}
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "site"
        shutil.copytree(Path(site), copy)
        for page in pages:
            index = copy / page / "index.html"
            if index.is_file():
                text = index.read_text(encoding="utf-8")
                index.write_text(text.replace("</body>", PROBE + "</body>", 1), encoding="utf-8")
        with serve(copy) as base:
            for page in pages:
                results[page] = None
                if not (copy / page / "index.html").is_file():
                    continue
                dom = _chromium(chromium, "--virtual-time-budget=5000", "--dump-dom", base + page)
                match = re.search(rf'<pre id="{PROBE_ID}"[^>]*>(.*?)</pre>', dom, re.DOTALL)
                if match is not None:
                    results[page] = json.loads(html.unescape(match.group(1)))
                if screenshots is not None:
                    out = Path(screenshots)
                    out.mkdir(parents=True, exist_ok=True)
                    png = out / f"{page.replace('/', '_') or 'index'}.png"
                    _chromium(
                        chromium,
                        "--hide-scrollbars",
                        f"--window-size={width},2400",
                        "--virtual-time-budget=5000",
                        f"--screenshot={png}",
                        base + page,
                    )
    return results


def browser_problems(
    site: str | os.PathLike[str],
    pages: Sequence[str],
    *,
    chromium: str,
    screenshots: str | os.PathLike[str] | None = None,
) -> list[Problem]:
    """The offline problems headless Chromium shows on ``pages`` (see :func:`probe_pages`).

    Returns:
        A resource from another host, a font that failed, a formula not laid out as MathML or
        empty, a flat fraction, visible raw TeX, or a page that is missing or did not load.
    """
    problems = []
    probes = probe_pages(site, pages, chromium=chromium, screenshots=screenshots)
    for page, r in probes.items():
        name = f"{page}index.html"
        if r is None:
            problems.append(Problem(name, "not loaded", "missing, or the probe did not run"))
            continue
        problems += [
            Problem(name, "external load", u)
            for u in r["resources"]
            if not u.startswith(r["origin"])
        ]
        problems += [Problem(name, "font failed", f) for f in r["fontsFailed"]]
        checks = (
            ("notMath", "math not rendered", "<math> elements without MathML display"),
            ("empty", "math not rendered", "<math> elements of zero size"),
            ("flatFractions", "math not rendered", "fractions not stacked"),
            ("rawTex", "raw TeX", "visible TeX marks"),
        )
        for key, kind, what in checks:
            if r[key]:
                total = r["fractions"] if key == "flatFractions" else r["math"]
                problems.append(Problem(name, kind, f"{r[key]} {what} (of {total})"))
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: print the problems, exit 1 if there are any, 0 otherwise."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", nargs="?", default="site", help="built site folder (site/)")
    parser.add_argument("--browser", action="store_true", help="also check in headless Chromium")
    parser.add_argument(
        "--pages",
        nargs="*",
        default=["", "quickstart/", "method/", "metrics/", "api/module/", "api/losses/"],
        help="pages for the browser check (folders relative to the site)",
    )
    parser.add_argument("--screenshots", help="folder for one PNG per browser-checked page")
    args = parser.parse_args(argv)
    problems = static_problems(args.site)
    if args.browser:
        chromium = find_chromium()
        if chromium is None:
            print("browser check skipped: no chromium on PATH (set $CHROMIUM)", file=sys.stderr)
        else:
            problems += browser_problems(
                args.site, args.pages, chromium=chromium, screenshots=args.screenshots
            )
    for problem in problems:
        print(problem)
    print(f"{len(problems)} problem(s)", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
