"""The how-to pages of the documentation site run: every fenced ``python`` block is executed.

Each how-to page in the ``How-tos`` section of ``mkdocs.yml`` is one test. Its ``python`` blocks
run in order in one namespace (like a notebook), in a temporary working directory shared by all
pages (so the tiny synthetic folder ``demo_data`` is written once), offline. A line
``--8<-- "path"`` inside a block (the ``pymdownx.snippets`` include the site renders) is replaced by
that file, as on the site.

Convention for blocks that must not run (they need the Hub, a GPU, a cluster or the real
dataset): put the HTML comment ``<!-- docs-test: skip -->`` on the line before the fence. It is
invisible on the site. Shell (``bash``), ``yaml`` and ``text`` blocks are never executed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SKIP_MARK = "<!-- docs-test: skip -->"
_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
_SNIPPET = re.compile(r'^\s*--8<--\s+"([^"]+)"\s*$')


def howto_pages() -> list[Path]:
    """The pages under the ``How-tos`` entry of the site's navigation."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    for entry in config["nav"]:
        if isinstance(entry, dict) and "How-tos" in entry:
            return [DOCS / next(iter(item.values())) for item in entry["How-tos"]]
    raise AssertionError("mkdocs.yml has no 'How-tos' section in its nav")


def python_blocks(markdown: str, base: Path = ROOT) -> list[tuple[int, str]]:
    """``(line number, code)`` of every fenced python block not marked with the skip comment."""
    blocks = []
    for match in _FENCE.finditer(markdown):
        if match.group(1) != "python":
            continue
        before = markdown[: match.start()].rstrip().splitlines()
        if before and before[-1].strip() == SKIP_MARK:
            continue
        lines = []
        for line in match.group(2).splitlines():
            snippet = _SNIPPET.match(line)
            lines.append((base / snippet.group(1)).read_text() if snippet else line)
        blocks.append((markdown[: match.start()].count("\n") + 2, "\n".join(lines)))
    return blocks


def test_block_extraction_follows_the_convention(tmp_path: Path) -> None:
    (tmp_path / "inc.py").write_text("y = 2\n")
    page = (
        "text\n```python\nx = 1\n```\n\n"
        "<!-- docs-test: skip -->\n```python\nraise SystemExit\n```\n"
        '```bash\nrm -rf /\n```\n```python\n--8<-- "inc.py"\nz = x + y\n```\n'
    )
    blocks = python_blocks(page, base=tmp_path)
    assert [line for line, _ in blocks] == [3, 14]
    namespace: dict = {}
    for _, code in blocks:
        exec(code, namespace)
    assert namespace["z"] == 3


def test_every_howto_page_exists_and_has_runnable_code() -> None:
    pages = howto_pages()
    assert len(pages) >= 9
    for page in pages:
        assert page.is_file(), page
        assert python_blocks(page.read_text()), f"{page.name} has no executed python block"


@pytest.fixture(scope="module")
def docs_cwd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("docs_howto")


@pytest.mark.parametrize("page", howto_pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_howto_page_runs(page: Path, docs_cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(docs_cwd)
    monkeypatch.setenv("FAIRVLM_CACHE", str(docs_cwd / "cache"))
    namespace: dict = {"__name__": "__docs__"}
    for line, code in python_blocks(page.read_text()):
        exec(compile(code, f"{page.relative_to(ROOT)}:{line}", "exec"), namespace)
