"""PairDataModule (the shared base) and ImageTextDataModule's settings and row checks.

The settings are checked against the documented rules (written out here), the rows of a tiny
in-memory DatasetDict against the values written by hand.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fairvlm_lightning.app.synthetic import build_tiny_dual_encoder
from fairvlm_lightning.data import FairVLMedDataModule, ImageTextDataModule, PairDataModule

TEXTS = ["a b", "c d", "b c", "d a"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_dual_encoder(tmp_path_factory.mktemp("tiny") / "model", TEXTS * 2)


def _source(**columns: list[Any]) -> Any:
    from datasets import Dataset, DatasetDict

    n = len(TEXTS)
    rows = {"image": [np.full((6, 8), 10 * i, np.uint8) for i in range(n)], "text": TEXTS}
    rows |= {"y1": [0, 1, 1, 0], "y2": [1, 1, 0, 0], "sex": ["F", "M", None, "M"]}
    part = Dataset.from_dict(rows | columns)
    return DatasetDict(train=part, validation=part)


def test_both_data_modules_share_the_base_and_keep_their_signature() -> None:
    assert issubclass(ImageTextDataModule, PairDataModule)
    assert issubclass(FairVLMedDataModule, ImageTextDataModule)
    for name in ("setup", "prepare_data", "tokenize", "train_fingerprint", "split_dataset"):
        assert getattr(ImageTextDataModule, name) is getattr(PairDataModule, name)
    params = inspect.signature(ImageTextDataModule.__init__).parameters
    documented = (
        "self dataset model image_column text_column label_column attributes num_classes "
        "truth_column id_column data_files load_kwargs drop_unknown batch_size eval_batch_size "
        "num_workers image_size max_length balance_attribute seed cache_dir drop_bad_pairs "
        "intersections"
    ).split()
    assert list(params) == documented
    assert params["label_column"].default == "label" and params["max_length"].default == 64


def test_label_and_drop_unknown_settings_follow_the_documented_rules() -> None:
    attrs = {"sex": {"F": 0, "M": 1}, "site": 3}

    def dm(**kwargs: Any) -> ImageTextDataModule:
        return ImageTextDataModule(_source(), model="m", attributes=attrs, **kwargs)

    one = dm(num_classes=4)
    assert (one.label_columns, one.multi_label, one.num_classes) == (("label",), False, 4)
    many = dm(label_column=["y1", "y2"])
    assert (many.label_columns, many.multi_label, many.num_classes) == (("y1", "y2"), True, None)
    assert dm(drop_unknown=True).drop_unknown == ("sex", "site")
    assert dm(drop_unknown=False).drop_unknown == ()
    assert dm(drop_unknown="site").drop_unknown == ("site",)
    assert dm(drop_unknown=["site", "sex"]).drop_unknown == ("site", "sex")
    with pytest.raises(ValueError, match="label_column: an empty list of columns"):
        dm(label_column=[])
    for bad in ({"num_classes": 1}, {"label_column": ["y1", "y2"], "num_classes": 2}):
        with pytest.raises(ValueError, match="num_classes must be >= 2 and only with a single"):
            dm(**bad)
    with pytest.raises(ValueError, match=r"drop_unknown names \['age'\], not among .*'site'"):
        dm(drop_unknown=["sex", "age"])


def test_rows_labels_and_errors_of_a_multi_label_source(model: Path, tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {"model": model, "cache_dir": tmp_path, "batch_size": 4}
    kwargs |= {"label_column": ["y1", "y2"], "attributes": {"sex": ["F", "M"]}}
    dm = ImageTextDataModule(_source(), drop_unknown=True, **kwargs)
    dm.setup("fit")
    train = dm.datasets["train"].with_format(None)
    assert train["label"] == [[0, 1], [1, 1], [1, 0], [0, 0]]
    assert train["sex"] == [0, 1, -1, 1] and train["key"] == [f"row-{i}" for i in range(4)]
    val = dm.datasets["val"].with_format(None)  # the unknown row dropped, re-indexed
    assert val["index"] == [0, 1, 2] and val["sex"] == [0, 1, 1]
    assert val["label"] == [[0, 1], [1, 1], [0, 0]]
    bad_text = ImageTextDataModule(_source(text=["a", " ", "b", "c"]), **kwargs)
    with pytest.raises(ValueError, match=r"split 'train', row 1, column 'text': empty or non-text"):
        bad_text.setup("fit")
    with pytest.raises(ValueError, match=r"split 'train', row 3, column\(s\) \['y1', 'y2'\]"):
        ImageTextDataModule(_source(y2=[1, 0, 1, 2]), **kwargs).setup("fit")
    with pytest.raises(ValueError, match=r"no column\(s\) \['y3'\]"):
        ImageTextDataModule(_source(), **(kwargs | {"label_column": ["y1", "y3"]})).setup("fit")
