"""Scoring DBPM flags against group ids and a ground truth, and exporting them (pure torch).

Separate from the rules: these functions only read a miner's flags and statistic.

* :func:`auroc`: rank-based AUROC (ties get the average rank), NaN without both classes.
* :func:`group_flag_metrics`: flagged count and rate per group of each group key.
* :func:`truth_metrics`: precision/recall of the *faulty* flags against the truth, overall and
  per group, and the AUROC of the statistic separating truly bad from clean pairs.
* :func:`export_flagged`: the flagged pairs as a CSV file, written atomically.

Example:
    >>> import torch
    >>> auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
    0.75
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from fairvlm_lightning.mining.strategies import FAULTY, NOISY

__all__ = ["FLAG_NAMES", "auroc", "export_flagged", "group_flag_metrics", "truth_metrics"]

FLAG_NAMES = {NOISY: "noisy", FAULTY: "faulty"}


def auroc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve of ``scores`` for the positives of ``labels`` (Mann-Whitney).

    Ties count one half (average ranks). ``NaN`` when a class is absent.

    Args:
        scores: (n,) real scores, higher = more likely positive.
        labels: (n,) bool or 0/1.

    Example:
        >>> auroc(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([0, 1, 1]))
        0.75
    """
    scores = scores.detach().flatten().to("cpu", torch.float64)
    positive = labels.detach().flatten().to("cpu").bool()
    n_pos = int(positive.sum())
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    sorted_scores, order = torch.sort(scores)
    _, inverse, counts = torch.unique_consecutive(
        sorted_scores, return_inverse=True, return_counts=True
    )
    ends = counts.cumsum(0).double()  # rank of the last element of each tie block (1-based)
    mean_rank = ends - (counts.double() - 1.0) / 2.0
    ranks = torch.empty_like(scores)
    ranks[order] = mean_rank[inverse]
    u = float(ranks[positive].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def _group_name(g: int) -> str:
    return "unknown" if g < 0 else str(g)


def group_flag_metrics(
    flagged: Tensor, has: Tensor, group_values: Mapping[str, Tensor], prefix: str
) -> dict[str, float]:
    """``{prefix}/{key}/flagged_count_group_{g}`` and ``flagged_rate_group_{g}`` per group.

    The rate is flagged pairs of the group / pairs of the group with history; ``g`` is
    ``unknown`` for -1; groups without pairs with history are left out.
    """
    out: dict[str, float] = {}
    flagged = flagged & has
    for key, values in group_values.items():
        shifted = values.long() + 1  # -1 (unknown) -> bin 0
        total = torch.bincount(shifted[has], minlength=129).tolist()
        bad = torch.bincount(shifted[flagged], minlength=129).tolist()
        for b, (n_total, n_bad) in enumerate(zip(total, bad, strict=True)):
            if n_total == 0:
                continue
            g = _group_name(b - 1)
            out[f"{prefix}/{key}/flagged_count_group_{g}"] = float(n_bad)
            out[f"{prefix}/{key}/flagged_rate_group_{g}"] = n_bad / n_total
    return out


def truth_metrics(
    faulty: Tensor,
    has: Tensor,
    truth: Tensor,
    statistic: Tensor,
    group_values: Mapping[str, Tensor],
    group_keys: Sequence[str],
    prefix: str,
) -> dict[str, float]:
    """Precision/recall of the faulty flags and AUROC of the statistic against the truth.

    Only pairs with history and a known truth (``truth`` 0 or 1; -1 = never seen) count.
    Keys: ``{prefix}/num_bad``, ``num_flagged_bad``, ``precision``, ``recall``,
    ``clean_flag_rate`` (clean pairs flagged / clean pairs), ``auroc`` (the statistic
    separating bad from clean pairs) and, per group ``g`` of each key ``a`` of ``group_keys``,
    ``{prefix}/{a}/precision_group_{g}``, ``recall_group_{g}``, ``clean_flag_rate_group_{g}``
    and ``auroc_group_{g}``. NaN where a ratio has no denominator or a class is missing.

    Example:
        >>> t = torch.tensor([1, 0, 0, 1], dtype=torch.int8)
        >>> m = truth_metrics(torch.tensor([True, False, True, False]),
        ...                   torch.ones(4, dtype=torch.bool), t,
        ...                   torch.tensor([3.0, 1.0, 2.0, 2.5]), {}, (), "dbpm")
        >>> m["dbpm/precision"], m["dbpm/recall"], m["dbpm/auroc"]
        (0.5, 0.5, 1.0)
    """
    known = has & (truth >= 0)
    bad = (truth == 1) & known
    clean = (truth == 0) & known
    faulty = faulty & known

    def ratio(num: Tensor, den: Tensor) -> float:
        d = int(den.sum())
        return int(num.sum()) / d if d else float("nan")

    out = {
        f"{prefix}/num_bad": float(bad.sum()),
        f"{prefix}/num_flagged_bad": float((faulty & bad).sum()),
        f"{prefix}/precision": ratio(faulty & bad, faulty),
        f"{prefix}/recall": ratio(faulty & bad, bad),
        f"{prefix}/clean_flag_rate": ratio(faulty & clean, clean),
        f"{prefix}/auroc": auroc(statistic[known], bad[known]),
    }
    for key in group_keys:
        values = group_values[key]
        for g in torch.unique(values[known]).tolist():
            name = _group_name(g)
            in_g = values == g
            p = f"{prefix}/{key}"
            out[f"{p}/precision_group_{name}"] = ratio(faulty & bad & in_g, faulty & in_g)
            out[f"{p}/recall_group_{name}"] = ratio(faulty & bad & in_g, bad & in_g)
            out[f"{p}/clean_flag_rate_group_{name}"] = ratio(faulty & clean & in_g, clean & in_g)
            sel = known & in_g
            out[f"{p}/auroc_group_{name}"] = auroc(statistic[sel], bad[sel])
    return out


def export_flagged(
    path: str | os.PathLike[str],
    flags: Tensor,
    statistic: Tensor,
    num_epochs: Tensor,
    group_values: Mapping[str, Tensor],
) -> Path:
    """Write one row per flagged pair to the CSV file ``path`` (atomically) and return it.

    Columns: ``index``, ``history_mean`` (the statistic), ``num_epochs``, ``flag``
    (``noisy``/``faulty``) and one column per group key (-1 = unknown). The file is written
    to a temporary name in the same folder and renamed, so a reader never sees half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    idx = (flags != 0).nonzero().flatten().cpu()
    columns: dict[str, list] = {
        "index": idx.tolist(),
        "history_mean": statistic.cpu()[idx].tolist(),
        "num_epochs": num_epochs.cpu()[idx].tolist(),
        "flag": [FLAG_NAMES[c] for c in flags.cpu()[idx].tolist()],
    }
    for key, values in group_values.items():
        columns[key] = values.cpu()[idx].tolist()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(list(columns))
            writer.writerows(zip(*columns.values(), strict=True))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
