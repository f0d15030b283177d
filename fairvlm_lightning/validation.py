"""Input checks shared by the metrics, the fairness term, the miner and the callback.

A low-level module (it imports only ``torch``), so that every layer may use it without breaking
the dependency direction.

Example:
    >>> import torch
    >>> check_integer_ids(torch.tensor([0, 1, -1]), "groups['race']")
    >>> check_integer_ids(torch.tensor([0.0, 1.0]), "groups['race']")
    Traceback (most recent call last):
    ...
    TypeError: groups['race'] must hold integer group ids, got dtype torch.float32
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_integer_ids", "is_integer_tensor"]


def is_integer_tensor(values: Tensor) -> bool:
    """Whether ``values`` holds integers: not floating point, complex or bool.

    Example:
        >>> is_integer_tensor(torch.tensor([1], dtype=torch.uint8))
        True
        >>> is_integer_tensor(torch.tensor([True]))
        False
    """
    dtype = values.dtype
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def check_integer_ids(
    values: Tensor,
    name: str,
    *,
    error: type[Exception] = TypeError,
    what: str = "group ids",
) -> None:
    """Raise ``error`` naming ``name`` and the dtype unless ``values`` is an integer tensor.

    Args:
        values: the tensor to check (its type is checked by the caller).
        name: how the message names it, e.g. ``"groups['race']"``.
        error: the exception class to raise (callers keep their documented type).
        what: what the integers are, for the message.

    Raises:
        error: ``values`` is floating point, complex or bool.
    """
    if not is_integer_tensor(values):
        raise error(f"{name} must hold integer {what}, got dtype {values.dtype}")
