"""fairvlm-lightning: robust and fair CLIP-style training for medical imaging.

Public API (re-exported names only): fairness metrics, per-pair contrastive losses, the Sinkhorn
fairness term, Dynamic Bad Pair Mining, the Hugging Face dual-encoder adapter, zero-shot prompts,
the data modules and the ready LightningModule. The application (the ``fairvlm`` command, the
benchmark runner, plots, the synthetic twins and tiny models) is :mod:`fairvlm_lightning.app`.

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
    "LinearProbeEvaluation": "fairvlm_lightning.probe",
    # losses, fairness term, encoder adapter
    "DualEncoder": "fairvlm_lightning.encoders",
    "DualEncoderOutput": "fairvlm_lightning.encoders",
    "EncoderSpec": "fairvlm_lightning.encoders",
    "ZeroShotPrompts": "fairvlm_lightning.zeroshot",
    "pair_losses": "fairvlm_lightning.losses",
    "SinkhornFairnessLoss": "fairvlm_lightning.sinkhorn",
    # data
    "ImageTextDataModule": "fairvlm_lightning.data",
    "FairVLMedDataModule": "fairvlm_lightning.data",
    "load_fairvlmed": "fairvlm_lightning.data",
    "ATTRIBUTE_GROUPS": "fairvlm_lightning.data",
    # module
    "FairVLMModule": "fairvlm_lightning.module",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from fairvlm_lightning.callbacks import DynamicBadPairMining as DynamicBadPairMining
    from fairvlm_lightning.callbacks import find_bad_pair_mining as find_bad_pair_mining
    from fairvlm_lightning.data import ATTRIBUTE_GROUPS as ATTRIBUTE_GROUPS
    from fairvlm_lightning.data import FairVLMedDataModule as FairVLMedDataModule
    from fairvlm_lightning.data import ImageTextDataModule as ImageTextDataModule
    from fairvlm_lightning.data import load_fairvlmed as load_fairvlmed
    from fairvlm_lightning.encoders import DualEncoder as DualEncoder
    from fairvlm_lightning.encoders import DualEncoderOutput as DualEncoderOutput
    from fairvlm_lightning.encoders import EncoderSpec as EncoderSpec
    from fairvlm_lightning.losses import pair_losses as pair_losses
    from fairvlm_lightning.metrics import DemographicParityDifference as DemographicParityDifference
    from fairvlm_lightning.metrics import EqualizedOddsDifference as EqualizedOddsDifference
    from fairvlm_lightning.metrics import EquityScaledAccuracy as EquityScaledAccuracy
    from fairvlm_lightning.metrics import EquityScaledAUROC as EquityScaledAUROC
    from fairvlm_lightning.metrics import FairnessMetrics as FairnessMetrics
    from fairvlm_lightning.metrics import GroupAUROC as GroupAUROC
    from fairvlm_lightning.mining import BadPairMiner as BadPairMiner
    from fairvlm_lightning.module import FairVLMModule as FairVLMModule
    from fairvlm_lightning.probe import LinearProbeEvaluation as LinearProbeEvaluation
    from fairvlm_lightning.sinkhorn import SinkhornFairnessLoss as SinkhornFairnessLoss
    from fairvlm_lightning.zeroshot import ZeroShotPrompts as ZeroShotPrompts


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fairvlm_lightning' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
