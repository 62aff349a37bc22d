"""Contrastive training (or fine-tuning) of an open_clip model on image-caption pairs.

`train` reads the pairs, holds out a validation split, trains with AdamW under a warmup + cosine
schedule, measures held-out retrieval before training and after every epoch, and writes a
checkpoint that `load_model(ModelSpec(pretrained=str(cfg.out)))` loads again.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from retriever.encoders import ClipEncoder
from retriever.errors import DatasetError, ImageError, UsageError
from retriever.evaluation import SILENT, evaluate_pairs
from retriever.images import open_image
from retriever.losses import distance_loss, infonce_loss, positive_distance
from retriever.models import RANDOM, LoadedModel, ModelSpec, load_model, save_checkpoint
from retriever.pairs import Pair, load_pairs, split_pairs
from retriever.progress import Progress

# CLIP clamps its learned temperature so logits never exceed 100x the cosine similarity.
MAX_LOGIT_SCALE = math.log(100)
# Learning rates when `TrainConfig.lr` is None. From scratch a small model needs a large step;
# pretrained weights are destroyed by one, so fine-tuning uses the usual CLIP fine-tuning rate.
LR_FROM_SCRATCH = 1e-3
LR_FINE_TUNE = 1e-5


@dataclass
class TrainConfig:
    data: Path  # folder of images with .txt sidecar captions, or a .csv / .tsv / .jsonl table
    out: Path  # checkpoint file to write; loads again with --pretrained OUT
    model: ModelSpec = ModelSpec()  # start point: pretrained weights, or a config + "none"
    objective: Literal["infonce", "distance"] = "infonce"  # CLIP loss, or Hadsell 2006 margin
    distance_weight: float = 0.0  # infonce only: adds this x mean squared positive distance
    # distance only: negative pairs closer than this are pushed apart. Unit vectors at cosine
    # 0.5 are 1.0 apart, orthogonal ones sqrt(2) ~ 1.41. 1.2 (cosine ~0.28) asks unrelated pairs
    # to be mostly decorrelated without demanding orthogonality, which batches holding
    # near-duplicate captions cannot reach; of 1.0 / 1.2 / 1.4 it gave the best held-out R@1
    # on the synthetic scenes (5 seeds).
    margin: float = 1.2
    epochs: int = 10  # passes over the training images
    batch_size: int = 32  # pairs per step, so each pair meets batch_size - 1 negatives
    lr: float | None = None  # peak learning rate; None: LR_FROM_SCRATCH or LR_FINE_TUNE
    weight_decay: float = 0.1  # AdamW decay; never applied to biases, norms or logit_scale
    warmup: float = 0.1  # fraction of all steps spent ramping the learning rate up from 0
    val_fraction: float = 0.1  # images held out to measure retrieval before and after
    seed: int = 0  # split, caption choice, batch order and torch RNG
    image_col: str = "filepath"  # table column with the image path
    caption_col: str = "caption"  # table column with the caption
    augment: bool = False  # train through open_clip's random-crop preprocessing
    num_workers: int = 0  # DataLoader worker processes; 0 decodes in the training process


@dataclass
class EpochStats:
    epoch: int  # 0 = before training
    train_loss: float | None  # mean over the epoch's steps; None for epoch 0
    val: dict[str, Any]  # evaluation.evaluate_pairs on the held-out split ({} when none)
    seconds: float  # training time of the epoch, validation excluded
    unreadable: int = 0  # training images skipped this epoch because they could not be decoded


@dataclass
class TrainResult:
    checkpoint: Path
    history: list[EpochStats]  # epoch 0 (untrained) first, then one per epoch
    samples_per_s: float  # training pairs per second of training steps
    loaded: LoadedModel = field(repr=False)  # the trained model, in eval mode

    @property
    def before(self) -> dict[str, Any]:
        return self.history[0].val

    @property
    def after(self) -> dict[str, Any]:
        return self.history[-1].val


def train(
    cfg: TrainConfig, progress: Progress = SILENT, log: Callable[[str], None] = lambda s: None
) -> TrainResult:
    _check(cfg)
    loaded = load_model(cfg.model)
    _seed_everything(cfg.seed)  # after load_model, which seeds random weights its own way
    train_pairs, val_pairs = _read_split(cfg, log)
    lr = cfg.lr if cfg.lr is not None else _default_lr(loaded)
    optimizer = _optimizer(loaded.model, lr, cfg.weight_decay)
    total_steps = cfg.epochs * math.ceil(len(train_pairs) / cfg.batch_size)
    warmup_steps = round(cfg.warmup * total_steps)
    scaler = torch.amp.GradScaler("cuda", enabled=loaded.device.type == "cuda")

    history = [EpochStats(0, None, _validate(loaded, val_pairs), 0.0)]
    log(_describe(history[0], cfg.epochs))
    step = 0
    with progress.task("training", total=total_steps) as task:
        for epoch in range(1, cfg.epochs + 1):
            start, losses, unreadable = time.perf_counter(), [], 0
            for pixels, tokens, skipped in _batches(loaded, train_pairs, cfg, epoch):
                unreadable += skipped
                if len(pixels) >= 2:  # a contrastive step needs at least one negative
                    _set_lr(optimizer, _lr_at(step, lr, warmup_steps, total_steps))
                    losses.append(_step(loaded, pixels, tokens, cfg, optimizer, scaler))
                step += 1
                task.advance()
            seconds = time.perf_counter() - start
            val = _validate(loaded, val_pairs)
            history.append(EpochStats(epoch, _mean(losses), val, seconds, unreadable))
            log(_describe(history[-1], cfg.epochs))

    loaded.model.eval()
    samples_per_s = cfg.epochs * len(train_pairs) / sum(h.seconds for h in history)
    result = TrainResult(cfg.out, history, samples_per_s, loaded)
    save_checkpoint(cfg.out, loaded, extra=_record(cfg, lr, len(train_pairs), result))
    return result


# --- setup ------------------------------------------------------------------------------------


def _check(cfg: TrainConfig) -> None:
    if cfg.objective not in ("infonce", "distance"):
        raise UsageError(f"unknown objective {cfg.objective!r}: pass --objective infonce or "
                         f"--objective distance")
    if cfg.distance_weight and cfg.objective != "infonce":
        raise UsageError("--distance-weight adds to the infonce loss: use it with "
                         "--objective infonce, or drop it")
    if not 0 <= cfg.warmup < 1:
        raise UsageError(f"warmup {cfg.warmup} is a fraction of all steps: pass e.g. 0.1")
    if cfg.epochs < 1 or cfg.batch_size < 2:
        raise UsageError("training needs --epochs 1 or more and --batch-size 2 or more")


def _default_lr(loaded: LoadedModel) -> float:
    return LR_FROM_SCRATCH if loaded.model_id.pretrained == RANDOM else LR_FINE_TUNE


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _read_split(cfg: TrainConfig, log: Callable[[str], None]) -> tuple[list[Pair], list[Pair]]:
    pairs = load_pairs(cfg.data, cfg.image_col, cfg.caption_col)
    if pairs.missing:
        log(f"skipped {len(pairs.missing)} images named in {cfg.data} that do not exist")
    train_pairs, val_pairs = split_pairs(pairs, cfg.val_fraction, cfg.seed)
    if len(train_pairs) < 2:
        raise DatasetError(f"{cfg.data} gives {len(train_pairs)} training images: "
                           f"contrastive training needs at least 2")
    log(f"{len(train_pairs)} training images, {len(val_pairs)} held out for validation")
    return train_pairs, val_pairs


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with open_clip's grouping: no decay on biases, norm gains or the temperature."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name
        (no_decay if exempt or "logit_scale" in name else decay).append(p)
    groups = [{"params": no_decay, "weight_decay": 0.0},
              {"params": decay, "weight_decay": weight_decay}]
    device = next(model.parameters()).device
    # the fused kernel makes a CPU step ~6x faster (most of a tiny model's step is the update
    # of its 49408-row token embedding)
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6,  # CLIP's betas, eps
                             fused=fused)


def _lr_at(step: int, peak: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup from 0 to `peak`, then cosine decay to 0 at `total_steps`."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# --- data -------------------------------------------------------------------------------------


class _CaptionedImages(Dataset):
    """(image path, caption) items -> (pixels (3, H, W), caption), or None if undecodable."""

    def __init__(self, items: list[tuple[Path, str]], preprocess: Callable) -> None:
        self.items, self.preprocess = items, preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str] | None:
        path, caption = self.items[i]
        try:
            return self.preprocess(open_image(path)), caption
        except ImageError:
            return None


def _batches(
    loaded: LoadedModel, pairs: Sequence[Pair], cfg: TrainConfig, epoch: int
) -> DataLoader:
    """One epoch: every image once, with one of its captions, in seeded random order.

    Batches are (pixels (B, 3, H, W), tokens (B, context), images skipped as undecodable).
    """
    rng = random.Random(cfg.seed * 100_003 + epoch)
    items = [(p.image, rng.choice(p.captions)) for p in pairs]
    order = list(range(len(items)))
    rng.shuffle(order)
    # equal-sized batches, so no last batch of one or two pairs with almost no negatives
    n_batches = math.ceil(len(order) / cfg.batch_size)
    batches = [chunk.tolist() for chunk in np.array_split(order, n_batches)]
    preprocess = loaded.train_preprocess if cfg.augment else loaded.preprocess
    dataset = _CaptionedImages(items, preprocess)
    return DataLoader(dataset, batch_sampler=batches, num_workers=cfg.num_workers,
                      collate_fn=_collate(loaded.tokenizer))


class _collate:  # noqa: N801 - a picklable function for DataLoader workers
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, batch: list[tuple[torch.Tensor, str] | None]):
        readable = [item for item in batch if item is not None]
        pixels = torch.stack([p for p, _ in readable]) if readable else torch.empty(0)
        tokens = self.tokenizer([c for _, c in readable]) if readable else torch.empty(0)
        return pixels, tokens, len(batch) - len(readable)


# --- one step ---------------------------------------------------------------------------------


def _step(
    loaded: LoadedModel,
    pixels: torch.Tensor,
    tokens: torch.Tensor,
    cfg: TrainConfig,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> float:
    model: Any = loaded.model  # open_clip CLIP / CustomTextCLIP
    model.train()
    with _autocast(loaded.device):
        image_emb = model.encode_image(pixels.to(loaded.device), normalize=True)  # (B, D)
        text_emb = model.encode_text(tokens.to(loaded.device), normalize=True)  # (B, D)
    loss = _loss(cfg, image_emb.float(), text_emb.float(), model.logit_scale)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    with torch.no_grad():
        model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    return float(loss.item())


def _loss(
    cfg: TrainConfig, image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    if cfg.objective == "distance":  # no temperature: logit_scale gets no gradient
        return distance_loss(image_emb, text_emb, cfg.margin)
    loss = infonce_loss(image_emb, text_emb, logit_scale)
    if cfg.distance_weight:
        loss = loss + cfg.distance_weight * positive_distance(image_emb, text_emb)
    return loss


def _autocast(device: torch.device):
    """fp16 autocast on CUDA (the GradScaler guards its gradients); plain fp32 elsewhere."""
    return torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda")


# --- validation and records -------------------------------------------------------------------


def _validate(loaded: LoadedModel, pairs: Sequence[Pair]) -> dict[str, Any]:
    if not pairs:
        return {}
    loaded.model.eval()
    return evaluate_pairs(ClipEncoder(loaded), pairs)


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _describe(stats: EpochStats, epochs: int) -> str:
    parts = [f"epoch {stats.epoch}/{epochs}"]
    if stats.train_loss is not None:
        parts.append(f"loss {stats.train_loss:.4f}")
    if stats.val:
        t2i, i2t = stats.val["text_to_image"], stats.val["image_to_text"]
        parts.append(f"val text->image R@1 {t2i['R@1']:.3f} R@5 {t2i['R@5']:.3f}, "
                     f"image->text R@1 {i2t['R@1']:.3f} R@5 {i2t['R@5']:.3f}")
    if stats.unreadable:
        parts.append(f"skipped {stats.unreadable} unreadable images")
    if stats.epoch:
        parts.append(f"{stats.seconds:.1f} s")
    return ", ".join(parts)


def _record(cfg: TrainConfig, lr: float, n_train: int, result: TrainResult) -> dict[str, Any]:
    """The training record stored in the checkpoint: plain JSON-able values only."""
    config = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
    config["lr"] = lr
    return {
        "training": config,
        "train_images": n_train,
        "samples_per_s": result.samples_per_s,
        "history": [asdict(h) for h in result.history],
        "final_metrics": result.after,
    }
