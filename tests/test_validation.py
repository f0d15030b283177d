"""The shared integer-id check (fairvlm_lightning.validation) and the callers that use it."""

from __future__ import annotations

import pytest
import torch

from fairvlm_lightning.callbacks import DynamicBadPairMining
from fairvlm_lightning.validation import check_integer_ids, is_integer_tensor

INTEGER = [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64]
NOT_INTEGER = [torch.float16, torch.float32, torch.float64, torch.bool, torch.complex64]


@pytest.mark.parametrize("dtype", INTEGER + NOT_INTEGER)
def test_is_integer_tensor_matches_dtype_kind(dtype: torch.dtype) -> None:
    values = torch.zeros(3, dtype=dtype)
    assert is_integer_tensor(values) is (dtype in INTEGER)
    if dtype in INTEGER:
        check_integer_ids(values, "ids")
    else:
        with pytest.raises(TypeError, match=rf"ids must hold integer group ids, got dtype {dtype}"):
            check_integer_ids(values, "ids")


def test_check_integer_ids_raises_the_callers_type() -> None:
    with pytest.raises(ValueError, match="integer dataset indices"):
        check_integer_ids(torch.ones(2), "index", error=ValueError, what="dataset indices")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool, torch.complex64])
def test_callback_rejects_non_integer_group_ids(dtype: torch.dtype) -> None:
    from fairvlm_lightning.callbacks import _check_group as check_group

    cb = DynamicBadPairMining(group_keys=["race"])
    index = torch.arange(4)
    batch = {"race": torch.zeros(4, dtype=dtype), "index": index}
    with pytest.raises(ValueError, match=r"batch\['race'\] must hold integer group ids"):
        check_group(cb.group_keys[0], index, batch)
    check_group("race", index, {"race": torch.zeros(4, dtype=torch.int64)})
