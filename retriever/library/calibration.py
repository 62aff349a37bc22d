"""`retriever duplicates`' threshold, measured on the index's model and the user's own photos.

No fixed cosine fits every model: a random-weight model puts distinct photos at 0.98-0.995, a
trained CLIP far lower, and its copies lower too. So the threshold is measured:

1. A sample of the collection's images (SAMPLE, chosen by content hash: the same each time) is
   decoded and copied in memory the ways copies happen (`COPIES`: resized and re-encoded,
   re-encoded at a low JPEG quality, brighter or darker, cropped a little), each with its own
   strength drawn from the image's hash. The model encodes the originals and the copies:
   `copies`, the cosines a copy keeps with its original.
2. For each sampled image, its nearest neighbours among the stored vectors (other bytes) are
   looked at, best first, until one is a distinct photo: `distinct`, the cosine of the nearest
   distinct photo. Whether a neighbour is a copy or another photo is told by its pixels, not the
   model (`_looks`: a 12x12 colour thumbnail, brightness-normalised; a copy correlates with its
   original as closely as the in-memory copies do). Neighbours that are copies count towards
   how many images have a copy in the collection (`prevalence`).
3. The threshold is the lowest cosine at which the expected share of true copies among the
   pairs found reaches the precision asked: prevalence x (copies kept) over that plus
   (distinct neighbours kept), placed half-way across the gap below it (`choose`).

Images are read only as indexed (`open_indexed`: never a file swapped since, nor one outside
the indexed folders); ones that cannot be are left out of the sample. The result is recorded
in the store and reused while the model (fingerprint) and the precision
asked are the same and the collection has not grown past GROWTH times its size then.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance

from index.kinds import IMAGE
from index.records import ImageFile, ThresholdRecord
from retriever.encoding.encoders import Encoder
from retriever.errors import ImageError, ItemNotFound, UsageError
from retriever.library.collection import Collection
from retriever.library.thumbnails import open_indexed
from retriever.media.images import decode_image

SAMPLE = 64  # images copied in memory: 5 encodes each; seconds on CPU for a ViT-B
# images whose nearest distinct photo is found (their thumbnails only, no model): the more, the
# better the tail of distinct neighbours is known
DISTINCT_SAMPLE = 512
ENCODE_BATCH = 8  # originals encoded per call, with their copies: 40 images
NEIGHBOURS = 8  # stored neighbours looked at per sampled image for its nearest distinct photo
GROWTH = 2.0  # recalibrate once the collection holds this many times the images measured on
DEFAULT_PRECISION = 0.95  # share of the pairs reported that should be true copies
LOOK = 12  # px: side of the thumbnail that tells a copy from another photo by its pixels
# A neighbour is a copy when its thumbnail correlates with the original's at least as well as
# the in-memory copies' do (their lowest), and never below this: distinct photos may share a
# layout and a colour scheme.
LOOK_FLOOR = 0.9


def _resized(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    scale = rng.uniform(0.35, 0.7)  # a phone's "send smaller", then saved again
    small = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                      Image.Resampling.LANCZOS)
    return _jpeg(small, int(rng.integers(60, 90)))


def _recoded(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    return _jpeg(im, int(rng.integers(20, 50)))


def _lit(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    factor = rng.uniform(1.08, 1.2) if rng.random() < 0.5 else rng.uniform(0.8, 0.92)
    return _jpeg(ImageEnhance.Brightness(im).enhance(factor), 85)


def _cropped(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    left, top, right, bottom = rng.uniform(0.0, 0.06, 4)
    box = (round(im.width * left), round(im.height * top),
           im.width - round(im.width * right), im.height - round(im.height * bottom))
    return _jpeg(im.crop(box), 85)


def _jpeg(im: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    im.save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


# how copies happen: name -> (image, its own random strengths) -> the copy
COPIES: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "resized": _resized, "re-encoded": _recoded, "brightness": _lit, "cropped": _cropped}


@dataclass(frozen=True)
class Measured:
    """What one calibration saw: the cosines behind the threshold."""

    copies: np.ndarray  # (sample * len(COPIES),) cosine of each in-memory copy to its original
    distinct: np.ndarray  # (sample,) cosine of each sampled image's nearest distinct photo
    with_copy: int  # sampled images whose neighbours include a copy already in the collection


def duplicate_threshold(collection: Collection, open_encoder: Callable[[], Encoder],
                        precision: float = DEFAULT_PRECISION,
                        recalibrate: bool = False) -> ThresholdRecord | None:
    """The threshold for `collection` at `precision`: the recorded one while still valid
    (see the module docstring), else measured now with `open_encoder()` and recorded (unless
    the index is read-only). None when the collection holds fewer than two images."""
    check_precision(precision)
    images = collection.reads.count_items(IMAGE)
    if images < 2:
        return None
    still = None if recalibrate else recorded(collection, precision)
    if still is not None:
        return still
    model = collection.reads.model()
    encoder = open_encoder()
    measured = measure(collection, encoder)
    threshold, recall = choose(measured, precision)
    sampled = len(measured.copies) // len(COPIES)
    record = ThresholdRecord(threshold, precision, sampled, images, recall,
                             model.fingerprint if model else None, time.time())
    if not collection.read_only:
        collection.record_duplicate_threshold(record)
    return record


def recorded(collection: Collection, precision: float = DEFAULT_PRECISION
             ) -> ThresholdRecord | None:
    """The recorded threshold while it still holds: measured with the index's model (its
    fingerprint) for `precision`, on at least 1/GROWTH of the images there are now."""
    model, record = collection.reads.model(), collection.reads.duplicate_threshold()
    if record is None or model is None or model.fingerprint is None:
        return None
    images = collection.reads.count_items(IMAGE)
    if (record.fingerprint != model.fingerprint or record.target_precision != precision
            or images > GROWTH * record.images):
        return None
    return record


def check_precision(precision: float) -> None:
    if not 0 < precision < 1:  # NaN fails this too
        raise UsageError(f"--precision {precision} is not a share of pairs: pass one in (0, 1), "
                         f"e.g. 0.95")


def measure(collection: Collection, encoder: Encoder, size: int = SAMPLE,
            neighbours_of: int = DISTINCT_SAMPLE) -> Measured:
    """Copy `size` of `collection`'s images in memory and encode them with `encoder`; find
    the nearest distinct photo of `neighbours_of` images among the stored vectors."""
    files = collection.reads.image_files()
    ordered = _by_hash(files)
    side = 2 * encoder.pixels.size  # decoded at least this large: the model sees less
    sample, pictures = [], []
    for f in ordered:
        picture = _decoded(collection, f.id, side)
        if picture is not None:
            sample.append(f)
            pictures.append(picture)
        if len(sample) == size:
            break
    if not sample:
        raise UsageError("cannot measure a duplicates threshold: none of the indexed images "
                         "could be read; pass --threshold")
    copies, looks_floor = _copy_cosines(encoder, sample, pictures)
    distinct, with_copy = _nearest_distinct(collection, files, ordered[:neighbours_of],
                                            max(LOOK_FLOOR, looks_floor))
    return Measured(copies, distinct, with_copy)


def _by_hash(files: Sequence[ImageFile]) -> list[ImageFile]:
    """One image per content hash, by hash: a deterministic, content-blind sample order."""
    first: dict[str, ImageFile] = {}
    for f in files:
        first.setdefault(f.content_hash, f)
    return [first[h] for h in sorted(first)]


def _decoded(collection: Collection, item_id: int, side: int) -> Image.Image | None:
    """The indexed image, only as indexed (retriever.library.thumbnails.open_indexed: never a
    file swapped since, nor one outside the indexed folders), at least `side` px a side."""
    try:
        _, handle = open_indexed(collection, item_id)
        with handle:
            return decode_image(handle, min_side=side)[0]
    except (ItemNotFound, ImageError, OSError):  # gone or changed since: sample another
        return None


def _copy_cosines(encoder: Encoder, sample: Sequence[ImageFile],
                  pictures: Sequence[Image.Image]) -> tuple[np.ndarray, float]:
    """(cosines (sample * len(COPIES),) of each copy to its original, the lowest thumbnail
    correlation of a copy to its original). Encoded ENCODE_BATCH originals at a time, each
    with its copies: a call per batch, not per image."""
    cosines: list[np.ndarray] = []
    looks: list[float] = []
    width = 1 + len(COPIES)  # an original and its copies
    for start in range(0, len(sample), ENCODE_BATCH):
        batch = []
        for f, picture in zip(sample[start:start + ENCODE_BATCH],
                              pictures[start:start + ENCODE_BATCH], strict=True):
            seed = hashlib.sha256(f.content_hash.encode()).digest()[:8]  # the same each time
            rng = np.random.default_rng(int.from_bytes(seed, "little"))
            copies = [make(picture, rng) for make in COPIES.values()]
            original = _looks(picture)
            looks.extend(float(_looks(c) @ original) for c in copies)
            batch += [picture, *copies]
        vectors = encoder.encode_images(batch).reshape(-1, width, encoder.dim)  # (n, width, d)
        cosines.append(np.einsum("ncd,nd->nc", vectors[:, 1:], vectors[:, 0]).ravel())
    return np.concatenate(cosines).astype(np.float32), min(looks)


def _nearest_distinct(collection: Collection, files: Sequence[ImageFile],
                      sample: Sequence[ImageFile], cut: float) -> tuple[np.ndarray, int]:
    """(cosine (measured,) of each sampled image's nearest stored neighbour that is another
    photo by its pixels (thumbnail correlation below `cut`), how many sampled images have a
    copy among their neighbours). Images that cannot be read now are left out."""
    by_id = {f.id: f for f in files}
    looks: dict[int, np.ndarray | None] = {}  # item id -> its thumbnail's look

    def look(item_id: int) -> np.ndarray | None:
        if item_id not in looks:
            picture = _decoded(collection, item_id, 4 * LOOK)
            looks[item_id] = None if picture is None else _looks(picture)
        return looks[item_id]

    query_ids, queries = collection.reads.vectors_of([f.id for f in sample])  # id order
    scores, ids = collection.nearest(IMAGE, queries, NEIGHBOURS + 1)  # (sample, k)
    distinct, with_copy = [], 0
    for row, item_id in enumerate(query_ids.tolist()):
        mine = by_id[int(item_id)]
        mine_looks = look(mine.id)
        if mine_looks is None:
            continue
        nearest, found_copy = -1.0, False  # -1: no distinct photo among the neighbours
        for score, other_id in zip(scores[row].tolist(), ids[row].tolist(), strict=True):
            other = by_id.get(int(other_id))
            if other is None or other.content_hash == mine.content_hash:
                continue  # itself, a byte-identical copy, or an empty slot
            other_looks = look(other.id)
            if other_looks is not None and float(other_looks @ mine_looks) >= cut:
                found_copy = True
                continue
            nearest = score
            break
        distinct.append(nearest)
        with_copy += found_copy
    return np.asarray(distinct, np.float32), with_copy


def _looks(picture: Image.Image) -> np.ndarray:
    """(LOOK * LOOK * 3,) unit vector: the picture's colours at a glance, mean removed (so a
    brighter or darker copy looks the same), for a correlation by dot product."""
    small = np.asarray(picture.convert("RGB").resize((LOOK, LOOK), Image.Resampling.BOX),
                       np.float32).ravel()
    small -= small.mean()
    return small / max(float(np.linalg.norm(small)), 1e-6)


def choose(measured: Measured, precision: float) -> tuple[float, float]:
    """(threshold, share of the in-memory copies at or above it): the lowest cosine where
    prevalence x copies kept >= precision x (that + distinct neighbours kept), half-way into
    the gap below it; prevalence is the share of sampled images with a copy (add-one
    smoothed: a sample without any still allows some). Above every distinct neighbour when
    no cosine reaches the precision."""
    copies, distinct = measured.copies, measured.distinct
    prevalence = (measured.with_copy + 1) / (len(distinct) + 2)
    candidates = np.unique(np.concatenate([copies, distinct]))  # ascending
    kept = (copies[None, :] >= candidates[:, None]).mean(axis=1)  # (candidates,)
    false = (distinct[None, :] >= candidates[:, None]).mean(axis=1)
    ok = (kept > 0) & (prevalence * kept >= precision * (prevalence * kept + false))
    if not ok.any():
        threshold = (float(distinct.max()) + 1.0) / 2
    else:
        first = int(np.argmax(ok))
        below = candidates[first - 1] if first > 0 else candidates[first]
        threshold = float(below + candidates[first]) / 2
    return threshold, float((copies >= threshold).mean())
