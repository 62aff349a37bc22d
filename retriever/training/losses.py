"""Training objectives over a batch of N paired, L2-normalised embeddings: row i of the image
embeddings and row i of the text embeddings belong together; every other row is a negative.

Every loss takes an optional `rows`: the slice of the batch this process owns when the batch is
spread over several processes (or micro-batches). It then returns that slice's share of the
loss over the whole batch: the sum of the terms whose query row lies in `rows`, divided by the
same count as the full loss. Shares over disjoint slices covering the batch add up to the full
loss exactly, and every share still sees all N rows as negatives. `rows=None` is the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

ALL = slice(None)


def infonce_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    rows: slice | None = None,
) -> torch.Tensor:
    """CLIP's symmetric cross-entropy over in-batch similarities.

    `logit_scale` is the log of the inverse temperature (the model's parameter); exp() is
    applied here, as in CLIP.
    """
    rows = rows or ALL
    n = len(image_emb)
    scale = logit_scale.exp()
    targets = torch.arange(n, device=image_emb.device)[rows]  # (b,): each row's own column
    image_to_text = scale * image_emb[rows] @ text_emb.T  # (b, N): my images vs every text
    text_to_image = scale * text_emb[rows] @ image_emb.T  # (b, N): my texts vs every image
    total = (F.cross_entropy(image_to_text, targets, reduction="sum")
             + F.cross_entropy(text_to_image, targets, reduction="sum"))
    return total / (2 * n)


def positive_distance(
    image_emb: torch.Tensor, text_emb: torch.Tensor, rows: slice | None = None
) -> torch.Tensor:
    """Mean squared distance of the positive pairs; `--distance-weight` adds it to InfoNCE."""
    rows = rows or ALL
    squared = (image_emb[rows] - text_emb[rows]).pow(2).sum(dim=1)  # (b, D) -> (b,)
    return squared.sum() / len(image_emb)


def negative_hinge(
    image_emb: torch.Tensor, text_emb: torch.Tensor, margin: float, rows: slice | None = None
) -> torch.Tensor:
    """Mean of max(0, margin - d)^2 over the N(N-1) non-matching (image, text) pairs."""
    rows = rows or ALL
    n = len(image_emb)
    if n < 2:
        return image_emb.new_zeros(())
    # exact differences, not the |x|^2 + |y|^2 - 2xy shortcut, which is noisy near d = 0
    dist = torch.cdist(image_emb[rows], text_emb,
                       compute_mode="donot_use_mm_for_euclid_dist")  # (b, N)
    own = torch.arange(n, device=dist.device)[rows]  # (b,): each row's positive column
    negative = torch.ones_like(dist, dtype=torch.bool)
    negative[torch.arange(len(own), device=dist.device), own] = False  # (b, N)
    hinge = (margin - dist[negative]).clamp(min=0).pow(2)  # (b(N-1),)
    return hinge.sum() / (n * (n - 1))


def distance_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, margin: float, rows: slice | None = None
) -> torch.Tensor:
    """Hadsell, Chopra & LeCun (2006) contrastive loss on Euclidean distances.

    Mean of d^2 over the N positive pairs (i == j) plus mean of max(0, margin - d)^2 over the
    N(N-1) negative pairs (i != j). The hinge keeps unrelated pairs at least `margin` apart, so
    mapping everything to one point (d = 0 everywhere) is not a minimum.
    """
    return (positive_distance(image_emb, text_emb, rows)
            + negative_hinge(image_emb, text_emb, margin, rows))


@dataclass(frozen=True)
class Objective:
    """What a training step minimises, as named terms whose sum is the loss."""

    kind: Literal["infonce", "distance"] = "infonce"  # CLIP loss, or Hadsell 2006 margin
    margin: float = 1.2  # distance: negatives closer than this are pushed apart
    distance_weight: float = 0.0  # infonce: adds this x mean squared positive distance

    @property
    def learns_temperature(self) -> bool:
        return self.kind == "infonce"

    def terms(
        self,
        image_emb: torch.Tensor,
        text_emb: torch.Tensor,
        logit_scale: torch.Tensor,
        rows: slice | None = None,
    ) -> dict[str, torch.Tensor]:
        """Each term's share for `rows` (see the module docstring); curves plot them apart."""
        if self.kind == "distance":  # no temperature: logit_scale gets no gradient
            return {"positive": positive_distance(image_emb, text_emb, rows),
                    "hinge": negative_hinge(image_emb, text_emb, self.margin, rows)}
        terms = {"infonce": infonce_loss(image_emb, text_emb, logit_scale, rows)}
        if self.distance_weight:
            terms["distance"] = self.distance_weight * positive_distance(image_emb, text_emb,
                                                                         rows)
        return terms

    @property
    def term_names(self) -> tuple[str, ...]:
        if self.kind == "distance":
            return ("positive", "hinge")
        return ("infonce", "distance") if self.distance_weight else ("infonce",)
