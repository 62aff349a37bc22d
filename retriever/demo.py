"""`retriever demo`: the whole product on generated data, offline, on a CPU, in about a minute.

Makes a media folder (captioned images of coloured shapes, plus text documents about them),
trains the bundled tiny architecture on the captioned images from random weights, indexes the
folder with the trained checkpoint, and runs text->image and image->text searches.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from retriever.encoding.clip_encoder import ClipEncoder
from retriever.encoding.models import ModelSpec
from retriever.ingest.pipeline import IngestOptions, IngestReport, ingest_media
from retriever.library.collection import Collection
from retriever.library.locations import INDEX_DIRNAME
from retriever.progress import NullProgress, Progress
from retriever.search.query import Query, Result, search
from retriever.training.loop import TrainConfig, TrainResult, train
from retriever.training.synthetic import write_captioned_images, write_text_documents

DEMO_MODEL = ModelSpec("retriever-tiny", "none")  # bundled config, trained from scratch here
DEMO_IMAGES = 240  # 72 distinct scenes (colour x shape x place), each drawn ~3 times
DEMO_EPOCHS = 30  # the distance objective needs ~10 epochs to leave its collapsed start
DEMO_BATCH_SIZE = 16  # small batches: at this size the number of steps limits learning
DEMO_VAL_FRACTION = 0.2  # 48 held-out images: R@1 moves in steps of 1/96 captions
TEXT_QUERIES = ("a red circle on the left", "a blue triangle on the top")


def demo_config(data: Path, out: Path, seed: int = 0) -> TrainConfig:
    """Training settings for `write_captioned_images(data, DEMO_IMAGES)`: retriever-tiny from
    random weights at the from-scratch learning rate."""
    return TrainConfig(data=data, out=out, model=DEMO_MODEL, epochs=DEMO_EPOCHS,
                       batch_size=DEMO_BATCH_SIZE, val_fraction=DEMO_VAL_FRACTION, seed=seed)


@dataclass(frozen=True)
class DemoConfig:
    out: Path  # everything is written under here
    images: int = DEMO_IMAGES  # captioned images to generate (20% held out for recall)
    epochs: int = DEMO_EPOCHS  # training passes
    seed: int = 0


@dataclass
class DemoResult:
    media: Path
    training: TrainResult
    index: IngestReport
    searches: list[tuple[str, list[Result]]]  # (query description, top results)


def run_demo(
    cfg: DemoConfig, progress: Progress | None = None, log: Callable[[str], None] = print
) -> DemoResult:
    progress = progress or NullProgress()
    media = cfg.out / "media"
    photos = write_captioned_images(media / "photos", cfg.images, seed=cfg.seed)
    write_text_documents(media / "documents", seed=cfg.seed)
    log(f"wrote {len(photos)} captioned images and documents to {media}")

    checkpoint = cfg.out / "retriever-tiny-demo.pt"
    training = replace(demo_config(media / "photos", checkpoint, cfg.seed), epochs=cfg.epochs)
    trained = train(training, progress, log)
    log(f"trained checkpoint: {checkpoint}")

    shutil.rmtree(media / INDEX_DIRNAME, ignore_errors=True)  # a fresh index for this checkpoint
    collection = Collection.open(media / INDEX_DIRNAME)
    try:
        encoder = ClipEncoder(trained.loaded)
        report = ingest_media(collection, encoder, IngestOptions((media,)), progress)
        queries = [(f"text: {q!r} -> images", Query(text=q, target="images", k=3))
                   for q in TEXT_QUERIES]
        queries.append((f"image: {photos[0].name} -> texts",
                        Query(image=photos[0], target="texts", k=3)))
        searches = [(label, search(collection, encoder, q)) for label, q in queries]
    finally:
        collection.close()
    return DemoResult(media, trained, report, searches)
