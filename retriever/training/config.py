"""What a training run is asked for and what it gives back: `TrainConfig` with its checks (every
setting refused before any data is read or model loaded), the settings a resumed run must
repeat, `EpochStats` and `TrainResult`, and the files a run keeps beside its checkpoint.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch

from retriever.encoding.models import LoadedModel
from retriever.encoding.specs import ModelSpec
from retriever.encoding.weights import RANDOM
from retriever.errors import UsageError
from retriever.training.step import Precision

# Learning rates when `TrainConfig.lr` is None. From scratch a small model needs a large step;
# pretrained weights are destroyed by one, so fine-tuning uses the usual CLIP fine-tuning rate.
LR_FROM_SCRATCH = 1e-3
LR_FINE_TUNE = 1e-5


@dataclass
class TrainConfig:
    # images with .txt sidecar captions, a .csv / .tsv / .jsonl table, a COCO captions .json,
    # or WebDataset tar shards (a .tar, a folder of them, a {000..099} pattern, a URL)
    data: Path | str
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
    # pairs per process per micro-batch; a step sees batch_size x grad_accum x processes pairs,
    # each meeting all the others as negatives
    batch_size: int = 32
    lr: float | None = None  # peak learning rate; None: LR_FROM_SCRATCH or LR_FINE_TUNE
    weight_decay: float = 0.1  # AdamW decay; never applied to biases, norms or logit_scale
    warmup: float = 0.1  # fraction of all steps spent ramping the learning rate up from 0
    val_fraction: float = 0.1  # images held out to measure retrieval before and after
    seed: int = 0  # split, caption choice, batch order, augmentation and torch RNG
    image_col: str = "filepath"  # table column with the image path
    caption_col: str = "caption"  # table column with the caption
    augment: bool = False  # train through open_clip's random-crop preprocessing
    num_workers: int = 0  # DataLoader worker processes per training process; 0: decode inline
    grad_accum: int = 1  # micro-batches per step: a batch grad_accum x larger, same memory
    lock_image: bool = False  # LiT: freeze the image tower, train the text tower (and scale)
    lock_text: bool = False  # freeze the text tower, train the image tower
    grad_checkpointing: bool = False  # recompute activations in backward: less memory, slower
    precision: Precision = "auto"  # autocast dtype; auto: fp32 on CPU, bf16 (or fp16) on GPU
    val_data: Path | None = None  # held-out pairs (any pairs source) instead of a split
    # a folder of class folders: zero-shot classification accuracy at every validation too
    val_classes: Path | None = None
    image_root: Path | None = None  # COCO .json: folder its file_names are in (default: its own)
    samples_per_epoch: int | None = None  # shards: pairs per epoch (default: counted)
    val_every: int = 0  # also validate every this many steps; 0: before training + epoch ends
    save_every: int = 0  # also save the resumable state every this many steps; 0: epoch ends
    resume: Path | None = None  # a <out>.resume.pt to continue from, with the same settings
    nproc: int = 1  # training processes to launch on this machine (DDP); 1 under torchrun


@dataclass
class EpochStats:
    epoch: int  # 0 = before training
    train_loss: float | None  # mean over the epoch's steps; None for epoch 0
    # evaluation.evaluate_pairs on the held-out split ({} when none), and under
    # "classification" classification.evaluate_classes on cfg.val_classes (when given)
    val: dict[str, Any]
    seconds: float  # training time of the epoch, validation and saving excluded
    unreadable: int = 0  # training images skipped this epoch because they could not be decoded


@dataclass
class TrainResult:
    checkpoint: Path  # the trained model, written by rank 0
    history: list[EpochStats]  # epoch 0 (untrained) first, then one per epoch
    samples_per_s: float  # training pairs per second of training steps, all processes
    loaded: LoadedModel = field(repr=False)  # the trained model, in eval mode
    curve_csv: Path | None = None  # per-step loss, temperature, lr and validation recall
    curve_png: Path | None = None  # the same, plotted
    train_images: int = 0  # pairs in one epoch of training data, all processes

    @property
    def before(self) -> dict[str, Any]:
        return self.history[0].val

    @property
    def after(self) -> dict[str, Any]:
        return self.history[-1].val


def run_file(out: Path, kind: Literal["curve.csv", "curve.png", "resume.pt"]) -> Path:
    """The files a run keeps beside its checkpoint: tuned.pt -> tuned.curve.csv, ..."""
    return out.with_name(f"{out.stem}.{kind}")


def check_config(cfg: TrainConfig) -> None:
    """Refuse settings that cannot train, before any data is read or model loaded."""
    _check_numbers(cfg)
    _check_out(Path(cfg.out))
    if cfg.objective not in ("infonce", "distance"):
        raise UsageError(f"unknown objective {cfg.objective!r}: pass --objective infonce or "
                         f"--objective distance")
    if cfg.distance_weight and cfg.objective != "infonce":
        raise UsageError("--distance-weight adds to the infonce loss: use it with "
                         "--objective infonce, or drop it")
    if cfg.lock_image and cfg.lock_text:
        raise UsageError("--lock-image and --lock-text together leave nothing to train: "
                         "drop one")
    if cfg.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise UsageError(f"unknown precision {cfg.precision!r}: pass --precision fp32, bf16 "
                         f"or fp16")
    if cfg.nproc > 1 and torch.cuda.is_available() and cfg.nproc > torch.cuda.device_count():
        raise UsageError(f"--nproc {cfg.nproc} but this machine has "
                         f"{torch.cuda.device_count()} GPUs: pass at most that many")


def _check_numbers(cfg: TrainConfig) -> None:
    """Every numeric setting in its range; NaN fails every comparison, so it fails here."""
    lr, spe = cfg.lr, cfg.samples_per_epoch
    rules: list[tuple[str, bool, str]] = [  # TrainConfig field, ok, what it must be
        ("lr", lr is None or _positive(lr), "a positive finite number, e.g. 1e-4"),
        ("epochs", cfg.epochs >= 1, "1 or more"),
        ("batch_size", cfg.batch_size >= 2, "2 or more: each pair needs another as its negative"),
        ("grad_accum", cfg.grad_accum >= 1, "1 or more micro-batches"),
        ("nproc", cfg.nproc >= 1, "1 or more processes"),
        ("warmup", 0 <= cfg.warmup < 1, "a fraction of all steps, e.g. 0.1"),
        ("weight_decay", _positive(cfg.weight_decay, zero=True),
         "0 or a positive finite number, e.g. 0.1"),
        ("val_fraction", 0 <= cfg.val_fraction < 1, "a fraction of the images below 1, e.g. 0.1"),
        ("margin", _positive(cfg.margin), "a positive finite distance, e.g. 1.2"),
        ("distance_weight", _positive(cfg.distance_weight, zero=True),
         "0 or a positive finite number, e.g. 0.5"),
        ("val_every", cfg.val_every >= 0, "0 (off) or a number of steps"),
        ("save_every", cfg.save_every >= 0, "0 (off) or a number of steps"),
        ("num_workers", cfg.num_workers >= 0, "0 or more"),
        ("samples_per_epoch", spe is None or spe >= 1, "1 or more pairs"),
    ]
    for name, ok, wanted in rules:
        if not ok:
            raise UsageError(f"{flag(name)} {getattr(cfg, name)}: must be {wanted}")


def _positive(value: float, zero: bool = False) -> bool:
    """A finite number above 0 (or at 0, with `zero`)."""
    return math.isfinite(value) and (value > 0 or (zero and value == 0))


def _check_out(out: Path) -> None:
    """The checkpoint path is a file to be, in a folder this process may create or write."""
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder: pass a checkpoint file, e.g. "
                         f"{out / 'model.pt'}")
    folder = out.parent
    while not folder.exists() and folder != folder.parent:  # the folders the run will create
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"--out {out}: {folder} is a file, not a folder: pass a path in a "
                         f"folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: cannot write in {folder}: pass a path in a folder you "
                         f"can write to")


def default_lr(loaded: LoadedModel) -> float:
    """The peak learning rate when `TrainConfig.lr` is None."""
    return LR_FROM_SCRATCH if loaded.model_id.pretrained == RANDOM else LR_FINE_TUNE


# TrainConfig fields that leave the curve as it is: a resumed run may change them
_NOT_IN_CURVE = frozenset({"out", "image_col", "caption_col", "num_workers", "grad_checkpointing",
                           "val_data", "val_classes", "image_root", "val_every", "save_every",
                           "resume"})


def curve_settings(cfg: TrainConfig, lr: float, world_size: int) -> dict[str, Any]:
    """The settings that shape the curve, by flag: a resumed run must match every one.

    Every TrainConfig field but _NOT_IN_CURVE; --lr and --nproc as the run resolved them."""
    resolved = {"data": str(cfg.data), "lr": lr, "nproc": world_size}
    settings: dict[str, Any] = {}
    for f in fields(cfg):
        if f.name == "model":
            settings.update({"--model": cfg.model.model, "--pretrained": cfg.model.pretrained})
        elif f.name not in _NOT_IN_CURVE:
            settings[flag(f.name)] = resolved.get(f.name, getattr(cfg, f.name))
    return settings


def flag(name: str) -> str:
    """The command-line name of a TrainConfig field: batch_size -> --batch-size, data -> DATA."""
    return "DATA" if name == "data" else "--" + name.replace("_", "-")
