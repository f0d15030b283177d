"""The one table renderer: layout against hand-written references, values against the input."""

from __future__ import annotations

import math
import re

import pytest
import torch

from fairvlm_lightning.tables import MISSING, fairness_table, format_value, render_table


def test_text_layout_pads_all_but_the_last_column() -> None:
    text = render_table(["a", "bb", "c"], [["xxx", "y", "zzzz"], ["", "yyy", "z"]], style="text")
    assert text.splitlines() == ["a    bb   c", "xxx  y    zzzz", "     yyy  z"]
    assert not any(line != line.rstrip() for line in text.splitlines())


def test_markdown_layout_and_row_checks() -> None:
    md = render_table(["m", "v"], [["x", "1"]], style="markdown")
    assert md == "| m | v |\n| --- | --- |\n| x | 1 |"
    with pytest.raises(ValueError, match="row 0 has 1 cells"):
        render_table(["a", "b"], [["x"]])
    with pytest.raises(ValueError, match="style"):
        render_table(["a"], [["x"]], style="html")  # type: ignore[arg-type]


def test_format_value_one_spelling_for_missing() -> None:
    assert format_value(torch.tensor(0.12345)) == "0.123"
    assert format_value(math.nan) == format_value(None) == format_value("x") == MISSING


def _metrics(rng: torch.Generator, attributes: dict[str, int], ci: bool) -> dict[str, float]:
    m: dict[str, float] = {"test/auc": float(torch.rand(1, generator=rng)), "test/acc": 0.5}
    for a, n in attributes.items():
        keys = ["es_auc", "dpd", "deodds", *(f"auc_group_{g}" for g in range(n))]
        for k in keys:
            m[f"test/{a}/{k}"] = float(torch.rand(1, generator=rng))
    if ci:
        for k in list(m):
            m[f"{k}_ci_low"], m[f"{k}_ci_high"] = m[k] - 0.05, m[k] + 0.05
    return m


@pytest.mark.parametrize("ci", [False, True])
def test_text_and_markdown_carry_the_same_cells(ci: bool) -> None:
    """Parse both styles back: every cell equals the metric rounded to 3 decimals."""
    attributes = {"race": 3, "gender": 2, "site": 4}
    m = _metrics(torch.Generator().manual_seed(0), attributes, ci)
    md = fairness_table(m, attributes, style="markdown").splitlines()
    text = fairness_table(m, attributes).splitlines()
    assert text[0].startswith(f"test: AUC {m['test/auc']:.3f}")
    assert ("bootstrap intervals" in text[0]) is ci
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in md[2:]]
    assert [r[0] for r in rows] == list(attributes)
    for row, (attr, n) in zip(rows, attributes.items(), strict=True):
        es = f"{m[f'test/{attr}/es_auc']:.3f}"
        if ci:
            low, high = m[f"test/{attr}/es_auc_ci_low"], m[f"test/{attr}/es_auc_ci_high"]
            es += f" [{low:.3f}, {high:.3f}]"
        assert es in row
        groups = re.split(r", (?=[A-Za-z])", row[-1])
        assert len(groups) == n
        assert groups[-1].startswith("White" if attr == "race" else "Male" if attr == "gender"
                                     else f"group {n - 1}")
    for line, row in zip(text[2:], rows, strict=True):  # the text rows hold the same cells
        assert re.split(r"\s{2,}", line)[:-1] == row[:-1]


def test_per_output_table_reads_the_per_label_keys() -> None:
    from fairvlm_lightning.tables import per_output_table

    m = {"test/auc_class_0": 0.91, "test/race*sex/es_auc_class_0": 0.5,
         "test/auc_class_1": 0.42, "test/race/es_auc_class_1": 0.333}
    text = per_output_table(m, ["race", "race*sex"], ["normal", "effusion"], kind="class")
    assert text.splitlines() == [
        "class     AUC    race ES-AUC  race*sex ES-AUC",
        "normal    0.910  n/a          0.500",
        "effusion  0.420  0.333        n/a",
    ]
