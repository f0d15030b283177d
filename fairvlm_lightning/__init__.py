"""fairvlm-lightning: robust and fair CLIP-style training for medical imaging.

Public API (re-exported names only): fairness metrics, per-pair contrastive losses, the Sinkhorn
fairness term, Dynamic Bad Pair Mining, the Hugging Face dual-encoder adapter, the data module and
the ready LightningModule.

Names are imported lazily on first access, so ``import fairvlm_lightning`` stays cheap (spawned
DDP workers and the metrics-only user do not pay for Lightning or transformers).

Example:
    >>> import fairvlm_lightning as fl
    >>> fl.FairnessMetrics.__name__
    'FairnessMetrics'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    # metrics
    "GroupAUROC": "fairvlm_lightning.metrics",
    "EquityScaledAUROC": "fairvlm_lightning.metrics",
    "EquityScaledAccuracy": "fairvlm_lightning.metrics",
    "DemographicParityDifference": "fairvlm_lightning.metrics",
    "EqualizedOddsDifference": "fairvlm_lightning.metrics",
    "FairnessMetrics": "fairvlm_lightning.metrics",
    # mining
    "BadPairMiner": "fairvlm_lightning.mining",
    "DynamicBadPairMining": "fairvlm_lightning.callbacks",
    "find_bad_pair_mining": "fairvlm_lightning.callbacks",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from fairvlm_lightning.callbacks import DynamicBadPairMining as DynamicBadPairMining
    from fairvlm_lightning.callbacks import find_bad_pair_mining as find_bad_pair_mining
    from fairvlm_lightning.metrics import DemographicParityDifference as DemographicParityDifference
    from fairvlm_lightning.metrics import EqualizedOddsDifference as EqualizedOddsDifference
    from fairvlm_lightning.metrics import EquityScaledAccuracy as EquityScaledAccuracy
    from fairvlm_lightning.metrics import EquityScaledAUROC as EquityScaledAUROC
    from fairvlm_lightning.metrics import FairnessMetrics as FairnessMetrics
    from fairvlm_lightning.metrics import GroupAUROC as GroupAUROC
    from fairvlm_lightning.mining import BadPairMiner as BadPairMiner


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fairvlm_lightning' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
