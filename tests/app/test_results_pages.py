"""The generated results pages agree with the shipped configs they name (issue 19, item 13)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fairvlm_lightning.app.benchmark import config_settings, config_value, render_markdown
from fairvlm_lightning.configs import shipped_configs

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = sorted([DOCS / "results.md", *(DOCS / "results").glob("*.md")])
SHIPPED = {Path(p).stem for p in shipped_configs()}


def _settings_rows(text: str) -> list[list[str]]:
    """Rows of the page's settings table as cells (backticks stripped)."""
    match = re.search(r"## Settings of each method[^\n]*\n\n(\|.*?)\n\n", text + "\n\n", re.S)
    if match is None:
        return []
    rows = [line.strip("|").split(" | ") for line in match.group(1).splitlines()[2:]]
    return [[c.strip().strip("`") for c in row] for row in rows]


def _sweep_defaults(text: str) -> list[tuple[str, str, float]]:
    """``(parameter, config, value)`` of every sweep table's row marked "(default)"."""
    out = []
    for m in re.finditer(r"## (λ|β) [^`]*`([^`]+)`(.*?)(?=\n## |\Z)", text, re.S):
        param = "lambda" if m.group(1) == "λ" else "beta"
        for row in re.finditer(r"^\| ([0-9.]+) \(default\)", m.group(3), re.M):
            out.append((param, m.group(2), float(row.group(1))))
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_settings_are_the_shipped_configs(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    checked = 0
    for method, config, lam, dbpm, extra in _settings_rows(text):
        stem = Path(config).stem
        if stem not in SHIPPED or method != stem or extra != "–":
            continue  # a candidate config outside the package, a sweep point or the oracle
        now = config_settings(stem)
        assert (lam, dbpm) == (now["lambda"], now["dbpm"]), (
            f"{page.name}: {method} ran with λ={lam}, DBPM {dbpm}; the shipped config now has "
            f"λ={now['lambda']}, DBPM {now['dbpm']} — regenerate the page or the config"
        )
        checked += 1
    for param, config, value in _sweep_defaults(text):
        assert config_value(config, param) == pytest.approx(value), (
            f"{page.name}: the {param} sweep of {config} marks {value:g} as the shipped default; "
            f"the config now has {config_value(config, param)}"
        )
        checked += 1
    if "## Overall" in text:
        assert checked, f"{page.name}: a benchmark page without a settings table or sweep"


def test_the_check_fails_on_a_page_of_other_settings() -> None:
    summary = {"baseline": "synthetic_clip", "ci": 0.95, "comparisons": {},
               "methods": {}}
    variants = [{"name": "synthetic_robust_fair", "sweep": {}}]
    report = {"summary": summary, "seeds": [0], "date": "d", "variants": variants,
              "total_run_seconds": 0.0, "runs": [], "settings": {
                  "synthetic_robust_fair": {"config": "synthetic_robust_fair.yaml",
                                            "lambda": "0.3", "dbpm": "something else",
                                            "overrides": []}}}
    summary["methods"]["synthetic_robust_fair"] = {"test": _nan_table()}
    rows = _settings_rows(render_markdown(report, {}))
    assert rows == [["synthetic_robust_fair", "synthetic_robust_fair.yaml", "0.3",
                     "something else", "–"]]
    now = config_settings("synthetic_robust_fair")
    assert (rows[0][2], rows[0][3]) != (now["lambda"], now["dbpm"])


def _nan_table() -> dict:
    from fairvlm_lightning.app.benchmark.stats import metric_keys
    from fairvlm_lightning.schema import ATTRIBUTE_GROUPS

    nan = {"mean": float("nan"), "std": float("nan"), "values": []}
    return {k: nan for k in metric_keys(dict(ATTRIBUTE_GROUPS))}


def test_quickstart_and_cli_pages_show_the_same_run() -> None:
    """The printed table and DBPM line shown in the Quickstart and on the CLI page agree."""

    def shown(page: str) -> list[str]:
        text = (DOCS / page).read_text(encoding="utf-8")
        start = text.index("test: AUC")
        lines = [line.strip() for line in text[start:].splitlines()[:7]]
        return [line.split("; ...")[0][:120] for line in lines]

    quick, cli = shown("quickstart.md"), shown("cli.md")
    assert quick[0].startswith("test: AUC") and quick[6].startswith("DBPM:")
    assert quick == cli
