"""What each training process reads: pairs in memory and streamed tar shards."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import webdataset as wds

from retriever.encoding.models import ModelSpec, load_model
from retriever.errors import UsageError
from retriever.training.datasets import (
    LoaderSettings,
    PairData,
    ShardData,
    count_samples,
    shard_urls,
)
from retriever.training.loop import TrainConfig, train
from retriever.training.pairs import load_pairs
from retriever.training.synthetic import ALL_SCENES, draw_scene, write_captioned_images

SHARDS, PER_SHARD = 4, 6  # 24 good samples, plus two bad ones in the first shard


@pytest.fixture(scope="module")
def loaded():
    return load_model(ModelSpec("retriever-tiny", "none"))


def jpeg(i: int) -> bytes:
    import random

    buffer = io.BytesIO()
    draw_scene(ALL_SCENES[i % len(ALL_SCENES)], 48, random.Random(i)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """4 shards of 6 captioned images each (caption "sample i", unique); the first shard also
    holds an undecodable image and an image without a caption."""
    folder = tmp_path_factory.mktemp("shards")
    for s in range(SHARDS):
        with wds.TarWriter(str(folder / f"shard-{s:03d}.tar")) as sink:
            for i in range(s * PER_SHARD, (s + 1) * PER_SHARD):
                sink.write({"__key__": f"{i:05d}", "jpg": jpeg(i),
                            "txt": f"sample {i}\nanother wording of sample {i}"})
            if s == 0:
                sink.write({"__key__": "broken", "jpg": b"not a jpeg", "txt": "broken"})
                sink.write({"__key__": "uncaptioned", "jpg": jpeg(99)})
    return folder


def captions_read(loaded, batches) -> list[str]:
    """The caption of every pair in `batches`, decoded back from its tokens."""
    from open_clip.tokenizer import SimpleTokenizer

    decoder = SimpleTokenizer()
    texts = []
    for batch in batches:
        for row in batch.tokens.tolist():
            ids = [t for t in row if t not in (0, decoder.sot_token_id, decoder.eot_token_id)]
            texts.append(decoder.decode(ids).strip())
    return texts


def sample_ids(texts: list[str]) -> list[int]:
    """"sample 12" -> 12 (CLIP's tokenizer gives every digit its own token: "sample 1 2")."""
    return [int("".join(t.split("sample")[-1].split())) for t in texts]


# --- shard sources ----------------------------------------------------------------------------


def test_shard_sources_are_recognised(shards, tmp_path):
    names = [str(shards / f"shard-{s:03d}.tar") for s in range(SHARDS)]
    assert shard_urls(shards) == names
    assert shard_urls(names[1]) == [names[1]]
    assert shard_urls(f"{shards}/shard-{{000..002}}.tar") == names[:3]
    assert shard_urls("https://example.org/data-{0..1}.tar") == [
        "https://example.org/data-0.tar", "https://example.org/data-1.tar"]
    write_captioned_images(tmp_path, 2)
    assert shard_urls(tmp_path) is None  # images with sidecars: not shards
    assert shard_urls(tmp_path / "img_0000.jpg") is None


def test_samples_are_counted_from_headers_or_sizes_json(shards, tmp_path):
    names = shard_urls(shards)
    assert count_samples(names) == SHARDS * PER_SHARD + 2  # the bad ones have image members
    copy = tmp_path / "shard-000.tar"
    copy.write_bytes(Path(names[0]).read_bytes())
    (tmp_path / "sizes.json").write_text(json.dumps({"shard-000.tar": 1000}))
    assert count_samples([str(copy)]) == 1000
    with pytest.raises(UsageError, match="--samples-per-epoch"):
        count_samples(["https://example.org/data-0.tar"])


# --- streaming --------------------------------------------------------------------------------


def test_each_process_streams_its_own_shards_and_counts_bad_samples(shards, loaded):
    urls = shard_urls(shards)
    seen, skipped = [], 0
    for rank in (0, 1):
        feed = LoaderSettings(batch_size=4, world_size=2, rank=rank, seed=5)
        data = ShardData(urls, SHARDS * PER_SHARD, loaded, feed)
        assert data.steps_per_epoch == 3  # 24 pairs in steps of 4 x 2 processes
        batches = list(data.epoch(1))
        assert [len(b.pixels) for b in batches] == [4, 4, 4]
        assert all(b.pixels.shape[1:] == (3, 32, 32) for b in batches)
        seen.append(sample_ids(captions_read(loaded, batches)))
        skipped += sum(b.skipped for b in batches)
    # two shards each: together every good sample exactly once, each in one process
    assert sorted(seen[0] + seen[1]) == list(range(SHARDS * PER_SHARD))
    assert skipped == 2


def test_stream_order_is_seeded_by_seed_and_epoch(shards, loaded):
    def order(seed: int, epoch: int, workers: int = 0) -> list[str]:
        feed = LoaderSettings(batch_size=6, seed=seed, num_workers=workers)
        return captions_read(loaded, ShardData(shard_urls(shards), 24, loaded,
                                               feed).epoch(epoch))

    first = order(seed=0, epoch=1)
    assert order(seed=0, epoch=1) == first
    assert order(seed=0, epoch=2) != first
    assert order(seed=1, epoch=1) != first
    assert sorted(sample_ids(order(0, 1, workers=2))) == sorted(sample_ids(first))
    assert len(set(first)) == 24  # one pass over 24 pairs: no sample twice


def test_a_resumed_epoch_skips_the_steps_it_had_done(shards, loaded):
    data = ShardData(shard_urls(shards), 24, loaded, LoaderSettings(batch_size=6, seed=3))
    whole = captions_read(loaded, data.epoch(2))
    assert captions_read(loaded, data.epoch(2, skip=3)) == whole[18:]


def test_too_few_shards_for_the_readers_is_a_usage_error(shards, loaded):
    feed = LoaderSettings(batch_size=4, world_size=2, num_workers=3)
    with pytest.raises(UsageError, match="--num-workers"):
        ShardData(shard_urls(shards), 24, loaded, feed)


def test_training_on_shards_validates_on_val_data(shards, tmp_path):
    write_captioned_images(tmp_path / "val", 8, seed=9)
    cfg = TrainConfig(data=shards, out=tmp_path / "m.pt", model=ModelSpec("retriever-tiny",
                      "none"), epochs=1, batch_size=8, val_data=tmp_path / "val")

    result = train(cfg)

    assert result.history[1].unreadable == 2
    assert result.after["images"] == 8 and result.before["images"] == 8
    assert result.train_images == 24  # three steps of 8
    assert load_model(ModelSpec(pretrained=str(cfg.out))).extra["train_images"] == 24


# --- pairs in memory --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    write_captioned_images(folder, 20, seed=4)
    return load_pairs(folder)


def test_processes_split_each_step_in_rank_order(pairs, loaded):
    """Two processes' shares of a step, concatenated, are one process's whole step."""
    one = list(PairData(pairs, loaded, LoaderSettings(batch_size=8, seed=1)).epoch(3))
    halves = [list(PairData(pairs, loaded, LoaderSettings(batch_size=4, world_size=2, rank=r,
                                                 seed=1)).epoch(3)) for r in (0, 1)]
    assert [len(b.pixels) for b in one] == [7, 7, 6]  # 20 pairs: 3 equal-sized steps
    for whole, first, second in zip(one, *halves, strict=True):
        assert torch.equal(whole.tokens, torch.cat([first.tokens, second.tokens]))
        assert torch.equal(whole.pixels, torch.cat([first.pixels, second.pixels]))


def test_pair_order_is_seeded_by_seed_and_epoch(pairs, loaded):
    def tokens(seed: int, epoch: int) -> torch.Tensor:
        return torch.cat([b.tokens for b in PairData(pairs, loaded, LoaderSettings(batch_size=5,
                                                                         seed=seed)).epoch(epoch)])

    assert torch.equal(tokens(0, 1), tokens(0, 1))
    assert not torch.equal(tokens(0, 1), tokens(0, 2))
    assert not torch.equal(tokens(0, 1), tokens(1, 1))


def test_augmentation_is_the_same_with_or_without_workers(pairs, loaded):
    feed = LoaderSettings(batch_size=10, seed=2, augment=True)
    inline = torch.cat([b.pixels for b in PairData(pairs, loaded, feed).epoch(1)])
    workers = PairData(pairs, loaded, replace(feed, num_workers=2)).epoch(1)
    assert torch.equal(inline, torch.cat([b.pixels for b in workers]))
    plain = PairData(pairs, loaded, replace(feed, augment=False)).epoch(1)
    assert not torch.equal(inline, torch.cat([b.pixels for b in plain]))  # crops did happen
