"""Data: Harvard-FairVLMed loader, its synthetic twin, samplers and the Lightning data module."""

from fairvlm_lightning.data.sampling import EpochShuffleSampler

__all__ = ["EpochShuffleSampler"]
