"""fairvlm-lightning: robust and fair CLIP-style training for medical imaging.

Public API (re-exported names only): fairness metrics, per-pair contrastive losses, the Sinkhorn
fairness term, Dynamic Bad Pair Mining, and the ready LightningModule.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
