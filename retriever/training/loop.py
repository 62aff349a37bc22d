"""Contrastive training (or fine-tuning) of an open_clip model on image-caption pairs.

`train` reads the pairs (or streams tar shards), holds out a validation split, trains with AdamW
under a warmup + cosine schedule, measures held-out retrieval before training, after every
epoch and every `val_every` steps, and writes a checkpoint that
`load_model(ModelSpec(pretrained=str(cfg.out)))` loads again. Beside the checkpoint it keeps
the training curves (`<out>.curve.csv`, `<out>.curve.png`) and, until the run completes, the
resumable state (`<out>.resume.pt`).

A non-finite loss or weights stop the run at once with TrainingDiverged: no checkpoint, no
resumable state; the curves up to that step stay for diagnosis.

With `nproc` > 1, or when started by torchrun, the processes train as one (DDP): see
retriever.training.distributed and retriever.training.step. Only rank 0 logs and writes files.

What the run is given and gives back (TrainConfig, TrainResult) and the checks on its settings:
retriever.training.config.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retriever.encoding.checkpoints import save_checkpoint as save_model
from retriever.encoding.clip_encoder import ClipEncoder
from retriever.encoding.models import LoadedModel, ModelSpec, default_device, load_model
from retriever.errors import DatasetError, RetrieverError, TrainingDiverged
from retriever.progress import Progress, Task
from retriever.settings import Settings
from retriever.training.classification import Accuracy, evaluate_classes, read_class_folder
from retriever.training.config import (
    EpochStats,
    TrainConfig,
    TrainResult,
    check_config,
    curve_settings,
    default_lr,
    run_file,
)
from retriever.training.curves import Curve
from retriever.training.datasets import (
    LoaderSettings,
    PairData,
    ShardData,
    StepBatch,
    TrainData,
    count_samples,
    shard_urls,
)
from retriever.training.distributed import Group, all_sum, barrier, join, launch, launched, leave
from retriever.training.evaluation import SILENT, evaluate_pairs, recall_line
from retriever.training.losses import Objective
from retriever.training.optimizer import build_optimizer, lr_at
from retriever.training.pairs import Pair, load_pairs, split_pairs
from retriever.training.resume import (
    TrainState,
    capture_rng,
    check_settings,
    load_state,
    restore_rng,
    save_state,
)
from retriever.training.step import MAX_LOGIT_SCALE, Stepper

# TrainConfig, EpochStats, TrainResult and run_file live in training/config.py; imported from
# here too, as `train`'s own vocabulary
__all__ = ["MAX_LOGIT_SCALE", "EpochStats", "TrainConfig", "TrainResult", "run_file", "train"]

# The resumable state holds the weights and AdamW's two moments (3x the model); an epoch's end
# saves it only when the last save is older than this, so runs of short epochs do not spend
# their time writing. `save_every` steps always save.
EPOCH_SAVE_MIN_S = 60.0


def train(
    cfg: TrainConfig, progress: Progress = SILENT, log: Callable[[str], None] = lambda s: None,
    settings: Settings | None = None,
) -> TrainResult:
    """Train as `cfg` says; `settings`: this process's place under torchrun (its RANK,
    WORLD_SIZE, LOCAL_RANK; None: a process of its own), read where the process started."""
    check_config(cfg)
    settings = settings or Settings()
    if cfg.nproc > 1 and not launched(settings):
        return _train_in_processes(cfg, log)
    group = join(default_device(), settings)
    try:
        quiet = not group.is_main
        return _Run(cfg, group, SILENT if quiet else progress,
                    (lambda s: None) if quiet else log).train()
    finally:
        leave(group)


# --- setup ---------------------------------------------------------------------------------------


def _prepare(loaded: LoadedModel, cfg: TrainConfig, objective: Objective) -> None:
    """Freeze what this run does not train and switch on gradient checkpointing."""
    model: Any = loaded.model
    if cfg.lock_image:
        model.lock_image_tower()
    if cfg.lock_text:
        model.lock_text_tower()
    if not objective.learns_temperature:  # no gradient reaches it; DDP wants none expected
        model.logit_scale.requires_grad_(False)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)


def _open_data(
    cfg: TrainConfig, loaded: LoadedModel, feed: LoaderSettings, log: Callable[[str], None]
) -> tuple[TrainData, list[Pair]]:
    """The training stream and the held-out pairs."""
    val = _read_pairs(cfg.val_data, cfg, log) if cfg.val_data else []
    urls = shard_urls(cfg.data)
    if urls is not None:
        if not cfg.val_data:
            log("streamed shards have no held-out split: pass --val-data to measure recall")
        size = cfg.samples_per_epoch or count_samples(urls)
        shards = ShardData(urls, size, loaded, feed)
        log(f"{len(urls)} shards, {shards.pairs_per_epoch} pairs per epoch, "
            f"{len(val)} held-out images")
        return shards, val
    pairs = _read_pairs(Path(cfg.data), cfg, log)
    train_pairs, val = (pairs, val) if cfg.val_data else split_pairs(pairs, cfg.val_fraction,
                                                                     cfg.seed)
    if len(train_pairs) < max(2, feed.world_size):
        raise DatasetError(f"{cfg.data} gives {len(train_pairs)} training images: "
                           f"contrastive training needs at least 2, and one per process")
    log(f"{len(train_pairs)} training images, {len(val)} held out for validation")
    return PairData(train_pairs, loaded, feed), val


def _read_pairs(source: Path, cfg: TrainConfig, log: Callable[[str], None]) -> list[Pair]:
    pairs = load_pairs(source, cfg.image_col, cfg.caption_col, cfg.image_root)
    if pairs.missing:
        log(f"skipped {len(pairs.missing)} images named in {source} that do not exist")
    if pairs.empty_captions:
        skipped = (f" and skipped {len(pairs.uncaptioned)} images that had no other caption"
                   if pairs.uncaptioned else "")
        log(f"dropped {pairs.empty_captions} empty captions in {source}{skipped}")
    return list(pairs)


# --- the run ----------------------------------------------------------------------------------


@dataclass
class _Measurements:
    """Everything the loop has measured so far; plain values, so the resume state holds it."""

    step: int = 0  # optimizer steps done
    pairs: int = 0  # pairs trained on, all processes
    seconds: float = 0.0  # time in training steps (data loading included), all epochs
    history: list[dict[str, Any]] = field(default_factory=list)  # EpochStats, as dicts
    curve: list[dict[str, Any]] = field(default_factory=list)  # Curve rows
    epoch_losses: list[float] = field(default_factory=list)  # the current epoch's steps
    epoch_unreadable: int = 0  # images this process skipped in the current epoch
    epoch_seconds: float = 0.0  # training time of the current epoch so far


class _Run:
    """One training run, start to checkpoint; `train()` is the whole of it."""

    def __init__(self, cfg: TrainConfig, group: Group, progress: Progress,
                 log: Callable[[str], None]) -> None:
        self.cfg, self.group, self.progress, self.log = cfg, group, progress, log
        self.loaded = load_model(cfg.model, group.device)
        self.objective = Objective(cfg.objective, cfg.margin, cfg.distance_weight)
        _prepare(self.loaded, cfg, self.objective)
        _seed_everything(cfg.seed)
        feed = LoaderSettings(cfg.batch_size, cfg.grad_accum, group.rank, group.world_size,
                              cfg.seed, cfg.num_workers, cfg.augment)
        self.data, self.val_pairs = _open_data(cfg, self.loaded, feed, log)
        self.val_classes = read_class_folder(cfg.val_classes) if cfg.val_classes else None
        self.lr = cfg.lr if cfg.lr is not None else default_lr(self.loaded)
        self.total_steps = cfg.epochs * self.data.steps_per_epoch
        self.warmup_steps = round(cfg.warmup * self.total_steps)
        optimizer = build_optimizer(self.loaded.model, self.lr, cfg.weight_decay)
        self.stepper = Stepper(self.loaded.model, optimizer, self.objective, group,
                               cfg.precision, cfg.grad_accum)
        self.settings = curve_settings(cfg, self.lr, group.world_size)
        self.record = _Measurements()
        self.saved_at = time.monotonic()
        self.curve = Curve(run_file(cfg.out, "curve.csv"), run_file(cfg.out, "curve.png"),
                           self.objective.term_names, classification=bool(cfg.val_classes))

    def train(self) -> TrainResult:
        if self.cfg.resume:
            self._restore(self.cfg.resume)
        else:
            self._end_epoch(0, self._validate())
        first_epoch = self.record.step // self.data.steps_per_epoch + 1
        try:
            with self.progress.task("training", total=self.total_steps) as task:
                task.advance(self.record.step)
                for epoch in range(first_epoch, self.cfg.epochs + 1):
                    self._epoch(epoch, task)
            return self._finish()
        except TrainingDiverged:
            self._abandon()
            raise

    def _epoch(self, epoch: int, task: Task) -> None:
        record, cfg = self.record, self.cfg
        skip = record.step - (epoch - 1) * self.data.steps_per_epoch  # > 0 when resuming
        clock = time.perf_counter()
        for batch in self.data.epoch(epoch, skip):
            record.epoch_unreadable += batch.skipped
            self._step(epoch, batch)
            record.epoch_seconds += time.perf_counter() - clock
            end_of_epoch = record.step == epoch * self.data.steps_per_epoch
            if cfg.val_every and record.step % cfg.val_every == 0 and not end_of_epoch:
                val = self._validate()
                self.curve.add_validation(record.step, epoch, val)
                self.log(f"step {record.step}/{self.total_steps}: {_val_line(val)}")
            if self._save_due() and not end_of_epoch:
                self._save_state()
            task.advance()
            clock = time.perf_counter()
        self._end_epoch(epoch, self._validate())

    def _step(self, epoch: int, batch: StepBatch) -> None:
        record = self.record
        lr = lr_at(record.step, self.lr, self.warmup_steps, self.total_steps)
        result = self.stepper.step(batch, lr)
        record.step += 1
        if result is None:  # too few readable pairs for a contrastive step
            return
        record.pairs += result.pairs
        record.epoch_losses.append(result.loss)
        temperature = float(torch.exp(-self.stepper.module.logit_scale.detach()).item())
        self.curve.add_step(record.step, epoch, record.pairs, result.loss, result.terms,
                            temperature, lr)
        if not math.isfinite(result.loss):  # the same summed loss in every process: all stop
            raise TrainingDiverged(record.step, epoch, self.lr, f"the loss is {result.loss}")

    def _end_epoch(self, epoch: int, val: dict[str, Any]) -> None:
        record = self.record
        unreadable, broken = all_sum([record.epoch_unreadable, self._broken_weights()],
                                     self.group)
        if broken and epoch:  # an update can break the weights with a finite loss
            raise TrainingDiverged(record.step, epoch, self.lr, "the weights are not finite")
        unreadable = int(unreadable)
        stats = EpochStats(epoch, _mean(record.epoch_losses) if epoch else None, val,
                           record.epoch_seconds, unreadable)
        record.history.append(asdict(stats))
        record.seconds += record.epoch_seconds
        record.epoch_losses, record.epoch_unreadable, record.epoch_seconds = [], 0, 0.0
        self.curve.add_validation(record.step, epoch, val)
        self.log(_describe(stats, self.cfg.epochs))
        if epoch and (self._save_due() or time.monotonic() - self.saved_at >= EPOCH_SAVE_MIN_S):
            self._save_state()
        elif self.group.is_main:
            self.curve.write()

    def _broken_weights(self) -> int:
        """1 when any parameter is NaN or infinite, else 0 (summed over processes by callers)."""
        return int(not all(bool(torch.isfinite(p).all()) for p in self.stepper.module.parameters()))

    def _validate(self) -> dict[str, Any]:
        """Held-out recall (and classification accuracy), measured by rank 0 while the others
        wait."""
        metrics: dict[str, Any] = {}
        if (self.val_pairs or self.val_classes) and self.group.is_main:
            self.loaded.model.eval()
            encoder = ClipEncoder(self.loaded)
            if self.val_pairs:
                metrics = evaluate_pairs(encoder, self.val_pairs)
            if self.val_classes:
                metrics["classification"] = evaluate_classes(encoder, self.val_classes)
        barrier(self.group)
        return metrics

    # --- files ---------------------------------------------------------------------------------

    def _save_due(self) -> bool:
        return bool(self.cfg.save_every) and self.record.step % self.cfg.save_every == 0

    def _save_state(self) -> None:
        """Rank 0 writes; the others go on (and wait for it at the next collective)."""
        self.saved_at = time.monotonic()
        if self.group.is_main:
            self.record.curve = self.curve.rows
            save_state(run_file(self.cfg.out, "resume.pt"), TrainState(
                step=self.record.step, model=self.stepper.module.state_dict(),
                optimizer=self.stepper.optimizer.state_dict(),
                scaler=self.stepper.scaler.state_dict(), rng=capture_rng(),
                settings=self.settings, progress=asdict(self.record)))
            self.curve.write()

    def _restore(self, path: Path) -> None:
        state = load_state(path)
        check_settings(path, state.settings, self.settings)
        self.stepper.module.load_state_dict(state.model)
        self.stepper.optimizer.load_state_dict(state.optimizer)
        if state.scaler:
            self.stepper.scaler.load_state_dict(state.scaler)
        restore_rng(state.rng)
        self.record = _Measurements(**state.progress)
        self.curve.rows = list(self.record.curve)
        self.log(f"resumed from {path} at step {state.step}/{self.total_steps}")

    def _abandon(self) -> None:
        """After divergence: keep the curve up to it, and no resume state to continue it (its
        settings, --lr included, would have to stay the same, and its weights may be broken)."""
        if self.group.is_main:
            self.curve.write(final=True)
            run_file(self.cfg.out, "resume.pt").unlink(missing_ok=True)

    def _finish(self) -> TrainResult:
        self.loaded.model.eval()
        record, cfg = self.record, self.cfg
        history = [EpochStats(**h) for h in record.history]
        result = TrainResult(cfg.out, history, record.pairs / max(record.seconds, 1e-9),
                             self.loaded, self.curve.csv_path, self.curve.png_path,
                             self.data.pairs_per_epoch)
        if self.group.is_main:
            save_model(cfg.out, self.loaded, extra=_checkpoint_record(cfg, self.lr, result))
            self.curve.write(final=True)
            run_file(cfg.out, "resume.pt").unlink(missing_ok=True)
            self.log(f"curves: {result.curve_csv} and {result.curve_png}")
        barrier(self.group)
        return result


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --- several processes from one call ----------------------------------------------------------


def _train_in_processes(cfg: TrainConfig, log: Callable[[str], None]) -> TrainResult:
    """Launch cfg.nproc processes that train as one, then load what rank 0 wrote."""
    backend = "NCCL" if torch.cuda.is_available() else "gloo"
    log(f"training in {cfg.nproc} processes ({backend})")
    error = launch(cfg.nproc, _process_main, cfg)
    if error is not None:
        raise error
    loaded = load_model(ModelSpec(pretrained=str(cfg.out)))
    record = loaded.extra
    return TrainResult(cfg.out, [EpochStats(**h) for h in record["history"]],
                       record["samples_per_s"], loaded, run_file(cfg.out, "curve.csv"),
                       run_file(cfg.out, "curve.png"), record["train_images"])


def _process_main(settings: Settings, cfg: TrainConfig) -> RetrieverError | None:
    """One launched process (`settings`: its own, its rank among them): train, and hand an
    expected failure back to the launcher."""
    try:
        train(cfg, log=lambda line: print(line, file=sys.stderr, flush=True),
              settings=settings)
    except RetrieverError as err:
        return err
    return None


# --- records ----------------------------------------------------------------------------------


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _describe(stats: EpochStats, epochs: int) -> str:
    parts = [f"epoch {stats.epoch}/{epochs}"]
    if stats.train_loss is not None:
        parts.append(f"loss {stats.train_loss:.4f}")
    if stats.val:
        parts.append(_val_line(stats.val))
    if stats.unreadable:
        parts.append(f"skipped {stats.unreadable} unreadable images")
    if stats.epoch:
        parts.append(f"{stats.seconds:.1f} s")
    return ", ".join(parts)


def _val_line(val: dict[str, Any]) -> str:
    """Held-out recall and classification accuracy, as one part of a log line."""
    parts = [recall_line(val)] if "text_to_image" in val else []
    if "classification" in val:
        line = Accuracy.from_json(val["classification"]).line()
        parts.append(line if parts else f"val {line}")
    return ", ".join(parts) or recall_line({})


def _checkpoint_record(cfg: TrainConfig, lr: float, result: TrainResult) -> dict[str, Any]:
    """The training record stored in the checkpoint: plain JSON-able values only."""
    config = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
    config["lr"] = lr
    return {
        "training": config,
        "train_images": result.train_images,
        "samples_per_s": result.samples_per_s,
        "history": [asdict(h) for h in result.history],
        "final_metrics": result.after,
    }
