"""Data: Harvard-FairVLMed loader, its synthetic twin, a tiny local model, samplers, data module."""

from fairvlm_lightning.data.datamodule import FairVLMedDataModule
from fairvlm_lightning.data.fairvlmed import (
    ATTRIBUTE_GROUPS,
    ATTRIBUTES,
    SPLIT_FOLDERS,
    load_fairvlmed,
)
from fairvlm_lightning.data.sampling import (
    EpochShuffleSampler,
    GroupBalancedSampler,
    ResumableDataLoader,
    UnpaddedDistributedSampler,
)
from fairvlm_lightning.data.synthetic import (
    DEFAULT_PROMPTS,
    DEFAULT_SIZES,
    ensure_synthetic_assets,
    write_synthetic_fairvlmed,
)
from fairvlm_lightning.data.tiny_model import (
    build_tiny_dual_encoder,
    train_note_tokenizer,
    warm_start_dual_encoder,
)
from fairvlm_lightning.data.transforms import ImageTransform

__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_GROUPS",
    "DEFAULT_PROMPTS",
    "DEFAULT_SIZES",
    "SPLIT_FOLDERS",
    "EpochShuffleSampler",
    "FairVLMedDataModule",
    "GroupBalancedSampler",
    "ImageTransform",
    "ResumableDataLoader",
    "UnpaddedDistributedSampler",
    "build_tiny_dual_encoder",
    "ensure_synthetic_assets",
    "load_fairvlmed",
    "train_note_tokenizer",
    "warm_start_dual_encoder",
    "write_synthetic_fairvlmed",
]
