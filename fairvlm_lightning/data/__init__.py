"""Data: any image-text dataset, Harvard-FairVLMed in its published forms, its twin, samplers."""

from fairvlm_lightning.data.datamodule import (
    SOURCE_SPLITS,
    FairVLMedDataModule,
    ImageTextDataModule,
)
from fairvlm_lightning.data.fairvlmed import (
    ATTRIBUTE_GROUPS,
    ATTRIBUTES,
    SPLIT_FOLDERS,
    SPLIT_SOURCES,
    load_fairvlmed,
    split_files,
)
from fairvlm_lightning.data.images import to_grey_uint8
from fairvlm_lightning.data.release_forms import RELEASE_FORMS, write_release_form
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
    "RELEASE_FORMS",
    "SOURCE_SPLITS",
    "SPLIT_FOLDERS",
    "SPLIT_SOURCES",
    "EpochShuffleSampler",
    "FairVLMedDataModule",
    "GroupBalancedSampler",
    "ImageTextDataModule",
    "ImageTransform",
    "ResumableDataLoader",
    "UnpaddedDistributedSampler",
    "build_tiny_dual_encoder",
    "ensure_synthetic_assets",
    "load_fairvlmed",
    "split_files",
    "to_grey_uint8",
    "train_note_tokenizer",
    "warm_start_dual_encoder",
    "write_release_form",
    "write_synthetic_fairvlmed",
]
