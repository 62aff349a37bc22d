"""One optimizer step over a contrastive batch that may be spread over processes and cut into
micro-batches, computing exactly the gradient of the loss over the whole step batch.

Over processes: each process embeds its own pairs; the embeddings are gathered (gradients flow
back to each process's own rows) so every loss term sees the whole step's negatives. Each
process computes its rows' share of the loss (retriever.training.losses); the shares add up
to the loss
over the step. DDP averages gradients over processes, so each share is scaled by the number of
processes first: the averaged gradient is then the gradient of the full loss.

Over micro-batches (--grad-accum, open_clip's accum_freq): all micro-batches are first embedded
without gradients; then each is embedded again with gradients and the full loss computed with
the others' cached embeddings, so the summed gradients equal one step on the whole batch at a
fraction of the activation memory. The temperature gets its gradient once, in the last.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from retriever.training.datasets import StepBatch
from retriever.training.distributed import Group, all_counts, all_sum, gather
from retriever.training.losses import Objective
from retriever.training.optimizer import set_lr

# CLIP clamps its learned temperature so logits never exceed 100x the cosine similarity.
MAX_LOGIT_SCALE = math.log(100)
Precision = Literal["auto", "fp32", "bf16", "fp16"]


@dataclass
class StepResult:
    loss: float  # the loss over the whole step batch, all processes
    terms: dict[str, float]  # its named terms (Objective.terms), summing to `loss`
    pairs: int  # pairs trained on, all processes


def autocast_dtype(precision: Precision, device: torch.device) -> torch.dtype:
    """auto: fp32 on CPU; on a GPU bf16 where supported (no loss scaling needed), else fp16."""
    if precision == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class Stepper:
    """Owns the model's training copy (DDP-wrapped when distributed) and its optimizer."""

    def __init__(
        self,
        module: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        objective: Objective,
        group: Group,
        precision: Precision = "auto",
        grad_accum: int = 1,
    ) -> None:
        self.module: Any = module  # open_clip CLIP / CustomTextCLIP
        self.optimizer, self.objective, self.group = optimizer, objective, group
        self.grad_accum = grad_accum  # micro-batches per step
        self.dtype = autocast_dtype(precision, group.device)
        # fp16 gradients underflow without loss scaling; bf16 and fp32 need none
        self.scaler = torch.amp.GradScaler(group.device.type,
                                           enabled=self.dtype == torch.float16)
        self.model: Any = module
        if group.distributed:
            ids = [group.device.index] if group.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def step(self, batch: StepBatch, lr: float) -> StepResult | None:
        """Train on `batch` (this process's pairs of the step) at learning rate `lr`.

        None, in every process alike, when the step cannot be taken: fewer than two readable
        pairs over all processes, or a process left with none.
        """
        counts = all_counts(len(batch.pixels), self.group)
        if sum(counts) < 2 or min(counts) == 0:
            return None
        # every process makes the same number of micro-steps, each with at least one pair
        n_micro = min(self.grad_accum, min(counts))
        pixels = batch.pixels.to(self.group.device).tensor_split(n_micro)
        tokens = batch.tokens.to(self.group.device).tensor_split(n_micro)
        set_lr(self.optimizer, lr)
        self.optimizer.zero_grad(set_to_none=True)
        self.model.train()
        cached = self._embed_without_grad(pixels, tokens) if n_micro > 1 else None
        for k in range(n_micro):
            terms = self._micro_step(pixels, tokens, k, cached)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with torch.no_grad():
            self.module.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        values = all_sum([t.item() for t in terms.values()], self.group)
        return StepResult(sum(values), dict(zip(terms, values, strict=True)), sum(counts))

    def _micro_step(
        self,
        pixels: tuple[torch.Tensor, ...],
        tokens: tuple[torch.Tensor, ...],
        k: int,
        cached: list[torch.Tensor] | None,
    ) -> dict[str, torch.Tensor]:
        """Backward of the full loss through micro-batch k; the others enter as constants."""
        last = k == len(pixels) - 1
        no_sync = self.model.no_sync if self.group.distributed and not last else (
            contextlib.nullcontext)
        with no_sync():
            live = self._embed(self.model, pixels[k], tokens[k])  # (b_k, 2D)
            local = live if cached is None else torch.cat([*cached[:k], live, *cached[k + 1:]])
            everything, rows = gather(local, self.group)  # (N, 2D); rows: this process's
            image_emb, text_emb = everything.float().chunk(2, dim=1)  # (N, D) each
            scale = self.module.logit_scale
            terms = self.objective.terms(image_emb, text_emb, scale if last else scale.detach(),
                                         rows)
            loss = torch.stack(list(terms.values())).sum()
            # DDP averages gradients over processes; the shares must add up instead
            self.scaler.scale(loss * self.group.world_size).backward()
        return terms

    def _embed(self, model: Any, pixels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(b, 3, H, W), (b, context) -> (b, 2D): unit image and text embeddings side by side,
        so one collective gathers both."""
        with torch.autocast(self.group.device.type, dtype=self.dtype,
                            enabled=self.dtype != torch.float32):
            out = model(pixels, tokens)  # DDP hooks need the forward to go through the wrapper
        image_emb, text_emb = ((out["image_features"], out["text_features"])
                               if isinstance(out, dict) else out[:2])
        return torch.cat([image_emb, text_emb], dim=1)

    @torch.no_grad()
    def _embed_without_grad(
        self, pixels: tuple[torch.Tensor, ...], tokens: tuple[torch.Tensor, ...]
    ) -> list[torch.Tensor]:
        return [self._embed(self.module, p, t) for p, t in zip(pixels, tokens, strict=True)]
