"""Your own LightningModule gains Dynamic Bad Pair Mining and the fairness metrics in a few lines.

``MyCLIP`` below is an ordinary CLIP fine-tuning module. The lines marked ``# (+)`` are all it
takes to add the package's parts to it:

* DBPM: the ``DynamicBadPairMining`` callback on the Trainer; ``training_step`` asks it for
  per-pair weights before reducing the loss and returns the raw per-pair losses and the dataset
  indices, which the callback records;
* fairness metrics: a ``FairnessMetrics`` updated with zero-shot scores and group ids, logged
  with ``log_dict``.

Run it (creates the synthetic data and the tiny model on first use, offline):

    python examples/existing_trainer.py --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from transformers import AutoModel

from fairvlm_lightning.app.synthetic import SyntheticFairVLMedDataModule
from fairvlm_lightning.callbacks import DynamicBadPairMining, find_bad_pair_mining  # (+)
from fairvlm_lightning.metrics import FairnessMetrics  # (+)
from fairvlm_lightning.schema import ATTRIBUTE_GROUPS, CLASS_PROMPTS

GROUPS = ATTRIBUTE_GROUPS
_PROMPTS = CLASS_PROMPTS


class MyCLIP(pl.LightningModule):
    """A plain CLIP fine-tune (symmetric InfoNCE) with zero-shot evaluation."""

    def __init__(self, model: str, prompt_ids: dict[str, torch.Tensor], lr: float = 3e-4) -> None:
        super().__init__()
        self.clip = AutoModel.from_pretrained(model).train()
        self.register_buffer("prompt_ids", prompt_ids["input_ids"], persistent=False)
        self.register_buffer("prompt_mask", prompt_ids["attention_mask"], persistent=False)
        self.lr = lr
        self.val_fairness = FairnessMetrics(GROUPS)  # (+)
        self.test_fairness = FairnessMetrics(GROUPS)  # (+)

    def embed(self, pixel_values: torch.Tensor | None, input_ids: torch.Tensor, mask: Any) -> Any:
        def feats(out: Any) -> torch.Tensor:  # transformers 4.x: tensor, 5.x: output object
            return out if isinstance(out, torch.Tensor) else out.pooler_output

        text = feats(self.clip.get_text_features(input_ids, attention_mask=mask))
        text = F.normalize(text, dim=-1)
        if pixel_values is None:
            return text
        image = F.normalize(feats(self.clip.get_image_features(pixel_values)), dim=-1)
        return image, text

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> Any:
        image, text = self.embed(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        logits = self.clip.logit_scale.exp() * image @ text.T
        target = torch.arange(len(image), device=image.device)
        losses = (  # one loss per pair (reduction="none") instead of the batch mean
            F.cross_entropy(logits, target, reduction="none")
            + F.cross_entropy(logits.T, target, reduction="none")
        ) / 2
        dbpm = find_bad_pair_mining(self.trainer)  # (+)
        weights = dbpm.pair_weights(batch["index"], losses.detach()) if dbpm else 1.0  # (+)
        loss = (weights * losses).mean()
        self.log("train/loss", loss, prog_bar=True)
        return {"loss": loss, "pair_losses": losses.detach(), "index": batch["index"]}  # (+)

    def _zero_shot(self, batch: dict[str, torch.Tensor], metric: FairnessMetrics) -> None:
        image, _ = self.embed(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        prompts = self.embed(None, self.prompt_ids, self.prompt_mask)
        probs = (self.clip.logit_scale.exp() * image @ prompts.T).softmax(dim=-1)[:, 1]
        metric.update(probs, batch["label"], {a: batch[a] for a in GROUPS})  # (+)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._zero_shot(batch, self.val_fairness)

    def on_validation_epoch_end(self) -> None:
        values = self.val_fairness.compute()  # (+)
        self.log_dict({f"val/{k}": v for k, v in values.items()})  # (+)
        self.val_fairness.reset()  # (+)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._zero_shot(batch, self.test_fairness)

    def on_test_epoch_end(self) -> None:
        values = self.test_fairness.compute()  # (+)
        self.log_dict({f"test/{k}": v for k, v in values.items()})  # (+)
        self.test_fairness.reset()  # (+)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default=".fairvlm_cache/synthetic", help="synthetic data folder")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup-epochs", type=int, default=1, help="DBPM warm-up")
    p.add_argument("--beta", type=float, default=3.0, help="DBPM beta (noisy and faulty)")
    p.add_argument("--limit-batches", type=float, default=1.0, help="fraction of batches per epoch")
    p.add_argument("--sizes", type=int, nargs=3, metavar=("TRAIN", "VAL", "TEST"), default=None)
    p.add_argument(
        "--synthetic-kwargs",
        type=json.loads,
        default={},
        help="more ensure_synthetic_assets settings as JSON, e.g. '{\"warm_start_steps\": 10}'",
    )
    p.add_argument("--log-dir", default="runs", help="where Lightning writes logs")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train, test and return ``{"test": metrics, "dbpm": callback, "trainer": trainer}``."""
    args = parse_args(argv)
    pl.seed_everything(0)
    kwargs: dict[str, Any] = dict(args.synthetic_kwargs)
    if args.sizes is not None:
        kwargs["sizes"] = dict(zip(("train", "val", "test"), args.sizes, strict=True))
    dm = SyntheticFairVLMedDataModule(
        args.root, synthetic_kwargs=kwargs, batch_size=args.batch_size
    )
    dm.prepare_data()  # writes the synthetic data and tiny model on first use
    model = MyCLIP(str(Path(args.root) / "tiny_model"), dm.tokenize(list(_PROMPTS)), lr=args.lr)
    dbpm = DynamicBadPairMining(  # (+)
        warmup_epochs=args.warmup_epochs, beta_noisy=args.beta, beta_faulty=args.beta
    )
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=1,
        callbacks=[dbpm],  # (+)
        limit_train_batches=args.limit_batches,
        default_root_dir=args.log_dir,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, dm)
    test = trainer.test(model, dm, verbose=False)[0]
    s = dbpm.miner.summary() if dbpm.miner is not None else {}
    print(
        f"test AUC {test['test/auc']:.3f} | race ES-AUC {test['test/race/es_auc']:.3f} | "
        f"DBPM flagged {s.get('num_faulty', 0)} faulty, {s.get('num_noisy', 0)} noisy pairs"
    )
    return {"test": test, "dbpm": dbpm, "trainer": trainer}


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(sys.argv[1:])
