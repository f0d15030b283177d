"""Export a fine-tuned :class:`~fairvlm_lightning.FairVLMModule` as a Hugging Face model folder.

:func:`export_checkpoint` (the ``fairvlm export --ckpt_path Y --out DIR`` command) loads a
Lightning checkpoint (``weights_only=True``), merges LoRA adapters into the base weights when the
module was trained with ``peft=`` (``PeftModel.merge_and_unload`` on a copy), and writes with
``save_pretrained``: the model, its tokenizer, its image processor and a ``README.md`` model card
that states the training configuration (the module's and the data module's hyper-parameters) and,
when known, the test fairness table. ``AutoModel.from_pretrained(DIR)`` loads the result and
``FairVLMModule(model=DIR)`` accepts it, so the fine-tune can be used, evaluated or trained
further anywhere without this package's checkpoint format.
"""

from __future__ import annotations

import copy
import json
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fairvlm_lightning.module import FairVLMModule
from fairvlm_lightning.schema import GROUP_NAMES

__all__ = ["export_checkpoint", "export_module", "fairness_markdown"]

def _num(metrics: Mapping[str, Any], key: str) -> float:
    value = metrics.get(key, math.nan)
    if isinstance(value, torch.Tensor):
        value = value.item()
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def fairness_markdown(
    metrics: Mapping[str, Any], attributes: Mapping[str, int], prefix: str = "test"
) -> str:
    """The per-attribute fairness table as Markdown (for a model card).

    Args:
        metrics: values keyed ``"{prefix}/auc"``, ``"{prefix}/{attr}/es_auc"``, ... (floats or
            0-d tensors; missing ones show as ``n/a``).
        attributes: attribute → number of groups.
        prefix: the key prefix (``"test"``, ``"probe"``, ...).

    Example:
        >>> print(fairness_markdown({"test/auc": 0.8, "test/gender/es_auc": 0.7,
        ...     "test/gender/auc_group_0": 0.75, "test/gender/auc_group_1": 0.85},
        ...     {"gender": 2}))
        | attribute | AUC | ES-AUC | DPD | DEOdds | group AUCs |
        |---|---|---|---|---|---|
        | gender | 0.800 | 0.700 | n/a | n/a | Female 0.750, Male 0.850 |
    """
    lines = [
        "| attribute | AUC | ES-AUC | DPD | DEOdds | group AUCs |",
        "|---|---|---|---|---|---|",
    ]
    auc = _fmt(_num(metrics, f"{prefix}/auc"))
    for attr, num_groups in attributes.items():
        names = GROUP_NAMES.get(attr, ())
        groups = ", ".join(
            f"{names[g] if g < len(names) else f'group {g}'} "
            f"{_fmt(_num(metrics, f'{prefix}/{attr}/auc_group_{g}'))}"
            for g in range(int(num_groups))
        )
        cells = [_fmt(_num(metrics, f"{prefix}/{attr}/{k}")) for k in ("es_auc", "dpd", "deodds")]
        lines.append(f"| {attr} | {auc} | {' | '.join(cells)} | {groups} |")
    return "\n".join(lines)


def _image_processor_source(module: FairVLMModule, datamodule_hparams: Mapping[str, Any]) -> Any:
    for source in (datamodule_hparams.get("model"), module.hparams.get("model")):
        if isinstance(source, str) and source:
            return source
    return None


def _model_card(
    hparams: Mapping[str, Any],
    datamodule_hparams: Mapping[str, Any],
    metrics: Mapping[str, Any] | None,
    attributes: Mapping[str, int],
    merged_peft: Mapping[str, Any] | None,
    source: str,
) -> str:
    config = {"model": dict(hparams), "data": dict(datamodule_hparams)}
    lines = [
        "---",
        "library_name: transformers",
        "tags: [clip, vision-language, fairness, medical-imaging, fairvlm-lightning]",
        "---",
        "",
        "# Fine-tuned dual encoder (fairvlm-lightning)",
        "",
        f"Exported by `fairvlm export` from the Lightning checkpoint `{source}`. Load it with "
        "`transformers.AutoModel.from_pretrained(<this folder>)` (tokenizer and image processor "
        "with `AutoTokenizer` / `AutoImageProcessor`), or keep training it with "
        "`fairvlm_lightning.FairVLMModule(model=<this folder>)`.",
        "",
    ]
    if merged_peft is not None:
        lines += [
            f"Trained with {merged_peft.get('peft_type', 'LORA')} adapters "
            f"({json.dumps(dict(merged_peft), sort_keys=True)}); the adapters are merged into "
            "the weights, so the folder is a plain model.",
            "",
        ]
    lines += ["## Training configuration", "", "```json"]
    lines += [json.dumps(config, indent=2, sort_keys=True, default=str), "```", ""]
    lines += ["## Test fairness", ""]
    if metrics:
        lines += [
            f"Zero-shot test AUC {_fmt(_num(metrics, 'test/auc'))}, "
            f"accuracy {_fmt(_num(metrics, 'test/acc'))}.",
            "",
            fairness_markdown(metrics, attributes, "test"),
            "",
        ]
    else:
        lines += ["Not known at export time (run `fairvlm test` on the checkpoint).", ""]
    return "\n".join(lines)


def export_module(
    module: FairVLMModule,
    out_dir: str | os.PathLike[str],
    *,
    metrics: Mapping[str, Any] | None = None,
    datamodule_hparams: Mapping[str, Any] | None = None,
    image_processor: Any = None,
    source: str = "(in memory)",
    overwrite: bool = False,
) -> Path:
    """Write ``module``'s model (LoRA merged), tokenizer, image processor and model card.

    Args:
        module: the fine-tuned module (left unchanged: adapters are merged on a copy).
        out_dir: output folder; must be empty or absent unless ``overwrite``.
        metrics: test metrics (``test/auc``, ``test/race/es_auc``, ...) for the model card.
        datamodule_hparams: the data module's hyper-parameters, for the card and to find the
            image processor (its ``model`` entry).
        image_processor: an image processor instance or a name/folder to load one from; default
            the data module's or the module's ``model`` name/folder.
        source: where the weights came from (stated in the card).
        overwrite: replace files in a non-empty ``out_dir``.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        FileExistsError: ``out_dir`` is a non-empty folder and ``overwrite`` is false.
    """
    from transformers import AutoImageProcessor

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not an empty folder; pass overwrite=True")
    out.mkdir(parents=True, exist_ok=True)
    datamodule_hparams = dict(datamodule_hparams or {})
    model: Any = module.model
    peft_record = module.hparams.get("peft")
    if hasattr(model, "merge_and_unload"):  # a peft model: merge the adapters on a copy
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(out)
    if module.tokenizer is not None:
        module.tokenizer.save_pretrained(out)
    else:
        warnings.warn("the module has no tokenizer; none was exported", UserWarning, stacklevel=2)
    processor = image_processor
    if processor is None:
        processor = _image_processor_source(module, datamodule_hparams)
    if isinstance(processor, (str, os.PathLike)):
        try:
            processor = AutoImageProcessor.from_pretrained(str(processor))
        except (OSError, ValueError) as err:
            warnings.warn(
                f"could not load an image processor from {processor!r} ({err}); none exported",
                UserWarning,
                stacklevel=2,
            )
            processor = None
    if processor is not None:
        processor.save_pretrained(out)
    elif image_processor is None:
        warnings.warn(
            "no image processor source is known; none exported", UserWarning, stacklevel=2
        )
    card = _model_card(
        dict(module.hparams),
        datamodule_hparams,
        metrics,
        module.metric_attributes,
        peft_record if isinstance(peft_record, Mapping) else None,
        source,
    )
    (out / "README.md").write_text(card, encoding="utf-8")
    return out


def _find_metrics(ckpt_path: Path) -> dict[str, Any] | None:
    """``test_metrics.json`` of the run a checkpoint belongs to (``<run>/checkpoints/x.ckpt``)."""
    for folder in (ckpt_path.parent, ckpt_path.parent.parent):
        candidate = folder / "test_metrics.json"
        if candidate.is_file():
            data = json.loads(candidate.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else None
    return None


def export_checkpoint(
    ckpt_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    metrics: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Export a ``FairVLMModule`` Lightning checkpoint as a Hugging Face folder.

    Args:
        ckpt_path: the ``.ckpt`` file (loaded with ``weights_only=True``).
        out_dir: output folder (see :func:`export_module`).
        metrics: test metrics for the model card: a dict, a JSON file, or ``None`` to use the
            ``test_metrics.json`` that ``fairvlm fit``/``test`` wrote into the checkpoint's run
            folder, when there is one.
        overwrite: replace files in a non-empty ``out_dir``.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        FileNotFoundError: no checkpoint at ``ckpt_path``.
        ValueError: the checkpoint is not a ``FairVLMModule`` checkpoint.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(raw, dict) or "state_dict" not in raw or "hyper_parameters" not in raw:
        raise ValueError(
            f"{path} is not a FairVLMModule Lightning checkpoint (needs 'state_dict' and "
            "'hyper_parameters')"
        )
    module = FairVLMModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    found: Mapping[str, Any] | None
    if isinstance(metrics, (str, os.PathLike)):
        found = json.loads(Path(metrics).read_text(encoding="utf-8"))
    elif metrics is None:
        found = _find_metrics(path)
    else:
        found = metrics
    return export_module(
        module,
        out_dir,
        metrics=found,
        datamodule_hparams=raw.get("datamodule_hyper_parameters") or {},
        source=str(path),
        overwrite=overwrite,
    )
