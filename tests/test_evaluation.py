import statistics

import numpy as np
import pytest

from retriever.encoding.encoders import Encoder
from retriever.encoding.models import ModelId
from retriever.errors import DatasetError
from retriever.media.images import open_image
from retriever.training.evaluation import evaluate_pairs, retrieval_metrics
from retriever.training.pairs import Pair
from retriever.training.synthetic import write_captioned_images


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def plain_metrics(images: np.ndarray, texts: np.ndarray, text_to_image: list[int],
                  ties: str = "topk") -> dict:
    """The protocol written out with loops. A wrong item tying with a correct one counts as
    ranked ahead of it when it comes first (topk), or always (strict)."""
    sims = [[float(np.dot(images[i], texts[j])) for j in range(len(texts))]
            for i in range(len(images))]

    def ahead(wrong: float, wrong_index: int, right: float, right_index: int) -> bool:
        first = ties == "strict" or wrong_index < right_index
        return wrong > right or (wrong == right and first)

    t2i_ranks = []
    for j, own in enumerate(text_to_image):
        t2i_ranks.append(1 + sum(1 for i in range(len(images))
                                 if i != own and ahead(sims[i][j], i, sims[own][j], own)))
    i2t_ranks = []
    for i in range(len(images)):
        ranks = []
        for j, own in enumerate(text_to_image):
            if own == i:
                ranks.append(1 + sum(1 for k in range(len(texts)) if text_to_image[k] != i
                                     and ahead(sims[i][k], k, sims[i][j], j)))
        i2t_ranks.append(min(ranks))

    def summary(ranks: list[int]) -> dict:
        out = {f"R@{k}": sum(r <= k for r in ranks) / len(ranks) for k in (1, 5, 10)}
        out["median_rank"] = float(statistics.median(ranks))
        return out

    return {"text_to_image": summary(t2i_ranks), "image_to_text": summary(i2t_ranks)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_a_plain_implementation(seed):
    rng = np.random.default_rng(seed)
    n_images = 40
    captions_per_image = rng.integers(1, 4, size=n_images)  # 1 to 3 captions each
    text_to_image = [i for i in range(n_images) for _ in range(captions_per_image[i])]
    images = unit_rows(rng, n_images, 8)
    # texts near their image, so recall is neither 0 nor 1
    texts = np.stack([images[i] + 0.4 * rng.normal(size=8) for i in text_to_image])
    texts = (texts / np.linalg.norm(texts, axis=1, keepdims=True)).astype(np.float32)
    got = retrieval_metrics(images, texts, np.array(text_to_image))
    expected = plain_metrics(images, texts, text_to_image)
    for direction in ("text_to_image", "image_to_text"):
        assert got[direction] == pytest.approx(expected[direction])
    assert 0 < got["text_to_image"]["R@1"] < 1  # the case is not trivial


@pytest.mark.parametrize("ties", ["topk", "strict"])
@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_with_ties_match_a_plain_implementation(seed, ties, monkeypatch):
    """Few distinct vectors: many images are duplicates and many captions are shared by
    several images, so most scores tie exactly."""
    rng = np.random.default_rng(seed)
    images = unit_rows(rng, 6, 4)[rng.integers(0, 6, size=30)]  # 30 images, 6 distinct
    text_to_image = [i for i in range(30) for _ in range(rng.integers(1, 4))]
    texts = unit_rows(rng, 8, 4)[rng.integers(0, 8, size=len(text_to_image))]
    monkeypatch.setattr("retriever.training.evaluation.QUERY_CHUNK", 7)
    got = retrieval_metrics(images, texts, np.array(text_to_image), ties=ties)
    expected = plain_metrics(images, texts, text_to_image, ties)
    for direction in ("text_to_image", "image_to_text"):
        assert got[direction] == pytest.approx(expected[direction])


def test_metrics_chunking_gives_the_same_answer(monkeypatch):
    rng = np.random.default_rng(5)
    images, texts = unit_rows(rng, 30, 6), unit_rows(rng, 60, 6)
    text_to_image = np.repeat(np.arange(30), 2)
    whole = retrieval_metrics(images, texts, text_to_image)
    monkeypatch.setattr("retriever.training.evaluation.QUERY_CHUNK", 7)
    assert retrieval_metrics(images, texts, text_to_image) == whole


def test_perfect_embeddings_score_one():
    images = np.eye(5, dtype=np.float32)
    text_to_image = np.array([0, 0, 1, 2, 3, 3, 3, 4])
    texts = images[text_to_image]
    got = retrieval_metrics(images, texts, text_to_image)
    assert got["text_to_image"] == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "median_rank": 1.0}
    assert got["image_to_text"] == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "median_rank": 1.0}


def test_swapped_captions_rank_second():
    images = np.eye(2, dtype=np.float32)
    texts = images[[1, 0]]  # caption 0 describes image 0 but points at image 1
    got = retrieval_metrics(images, texts, np.array([0, 1]))
    assert got["text_to_image"] == {"R@1": 0.0, "R@5": 1.0, "R@10": 1.0, "median_rank": 2.0}
    assert got["image_to_text"] == {"R@1": 0.0, "R@5": 1.0, "R@10": 1.0, "median_rank": 2.0}


def test_image_to_text_counts_the_best_of_its_captions():
    images = np.eye(3, dtype=np.float32)
    # image 0 has a good caption and a bad one; one good caption is enough for its R@1
    texts = np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0], [0, 0.9, 0.436]], dtype=np.float32)
    got = retrieval_metrics(images, texts, np.array([0, 0, 1, 2]))
    assert got["image_to_text"]["R@1"] == pytest.approx(2 / 3)  # image 2's caption ranks 2nd
    assert got["text_to_image"]["R@1"] == pytest.approx(2 / 4)


def test_collapsed_embeddings_score_zero_under_strict_ties():
    images = np.ones((4, 3), dtype=np.float32) / np.sqrt(3)
    got = retrieval_metrics(images, images.copy(), np.arange(4), ties="strict")
    assert got["text_to_image"]["R@1"] == 0.0
    assert got["text_to_image"]["median_rank"] == 4.0


def test_collapsed_embeddings_rank_by_index_under_topk_ties():
    """All scores equal: like torch.topk, the lower index comes first, so caption j finds its
    image j at rank j + 1 and only the queries whose answer is index 0 score at 1."""
    images = np.ones((4, 3), dtype=np.float32) / np.sqrt(3)
    got = retrieval_metrics(images, images.copy(), np.arange(4))
    assert got["text_to_image"] == {"R@1": 0.25, "R@5": 1.0, "R@10": 1.0, "median_rank": 2.5}
    assert got["image_to_text"] == {"R@1": 0.25, "R@5": 1.0, "R@10": 1.0, "median_rank": 2.5}


def test_values_are_plain_floats():
    rng = np.random.default_rng(0)
    got = retrieval_metrics(unit_rows(rng, 4, 3), unit_rows(rng, 4, 3), np.arange(4))
    assert set(got) == {"text_to_image", "image_to_text"}
    for direction in got.values():
        assert set(direction) == {"R@1", "R@5", "R@10", "median_rank"}
        assert all(type(v) is float for v in direction.values())


class HashEncoder(Encoder):
    """Deterministic vectors from pixel bytes and text; counts what it was asked to encode."""

    model_id = ModelId("hash", "none")
    dim = 8
    context_length = 32

    def __init__(self) -> None:
        self.image_calls: list[int] = []
        self.text_calls: list[int] = []

    def encode_images(self, images):
        self.image_calls.append(len(images))
        return np.stack([_hash_vector(im.tobytes()) for im in images])

    def encode_texts(self, texts):
        self.text_calls.append(len(texts))
        return np.stack([_hash_vector(t.encode()) for t in texts])

    def count_tokens(self, text):
        return len(text.split())


def _hash_vector(data: bytes) -> np.ndarray:
    v = np.random.default_rng(list(data[:64]) + [len(data)]).normal(size=8).astype(np.float32)
    return v / np.linalg.norm(v)


def test_evaluate_pairs_encodes_readable_images_and_all_their_captions(tmp_path, monkeypatch):
    paths = write_captioned_images(tmp_path, 5)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    pairs = [Pair(p, tuple(p.with_suffix(".txt").read_text().split("\n")[:2])) for p in paths]
    pairs.insert(2, Pair(broken, ("a broken image",)))
    monkeypatch.setattr("retriever.training.evaluation.ENCODE_CHUNK", 4)
    encoder = HashEncoder()

    got = evaluate_pairs(encoder, pairs)

    assert (got["images"], got["captions"], got["unreadable"]) == (5, 10, 1)
    assert encoder.image_calls == [3, 2]  # chunks of 4 pairs, the broken one dropped
    assert encoder.text_calls == [4, 4, 2]
    readable = [p for p in pairs if p.image != broken]
    images = HashEncoder().encode_images([open_image(p.image) for p in readable])
    texts = HashEncoder().encode_texts([c for p in readable for c in p.captions])
    expected = retrieval_metrics(images, texts, np.repeat(np.arange(5), 2))
    assert got["text_to_image"] == expected["text_to_image"]
    assert got["image_to_text"] == expected["image_to_text"]


def test_evaluate_pairs_with_no_readable_image_is_a_dataset_error(tmp_path):
    broken = tmp_path / "a.jpg"
    broken.write_bytes(b"")
    with pytest.raises(DatasetError, match="could be read"):
        evaluate_pairs(HashEncoder(), [Pair(broken, ("x",))])


def test_an_image_without_captions_is_a_miss_for_image_to_text():
    images = np.eye(3, dtype=np.float32)
    got = retrieval_metrics(images, images[:2].copy(), np.array([0, 1]))
    assert got["image_to_text"]["R@10"] == pytest.approx(2 / 3)
    assert got["text_to_image"]["R@1"] == 1.0


class ConstantEncoder(HashEncoder):
    """Every image and text the same vector: a collapsed model, or a diverged one (NaN)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def encode_images(self, images):
        return np.full((len(images), self.dim), self.value, dtype=np.float32)

    def encode_texts(self, texts):
        return np.full((len(texts), self.dim), self.value, dtype=np.float32)


@pytest.mark.parametrize(("value", "ties"), [
    (np.nan, "topk"), (np.inf, "topk"), (np.nan, "strict"), (np.inf, "strict"),
    (8 ** -0.5, "strict"),
], ids=["nan", "inf", "nan-strict", "inf-strict", "collapsed-strict"])
def test_a_broken_or_collapsed_encoder_scores_zero_not_one(tmp_path, value, ties):
    paths = write_captioned_images(tmp_path, 4)
    pairs = [Pair(p, tuple(p.with_suffix(".txt").read_text().split("\n")[:2])) for p in paths]

    got = evaluate_pairs(ConstantEncoder(value), pairs, ties=ties)

    for direction in ("text_to_image", "image_to_text"):
        assert got[direction]["R@1"] == 0.0, direction
    assert got["text_to_image"]["median_rank"] == 4.0  # behind every wrong image: last
    assert got["image_to_text"]["median_rank"] == 7.0  # the best of 2 captions, behind 6 others


def test_a_collapsed_encoder_under_topk_ties_finds_what_comes_first(tmp_path):
    paths = write_captioned_images(tmp_path, 4)
    pairs = [Pair(p, tuple(p.with_suffix(".txt").read_text().split("\n")[:2])) for p in paths]

    got = evaluate_pairs(ConstantEncoder(8 ** -0.5), pairs)

    # caption j ranks its image (j // 2) at j // 2 + 1: two of 8 captions find theirs first
    assert got["text_to_image"] == {"R@1": 0.25, "R@5": 1.0, "R@10": 1.0, "median_rank": 2.5}
    # image i's first caption is text 2i: rank 2i + 1
    assert got["image_to_text"] == {"R@1": 0.25, "R@5": 0.75, "R@10": 1.0, "median_rank": 4.0}
    assert got["ties"] == "topk"


def test_a_nan_score_ranks_last_and_never_ahead_of_a_finite_one():
    images = np.eye(4, dtype=np.float32)
    texts = images.copy()
    texts[0] = np.nan  # caption 0's vector broke: its image must not count as found
    images[3] = np.nan  # image 3 broke: it must not rank ahead of the others' images

    got = retrieval_metrics(images, texts, np.arange(4))

    # text->image: caption 0 ranks its image last (4), captions 1, 2 first, caption 3 last
    assert got["text_to_image"]["R@1"] == pytest.approx(2 / 4)
    assert got["text_to_image"]["median_rank"] == pytest.approx(2.5)
    # image->text: image 0's caption is NaN (last), images 1 and 2 find theirs, image 3 is NaN
    assert got["image_to_text"]["R@1"] == pytest.approx(2 / 4)


@pytest.mark.parametrize("seed", [0, 7])  # seeds where the rounding moved R@1 or the median
def test_identical_vectors_tie_exactly_whatever_the_product_rounds(seed):
    """float64 products (dgemm) round some identical columns differently (edge kernels); the
    copies still tie, so the lower index wins as in a per-pair computation."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(50, 16))
    text_to_image = np.repeat(np.arange(50), 6)  # 300 captions drawn from 60 strings
    texts = rng.normal(size=(60, 16))[rng.integers(0, 60, size=300)]
    got = retrieval_metrics(images, texts, text_to_image)
    expected = plain_metrics(images, texts, list(text_to_image))
    for direction in ("text_to_image", "image_to_text"):
        assert got[direction] == pytest.approx(expected[direction])
