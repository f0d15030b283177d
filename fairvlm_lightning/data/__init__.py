"""Data: any image-text dataset, Harvard-FairVLMed in its published forms, samplers.

The synthetic twins and tiny models are application code: :mod:`fairvlm_lightning.app.synthetic`.
"""

from fairvlm_lightning.data.datamodule import (
    SOURCE_SPLITS,
    FairVLMedDataModule,
    ImageTextDataModule,
    PairDataModule,
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
from fairvlm_lightning.data.sampling import (
    EpochShuffleSampler,
    GroupBalancedSampler,
    ResumableDataLoader,
    UnpaddedDistributedSampler,
)
from fairvlm_lightning.data.transforms import ImageTransform

__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_GROUPS",
    "SOURCE_SPLITS",
    "SPLIT_FOLDERS",
    "SPLIT_SOURCES",
    "EpochShuffleSampler",
    "FairVLMedDataModule",
    "GroupBalancedSampler",
    "ImageTextDataModule",
    "ImageTransform",
    "PairDataModule",
    "ResumableDataLoader",
    "UnpaddedDistributedSampler",
    "load_fairvlmed",
    "split_files",
    "to_grey_uint8",
]
