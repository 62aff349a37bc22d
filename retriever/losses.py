"""Training objectives over a batch of B paired, L2-normalised embeddings: row i of the image
embeddings and row i of the text embeddings belong together; every other row is a negative.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def infonce_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """CLIP's symmetric cross-entropy over in-batch similarities.

    `logit_scale` is the log of the inverse temperature (the model's parameter); exp() is
    applied here, as in CLIP.
    """
    logits = logit_scale.exp() * image_emb @ text_emb.T  # (B, B): image i vs text j
    targets = torch.arange(len(logits), device=logits.device)  # (B,): the diagonal
    image_to_text = F.cross_entropy(logits, targets)
    text_to_image = F.cross_entropy(logits.T, targets)
    return (image_to_text + text_to_image) / 2


def distance_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, margin: float) -> torch.Tensor:
    """Hadsell, Chopra & LeCun (2006) contrastive loss on Euclidean distances.

    Mean of d^2 over the B positive pairs (i == j) plus mean of max(0, margin - d)^2 over the
    B(B-1) negative pairs (i != j). The hinge keeps unrelated pairs at least `margin` apart, so
    mapping everything to one point (d = 0 everywhere) is not a minimum.
    """
    # exact differences, not the |x|^2 + |y|^2 - 2xy shortcut, which is noisy near d = 0
    dist = torch.cdist(image_emb, text_emb, compute_mode="donot_use_mm_for_euclid_dist")  # (B, B)
    positive = positive_distance(image_emb, text_emb)
    off_diagonal = ~torch.eye(len(dist), dtype=torch.bool, device=dist.device)  # (B, B)
    hinge = (margin - dist[off_diagonal]).clamp(min=0).pow(2)  # (B(B-1),)
    negative = hinge.mean() if hinge.numel() else dist.new_zeros(())
    return positive + negative


def positive_distance(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of the positive pairs; `--distance-weight` adds it to InfoNCE."""
    return (image_emb - text_emb).pow(2).sum(dim=1).mean()  # (B, D) -> (B,) -> ()
