"""Export a fine-tuned :class:`~fairvlm_lightning.FairVLMModule` as a Hugging Face model folder.

:func:`export_checkpoint` (the ``fairvlm export --ckpt_path Y --out DIR`` command) loads a
Lightning checkpoint (``weights_only=True``), merges LoRA adapters into the base weights when the
module was trained with ``peft=`` (``PeftModel.merge_and_unload`` on a copy), and writes with
``save_pretrained``: the model, its tokenizer, its image processor and a ``README.md`` model card
that states the training configuration (the module's and the data module's hyper-parameters) and
the test fairness table **of the exported checkpoint**: taken from a metrics record only when the
record names that checkpoint's content (its ``ckpt_sha256``, which ``fairvlm fit``/``test`` write
into ``test_metrics.json``), else computed by testing the checkpoint on its data module's test
split. The card holds no absolute local paths (a local folder shows as ``<local>/name``).

The folder is written all or nothing (:func:`fairvlm_lightning.atomic.atomic_folder`): into a
temporary sibling, completion marker last, then swapped in by rename, under a lock; an
overwrite replaces the folder whole (no stale adapter files survive), and a killed export leaves
the old folder or none. ``AutoModel.from_pretrained(DIR)`` loads the result and
``FairVLMModule(model=DIR)`` accepts it (and refuses an export folder without its marker).
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fairvlm_lightning.atomic import EXPORT_TAG, atomic_folder, file_identity
from fairvlm_lightning.checkpoints import load_checkpoint
from fairvlm_lightning.module import FairVLMModule
from fairvlm_lightning.tables import fairness_table, format_value

__all__ = [
    "checkpoint_metrics",
    "evaluate_checkpoint",
    "export_checkpoint",
    "export_module",
    "portable",
]

#: Who wrote the folder, recorded in its completion marker.
WRITER = "fairvlm export"
_ABSOLUTE = re.compile(r"^(~|/|\\\\|[A-Za-z]:[\\/])")


def portable(value: Any) -> Any:
    """``value`` with every absolute local path replaced by ``<local>/<last component>``.

    Applied to everything a model card shows, so a shared card names no local folders.
    Mappings and sequences are walked; other values are returned unchanged.

    Example:
        >>> portable({"root": "/home/me/data/fairvlmed", "model": "openai/clip-vit-base-patch16",
        ...           "list": ["~/x/tiny_model", 3]})
        {'root': '<local>/fairvlmed', 'model': 'openai/clip-vit-base-patch16', 'list': ['<local>/tiny_model', 3]}
    """  # noqa: E501
    if isinstance(value, str):
        if _ABSOLUTE.match(value):
            name = re.split(r"[\\/]", value.rstrip("\\/"))[-1]
            return f"<local>/{name}" if name and name != "~" else "<local>"
        return value
    if isinstance(value, os.PathLike):
        return portable(os.fspath(value))
    if isinstance(value, Mapping):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v) for v in value]
    return value


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
    results_note: str | None,
) -> str:
    def own(params: Mapping[str, Any]) -> dict[str, Any]:  # not LightningCLI's "_instantiator"
        return {k: v for k, v in params.items() if not str(k).startswith("_")}

    config = portable({"model": own(hparams), "data": own(datamodule_hparams)})
    lines = [
        "---",
        "library_name: transformers",
        f"tags: [clip, vision-language, fairness, medical-imaging, {EXPORT_TAG}]",
        "---",
        "",
        "# Fine-tuned dual encoder (fairvlm-lightning)",
        "",
        f"Exported by `fairvlm export` from {source}. Load it with "
        "`transformers.AutoModel.from_pretrained(<this folder>)` (tokenizer and image processor "
        "with `AutoTokenizer` / `AutoImageProcessor`), or keep training it with "
        "`fairvlm_lightning.FairVLMModule(model=<this folder>)`.",
        "",
    ]
    if merged_peft is not None:
        lines += [
            f"Trained with {merged_peft.get('peft_type', 'LORA')} adapters "
            f"({json.dumps(portable(dict(merged_peft)), sort_keys=True)}); the adapters are "
            "merged into the weights, so the folder is a plain model.",
            "",
        ]
    lines += ["## Training configuration", "", "```json"]
    lines += [json.dumps(config, indent=2, sort_keys=True, default=str), "```", ""]
    lines += ["## Test fairness", ""]
    if metrics:
        if results_note:
            lines += [results_note, ""]
        lines += [
            f"Zero-shot test AUC {format_value(metrics.get('test/auc'))}, "
            f"accuracy {format_value(metrics.get('test/acc'))}.",
            "",
            fairness_table(metrics, attributes, prefix="test", style="markdown"),
            "",
        ]
    else:
        lines += [
            results_note or "Not known at export time (run `fairvlm test` on the checkpoint).",
            "",
        ]
    return "\n".join(lines)


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not an empty folder; pass overwrite=True")


def export_module(
    module: FairVLMModule,
    out_dir: str | os.PathLike[str],
    *,
    metrics: Mapping[str, Any] | None = None,
    datamodule_hparams: Mapping[str, Any] | None = None,
    image_processor: Any = None,
    source: str = "a module in memory",
    overwrite: bool = False,
    results_note: str | None = None,
    marker_info: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``module``'s model (LoRA merged), tokenizer, image processor and model card.

    All or nothing: the files go into a temporary sibling of ``out_dir`` that replaces it
    whole once complete (:func:`~fairvlm_lightning.atomic.atomic_folder`, with its marker).

    Args:
        module: the fine-tuned module (left unchanged: adapters are merged on a copy).
        out_dir: output folder; must be empty or absent unless ``overwrite``.
        metrics: test metrics (``test/auc``, ``test/race/es_auc``, ...) of exactly these
            weights, for the model card (the caller vouches for them).
        datamodule_hparams: the data module's hyper-parameters, for the card and to find the
            image processor (its ``model`` entry).
        image_processor: an image processor instance or a name/folder to load one from; default
            the data module's or the module's ``model`` name/folder.
        source: where the weights came from, as the card states it (absolute paths are
            shortened to ``<local>/name``).
        overwrite: replace a non-empty ``out_dir`` (whole: none of its old files survive).
        results_note: a sentence above the card's test table saying where the numbers come
            from (or, without ``metrics``, why there are none).
        marker_info: more fields for the completion marker.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        FileExistsError: ``out_dir`` is a non-empty folder and ``overwrite`` is false.
        fairvlm_lightning.atomic.InUseError: another process is writing ``out_dir``.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from fairvlm_lightning.app.synthetic.tiny_model import build_tiny_dual_encoder
        >>> tmp = Path(tempfile.mkdtemp())
        >>> _ = build_tiny_dual_encoder(tmp / "tiny", texts=["a photo of an eye"] * 8)
        >>> out = export_module(FairVLMModule(str(tmp / "tiny")), tmp / "exported",
        ...                     image_processor=str(tmp / "tiny"))
        >>> (out / ".complete.json").is_file(), "model.safetensors" in {p.name for p in out.iterdir()}
        (True, True)
    """  # noqa: E501
    from transformers import AutoImageProcessor

    out = Path(out_dir)
    _check_target(out, overwrite)
    datamodule_hparams = dict(datamodule_hparams or {})
    model: Any = module.model
    peft_record = module.peft_config
    if hasattr(model, "merge_and_unload"):  # a peft model: merge the adapters on a copy
        model = copy.deepcopy(model).merge_and_unload()
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
    elif processor is None and image_processor is None:
        warnings.warn(
            "no image processor source is known; none exported", UserWarning, stacklevel=2
        )
    if module.tokenizer is None:
        warnings.warn("the module has no tokenizer; none was exported", UserWarning, stacklevel=2)
    card = _model_card(
        dict(module.hparams),
        datamodule_hparams,
        metrics,
        module.metric_attributes,
        peft_record if isinstance(peft_record, Mapping) else None,
        portable(source),
        results_note,
    )
    info = {"writer": WRITER, **portable(dict(marker_info or {}))}
    with atomic_folder(out, overwrite=overwrite, info=info) as tmp:
        model.save_pretrained(tmp)
        if module.tokenizer is not None:
            module.tokenizer.save_pretrained(tmp)
        if processor is not None:
            processor.save_pretrained(tmp)
        (tmp / "README.md").write_text(card, encoding="utf-8")
    return out


def _load_record(source: Mapping[str, Any] | str | os.PathLike[str]) -> tuple[dict[str, Any], str]:
    if isinstance(source, Mapping):
        return dict(source), "the given metrics"
    path = Path(source)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no metrics file at {path}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not an object of metrics")
    return data, str(path)


def _mismatch(record: Mapping[str, Any], identity: Mapping[str, Any]) -> str | None:
    """Why ``record`` is not a record of the checkpoint with ``identity`` (``None``: it is)."""
    if record.get("initial_weights"):
        return "it is of the initial weights (initial_weights: true)"
    sha = record.get("ckpt_sha256")
    if not isinstance(sha, str):
        return (
            "it does not record which checkpoint's content it is of (no 'ckpt_sha256'; "
            "test_metrics.json written before fairvlm-lightning recorded it)"
        )
    if sha != identity["sha256"] or record.get("ckpt_size", identity["size"]) != identity["size"]:
        name = Path(str(record.get("ckpt_path") or "?")).name
        return f"it is of another checkpoint ({name}, sha256 {sha[:12]})"
    return None


def checkpoint_metrics(
    ckpt_path: str | os.PathLike[str],
    metrics: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    *,
    identity: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any] | None, str]:
    """A test-metrics record of exactly this checkpoint's content, and why it was (not) taken.

    A record counts only when its ``ckpt_sha256`` (and ``ckpt_size``) equal the checkpoint
    file's: ``fairvlm fit`` tests the *best* checkpoint, so the run's ``test_metrics.json`` is
    not a record of ``last.ckpt``.

    Args:
        ckpt_path: the checkpoint file.
        metrics: a record (dict or JSON file) to check; ``None`` looks for the
            ``test_metrics.json`` of the checkpoint's run (``<run>/checkpoints/x.ckpt``).
        identity: the checkpoint's :func:`~fairvlm_lightning.atomic.file_identity`, when known.

    Returns:
        ``(record, why)``: the record (``None`` when there is no matching one) and a sentence
        saying where it came from or why none was taken.

    Raises:
        ValueError: ``metrics`` was given but is not a record of this checkpoint.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from fairvlm_lightning.atomic import file_identity
        >>> ckpt = Path(tempfile.mkdtemp()) / "run" / "checkpoints" / "a.ckpt"
        >>> ckpt.parent.mkdir(parents=True)
        >>> _ = ckpt.write_bytes(b"weights")
        >>> sha = file_identity(ckpt)["sha256"]
        >>> checkpoint_metrics(ckpt, {"test/auc": 0.8, "ckpt_sha256": sha})[0]["test/auc"]
        0.8
        >>> checkpoint_metrics(ckpt)
        (None, 'no test_metrics.json next to the checkpoint')
    """
    path = Path(ckpt_path)
    ident = dict(identity) if identity is not None else file_identity(path)
    if metrics is not None:
        record, where = _load_record(metrics)
        why = _mismatch(record, ident)
        if why is not None:
            raise ValueError(
                f"{where} cannot go into the model card of {path.name}: {why}. Run `fairvlm "
                f"test --ckpt_path {path}` and pass its test_metrics.json, or leave --metrics "
                "out to evaluate the checkpoint at export"
            )
        return record, f"recorded for this checkpoint (sha256 {ident['sha256'][:12]})"
    for folder in (path.parent, path.parent.parent):
        candidate = folder / "test_metrics.json"
        if candidate.is_file():
            record, _ = _load_record(candidate)
            why = _mismatch(record, ident)
            if why is None:
                return record, (
                    f"the run's test_metrics.json, recorded for this checkpoint (sha256 "
                    f"{ident['sha256'][:12]})"
                )
            return None, f"the run's test_metrics.json was not used: {why}"
    return None, "no test_metrics.json next to the checkpoint"


def evaluate_checkpoint(
    module: FairVLMModule,
    datamodule_hparams: Mapping[str, Any],
    *,
    accelerator: str = "auto",
) -> dict[str, float]:
    """Test ``module`` on the test split of the data module its checkpoint was trained with.

    A Lightning ``Trainer.test`` (one device, full precision, no logger) on
    ``FairVLMedDataModule(**datamodule_hparams)``; no data is written or downloaded.

    Args:
        module: the module, e.g. from ``FairVLMModule.load_from_checkpoint``.
        datamodule_hparams: the checkpoint's ``datamodule_hyper_parameters``.
        accelerator: Lightning accelerator for the test.

    Returns:
        The ``test/...`` metrics as floats.

    Raises:
        FileNotFoundError: no data-module settings, or the data folder is not there.

    Example:
        >>> evaluate_checkpoint(module=None, datamodule_hparams={"root": "/nonexistent"})
        Traceback (most recent call last):
        ...
        FileNotFoundError: the checkpoint's data folder /nonexistent is not there
    """
    import lightning.pytorch as pl

    from fairvlm_lightning.data import FairVLMedDataModule

    root = datamodule_hparams.get("root")
    if not root:
        raise FileNotFoundError("the checkpoint records no data module (no datamodule settings)")
    if not Path(str(root)).is_dir():
        raise FileNotFoundError(f"the checkpoint's data folder {root} is not there")
    accepted = inspect.signature(FairVLMedDataModule.__init__).parameters
    # LightningCLI adds bookkeeping entries (``_instantiator``, ``_class_path``): not arguments
    datamodule = FairVLMedDataModule(
        **{k: v for k, v in datamodule_hparams.items() if k in accepted and k != "self"}
    )
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        precision="32-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    results = trainer.test(module, datamodule=datamodule, verbose=False)
    return {k: float(v) for k, v in results[0].items() if k.startswith("test/")} if results else {}


def export_checkpoint(
    ckpt_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    metrics: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    evaluate: bool = True,
    accelerator: str = "auto",
) -> Path:
    """Export a ``FairVLMModule`` Lightning checkpoint as a Hugging Face folder.

    Every number in the model card is of this checkpoint: ``metrics`` (or the run's
    ``test_metrics.json``) only when it records this checkpoint's sha256
    (:func:`checkpoint_metrics`), else the test split is evaluated now
    (:func:`evaluate_checkpoint`); when that is impossible (or ``evaluate`` is false) the card
    says that no results are known, and why.

    Args:
        ckpt_path: the ``.ckpt`` file (loaded with ``weights_only=True``).
        out_dir: output folder (see :func:`export_module`).
        metrics: a test-metrics record of this checkpoint (dict or JSON file, as written by
            ``fairvlm test``); ``None`` uses the run's ``test_metrics.json`` when it matches.
        overwrite: replace a non-empty ``out_dir`` whole.
        evaluate: test the checkpoint when no matching record exists.
        accelerator: Lightning accelerator of that test.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        FileNotFoundError: no checkpoint at ``ckpt_path``.
        ValueError: the checkpoint is not a ``FairVLMModule`` checkpoint, or ``metrics`` is
            not a record of it.

    Example:
        >>> export_checkpoint("missing.ckpt", "out")
        Traceback (most recent call last):
        ...
        FileNotFoundError: no checkpoint at missing.ckpt
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    raw = load_checkpoint(path)
    if not isinstance(raw, dict) or "state_dict" not in raw or "hyper_parameters" not in raw:
        raise ValueError(
            f"{path} is not a FairVLMModule Lightning checkpoint (needs 'state_dict' and "
            "'hyper_parameters')"
        )
    _check_target(Path(out_dir), overwrite)  # before a possibly long evaluation
    identity = file_identity(path)
    found, why = checkpoint_metrics(path, metrics, identity=identity)
    module = FairVLMModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    datamodule_hparams = raw.get("datamodule_hyper_parameters") or {}
    note = f"From {why}."
    if found is None and evaluate:
        try:
            found = evaluate_checkpoint(module, datamodule_hparams, accelerator=accelerator)
        except FileNotFoundError as err:
            reason = re.sub(r"(?<![\w<>])(?:~|/)[^\s,;()]*", lambda m: portable(m[0]), str(err))
            note = (
                f"Not known: {why}, and the checkpoint could not be evaluated ({reason}). Run "
                "`fairvlm test --ckpt_path <checkpoint>` and export with `--metrics` its "
                "test_metrics.json."
            )
        else:
            note = (
                f"Evaluated at export on the test split of the checkpoint's data module "
                f"(full precision); {why}."
            )
    elif found is None:
        note = f"Not known: {why} (evaluation at export was turned off)."
    ckpt = {"name": path.name, **identity}
    return export_module(
        module,
        out_dir,
        metrics=found,
        datamodule_hparams=datamodule_hparams,
        source=f"the Lightning checkpoint `{path.name}` (sha256 {identity['sha256']})",
        overwrite=overwrite,
        results_note=note,
        marker_info={"checkpoint": ckpt},
    )
