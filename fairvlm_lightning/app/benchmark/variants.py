"""What a benchmark runs: configs, sweep points, data variants, and what each config sets."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fairvlm_lightning.atomic import (
    atomic_write_text,
)
from fairvlm_lightning.configs import resolve_config
from fairvlm_lightning.schema import ATTRIBUTES

__all__ = [
    "read_yaml",
    "BASELINE",
    "DATA_VARIANTS",
    "DEFAULT_CONFIGS",
    "DETAIL_ATTRIBUTE",
    "ORACLE_SUFFIX",
    "Variant",
    "config_settings",
    "config_value",
    "data_variant_args",
    "make_variants",
    "materialise_config",
]

#: The shipped synthetic configs compared by default; the first is the baseline.
DEFAULT_CONFIGS: tuple[str, ...] = (
    "synthetic_clip",
    "synthetic_clip_balanced",
    "synthetic_fairclip",
    "synthetic_dbpm",
    "synthetic_robust_fair",
)
#: Name of the baseline method (plain CLIP fine-tuning).
BASELINE = "synthetic_clip"
#: Suffix of the clean-data oracle: the baseline trained without the planted bad pairs.
ORACLE_SUFFIX = "_oracle"
#: Generator settings of the synthetic twin the benchmark can run on (``--data_variant``):
#: ``default`` is the shipped data; ``shifted`` uses another generator seed, 15 % bad pairs and
#: 60 % of them in the minority race groups.
DATA_VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "shifted": {"seed": 1, "bad_pair_rate": 0.15, "bad_pair_concentration": 0.6},
}
#: Attribute whose groups get a per-group DBPM record and ROC plot.
DETAIL_ATTRIBUTE = ATTRIBUTES[0]


# ------------------------------------------------------------------------------------------------
# variants (configs x sweeps)
# ------------------------------------------------------------------------------------------------
@dataclass
class Variant:
    """One method to benchmark: a config file plus overrides.

    Attributes:
        name: display and folder name (``synthetic_fairclip``, ``synthetic_fairclip_lambda0.01``).
        config: the YAML config file.
        overrides: extra ``fairvlm fit`` arguments (``["--model.fairness_weight", "0.01"]``).
        sweep: ``{"lambda": value}`` or ``{"beta": value}`` for a sweep point, else empty.
        base: the config's own name (the variant a sweep point belongs to).
        oracle: the baseline trained without the planted bad pairs (``--data.drop_bad_pairs``).
    """

    name: str
    config: Path
    overrides: list[str] = field(default_factory=list)
    sweep: dict[str, float] = field(default_factory=dict)
    base: str = ""
    oracle: bool = False


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML config file as a dict (ValueError when it is not a mapping)."""
    import yaml

    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"config {path} is not a YAML mapping")
    return data


def _dbpm_callback_index(cfg: Mapping[str, Any]) -> int | None:
    callbacks = (cfg.get("trainer") or {}).get("callbacks") or []
    for i, cb in enumerate(callbacks):
        if isinstance(cb, Mapping) and str(cb.get("class_path", "")).endswith(
            "DynamicBadPairMining"
        ):
            return i
    return None


def data_variant_args(name: str) -> list[str]:
    """``fairvlm fit`` arguments that point a synthetic config at the data variant ``name``.

    The variant's data and tiny model live in their own folder ``${FAIRVLM_CACHE}/synthetic_<name>``
    (written on first use), so variants never overwrite each other.

    Example:
        >>> data_variant_args("default")
        []
        >>> data_variant_args("shifted")[:2]
        ['--data.root', '${FAIRVLM_CACHE}/synthetic_shifted']
    """
    if name not in DATA_VARIANTS:
        raise ValueError(f"unknown data variant {name!r}; choose from {sorted(DATA_VARIANTS)}")
    kwargs = DATA_VARIANTS[name]
    if not kwargs:
        return []
    root = f"${{FAIRVLM_CACHE}}/synthetic_{name}"
    return [
        "--data.root",
        root,
        "--data.synthetic_kwargs",
        json.dumps(kwargs, sort_keys=True),
        "--model.model",
        f"{root}/tiny_model",
    ]


def _dbpm_rule_args(callback: dict[str, Any]) -> dict[str, Any]:
    """The ``init_args`` that hold the DBPM betas of a callback entry (made if absent).

    The nested form ``init_args.miner.init_args.rule.init_args`` (a ``ThresholdRule``); a
    callback still written with the flat options keeps them in its own ``init_args``.
    """
    init = callback.setdefault("init_args", {})
    if "miner" not in init and any(k in init for k in ("beta_noisy", "beta_faulty")):
        return init
    miner = init.setdefault("miner", {"class_path": "fairvlm_lightning.mining.MinerSpec"})
    rule = miner.setdefault("init_args", {}).setdefault(
        "rule", {"class_path": "fairvlm_lightning.mining.ThresholdRule"}
    )
    return rule.setdefault("init_args", {})


def make_variants(
    configs: Sequence[str | os.PathLike[str]],
    fairness_weights: Sequence[float] = (),
    betas: Sequence[float] = (),
) -> list[Variant]:
    """The configs, plus their λ sweep points (fairness term) and β sweep points (DBPM).

    A λ point sets ``model.fairness_weight``; a β point sets both ``beta_noisy`` and
    ``beta_faulty`` of the config's ``DynamicBadPairMining`` callback (written to a derived
    YAML, since a list entry cannot be overridden on the command line).

    Args:
        configs: config names or paths.
        fairness_weights: λ values to sweep (configs with ``fairness_weight > 0`` only).
        betas: β values to sweep (configs with a DBPM callback only).

    Returns:
        The variants, configs first in the given order, then their sweep points.
    """
    variants: list[Variant] = []
    for name in configs:
        path = Path(resolve_config(os.fspath(name)))
        base = path.stem
        variants.append(Variant(base, path, base=base))
        cfg = read_yaml(path)
        weight = float((cfg.get("model") or {}).get("fairness_weight", 0.0) or 0.0)
        if weight > 0:
            for lam in fairness_weights:
                variants.append(
                    Variant(
                        f"{base}_lambda{lam:g}",
                        path,
                        ["--model.fairness_weight", repr(float(lam))],
                        {"lambda": float(lam)},
                        base,
                    )
                )
        if _dbpm_callback_index(cfg) is not None:
            for beta in betas:
                variants.append(
                    Variant(f"{base}_beta{beta:g}", path, [], {"beta": float(beta)}, base)
                )
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate configs or sweep values: {names}")
    return variants


def materialise_config(variant: Variant, folder: Path) -> Path:
    """The config file to run: the original, or a derived copy for a β point."""
    if "beta" not in variant.sweep:
        return variant.config
    import yaml

    cfg = read_yaml(variant.config)
    index = _dbpm_callback_index(cfg)
    assert index is not None
    init = _dbpm_rule_args(cfg["trainer"]["callbacks"][index])
    init["beta_noisy"] = init["beta_faulty"] = float(variant.sweep["beta"])
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{variant.name}.yaml"
    atomic_write_text(
        out,
        f"# derived from {variant.config} by fairvlm benchmark (beta sweep)\n"
        + yaml.safe_dump(cfg, sort_keys=False),
    )
    return out


def config_value(config: str | os.PathLike[str], parameter: str) -> float | None:
    """The value a config itself gives a swept parameter (its shipped default).

    Args:
        config: config name or path.
        parameter: ``"lambda"`` (``model.fairness_weight``) or ``"beta"`` (the DBPM
            callback's ``beta_faulty``; the sweeps set ``beta_noisy`` to the same value).

    Returns:
        The value, or ``None`` when the config has no such setting (no DBPM callback).

    Example:
        >>> config_value("synthetic_clip", "lambda")
        0.0
        >>> config_value("synthetic_clip", "beta") is None
        True
    """
    from fairvlm_lightning.mining import PAPER_SETTINGS

    cfg = read_yaml(Path(resolve_config(os.fspath(config))))
    if parameter == "lambda":
        return float((cfg.get("model") or {}).get("fairness_weight", 0.0) or 0.0)
    if parameter == "beta":
        index = _dbpm_callback_index(cfg)
        if index is None:
            return None
        init = _dbpm_rule_args(cfg["trainer"]["callbacks"][index])
        return float(init.get("beta_faulty", PAPER_SETTINGS["beta_faulty"]))
    raise ValueError(f"parameter must be 'lambda' or 'beta', got {parameter!r}")


def _describe(node: Any) -> str:
    """A YAML ``class_path``/``init_args`` tree as ``Class(arg=value, ...)`` (recursively)."""
    if isinstance(node, Mapping) and "class_path" in node:
        args = node.get("init_args") or {}
        inner = ", ".join(f"{k}={_describe(v)}" for k, v in args.items())
        return f"{str(node['class_path']).rsplit('.', 1)[-1]}({inner})"
    if isinstance(node, Mapping):
        return "{" + ", ".join(f"{k}: {_describe(v)}" for k, v in node.items()) + "}"
    if isinstance(node, (list, tuple)):
        return "[" + ", ".join(_describe(v) for v in node) + "]"
    return f"{node:g}" if isinstance(node, float) else str(node)


#: DBPM callback arguments that only log or export (not part of the rule).
_DBPM_LOGGING = ("group_keys", "truth_key", "export_dir", "prefix", "reset_on_mismatch")


def config_settings(config: str | os.PathLike[str]) -> dict[str, str]:
    """What a config sets for the method: ``{"lambda": ..., "dbpm": ...}`` as display strings.

    ``dbpm`` is the DBPM callback's rule (its ``miner``, or its flat options) as
    ``Class(arg=value, ...)``, ``"–"`` without a DBPM callback. The benchmark page prints these
    for every method, so that a test can check the page against the shipped configs.

    Example:
        >>> config_settings("synthetic_clip")
        {'lambda': '0', 'dbpm': '–'}
    """
    cfg = read_yaml(Path(resolve_config(os.fspath(config))))
    lam = float((cfg.get("model") or {}).get("fairness_weight", 0.0) or 0.0)
    index = _dbpm_callback_index(cfg)
    dbpm = "–"
    if index is not None:
        init = dict(cfg["trainer"]["callbacks"][index].get("init_args") or {})
        if "miner" in init:
            dbpm = _describe(init["miner"])
        else:
            rule = {k: v for k, v in init.items() if k not in _DBPM_LOGGING}
            dbpm = "paper rule" + (f" {_describe(rule)}" if rule else "")
    return {"lambda": f"{lam:g}", "dbpm": dbpm}
