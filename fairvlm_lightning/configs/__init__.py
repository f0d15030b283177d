"""The configs shipped inside the package (``fairvlm fit --config NAME`` resolves bare names here).

The YAML files of this folder are package data, so a wheel installed with pip carries them.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

__all__ = ["configs_dir", "resolve_config", "shipped_configs"]


def configs_dir() -> Path:
    """The folder of the shipped configs inside the installed package."""
    return Path(str(resources.files("fairvlm_lightning") / "configs"))


def shipped_configs() -> dict[str, Path]:
    """The configs shipped inside the package: bare name → file.

    Example:
        >>> "synthetic_robust_fair" in shipped_configs()
        True
    """
    return {p.stem: p for p in sorted(configs_dir().glob("*.yaml"))}


def resolve_config(name: str) -> str:
    """A ``--config`` value: an existing file as given, else a shipped config's bare name.

    ``synthetic_robust_fair`` and ``synthetic_robust_fair.yaml`` both name
    ``fairvlm_lightning/configs/synthetic_robust_fair.yaml`` of the installed package; a
    file of that name in the working directory takes precedence.

    Raises:
        FileNotFoundError: neither a file nor a shipped config (the message lists them).

    Example:
        >>> resolve_config("synthetic_clip").endswith("configs/synthetic_clip.yaml")
        True
    """
    if os.path.exists(name) or name.lstrip().startswith(("{", "[")) or "\n" in name:
        return name
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    shipped = shipped_configs()
    if os.sep not in name and "/" not in name and stem in shipped:
        return str(shipped[stem])
    raise FileNotFoundError(
        f"config {name!r} is neither a file nor a shipped config; shipped: {sorted(shipped)} "
        "(`fairvlm configs` lists them)"
    )
