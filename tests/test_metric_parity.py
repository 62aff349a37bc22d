"""Our retrieval metrics give CLIP_benchmark's numbers on the same embeddings, ties included.

`clip_benchmark_recall` below is CLIP_benchmark's zero-shot retrieval protocol
(clip_benchmark/metrics/zeroshot_retrieval.py, 1.6.2) written out plainly and independently of
retriever.training.evaluation: the full caption x image score matrix, a boolean matrix of
positive pairs, torch.topk per query, one-hot of the top-k indices against the positives, and
"R@k" = the fraction of queries with at least one positive in their top k. Image retrieval ranks
images for each caption (every caption has one image); text retrieval ranks captions for each
image (an image has several). No ranks, no shortcuts, no shared code.

Ties: identical captions of different images and duplicate images score exactly alike. Which of
them `torch.topk` keeps decides the numbers; `topk_indices` says how.
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


def topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """`torch.topk(scores, k, dim=1)[1]` as CLIP_benchmark runs it on its default device, CUDA,
    where of the candidates tied at the k-th score the first seen (lowest index) are kept
    (ATen's gatherTopK). On CPU, torch.topk keeps whichever ties std::partial_sort or
    std::nth_element leave in front, so there a stable sort gives CUDA's set."""
    if torch.cuda.is_available():
        return torch.topk(scores.cuda(), k, dim=1)[1].cpu()
    return torch.sort(scores, dim=1, descending=True, stable=True)[1][:, :k]


def recall_at_k(scores: torch.Tensor, positive_pairs: torch.Tensor, k: int) -> torch.Tensor:
    """Per query: the fraction of its positives among its k best-scoring candidates."""
    n_queries, n_candidates = scores.shape
    topk = topk_indices(scores, k)  # (q, k)
    topk_onehot = torch.nn.functional.one_hot(topk, num_classes=n_candidates)  # (q, k, c)
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


def tied_embeddings(seed: int, n_images: int = 300, shared: int = 120, duplicates: int = 30,
                    dim: int = 32, noise: float = 1.0):
    """3 captions per image; `shared` caption vectors each given to 2-3 captions of different
    images (one caption string under several images), and the last `duplicates` images copies of
    earlier ones (the same photo twice)."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n_images, dim)).astype(np.float32)
    images[-duplicates:] = images[rng.choice(n_images - duplicates, duplicates, replace=False)]
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    index = [i for i in range(n_images) for _ in range(3)]
    texts = images[index] + noise * rng.normal(size=(len(index), dim)).astype(np.float32)
    slots = rng.permutation(n_images)  # one caption slot (3i + 0..2) of each image at most
    groups = np.split(slots[:shared * 5 // 2], np.cumsum([2, 3] * (shared // 2))[:-1])
    for group in groups:
        offsets = rng.integers(0, 3, size=len(group))
        offsets[0] = 0  # the first image's caption 0 is the shared one
        texts[3 * group + offsets] = texts[3 * group[0]]
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    return images, texts.astype(np.float32), index


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ties_are_broken_as_clip_benchmarks_topk_breaks_them(seed):
    images, texts, index = tied_embeddings(seed)
    assert len(np.unique(texts, axis=0)) < len(texts)  # the set holds ties both ways
    assert len(np.unique(images, axis=0)) < len(images)
    expected = clip_benchmark_recall(images, texts, index)

    got = ours_as_clip_benchmark(retrieval_metrics(images, texts, np.array(index)))

    assert got == pytest.approx(expected, abs=1e-7)
    strict = ours_as_clip_benchmark(retrieval_metrics(images, texts, np.array(index), "strict"))
    assert strict["text_retrieval_recall@1"] < got["text_retrieval_recall@1"]  # ties count


@pytest.mark.skipif(not torch.cuda.is_available(), reason="checks CUDA's torch.topk")
@pytest.mark.parametrize("columns", [7, 300, 900, 5000, 100_000])
def test_cuda_topk_keeps_the_lowest_index_among_ties(columns):
    """The claim `topk_indices` rests on, checked where CLIP_benchmark runs."""
    scores = torch.randint(0, 4, (64, columns), generator=torch.Generator().manual_seed(0))
    for k in (1, 5, 10):
        on_cuda = torch.topk(scores.float().cuda(), k, dim=1)[1].cpu().sort(dim=1)[0]
        stable = torch.sort(scores.float(), dim=1, descending=True, stable=True)[1][:, :k]
        assert torch.equal(on_cuda, stable.sort(dim=1)[0])


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


@pytest.mark.parametrize("tied", [False, True], ids=["distinct", "tied"])
def test_evaluate_pairs_end_to_end_equals_clip_benchmark(tmp_path, monkeypatch, tied):
    """Images on disk and caption strings: a caption string under several images, and the same
    photo saved twice (tied), encode to the same vector, as they would with a real model."""
    from PIL import Image

    if tied:
        images, texts, index = tied_embeddings(4, n_images=60, shared=20, duplicates=8, dim=16,
                                               noise=0.8)
    else:
        images, texts, index = embeddings(seed=4, n_images=60, dim=16, noise=0.8)
    first_image = [next(i for i in range(len(images)) if np.array_equal(images[i], v))
                   for v in images]  # a duplicate is saved with its original's pixel
    captions = [f"caption {next(i for i in range(len(texts)) if np.array_equal(texts[i], v))}"
                for v in texts]
    pairs = []
    for i in range(len(images)):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (1, 1), (first_image[i], 0, 0)).save(path)
        pairs.append(Pair(path, tuple(c for c, own in zip(captions, index, strict=True)
                                      if own == i)))
    monkeypatch.setattr("retriever.training.evaluation.ENCODE_CHUNK", 16)  # several encode chunks
    monkeypatch.setattr("retriever.training.evaluation.QUERY_CHUNK", 7)  # several score chunks

    got = evaluate_pairs(TableEncoder(images, dict(zip(captions, texts, strict=True))), pairs)

    assert len(set(captions)) < len(captions) if tied else len(set(captions)) == len(captions)
    assert ours_as_clip_benchmark(got) == pytest.approx(
        clip_benchmark_recall(images, texts, index), abs=1e-7)
