"""Tables of fairness metrics: one renderer for the terminal, the model card and the reports.

:func:`render_table` lays out any header and rows as aligned plain text or as Markdown;
:func:`fairness_table` builds the per-attribute fairness table (overall AUC, ES-AUC, DPD,
DEOdds and the AUC of each group) from the keys that :class:`~fairvlm_lightning.metrics.
FairnessMetrics` logs, with bootstrap intervals ``[low, high]`` where they were logged. A
missing or NaN value is written :data:`MISSING` in both styles.

Example:
    >>> print(render_table(["method", "AUC"], [["clip", "0.812"]], style="markdown"))
    | method | AUC |
    | --- | --- |
    | clip | 0.812 |
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from fairvlm_lightning.schema import GROUP_NAMES

__all__ = [
    "MISSING",
    "Style",
    "fairness_table",
    "format_value",
    "group_label",
    "per_output_table",
    "render_table",
]

#: How a missing or NaN value is written.
MISSING = "n/a"
#: ``"text"``: columns padded to a common width (terminal); ``"markdown"``: a pipe table.
Style = Literal["text", "markdown"]


def format_value(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals, or :data:`MISSING` for ``None``/NaN/non-numbers.

    Example:
        >>> format_value(0.81234), format_value(float("nan")), format_value(None)
        ('0.812', 'n/a', 'n/a')
    """
    if hasattr(value, "item"):
        value = value.item()
    try:
        number = float(value)
    except (TypeError, ValueError):
        return MISSING
    return MISSING if math.isnan(number) else f"{number:.{digits}f}"


def render_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], *, style: Style = "markdown"
) -> str:
    """Lay out ``rows`` under ``header`` as plain text or as a Markdown pipe table.

    Plain text pads every column but the last to its widest cell and separates columns by two
    spaces; the last column is not padded (no trailing spaces).

    Args:
        header: the column titles.
        rows: the cells, one sequence per row, each as long as ``header``.
        style: ``"text"`` or ``"markdown"``.

    Returns:
        The table, without a trailing newline.

    Raises:
        ValueError: a row whose length differs from the header's, or an unknown style.

    Example:
        >>> print(render_table(["a", "long name"], [["1", "x"], ["22", "y"]], style="text"))
        a   long name
        1   x
        22  y
    """
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(f"row {i} has {len(row)} cells, the header has {len(header)}")
    if style == "markdown":
        lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    if style != "text":
        raise ValueError(f"style must be 'text' or 'markdown', got {style!r}")
    table = [list(header), *(list(r) for r in rows)]
    widths = [max(len(r[c]) for r in table) for c in range(len(header) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(w) for cell, w in zip(r, widths, strict=False)), r[-1]])
        for r in table
    )


def group_label(
    attribute: str, group: int, names: Mapping[str, Sequence[str]] | None = None
) -> str:
    """The display name of ``group`` of ``attribute`` (``"group g"`` where none is known).

    Example:
        >>> group_label("race", 1), group_label("site", 2)
        ('Black', 'group 2')
    """
    known = (GROUP_NAMES if names is None else names).get(attribute, ())
    return known[group] if 0 <= group < len(known) else f"group {group}"


def fairness_table(
    metrics: Mapping[str, Any],
    attributes: Mapping[str, int],
    *,
    prefix: str = "test",
    style: Style = "text",
    group_names: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """The per-attribute fairness table of logged metrics.

    The text style starts with a line ``"{prefix}: AUC … | Acc …"``; the Markdown style is the
    bare table (for a model card). Where bootstrap intervals were logged (``…_ci_low`` and
    ``…_ci_high`` keys, from ``FairnessMetrics(..., bootstrap=N)``), each value is followed by
    ``[low, high]`` and the AUC column, which repeats the overall AUC, is left out.

    Args:
        metrics: values keyed ``"{prefix}/auc"``, ``"{prefix}/acc"``, ``"{prefix}/{attr}/es_auc"``,
            ``"{prefix}/{attr}/auc_group_{g}"``, ``"{prefix}/{attr}/dpd"``,
            ``"{prefix}/{attr}/deodds"`` (floats or 0-d tensors); a missing one shows as
            :data:`MISSING`.
        attributes: attribute → number of groups, in the order of the rows.
        prefix: the stage prefix of the keys (``"val"``, ``"test"``, ``"probe"``).
        style: ``"text"`` or ``"markdown"``.
        group_names: attribute → display names of its groups (default: FairVLMed's).

    Returns:
        The table, without a trailing newline.

    Raises:
        TypeError: ``attributes`` is not a mapping.

    Example:
        >>> m = {"test/auc": 0.8, "test/acc": 0.75, "test/gender/es_auc": 0.7,
        ...      "test/gender/auc_group_0": 0.75, "test/gender/auc_group_1": 0.85,
        ...      "test/gender/dpd": 0.1, "test/gender/deodds": 0.2}
        >>> print(fairness_table(m, {"gender": 2}))
        test: AUC 0.800 | Acc 0.750
        attribute  AUC    ES-AUC  DPD    DEOdds  group AUCs
        gender     0.800  0.700   0.100  0.200   Female 0.750, Male 0.850
        >>> print(fairness_table(m, {"gender": 2}, style="markdown"))
        | attribute | AUC | ES-AUC | DPD | DEOdds | group AUCs |
        | --- | --- | --- | --- | --- | --- |
        | gender | 0.800 | 0.700 | 0.100 | 0.200 | Female 0.750, Male 0.850 |
    """
    if not isinstance(attributes, Mapping):
        raise TypeError(f"attributes must be a dict, got {type(attributes).__name__}")
    with_ci = any(k.startswith(f"{prefix}/") and k.endswith("_ci_low") for k in metrics)

    def cell(key: str) -> str:
        value = format_value(metrics.get(f"{prefix}/{key}"))
        low, high = metrics.get(f"{prefix}/{key}_ci_low"), metrics.get(f"{prefix}/{key}_ci_high")
        if not with_ci or (format_value(low) == MISSING and format_value(high) == MISSING):
            return value
        return f"{value} [{format_value(low)}, {format_value(high)}]"

    header = ["attribute", *([] if with_ci else ["AUC"]), "ES-AUC", "DPD", "DEOdds", "group AUCs"]
    rows = []
    for attr, num_groups in attributes.items():
        groups = ", ".join(
            f"{group_label(attr, g, group_names)} {cell(f'{attr}/auc_group_{g}')}"
            for g in range(int(num_groups))
        )
        values = [cell(f"{attr}/{m}") for m in ("es_auc", "dpd", "deodds")]
        rows.append([attr, *([] if with_ci else [cell("auc")]), *values, groups])
    table = render_table(header, rows, style=style)
    if style == "markdown":
        return table
    note = "  (bootstrap intervals in brackets)" if with_ci else ""
    return f"{prefix}: AUC {cell('auc')} | Acc {cell('acc')}{note}\n{table}"


def per_output_table(
    metrics: Mapping[str, Any],
    attributes: Sequence[str],
    outputs: Sequence[str],
    *,
    kind: Literal["label", "class"] = "label",
    prefix: str = "test",
    style: Style = "text",
) -> str:
    """AUC and each attribute's ES-AUC per label (multi-label) or class (multi-class).

    Reads the per-output keys of a multi-label or multi-class
    :class:`~fairvlm_lightning.metrics.FairnessMetrics`: ``"{prefix}/auc_{kind}_{k}"`` and
    ``"{prefix}/{attr}/es_auc_{kind}_{k}"``.

    Args:
        metrics: the logged values.
        attributes: the attributes (and intersections) whose ES-AUC columns are shown.
        outputs: display name of each label or class, in order.
        kind: ``"label"`` or ``"class"``.
        prefix: the stage prefix of the keys.
        style: ``"text"`` or ``"markdown"``.

    Example:
        >>> m = {"test/auc_label_0": 0.9, "test/sex/es_auc_label_0": 0.85,
        ...      "test/auc_label_1": 0.7, "test/sex/es_auc_label_1": 0.6}
        >>> print(per_output_table(m, ["sex"], ["edema", "effusion"]))
        label     AUC    sex ES-AUC
        edema     0.900  0.850
        effusion  0.700  0.600
    """
    header = [kind, "AUC", *(f"{a} ES-AUC" for a in attributes)]
    rows = [
        [name, format_value(metrics.get(f"{prefix}/auc_{kind}_{k}")),
         *(format_value(metrics.get(f"{prefix}/{a}/es_auc_{kind}_{k}")) for a in attributes)]
        for k, name in enumerate(outputs)
    ]
    return render_table(header, rows, style=style)
