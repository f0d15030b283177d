"""Synthetic data and tiny models: the FairVLMed twin, a chest X-ray twin, tiny dual encoders.

Application code built on the library: :mod:`~fairvlm_lightning.app.synthetic.fairvlmed` writes
the FairVLMed twin in the dataset's on-disk layout, :mod:`~fairvlm_lightning.app.synthetic.cxr` a
multi-label chest X-ray twin, :mod:`~fairvlm_lightning.app.synthetic.tiny_model` tiny CLIP dual
encoders with locally trained tokenizers, :mod:`~fairvlm_lightning.app.synthetic.release_forms`
the twin in the other published forms of FairVLMed, and
:class:`SyntheticFairVLMedDataModule` and :class:`SyntheticCXRDataModule` the twins as data
modules.

Example:
    >>> from fairvlm_lightning.app.synthetic import SyntheticFairVLMedDataModule
    >>> SyntheticFairVLMedDataModule.__mro__[1].__name__
    'FairVLMedDataModule'
"""

from fairvlm_lightning.app.synthetic.cxr import (
    ensure_synthetic_cxr,
    synthetic_cxr_settings,
    write_synthetic_cxr,
)
from fairvlm_lightning.app.synthetic.cxr_data import SyntheticCXRDataModule
from fairvlm_lightning.app.synthetic.datamodule import SyntheticFairVLMedDataModule
from fairvlm_lightning.app.synthetic.fairvlmed import (
    CACHE_ENV,
    DEFAULT_PROMPTS,
    DEFAULT_SIZES,
    cache_dir,
    ensure_synthetic_assets,
    expand_cache_path,
    write_synthetic_fairvlmed,
)
from fairvlm_lightning.app.synthetic.release_forms import RELEASE_FORMS, write_release_form
from fairvlm_lightning.app.synthetic.tiny_model import (
    MODEL_PRESETS,
    SPECIAL_TOKENS,
    build_tiny_dual_encoder,
    train_note_tokenizer,
    warm_start_dual_encoder,
)

__all__ = [
    "CACHE_ENV",
    "DEFAULT_PROMPTS",
    "DEFAULT_SIZES",
    "MODEL_PRESETS",
    "RELEASE_FORMS",
    "SPECIAL_TOKENS",
    "SyntheticCXRDataModule",
    "SyntheticFairVLMedDataModule",
    "build_tiny_dual_encoder",
    "cache_dir",
    "ensure_synthetic_assets",
    "ensure_synthetic_cxr",
    "expand_cache_path",
    "synthetic_cxr_settings",
    "train_note_tokenizer",
    "warm_start_dual_encoder",
    "write_release_form",
    "write_synthetic_cxr",
    "write_synthetic_fairvlmed",
]
