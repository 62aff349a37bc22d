"""`retriever demo`: the whole product on generated data, offline, on a CPU, in about a minute.

Makes a media folder (captioned images of coloured shapes, plus text documents about them),
trains the bundled tiny architecture on the captioned images from random weights, indexes the
folder with the trained checkpoint, and runs text->image and image->text searches.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from retriever.collection import INDEX_DIRNAME, Collection
from retriever.encoders import ClipEncoder
from retriever.indexer import IndexOptions, IndexReport, index_media
from retriever.models import ModelSpec
from retriever.progress import NullProgress, Progress
from retriever.query import Query, Result, search
from retriever.synthetic import write_captioned_images, write_text_documents
from retriever.training import TrainConfig, TrainResult, train

DEMO_MODEL = ModelSpec("retriever-tiny", "none")  # bundled config, trained from scratch here
TEXT_QUERIES = ("a red circle on the left", "a blue triangle on the top")


@dataclass(frozen=True)
class DemoConfig:
    out: Path  # everything is written under here
    images: int = 480  # captioned images to generate (10% are held out for recall)
    epochs: int = 12  # training passes; enough for held-out recall to rise clearly
    seed: int = 0


@dataclass
class DemoResult:
    media: Path
    training: TrainResult
    index: IndexReport
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
    trained = train(TrainConfig(data=media / "photos", out=checkpoint, model=DEMO_MODEL,
                                epochs=cfg.epochs, seed=cfg.seed), progress, log)
    log(f"trained checkpoint: {checkpoint}")

    shutil.rmtree(media / INDEX_DIRNAME, ignore_errors=True)  # a fresh index for this checkpoint
    collection = Collection.open(media / INDEX_DIRNAME)
    try:
        encoder = ClipEncoder(trained.loaded)
        report = index_media(collection, encoder, IndexOptions((media,)), progress)
        queries = [(f"text: {q!r} -> images", Query(text=q, target="images", k=3))
                   for q in TEXT_QUERIES]
        queries.append((f"image: {photos[0].name} -> texts",
                        Query(image=photos[0], target="texts", k=3)))
        searches = [(label, search(collection, encoder, q)) for label, q in queries]
    finally:
        collection.close()
    return DemoResult(media, trained, report, searches)
