"""Our retrieval metrics give CLIP_benchmark's numbers on the same embeddings.

`clip_benchmark_recall` below is CLIP_benchmark's zero-shot retrieval protocol
(clip_benchmark/metrics/zeroshot_retrieval.py) written out plainly and independently of
retriever.training.evaluation: the full caption x image score matrix, a boolean matrix of
positive pairs,
torch.topk per query, one-hot of the top-k indices against the positives, and "R@k" = the
fraction of queries with at least one positive in their top k. Image retrieval ranks images for
each caption (every caption has one image); text retrieval ranks captions for each image (an
image has several). No ranks, no shortcuts, no shared code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retriever.encoding.encoders import Encoder
from retriever.encoding.models import ModelId
from retriever.training.evaluation import evaluate_pairs, retrieval_metrics
from retriever.training.pairs import Pair

KS = (1, 5, 10)


def recall_at_k(scores: torch.Tensor, positive_pairs: torch.Tensor, k: int) -> torch.Tensor:
    """Per query: the fraction of its positives among its k best-scoring candidates."""
    n_queries, n_candidates = scores.shape
    topk_indices = torch.topk(scores, k, dim=1)[1]  # (q, k)
    topk_onehot = torch.nn.functional.one_hot(topk_indices, num_classes=n_candidates)  # (q,k,c)
    true_positives = (topk_onehot * positive_pairs.view(n_queries, 1, n_candidates)).sum((1, 2))
    return true_positives / positive_pairs.sum(dim=1)


def clip_benchmark_recall(images: np.ndarray, texts: np.ndarray,
                          texts_image_index: list[int]) -> dict[str, float]:
    images_emb, texts_emb = torch.from_numpy(images), torch.from_numpy(texts)
    scores = texts_emb @ images_emb.t()  # (captions, images)
    positive_pairs = torch.zeros_like(scores, dtype=torch.bool)
    positive_pairs[torch.arange(len(scores)), texts_image_index] = True
    metrics = {}
    for k in KS:
        metrics[f"image_retrieval_recall@{k}"] = (
            recall_at_k(scores, positive_pairs, k) > 0).float().mean().item()
        metrics[f"text_retrieval_recall@{k}"] = (
            recall_at_k(scores.T, positive_pairs.T, k) > 0).float().mean().item()
    return metrics


def ours_as_clip_benchmark(metrics: dict) -> dict[str, float]:
    return {
        **{f"image_retrieval_recall@{k}": metrics["text_to_image"][f"R@{k}"] for k in KS},
        **{f"text_retrieval_recall@{k}": metrics["image_to_text"][f"R@{k}"] for k in KS},
    }


def embeddings(seed: int, n_images: int, dim: int, noise: float):
    """Unit image vectors, and 1-5 captions per image scattered around their image."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n_images, dim)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    index = [i for i in range(n_images) for _ in range(rng.integers(1, 6))]
    texts = images[index] + noise * rng.normal(size=(len(index), dim)).astype(np.float32)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    return images, texts.astype(np.float32), index


@pytest.mark.parametrize(("seed", "n_images", "dim", "noise"), [
    (0, 50, 16, 0.6), (1, 200, 32, 1.0), (2, 120, 8, 0.3), (3, 400, 64, 1.2),
])
def test_retrieval_metrics_equal_clip_benchmarks(seed, n_images, dim, noise):
    images, texts, index = embeddings(seed, n_images, dim, noise)
    expected = clip_benchmark_recall(images, texts, index)
    got = ours_as_clip_benchmark(retrieval_metrics(images, texts, np.array(index)))
    assert got == pytest.approx(expected, abs=1e-6)  # CLIP_benchmark averages in float32
    assert 0.02 < expected["image_retrieval_recall@1"] < 0.98  # neither trivial nor hopeless


class TableEncoder(Encoder):
    """Returns stored vectors: image i is a 1x1 image whose red value is i."""

    model_id = ModelId("table", "none")
    context_length = 77

    def __init__(self, images: np.ndarray, texts: dict[str, np.ndarray]) -> None:
        self.images, self.texts, self.dim = images, texts, images.shape[1]

    def encode_images(self, images):
        return np.stack([self.images[im.getpixel((0, 0))[0]] for im in images])

    def encode_texts(self, texts):
        return np.stack([self.texts[t] for t in texts])

    def count_tokens(self, text):
        return 1


def test_evaluate_pairs_end_to_end_equals_clip_benchmark(tmp_path, monkeypatch):
    from PIL import Image

    images, texts, index = embeddings(seed=4, n_images=60, dim=16, noise=0.8)
    captions = [f"caption {j}" for j in range(len(texts))]
    pairs = []
    for i in range(len(images)):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (1, 1), (i, 0, 0)).save(path)
        pairs.append(Pair(path, tuple(c for c, own in zip(captions, index, strict=True)
                                      if own == i)))
    monkeypatch.setattr("retriever.training.evaluation.ENCODE_CHUNK", 16)  # several encode chunks
    monkeypatch.setattr("retriever.training.evaluation.QUERY_CHUNK", 7)  # several score chunks

    got = evaluate_pairs(TableEncoder(images, dict(zip(captions, texts, strict=True))), pairs)

    assert ours_as_clip_benchmark(got) == pytest.approx(
        clip_benchmark_recall(images, texts, index), abs=1e-6)
