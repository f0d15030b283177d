"""MkDocs hook: the generated results pages get the full width (no table-of-contents column).

``docs/results.md`` and ``docs/results/*.md`` are written by the benchmarks and overwritten on
every run, so their front matter cannot be edited by hand; their tables have a dozen numeric
columns that wrap "0.853 ± 0.015" in two lines beside the table of contents.
"""

from __future__ import annotations

from typing import Any


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    """Hide the table of contents on the results pages (Material's ``hide: [toc]``)."""
    if page.file.src_uri == "results.md" or page.file.src_uri.startswith("results/"):
        hide = list(page.meta.get("hide", []))
        page.meta["hide"] = [*hide, "toc"] if "toc" not in hide else hide
    return markdown
