"""Linear probing: the torch logistic regression against scikit-learn on the same features, the
feature cache, the callback in a real fit (encoder untouched), and bad input."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from fairvlm_lightning import LinearProbeEvaluation
from fairvlm_lightning.app.synthetic import SyntheticFairVLMedDataModule
from fairvlm_lightning.module import FairVLMModule
from fairvlm_lightning.probe import (
    extract_features,
    fit_logistic_regression,
    linear_probe,
    probe_datamodule,
)
from fairvlm_lightning.zeroshot import ZeroShotPrompts

ATTRS = {"race": 3, "gender": 2, "ethnicity": 2, "language": 3}


@pytest.fixture(scope="module")
def setup(synthetic_root: Path, synthetic_kwargs: dict):
    torch.manual_seed(0)
    module = FairVLMModule(
        str(synthetic_root / "tiny_model"), zero_shot=ZeroShotPrompts(max_length=32)
    )
    dm = SyntheticFairVLMedDataModule(
        str(synthetic_root),
        synthetic_kwargs=synthetic_kwargs,
        max_length=32,
        batch_size=16,
        eval_batch_size=32,
    )
    dm.setup("fit")
    dm.setup("test")
    return module, dm


def _sklearn(x: torch.Tensor, y: torch.Tensor, wd: float, class_weight=None) -> LogisticRegression:
    n = x.shape[0]
    clf = LogisticRegression(
        C=1.0 / (n * wd), tol=1e-10, max_iter=10_000, class_weight=class_weight
    )
    return clf.fit(x.double().numpy(), y.numpy())


@pytest.mark.parametrize("class_weight", [None, "balanced"])
@pytest.mark.parametrize("kind", ["image", "image_text"])
def test_probe_matches_sklearn(setup, kind: str, class_weight) -> None:
    module, dm = setup
    train = extract_features(module, dm.train_dataloader(), attributes=list(ATTRS), features=kind)
    test = extract_features(module, dm.test_dataloader(), attributes=list(ATTRS), features=kind)
    assert train.features.shape == (96, 64 * (2 if kind == "image_text" else 1))
    assert sorted(train.index.tolist()) == list(range(96))  # every training sample once
    mean, std = train.features.mean(0), train.features.std(0, unbiased=False)
    xtr, xte = (train.features - mean) / std, (test.features - mean) / std
    for wd in (1e-2,) if kind == "image_text" else (1e-3, 1e-1):
        head = fit_logistic_regression(
            xtr, train.labels, weight_decay=wd, class_weight=class_weight
        )
        ref = _sklearn(xtr, train.labels, wd, class_weight)
        ours = roc_auc_score(test.labels.numpy(), head.predict_proba(xte).numpy())
        theirs = roc_auc_score(test.labels.numpy(), ref.predict_proba(xte.double().numpy())[:, 1])
        assert ours == pytest.approx(theirs, abs=1e-3)
        np.testing.assert_allclose(head.weight.numpy(), ref.coef_[0], atol=2e-3, rtol=2e-3)
        assert float(head.bias) == pytest.approx(float(ref.intercept_[0]), abs=2e-3)


def test_linear_probe_selects_on_val_and_reports_test(setup) -> None:
    module, dm = setup
    split = {
        s: extract_features(module, getattr(dm, f"{s}_dataloader")(), attributes=list(ATTRS))
        for s in ("train", "val", "test")
    }
    grid = (1e-3, 1e-2, 1e-1)
    values, head = linear_probe(
        split["train"], split["val"], split["test"], ATTRS, weight_decays=grid
    )
    # reference: sklearn for every grid value, pick by val AUC (ties -> larger), report test
    mean = split["train"].features.double().mean(0)
    std = split["train"].features.double().std(0, unbiased=False)
    z = {s: ((f.features.double() - mean) / std) for s, f in split.items()}
    best = None
    for wd in grid:
        clf = _sklearn(z["train"], split["train"].labels, wd)
        val_auc = roc_auc_score(split["val"].labels, clf.predict_proba(z["val"].numpy())[:, 1])
        if best is None or val_auc >= best[0] - 1e-9:
            best = (val_auc, wd, clf)
    assert float(values["weight_decay"]) == best[1]
    test_auc = roc_auc_score(split["test"].labels, best[2].predict_proba(z["test"].numpy())[:, 1])
    assert float(values["auc"]) == pytest.approx(test_auc, abs=1e-3)
    assert "race/es_auc" in values and "gender/dpd" in values


def test_feature_cache(setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module, dm = setup
    cache = tmp_path / "val.pt"
    first = extract_features(module, dm.val_dataloader(), attributes=["race"], cache_path=cache)
    assert cache.is_file()

    def boom(*args, **kwargs):
        raise AssertionError("encoded although cached")

    with monkeypatch.context() as m:
        m.setattr(module.encoder, "encode_image", boom)
        again = extract_features(module, dm.val_dataloader(), attributes=["race"], cache_path=cache)
    torch.testing.assert_close(again.features, first.features)
    # other weights: the cache is stale and recomputed
    with torch.no_grad():
        p = module.model.vision_model.embeddings.patch_embedding.weight
        p.add_(1.0)
        try:
            fresh = extract_features(
                module, dm.val_dataloader(), attributes=["race"], cache_path=cache
            )
        finally:
            p.sub_(1.0)
    assert not torch.allclose(fresh.features, first.features)


def test_callback_in_fit_leaves_encoder_unchanged(
    synthetic_root: Path, synthetic_kwargs: dict
) -> None:
    torch.manual_seed(0)
    module = FairVLMModule(
        str(synthetic_root / "tiny_model"), zero_shot=ZeroShotPrompts(max_length=32)
    )
    dm = SyntheticFairVLMedDataModule(
        str(synthetic_root),
        synthetic_kwargs=synthetic_kwargs,
        max_length=32,
        batch_size=16,
        eval_batch_size=48,
    )
    probe = LinearProbeEvaluation(every_n_epochs=1, weight_decays=(1e-2,))
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[probe],
    )
    trainer.fit(module, datamodule=dm)
    assert (
        "probe/auc" in trainer.callback_metrics and "probe/race/es_auc" in trainer.callback_metrics
    )
    before = {k: v.clone() for k, v in module.state_dict().items()}
    module.train()
    # the probe after training, by hand: same numbers as an independent sklearn pass, weights intact
    values = probe.run(trainer, module)
    assert module.training  # mode restored
    for k, v in module.state_dict().items():
        assert torch.equal(v, before[k]), k
    train = extract_features(module, dm.train_dataloader(), attributes=list(ATTRS))
    test = extract_features(module, dm.test_dataloader(), attributes=list(ATTRS))
    mean, std = train.features.double().mean(0), train.features.double().std(0, unbiased=False)
    clf = _sklearn((train.features - mean) / std, train.labels, 1e-2)
    ref = roc_auc_score(
        test.labels, clf.predict_proba(((test.features - mean) / std).numpy())[:, 1]
    )
    assert float(values["probe/auc"]) == pytest.approx(ref, abs=1e-3)
    assert probe.results["probe/auc"] == pytest.approx(float(values["probe/auc"]))


def test_probe_datamodule_and_bad_input(setup) -> None:
    module, dm = setup
    values, _ = probe_datamodule(module, dm, {"gender": 2}, weight_decays=(1e-2,))
    assert set(values) >= {"auc", "gender/es_auc", "val_auc", "weight_decay"}
    with pytest.raises(ValueError, match="lacks key"):
        extract_features(module, [{"pixel_values": torch.zeros(1, 3, 64, 64)}])
    with pytest.raises(ValueError, match="features must be"):
        extract_features(module, [], features="text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dual encoder"):
        extract_features(object(), [])
    with pytest.raises(ValueError, match="both classes"):
        fit_logistic_regression(torch.zeros(4, 2), torch.zeros(4), weight_decay=1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        fit_logistic_regression(torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]), weight_decay=0.0)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        fit_logistic_regression(torch.zeros(4), torch.tensor([0, 1, 0, 1]), weight_decay=1.0)
    with pytest.raises(ValueError, match="every_n_epochs"):
        LinearProbeEvaluation(every_n_epochs=0)
