"""Zero-shot classification with class prompts: :class:`ZeroShotPrompts`.

A :class:`ZeroShotPrompts` holds one prompt (or a list of prompts, whose embeddings are averaged)
per class and the token length the prompts are padded to. It encodes the prompts with a
:class:`~fairvlm_lightning.encoders.DualEncoder` and a tokenizer, and turns image embeddings into
class logits the way the model's own forward pass scores image–text pairs.

Example:
    >>> ZeroShotPrompts(("a healthy eye", ["glaucoma", "an eye with glaucoma"]), 16).texts
    ['a healthy eye', 'glaucoma', 'an eye with glaucoma']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fairvlm_lightning.encoders import DualEncoder
from fairvlm_lightning.schema import CLASS_PROMPTS

__all__ = ["DEFAULT_PROMPTS", "ZeroShotPrompts"]

#: Zero-shot class prompts of the paper (label 0 = no glaucoma, 1 = glaucoma).
DEFAULT_PROMPTS: dict[int, str | list[str]] = dict(enumerate(CLASS_PROMPTS))

PromptSet = tuple[tuple[str, ...], ...]


def _one_class(key: Any, value: Any) -> tuple[str, ...]:
    texts = (value,) if isinstance(value, str) else tuple(value)
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError(
            f"prompts[{key!r}] must be a non-empty string or list of non-empty strings, "
            f"got {value!r}"
        )
    return texts


def _check_prompts(prompts: Any) -> PromptSet:
    """Prompts as one tuple of texts per class (class id = position)."""
    if isinstance(prompts, Mapping):
        try:
            keyed = {int(k): v for k, v in prompts.items()}
        except (TypeError, ValueError):
            raise ValueError(
                f"prompt keys must be class ids 0 and 1, got {sorted(map(repr, prompts))}"
            ) from None
        if sorted(keyed) != [0, 1]:
            raise ValueError(
                "prompts must have exactly the binary classes 0 and 1 as keys (the diagnosis "
                f"label), got {sorted(keyed)}"
            )
        return tuple(_one_class(k, keyed[k]) for k in sorted(keyed))
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise TypeError(
            "prompts must be a list with one prompt (or list of prompts) per class, or a dict "
            f"{{class id: prompt}}, got {type(prompts).__name__}"
        )
    if len(prompts) != 2:
        raise ValueError(
            "prompts must hold exactly two classes, 0 and 1 (the diagnosis label), got "
            f"{len(prompts)}"
        )
    return tuple(_one_class(k, v) for k, v in enumerate(prompts))


@dataclass(frozen=True)
class ZeroShotPrompts:
    """Class prompts for zero-shot evaluation and the token length they are padded to.

    Args:
        prompts: one entry per class, in class-id order (0 = no glaucoma, 1 = glaucoma): a
            prompt or a list of prompts (their embeddings are averaged). A dict
            ``{class id: prompt}`` is accepted too. Default: the paper's two prompts.
        max_length: prompts are padded / truncated to this many tokens; keep it equal to the
            data module's ``max_length`` (models such as SigLIP pool the last token, so prompts
            must be padded like the training texts). The ``fairvlm`` command links the two.

    In YAML (``model:`` section)::

        zero_shot:
          prompts: ["A photo of non-glaucoma", ["A photo of glaucoma", "glaucoma"]]

    Raises:
        ValueError: not exactly two classes, an empty prompt, or ``max_length`` < 1.

    Example:
        >>> zs = ZeroShotPrompts({0: "healthy", 1: "glaucoma"}, max_length=8)
        >>> zs.prompts, zs.to_dict()["max_length"]
        ((('healthy',), ('glaucoma',)), 8)
    """

    prompts: tuple[str | tuple[str, ...], ...] | dict[int, str | list[str]] = tuple(
        DEFAULT_PROMPTS.values()  # type: ignore[arg-type]
    )
    max_length: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompts", _check_prompts(self.prompts))
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
            unknown = sorted(set(value) - {"prompts", "max_length"})
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
        """One tuple of prompts per class."""
        return self.prompts  # type: ignore[return-value]  # normalised in __post_init__

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists), for a checkpoint's hyper-parameters."""
        return {"prompts": [list(t) for t in self.class_prompts], "max_length": self.max_length}

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
