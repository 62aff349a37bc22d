"""Retrieval metrics on held-out pairs, following CLIP_benchmark's zero-shot retrieval protocol.

Every caption has exactly one correct image. text->image R@k: the fraction of captions whose
image is among their k most similar images. image->text R@k: the fraction of images with ANY of
their captions among their k most similar texts. Median rank is 1-based; for image->text it is
the best rank among the image's captions.

Ties count against the query: a wrong candidate scoring the same as the correct one ranks ahead
of it, so a collapsed model (all embeddings equal) scores R@1 = 0, not 1. A non-finite score
(NaN or inf, from a diverged model's vectors) is the worst score: a correct candidate scored
NaN ranks behind every wrong one, so a model emitting NaN scores R@1 = 0 as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from retriever.encoding.encoders import Encoder
from retriever.errors import DatasetError, ImageError
from retriever.media.images import open_image
from retriever.progress import NullProgress, Progress
from retriever.training.pairs import Pair

KS = (1, 5, 10)
QUERY_CHUNK = 1024  # queries scored at once: bounds the (chunk, candidates) score matrix
ENCODE_CHUNK = 256  # images opened and handed to the encoder at once
SILENT = NullProgress()  # stateless, so one instance serves as every default


def retrieval_metrics(
    image_emb: np.ndarray, text_emb: np.ndarray, text_to_image: np.ndarray
) -> dict[str, dict[str, float]]:
    """Recall@1/5/10 and median rank both ways; `text_to_image[j]` is caption j's image row."""
    text_to_image = np.asarray(text_to_image)
    image_ids = np.arange(len(image_emb))
    # a query and a candidate belong together when they carry the same image id
    t2i = _ranks(text_emb, text_to_image, image_emb, image_ids)
    i2t = _ranks(image_emb, image_ids, text_emb, text_to_image)
    return {"text_to_image": _summary(t2i), "image_to_text": _summary(i2t)}


def _ranks(
    queries: np.ndarray, query_ids: np.ndarray, candidates: np.ndarray, candidate_ids: np.ndarray
) -> np.ndarray:
    """1-based rank of each query's best-scoring correct candidate; inf when it has none."""
    ranks = np.empty(len(queries), dtype=np.float64)
    for start in range(0, len(queries), QUERY_CHUNK):
        rows = slice(start, start + QUERY_CHUNK)
        with np.errstate(invalid="ignore", over="ignore"):  # broken vectors: scored below
            scores = queries[rows] @ candidates.T  # (q, candidates)
        scores = np.where(np.isfinite(scores), scores, -np.inf)  # NaN or inf: the worst score
        correct = query_ids[rows, None] == candidate_ids[None, :]  # (q, candidates)
        best = np.where(correct, scores, -np.inf).max(axis=1, initial=-np.inf)  # (q,)
        ahead = ((scores >= best[:, None]) & ~correct).sum(axis=1)  # (q,): wrong ones, ties too
        ranks[rows] = np.where(correct.any(axis=1), 1 + ahead, np.inf)
    return ranks


def _summary(ranks: np.ndarray) -> dict[str, float]:
    summary = {f"R@{k}": float(np.mean(ranks <= k)) for k in KS}
    summary["median_rank"] = float(np.median(ranks))
    return summary


def evaluate_pairs(
    encoder: Encoder, pairs: Sequence[Pair], progress: Progress = SILENT
) -> dict[str, Any]:
    """Encode `pairs` with `encoder` and score retrieval among them.

    Unreadable images are skipped (with their captions) and counted under "unreadable".
    """
    image_emb, readable, unreadable = _encode_images(encoder, pairs, progress)
    if not readable:
        raise DatasetError(f"none of the {len(pairs)} evaluation images could be read: "
                           f"check the image files")
    captions = [c for p in readable for c in p.captions]
    text_to_image = np.array([i for i, p in enumerate(readable) for _ in p.captions], dtype=int)
    text_emb = _encode_texts(encoder, captions, progress)
    metrics: dict[str, Any] = retrieval_metrics(image_emb, text_emb, text_to_image)
    metrics.update(images=len(readable), captions=len(captions), unreadable=unreadable)
    return metrics


def _encode_images(
    encoder: Encoder, pairs: Sequence[Pair], progress: Progress
) -> tuple[np.ndarray, list[Pair], int]:
    chunks, readable, unreadable = [], [], 0
    with progress.task("encoding images", total=len(pairs)) as task:
        for start in range(0, len(pairs), ENCODE_CHUNK):
            images = []
            for pair in pairs[start:start + ENCODE_CHUNK]:
                try:
                    images.append(open_image(pair.image))
                    readable.append(pair)
                except ImageError:
                    unreadable += 1
                task.advance()
            if images:
                chunks.append(encoder.encode_images(images))
    empty = np.empty((0, encoder.dim), dtype=np.float32)
    return (np.concatenate(chunks) if chunks else empty), readable, unreadable


def _encode_texts(encoder: Encoder, texts: list[str], progress: Progress) -> np.ndarray:
    chunks = [np.empty((0, encoder.dim), dtype=np.float32)]
    with progress.task("encoding captions", total=len(texts)) as task:
        for start in range(0, len(texts), ENCODE_CHUNK):
            chunks.append(encoder.encode_texts(texts[start:start + ENCODE_CHUNK]))
            task.advance(len(chunks[-1]))
    return np.concatenate(chunks)
