"""Robust and fair CLIP fine-tuning in a plain Lightning Fabric loop.

The same method as ``FairVLMModule`` without a LightningModule: per-pair contrastive losses
(``pair_losses``, negatives gathered from every process), Dynamic Bad Pair Mining with the
framework-free ``BadPairMiner`` (weights before reducing, record the raw losses, fold the epoch
with ``end_epoch()``, which sums the memory over processes), the Sinkhorn fairness term, and
zero-shot evaluation with ``FairnessMetrics`` (synchronised across processes on ``compute()``).

Run on one process, or on two CPU processes with DDP (the script's own options go after ``--``):

    python examples/fabric_train.py --epochs 2
    fabric run --accelerator cpu --devices 2 --strategy ddp examples/fabric_train.py -- --epochs 2

The training order is ``DistributedSampler(shuffle=True)``: one permutation per epoch, whatever
the number of processes, dealt round-robin. With ``--batch-size`` the *global* batch, the union of
the processes' k-th batches is then the k-th batch of a single-process run, so (without the
fairness term, which is computed per process) two processes train the same model as one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.fabric import Fabric
from torch.utils.data import DataLoader, DistributedSampler

from fairvlm_lightning.app.synthetic import ensure_synthetic_assets
from fairvlm_lightning.data import FairVLMedDataModule
from fairvlm_lightning.encoders import DualEncoder
from fairvlm_lightning.losses import pair_losses
from fairvlm_lightning.metrics import FairnessMetrics
from fairvlm_lightning.mining import BadPairMiner
from fairvlm_lightning.schema import ATTRIBUTE_GROUPS, CLASS_PROMPTS
from fairvlm_lightning.sinkhorn import SinkhornFairnessLoss
from fairvlm_lightning.tables import fairness_table

ATTRIBUTES = ATTRIBUTE_GROUPS  # FairVLMed: attribute -> number of groups
PROMPTS = CLASS_PROMPTS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default=".fairvlm_cache/synthetic", help="dataset root")
    p.add_argument("--model", default=None, help="Hub name or folder (default <root>/tiny_model)")
    p.add_argument(
        "--synthetic",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write the synthetic twin and tiny model into --root when missing (default on)",
    )
    p.add_argument(
        "--sizes",
        type=int,
        nargs=3,
        metavar=("TRAIN", "VAL", "TEST"),
        default=None,
        help="synthetic split sizes (default: the package default)",
    )
    p.add_argument(
        "--synthetic-kwargs",
        type=json.loads,
        default={},
        help="more ensure_synthetic_assets settings as JSON, e.g. '{\"warm_start_steps\": 10}'",
    )
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32, help="global batch size")
    p.add_argument("--max-length", type=int, default=32, help="tokens per note / prompt")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--fairness-weight", type=float, default=0.1)
    p.add_argument("--warmup-epochs", type=int, default=1, help="DBPM warm-up")
    p.add_argument("--beta", type=float, default=3.0, help="DBPM beta (noisy and faulty)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here (rank 0)")
    return p.parse_args(argv)


def _eval_loader(dataset: Any, fabric: Fabric, batch_size: int, collate: Any) -> DataLoader:
    # Each process takes every world_size-th sample, without the padding DistributedSampler
    # adds, so the metrics synchronised on compute() cover every sample exactly once.
    shard = list(range(fabric.global_rank, len(dataset), fabric.world_size))
    return DataLoader(dataset, batch_size=batch_size, sampler=shard, collate_fn=collate)


@torch.no_grad()
def evaluate(
    encoder: DualEncoder, prompts: dict[str, torch.Tensor], loader: DataLoader, fabric: Fabric
) -> dict[str, float]:
    encoder.eval()
    metrics = FairnessMetrics(ATTRIBUTES).to(fabric.device)
    prompt_embeds = encoder.encode_text(prompts["input_ids"], prompts["attention_mask"])
    scale, bias = encoder.logit_params()
    for batch in loader:
        batch = fabric.to_device(batch)
        logits = scale * encoder.encode_image(batch["pixel_values"]) @ prompt_embeds.T
        probs = (logits if bias is None else logits + bias).softmax(dim=-1)[:, 1]
        metrics.update(probs, batch["label"], {a: batch[a] for a in ATTRIBUTES})
    encoder.train()
    return {k: float(v) for k, v in metrics.compute().items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    # No launch(): `fabric run` starts the processes and sets accelerator, devices and strategy;
    # plain `python examples/fabric_train.py` runs one process.
    fabric = Fabric()
    fabric.seed_everything(args.seed)
    root = Path(args.root)
    if args.synthetic:
        kwargs: dict[str, Any] = dict(args.synthetic_kwargs)
        if args.sizes is not None:
            kwargs["sizes"] = dict(zip(("train", "val", "test"), args.sizes, strict=True))
        if fabric.global_rank == 0:
            ensure_synthetic_assets(root, **kwargs)
        fabric.barrier()
    model_name = args.model or str(root / "tiny_model")
    # the library's preset reads the folder (a synthetic one keeps its caches in root/.cache)
    dm = FairVLMedDataModule(root, model=model_name, max_length=args.max_length)
    if fabric.global_rank == 0:
        dm.prepare_data()  # fill the preprocessing cache once
    fabric.barrier()
    dm.setup("fit")
    collate = dm.train_dataloader().collate_fn
    train_set = dm.split_dataset("train")

    if args.batch_size % fabric.world_size:
        raise ValueError(
            f"--batch-size {args.batch_size} must be divisible by the {fabric.world_size} processes"
        )
    sampler = DistributedSampler(
        train_set,
        num_replicas=fabric.world_size,
        rank=fabric.global_rank,
        shuffle=True,
        seed=args.seed,
    )
    train_loader = DataLoader(
        train_set,
        batch_size=args.batch_size // fabric.world_size,
        sampler=sampler,
        collate_fn=collate,
    )
    train_loader = fabric.setup_dataloaders(train_loader, use_distributed_sampler=False)
    val_loader = _eval_loader(dm.split_dataset("val"), fabric, 256, collate)

    from transformers import AutoModel

    encoder = DualEncoder(AutoModel.from_pretrained(model_name).train())
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    ddp_encoder, optimizer = fabric.setup(encoder, optimizer)
    fairness = SinkhornFairnessLoss()
    miner = BadPairMiner(
        len(train_set),
        warmup_epochs=args.warmup_epochs,
        beta_noisy=args.beta,
        beta_faulty=args.beta,
        device=fabric.device,
    )
    prompts = fabric.to_device(dm.tokenize(list(PROMPTS)))

    history: list[dict[str, Any]] = []
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for batch in train_loader:
            out = ddp_encoder(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
            losses = pair_losses(*out, kind=encoder.loss_kind, gather_distributed=True)
            weights = miner.weights(batch["index"], losses.detach())  # 1 unless flagged
            loss = (weights * losses).mean()
            if args.fairness_weight > 0:
                groups = {a: batch[a] for a in ATTRIBUTES}
                loss = loss + args.fairness_weight * fairness(losses, groups)
            optimizer.zero_grad()
            fabric.backward(loss)
            optimizer.step()
            miner.record(batch["index"], losses.detach())  # raw, unweighted
        summary = miner.end_epoch()  # sums the epoch over processes, then flags
        metrics = evaluate(encoder, prompts, val_loader, fabric)
        history.append({"epoch": epoch, "dbpm": summary, "val": metrics})
        fabric.print(
            f"epoch {epoch}: val AUC {metrics['auc']:.3f}, race ES-AUC "
            f"{metrics['race/es_auc']:.3f}, DBPM faulty {summary['num_faulty']} "
            f"noisy {summary['num_noisy']}"
        )

    test_loader = (
        _eval_loader(dm.split_dataset("test"), fabric, 256, collate) if _has_test(dm) else None
    )
    test = evaluate(encoder, prompts, test_loader, fabric) if test_loader is not None else {}
    result = {
        "world_size": fabric.world_size,
        "history": history,
        "test": test,
        "history_mean": miner.history_mean.cpu().tolist(),
        "flagged": miner.flagged_mask.nonzero().flatten().cpu().tolist(),
    }
    if test:
        fabric.print(fairness_table({f"test/{k}": v for k, v in test.items()}, ATTRIBUTES))
    if args.out and fabric.global_rank == 0:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


def _has_test(dm: FairVLMedDataModule) -> bool:
    try:
        dm.setup("test")
    except FileNotFoundError:
        return False
    return True


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(sys.argv[1:])
