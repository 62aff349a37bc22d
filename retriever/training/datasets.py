"""What each training process reads, step by step.

Two sources, one shape. `PairData` holds captioned pairs in memory (folders, tables, COCO JSON:
a path and a caption per image, so millions fit) and decodes images in DataLoader workers.
`ShardData` streams WebDataset tar shards (key.jpg + key.txt), so a dataset larger than RAM or
the local disk trains: shards may be local files, `https://...` or `pipe:...` commands.

Both yield, per optimizer step, this process's share of the step's pairs as one `StepBatch`: the
training loop splits it into micro-batches. Everything is seeded by (seed, epoch): the order of
pairs, the caption picked for an image with several, the shards each process and worker reads,
the shuffle buffer, and the random crop of each image when augmenting (seeded per image, so the
same whatever the number of workers, processes, or where a run resumed). Images that cannot be
decoded are skipped and counted.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import random
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol, cast

import braceexpand
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from retriever.encoding.models import LoadedModel
from retriever.encoding.tokenizer import cut_text
from retriever.errors import DatasetError, ImageError, UsageError
from retriever.media.images import open_image
from retriever.training.pairs import Pair

# Streamed samples held back for shuffling. Shards are usually written in some order (by source,
# by date); a few thousand samples mix neighbouring shards' worth at ~100 KB per image.
SHUFFLE_BUFFER = 2000
SHARD_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")  # the first one present is the image
SHARD_CAPTION_KEY = "txt"  # one caption per line; one is picked per epoch
SIZES_FILE = "sizes.json"  # WebDataset convention: {"shard-000.tar": samples, ...}
REMOTE_PREFIXES = ("pipe:", "http://", "https://", "s3://", "gs://")


@dataclass(frozen=True)
class LoaderSettings:
    """How pairs reach this process: its share of every optimizer step."""

    batch_size: int  # pairs per process per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    rank: int = 0  # this process among `world_size`
    world_size: int = 1  # processes training together; a step sees all their pairs
    seed: int = 0  # order, caption choice, shard assignment and augmentation
    num_workers: int = 0  # DataLoader worker processes decoding images; 0: decode in-process
    augment: bool = False  # open_clip's random-crop preprocessing instead of the plain one

    @property
    def local_pairs(self) -> int:
        """Pairs this process brings to one step."""
        return self.batch_size * self.grad_accum

    @property
    def step_pairs(self) -> int:
        """Pairs one optimizer step sees, over all processes."""
        return self.local_pairs * self.world_size


class StepBatch(NamedTuple):
    pixels: torch.Tensor  # (b, 3, H, W), b <= LoaderSettings.local_pairs
    tokens: torch.Tensor  # (b, context_length) int64
    skipped: int  # samples dropped as unreadable on the way to this batch


class TrainData(Protocol):
    steps_per_epoch: int  # optimizer steps in one epoch; the same in every process
    pairs_per_epoch: int  # pairs one epoch trains on, all processes together

    def epoch(self, epoch: int, skip: int = 0) -> Iterable[StepBatch]:
        """This process's batches of epoch `epoch` (from 1), less the first `skip` steps."""
        ...


# --- shared by both sources -------------------------------------------------------------------


def _mix(*values: int | str) -> int:
    """A stable 32-bit seed from several values (Python's hash() changes per process)."""
    return zlib.crc32(repr(values).encode())


class _Transform:
    """PIL image -> (3, H, W). With augmentation, each image's crop is drawn from its own seed."""

    def __init__(self, preprocess: Callable[[Any], torch.Tensor], augment: bool) -> None:
        self.preprocess, self.augment = preprocess, augment

    def __call__(self, image: Any, seed: int) -> torch.Tensor:
        if not self.augment:
            return self.preprocess(image)
        # torchvision draws from the global CPU generator: seed it for this image, then put its
        # state back. (torch.random.fork_rng + torch.manual_seed do the same 60x slower, which
        # made decoding the bottleneck of small-model training.)
        generator = torch.default_generator
        state = generator.get_state()
        generator.manual_seed(seed)
        try:
            return self.preprocess(image)
        finally:
            generator.set_state(state)


class _Collate:
    """[(pixels, caption) or None] -> StepBatch; picklable for DataLoader workers."""

    def __init__(self, tokenizer: Any, context_length: int) -> None:
        self.tokenizer, self.context_length = tokenizer, context_length

    def __call__(self, items: list[tuple[torch.Tensor, str] | None], skipped: int = 0) -> StepBatch:
        readable = [item for item in items if item is not None]
        skipped += len(items) - len(readable)
        if not readable:
            return StepBatch(torch.empty(0), torch.empty(0, dtype=torch.long), skipped)
        pixels = torch.stack([p for p, _ in readable])
        captions = [cut_text(c, self.context_length) for _, c in readable]  # as queries are
        return StepBatch(pixels, self.tokenizer(captions), skipped)


def _transform(loaded: LoadedModel, feed: LoaderSettings) -> _Transform:
    return _Transform(loaded.train_preprocess if feed.augment else loaded.preprocess,
                      feed.augment)


# --- pairs in memory --------------------------------------------------------------------------


class _CaptionedImages(Dataset):
    """(image path, caption) items -> (pixels, caption), or None if the image is undecodable."""

    def __init__(self, items: list[tuple[Path, str]], transform: _Transform, seed: int) -> None:
        self.items, self.transform, self.seed = items, transform, seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str] | None:
        path, caption = self.items[i]
        try:
            return self.transform(open_image(path), _mix(self.seed, i)), caption
        except ImageError:
            return None


class PairData:
    """Pairs in memory. An epoch shows every image once, with one of its captions."""

    def __init__(self, pairs: Sequence[Pair], loaded: LoadedModel, feed: LoaderSettings) -> None:
        self.pairs, self.feed = list(pairs), feed
        self.transform = _transform(loaded, feed)
        self.collate = _Collate(loaded.tokenizer, loaded.context_length)
        self.steps_per_epoch = math.ceil(len(self.pairs) / feed.step_pairs)
        self.pairs_per_epoch = len(self.pairs)

    def epoch(self, epoch: int, skip: int = 0) -> DataLoader:
        rng = random.Random(self.feed.seed * 100_003 + epoch)
        items = [(p.image, rng.choice(p.captions)) for p in self.pairs]
        order = list(range(len(items)))
        rng.shuffle(order)
        # equal-sized steps, so no last step of one or two pairs with almost no negatives;
        # each step's pairs are cut into one contiguous run per process, in rank order, so the
        # processes together see exactly what one process with the whole step would
        steps = np.array_split(order, self.steps_per_epoch)[skip:]
        mine = [np.array_split(step, self.feed.world_size)[self.feed.rank].tolist()
                for step in steps]
        dataset = _CaptionedImages(items, self.transform, _mix(self.feed.seed, epoch))
        return DataLoader(dataset, batch_sampler=mine, num_workers=self.feed.num_workers,
                          collate_fn=self.collate)


# --- streamed tar shards ----------------------------------------------------------------------


def shard_urls(source: str | Path) -> list[str] | None:
    """The tar shards `source` names, or None when it is not a shard source.

    Shards are: a .tar file; a folder holding .tar files; a brace pattern such as
    `data/shard-{000000..000099}.tar`; or a remote URL or `pipe:` command ending in .tar.
    """
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        tars = sorted(str(p) for p in path.glob("*.tar"))
        return tars or None
    if path.is_file():
        return [str(path)] if path.suffix == ".tar" else None
    is_pattern = "{" in text or text.startswith(REMOTE_PREFIXES)
    if is_pattern and ".tar" in text:
        return [str(Path(u).expanduser()) if not u.startswith(REMOTE_PREFIXES) else u
                for u in braceexpand.braceexpand(text)]
    return None


def count_samples(urls: Sequence[str]) -> int:
    """Samples in the shards, from a sizes.json beside them or by reading local tar headers.

    Remote shards must be counted by the caller (`--samples-per-epoch`).
    """
    if any(u.startswith(REMOTE_PREFIXES) for u in urls):
        raise UsageError("remote shards cannot be counted without reading them: pass "
                         "--samples-per-epoch N")
    total = 0
    for url in urls:
        path = Path(url)
        sizes = _sizes(path.parent / SIZES_FILE)
        total += sizes[path.name] if path.name in sizes else _count_tar(path)
    return total


def _sizes(path: Path) -> dict[str, int]:
    if not path.is_file():
        return {}
    try:
        return {str(k): int(v) for k, v in json.loads(path.read_text()).items()}
    except (ValueError, AttributeError) as err:
        raise DatasetError(f"{path} is not a {{shard name: sample count}} JSON object ({err}): "
                           f"fix or delete it") from err


def _count_tar(path: Path) -> int:
    """Keys with an image member; reads headers only (tar members are seekable on disk)."""
    try:
        with tarfile.open(path, "r:*") as tar:
            names = [m.name for m in tar if m.isreg()]
    except (OSError, tarfile.TarError) as err:
        raise DatasetError(f"{path}: not a readable tar shard ({err}): fix or remove it") from err
    keys = {name.rsplit(".", 1)[0] for name in names
            if name.rsplit(".", 1)[-1].lower() in SHARD_IMAGE_KEYS}
    return len(keys)


class _Skips:
    """Counts what a worker's stream dropped: shards that failed to read, samples that failed to
    decode. The counter lives in the worker; batches carry its count to the training loop."""

    def __init__(self) -> None:
        self.count = 0

    def handler(self, err: Exception) -> bool:  # webdataset's handler protocol: True = go on
        self.count += 1
        return True

    def take(self) -> int:
        count, self.count = self.count, 0
        return count


class _ShardStream(IterableDataset):
    """One epoch of one process's shard stream, endless: shards are read again (in a new order)
    when they run out, so every process makes the same number of steps."""

    def __init__(self, data: ShardData, epoch: int) -> None:
        self.data, self.epoch = data, epoch

    def __iter__(self) -> Iterator[StepBatch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        feed = self.data.feed
        rng = random.Random(_mix(feed.seed, self.epoch, feed.rank, worker))
        skips = _Skips()
        samples = self._samples(worker, workers, rng, skips)
        pairs = filter(None, (self._decode(sample, skips) for sample in samples))
        while True:
            items = list(itertools.islice(pairs, feed.local_pairs))
            yield self.data.collate(cast(list, items), skips.take())

    def _samples(self, worker: int, workers: int, rng: random.Random,
                 skips: _Skips) -> Iterator[dict[str, Any]]:
        from webdataset.filters import _shuffle
        from webdataset.tariterators import tarfile_samples

        feed = self.data.feed
        for round_ in itertools.count():
            order = list(self.data.urls)
            random.Random(_mix(feed.seed, self.epoch, round_)).shuffle(order)  # same everywhere
            mine = order[feed.rank::feed.world_size][worker::workers]
            raw = tarfile_samples(({"url": u} for u in mine), handler=skips.handler)
            seen = 0
            for sample in _shuffle(iter(raw), SHUFFLE_BUFFER, SHUFFLE_BUFFER // 4, rng=rng):
                seen += 1
                yield sample
            if not seen:
                raise DatasetError(f"shards {', '.join(mine[:3])} hold no readable samples: "
                                   f"check them with `tar tf`")

    def _decode(self, sample: dict[str, Any], skips: _Skips) -> tuple[torch.Tensor, str] | None:
        key = sample.get("__key__", "")
        image = next((sample[k] for k in SHARD_IMAGE_KEYS if k in sample), None)
        lines = sample.get(SHARD_CAPTION_KEY, b"").decode("utf-8", "replace").splitlines()
        captions = [line.strip() for line in lines if line.strip()]
        try:
            if image is None or not captions:
                raise ImageError(f"{key}: no image or no caption")
            # PIL opens file objects as well as paths
            pil = open_image(cast(Path, io.BytesIO(image)))
        except ImageError:
            skips.count += 1
            return None
        seed = _mix(self.data.feed.seed, self.epoch, key)
        return self.data.transform(pil, seed), random.Random(seed).choice(captions)


class ShardData:
    """WebDataset tar shards, streamed. An epoch is `pairs_per_epoch` pairs, all processes
    together; each process and each of its workers reads its own subset of the shards."""

    def __init__(
        self, urls: Sequence[str], pairs_per_epoch: int, loaded: LoadedModel, feed: LoaderSettings
    ) -> None:
        readers = feed.world_size * max(feed.num_workers, 1)
        if len(urls) < readers:
            raise UsageError(f"{len(urls)} shards cannot feed {feed.world_size} processes x "
                             f"{max(feed.num_workers, 1)} workers: write at least {readers} "
                             f"shards or lower --num-workers / --nproc")
        self.urls, self.feed = list(urls), feed
        self.transform = _transform(loaded, feed)
        self.collate = _Collate(loaded.tokenizer, loaded.context_length)
        self.steps_per_epoch = max(1, pairs_per_epoch // feed.step_pairs)
        self.pairs_per_epoch = self.steps_per_epoch * feed.step_pairs

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[StepBatch]:
        # a resumed epoch re-reads the steps it had done: a stream cannot seek
        loader = DataLoader(_ShardStream(self, epoch), batch_size=None,
                            num_workers=self.feed.num_workers)
        return itertools.islice(loader, skip, self.steps_per_epoch)
