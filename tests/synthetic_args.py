"""The command-line overrides that point a shipped config at the session's small synthetic set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def synthetic_overrides(
    root: Path, synthetic_kwargs: dict[str, Any], *, eval_batch_size: int = 64
) -> list[str]:
    """``fairvlm`` arguments: the synthetic data at ``root``, its tiny model, batch size 16."""
    return [
        "--data.root",
        str(root),
        "--data.synthetic_kwargs",
        json.dumps(synthetic_kwargs),
        "--model.model",
        str(root / "tiny_model"),
        "--data.batch_size",
        "16",
        "--data.eval_batch_size",
        str(eval_batch_size),
    ]
