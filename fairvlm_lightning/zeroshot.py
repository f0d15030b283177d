"""Zero-shot classification with class prompts: :class:`ZeroShotPrompts`.

A :class:`ZeroShotPrompts` holds the prompts of a task and the token length they are padded to:
one prompt (or a list of prompts, whose embeddings are averaged) per class for ``"binary"`` and
``"multiclass"``, and a negative and a positive prompt per label for ``"multilabel"`` (the
CheXzero convention). It encodes the prompts with a
:class:`~fairvlm_lightning.encoders.DualEncoder` and a tokenizer, turns image embeddings into
logits the way the model's own forward pass scores image–text pairs, and the logits into the
predictions :class:`~fairvlm_lightning.metrics.FairnessMetrics` takes for the task.

Example:
    >>> ZeroShotPrompts(("a healthy eye", ["glaucoma", "an eye with glaucoma"]), 16).texts
    ['a healthy eye', 'glaucoma', 'an eye with glaucoma']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from fairvlm_lightning.encoders import DualEncoder
from fairvlm_lightning.schema import CLASS_PROMPTS

__all__ = ["DEFAULT_PROMPTS", "Task", "ZeroShotPrompts"]

#: Zero-shot class prompts of the paper (label 0 = no glaucoma, 1 = glaucoma).
DEFAULT_PROMPTS: dict[int, str | list[str]] = dict(enumerate(CLASS_PROMPTS))

PromptSet = tuple[tuple[str, ...], ...]
#: The prediction task, as torchmetrics names it.
Task = Literal["binary", "multiclass", "multilabel"]


def _one_class(key: Any, value: Any) -> tuple[str, ...]:
    texts = (value,) if isinstance(value, str) else tuple(value)
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError(
            f"prompts[{key!r}] must be a non-empty string or list of non-empty strings, "
            f"got {value!r}"
        )
    return texts


def _as_list(prompts: Any, task: str) -> list[Any]:
    """Prompts as a list in class order (a dict keyed by class ids 0..C-1 is accepted)."""
    if isinstance(prompts, Mapping):
        try:
            keyed = {int(k): v for k, v in prompts.items()}
        except (TypeError, ValueError):
            raise ValueError(
                f"prompt keys must be class ids 0..C-1, got {sorted(map(repr, prompts))}"
            ) from None
        if sorted(keyed) != list(range(len(keyed))):
            raise ValueError(f"prompt keys must be the class ids 0..C-1, got {sorted(keyed)}")
        return [keyed[k] for k in sorted(keyed)]
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        unit = "label" if task == "multilabel" else "class"
        raise TypeError(
            f"prompts must be a list with one entry per {unit}, or a dict {{class id: prompt}}, "
            f"got {type(prompts).__name__}"
        )
    return list(prompts)


def _check_prompts(prompts: Any, task: str) -> PromptSet:
    """Prompts as one tuple of texts per output: per class, or (negative, positive) per label."""
    if task not in ("binary", "multiclass", "multilabel"):
        raise ValueError(f"task must be 'binary', 'multiclass' or 'multilabel', got {task!r}")
    entries = _as_list(prompts, task)
    if task == "binary" and len(entries) != 2:
        raise ValueError(
            "prompts must hold exactly two classes, 0 and 1 (the diagnosis label), got "
            f"{len(entries)}"
        )
    if task == "multiclass" and len(entries) < 2:
        raise ValueError(f"a multiclass task needs prompts for >= 2 classes, got {len(entries)}")
    if task != "multilabel":
        return tuple(_one_class(k, v) for k, v in enumerate(entries))
    if not entries:
        raise ValueError("a multilabel task needs a (negative, positive) prompt pair per label")
    out: list[tuple[str, ...]] = []
    for k, pair in enumerate(entries):
        if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ValueError(
                f"prompts[{k}] must be a (negative, positive) pair for label {k}, got {pair!r}"
            )
        out += [_one_class(f"{k}/negative", pair[0]), _one_class(f"{k}/positive", pair[1])]
    return tuple(out)


@dataclass(frozen=True)
class ZeroShotPrompts:
    """Class prompts for zero-shot evaluation and the token length they are padded to.

    Args:
        prompts: ``"binary"`` and ``"multiclass"``: one entry per class, in class-id order
            (binary: 0 = no glaucoma, 1 = glaucoma), each a prompt or a list of prompts (their
            embeddings are averaged); a dict ``{class id: prompt}`` is accepted too.
            ``"multilabel"``: one ``[negative, positive]`` pair per label (each a prompt or a
            list of prompts). Default: the paper's two prompts.
        max_length: prompts are padded / truncated to this many tokens; keep it equal to the
            data module's ``max_length`` (models such as SigLIP pool the last token, so prompts
            must be padded like the training texts). The ``fairvlm`` command links the two.
        task: ``"binary"`` (default; the prediction is P(class 1)), ``"multiclass"`` (the
            softmax over the classes) or ``"multilabel"`` (per label, the softmax of its
            positive against its negative prompt).

    In YAML (``model:`` section)::

        zero_shot:
          prompts: ["A photo of non-glaucoma", ["A photo of glaucoma", "glaucoma"]]

    Raises:
        ValueError: a prompt count that does not fit the task, an empty prompt, or
            ``max_length`` < 1.

    Example:
        >>> zs = ZeroShotPrompts({0: "healthy", 1: "glaucoma"}, max_length=8)
        >>> zs.prompts, zs.to_dict()["max_length"]
        ((('healthy',), ('glaucoma',)), 8)
    """

    prompts: tuple[str | tuple[str, ...], ...] | dict[int, str | list[str]] = tuple(
        DEFAULT_PROMPTS.values()  # type: ignore[arg-type]
    )
    max_length: int = 64
    task: Task = "binary"

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompts", _check_prompts(self.prompts, self.task))
        if not (isinstance(self.max_length, int) and self.max_length > 0):
            raise ValueError(
                f"zero_shot.max_length must be a positive int, got {self.max_length!r}"
            )

    @classmethod
    def from_value(cls, value: ZeroShotPrompts | Mapping[str, Any] | None) -> ZeroShotPrompts:
        """``value`` itself, the default (``None``), or one rebuilt from :meth:`to_dict`."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {"prompts", "max_length", "task"})
            if unknown:
                raise ValueError(f"zero_shot has unknown key(s) {unknown}")
            return cls(**dict(value))
        raise TypeError(
            f"zero_shot must be a ZeroShotPrompts or a dict, got {type(value).__name__}"
        )

    @property
    def texts(self) -> list[str]:
        """All prompts, class after class."""
        return [t for texts in self.class_prompts for t in texts]

    @property
    def class_prompts(self) -> PromptSet:
        """One tuple of prompts per output (multilabel: negative, positive, label after label)."""
        return self.prompts  # type: ignore[return-value]  # normalised in __post_init__

    @property
    def num_outputs(self) -> int:
        """Number of classes (binary, multiclass) or labels (multilabel)."""
        n = len(self.class_prompts)
        return n // 2 if self.task == "multilabel" else n

    def metric_task(self) -> dict[str, Any]:
        """The ``task`` arguments of :class:`~fairvlm_lightning.metrics.FairnessMetrics`.

        Example:
            >>> ZeroShotPrompts([["clear", "effusion"], ["normal", "edema"]],
            ...                 task="multilabel").metric_task()
            {'task': 'multilabel', 'num_labels': 2}
        """
        if self.task == "binary":
            return {"task": "binary"}
        key = "num_labels" if self.task == "multilabel" else "num_classes"
        return {"task": self.task, key: self.num_outputs}

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists), for a checkpoint's hyper-parameters."""
        prompts: list[Any] = [list(t) for t in self.class_prompts]
        if self.task == "multilabel":
            prompts = [prompts[i : i + 2] for i in range(0, len(prompts), 2)]
        return {"prompts": prompts, "max_length": self.max_length, "task": self.task}

    def predict(self, logits: Tensor) -> Tensor:
        """The predictions the task's metrics take, from :meth:`logits`.

        ``(B,)`` P(class 1) for binary, ``(B, C)`` class probabilities for multiclass, ``(B, L)``
        P(positive) per label for multilabel.

        Example:
            >>> zs = ZeroShotPrompts([["no a", "a"], ["no b", "b"]], task="multilabel")
            >>> zs.predict(torch.tensor([[0.0, 0.0, 2.0, 0.0]]))
            tensor([[0.5000, 0.1192]])
        """
        if self.task == "multilabel":
            return logits.reshape(logits.shape[0], -1, 2).softmax(dim=-1)[..., 1]
        probs = logits.softmax(dim=-1)
        return probs[:, 1] if self.task == "binary" else probs

    @torch.no_grad()
    def encode(self, encoder: DualEncoder, tokenizer: Any, device: torch.device) -> Tensor:
        """``(C, D)`` L2-normalised class embeddings (the mean of each class's prompt embeddings).

        Args:
            encoder: the dual encoder whose text tower encodes the prompts.
            tokenizer: a Hugging Face tokenizer (called with ``padding="max_length"``).
            device: where the tokens go.
        """
        tokens = tokenizer(
            self.texts,
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        mask = tokens.get("attention_mask")
        embeds = encoder.encode_text(
            tokens["input_ids"].to(device), None if mask is None else mask.to(device)
        ).float()
        out, start = [], 0
        for texts in self.class_prompts:
            n = len(texts)
            out.append(torch.nn.functional.normalize(embeds[start : start + n].mean(0), dim=-1))
            start += n
        return torch.stack(out)

    @staticmethod
    def logits(encoder: DualEncoder, image_embeds: Tensor, class_embeds: Tensor) -> Tensor:
        """``(B, C)`` scaled similarities (plus the bias for SigLIP) of images to the classes."""
        scale, bias = encoder.logit_params()
        logits = scale.float() * image_embeds.float() @ class_embeds.T
        return logits if bias is None else logits + bias.float()
