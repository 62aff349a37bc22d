"""Retrieval metrics on held-out pairs, following CLIP_benchmark's zero-shot retrieval protocol.

Every caption has exactly one correct image. text->image R@k: the fraction of captions whose
image is among their k most similar images. image->text R@k: the fraction of images with ANY of
their captions among their k most similar texts. Median rank is 1-based; for image->text it is
the best rank among the image's captions.

Exact ties (identical captions of different images, duplicate images) are broken one of two ways:

- "topk" (default): as CLIP_benchmark's `torch.topk` on its default device, CUDA, picks among
  equal scores: the lower index first, so candidates are ranked by a stable descending sort.
  Identical vectors always score exactly alike, whatever the matrix product's rounding. (On CPU
  `torch.topk` picks among exact ties in the order std::partial_sort / std::nth_element leave
  them in, which no rule reproduces.)
- "strict": a wrong candidate scoring the same as the correct one ranks ahead of it, so a
  collapsed model (all embeddings equal) scores R@1 = 0, not the share of queries whose correct
  candidate comes first.

A non-finite score (NaN or inf, from a diverged model's vectors) is the worst score under both:
a correct candidate scored NaN ranks behind every wrong one, so a model emitting NaN scores
R@1 = 0 (CLIP_benchmark's `topk` would rank NaN first).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np

from retriever.encoding.encoders import Encoder
from retriever.errors import BadSetting, DatasetError, ImageError
from retriever.media.images import open_image
from retriever.progress import NullProgress, Progress
from retriever.training.pairs import Pair

KS = (1, 5, 10)
QUERY_CHUNK = 1024  # queries scored at once: bounds the (chunk, candidates) score matrix
ENCODE_CHUNK = 256  # images opened and handed to the encoder at once
SILENT = NullProgress()  # stateless, so one instance serves as every default
# the two directions: key in the metrics, and how a person reads it
DIRECTIONS = {"text_to_image": "text->image", "image_to_text": "image->text"}
Ties = Literal["topk", "strict"]  # how exact ties rank (module docstring)
TIES: tuple[Ties, ...] = ("topk", "strict")


@dataclass(frozen=True)
class Recall:
    """Retrieval one way: for each k in KS the fraction of queries with a correct candidate
    among their k best (R@k), and the median 1-based rank of the best correct candidate."""

    at: dict[int, float]  # {k: R@k}
    median_rank: float

    @classmethod
    def from_ranks(cls, ranks: np.ndarray) -> Recall:
        return cls({k: float(np.mean(ranks <= k)) for k in KS}, float(np.median(ranks)))

    @classmethod
    def from_json(cls, metrics: dict[str, float]) -> Recall:
        return cls({k: metrics[f"R@{k}"] for k in KS}, metrics["median_rank"])

    def to_json(self) -> dict[str, float]:
        """{"R@1": .., "R@5": .., "R@10": .., "median_rank": ..}: the metrics' on-disk shape."""
        return {**{f"R@{k}": v for k, v in self.at.items()}, "median_rank": self.median_rank}

    def shown(self) -> dict[str, str]:
        """The same, as a person reads it: R@k in percent, the rank as it is (4 or 4.5)."""
        return {**{f"R@{k}": f"{100 * v:.1f}%" for k, v in self.at.items()},
                "median_rank": f"{self.median_rank:g}"}


def recalls(metrics: dict[str, Any]) -> dict[str, Recall]:
    """{direction: Recall} of `retrieval_metrics` / `evaluate_pairs` output."""
    return {direction: Recall.from_json(metrics[direction]) for direction in DIRECTIONS}


def recall_line(metrics: dict[str, Any]) -> str:
    """One line for a log: "val text->image R@1 0.412 R@5 0.833, image->text R@1 ..."."""
    if not metrics:
        return "no held-out images"
    parts = [f"{DIRECTIONS[d]} R@1 {r.at[1]:.3f} R@5 {r.at[5]:.3f}"
             for d, r in recalls(metrics).items()]
    return "val " + ", ".join(parts)


def retrieval_metrics(
    image_emb: np.ndarray, text_emb: np.ndarray, text_to_image: np.ndarray, ties: Ties = "topk"
) -> dict[str, dict[str, float]]:
    """Recall@1/5/10 and median rank both ways; `text_to_image[j]` is caption j's image row."""
    text_to_image = np.asarray(text_to_image)
    image_ids = np.arange(len(image_emb))
    # a query and a candidate belong together when they carry the same image id
    t2i = query_ranks(text_emb, text_to_image, image_emb, image_ids, ties)
    i2t = query_ranks(image_emb, image_ids, text_emb, text_to_image, ties)
    return {"text_to_image": Recall.from_ranks(t2i).to_json(),
            "image_to_text": Recall.from_ranks(i2t).to_json()}


def query_ranks(queries: np.ndarray, query_ids: np.ndarray, candidates: np.ndarray,
                candidate_ids: np.ndarray, ties: Ties = "topk") -> np.ndarray:
    """1-based rank of each query's best-ranked correct candidate; inf when it has none."""
    check_ties(ties)
    copies, originals = _repeated_rows(candidates)
    order = np.arange(len(candidates))
    ranks = np.empty(len(queries), dtype=np.float64)
    for start in range(0, len(queries), QUERY_CHUNK):
        rows = slice(start, start + QUERY_CHUNK)
        with np.errstate(invalid="ignore", over="ignore"):  # broken vectors: scored below
            scores = queries[rows] @ candidates.T  # (q, candidates)
        scores[:, copies] = scores[:, originals]  # identical vectors score bit for bit alike
        scores = np.where(np.isfinite(scores), scores, -np.inf)  # NaN or inf: the worst score
        correct = query_ids[rows, None] == candidate_ids[None, :]  # (q, candidates)
        best = np.where(correct, scores, -np.inf).max(axis=1, initial=-np.inf)  # (q,)
        tied = scores == best[:, None]  # (q, candidates)
        if ties == "topk":  # of the tied, those before the first correct one rank ahead of it
            first = np.argmax(correct & tied, axis=1)  # (q,)
            tied &= (order[None, :] < first[:, None]) | (best == -np.inf)[:, None]
        ahead = ((scores > best[:, None]) | tied) & ~correct  # (q, candidates): wrong ones
        ranks[rows] = np.where(correct.any(axis=1), 1 + ahead.sum(axis=1), np.inf)
    return ranks


def check_ties(ties: str) -> Ties:
    """`ties` as a tie rule; BadSetting when it is none."""
    if ties not in TIES:
        raise BadSetting("ties", repr(ties), f"use one of {', '.join(TIES)}")
    return cast(Ties, ties)


def _repeated_rows(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of `vectors` equal byte for byte to an earlier row, and that earlier row of each.

    A matrix product may round identical columns differently (BLAS edge kernels do); copying
    the first one's scores makes identical vectors tie exactly."""
    rows = np.ascontiguousarray(vectors)
    as_bytes = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
    _, first, inverse = np.unique(as_bytes, return_index=True, return_inverse=True)
    original = first[inverse.reshape(-1)]  # (rows,): the first row equal to each
    copies = np.flatnonzero(original != np.arange(len(rows)))
    return copies, original[copies]


def evaluate_pairs(
    encoder: Encoder, pairs: Sequence[Pair], progress: Progress = SILENT, ties: Ties = "topk"
) -> dict[str, Any]:
    """Encode `pairs` with `encoder` and score retrieval among them.

    Unreadable images are skipped (with their captions) and counted under "unreadable".
    """
    check_ties(ties)
    image_emb, kept, unreadable = encode_image_files(encoder, [p.image for p in pairs], progress)
    if not kept:
        raise DatasetError(f"none of the {len(pairs)} evaluation images could be read: "
                           f"check the image files")
    readable = [pairs[i] for i in kept]
    captions = [c for p in readable for c in p.captions]
    text_to_image = np.array([i for i, p in enumerate(readable) for _ in p.captions], dtype=int)
    text_emb = _encode_texts(encoder, captions, progress)
    metrics: dict[str, Any] = retrieval_metrics(image_emb, text_emb, text_to_image, ties)
    metrics.update(images=len(readable), captions=len(captions), unreadable=unreadable,
                   ties=ties)
    return metrics


def encode_image_files(
    encoder: Encoder, paths: Sequence[Path], progress: Progress = SILENT
) -> tuple[np.ndarray, list[int], int]:
    """(vectors of the images that opened, their indices in `paths`, how many did not)."""
    chunks, kept, unreadable = [], [], 0
    with progress.task("encoding images", total=len(paths)) as task:
        for start in range(0, len(paths), ENCODE_CHUNK):
            images = []
            for i in range(start, min(start + ENCODE_CHUNK, len(paths))):
                try:
                    images.append(open_image(paths[i]))
                    kept.append(i)
                except ImageError:
                    unreadable += 1
                task.advance()
            if images:
                chunks.append(encoder.encode_images(images))
    empty = np.empty((0, encoder.dim), dtype=np.float32)
    return (np.concatenate(chunks) if chunks else empty), kept, unreadable


def _encode_texts(encoder: Encoder, texts: list[str], progress: Progress) -> np.ndarray:
    chunks = [np.empty((0, encoder.dim), dtype=np.float32)]
    with progress.task("encoding captions", total=len(texts)) as task:
        for start in range(0, len(texts), ENCODE_CHUNK):
            chunks.append(encoder.encode_texts(texts[start:start + ENCODE_CHUNK]))
            task.advance(len(chunks[-1]))
    return np.concatenate(chunks)
