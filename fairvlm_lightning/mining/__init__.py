"""Dynamic Bad Pair Mining: the framework-free miner and its strategy objects.

* :class:`BadPairMiner` (:mod:`~fairvlm_lightning.mining.miner`): per-pair memory, flags and
  weights for any loop; :class:`MinerSpec` is a miner configured without its size.
* Strategies (:mod:`~fairvlm_lightning.mining.strategies`): statistics :class:`MeanLoss`,
  :class:`EmaLoss`; locations :class:`MeanStd`, :class:`MedianMad`; :class:`Scope`; rules
  :class:`ThresholdRule` (the paper's) and :class:`GaussianMixtureRule`.
* Ground-truth scoring and CSV export (:mod:`~fairvlm_lightning.mining.scoring`): AUROC,
  precision/recall per group.

Example:
    >>> from fairvlm_lightning.mining import BadPairMiner, EmaLoss, GaussianMixtureRule, Scope
    >>> miner = BadPairMiner(1000, statistic=EmaLoss(0.5), scope=Scope(("race",)),
    ...                      rule=GaussianMixtureRule(weighting="posterior"))
    >>> miner.bytes_per_pair
    16.0
"""

from fairvlm_lightning.mining.miner import BadPairMiner, MinerSpec, dist_rank_world
from fairvlm_lightning.mining.mixture import MixtureFit, fit_two_gaussians, posterior_bad
from fairvlm_lightning.mining.strategies import (
    FAULTY,
    LOCATIONS,
    MAD_TO_SIGMA,
    NOISY,
    NOT_FLAGGED,
    PAPER_SETTINGS,
    PDF_PEAK_WARNING,
    STATISTICS,
    WEIGHTINGS,
    EmaLoss,
    GaussianMixtureRule,
    Location,
    LossStatistic,
    MeanLoss,
    MeanStd,
    MedianMad,
    MiningRule,
    Scope,
    ThresholdRule,
    strategies_from_options,
)

__all__ = [
    "FAULTY",
    "LOCATIONS",
    "MAD_TO_SIGMA",
    "NOISY",
    "NOT_FLAGGED",
    "PAPER_SETTINGS",
    "PDF_PEAK_WARNING",
    "STATISTICS",
    "WEIGHTINGS",
    "BadPairMiner",
    "EmaLoss",
    "GaussianMixtureRule",
    "Location",
    "LossStatistic",
    "MeanLoss",
    "MeanStd",
    "MedianMad",
    "MinerSpec",
    "MiningRule",
    "MixtureFit",
    "Scope",
    "ThresholdRule",
    "dist_rank_world",
    "fit_two_gaussians",
    "posterior_bad",
    "strategies_from_options",
]
