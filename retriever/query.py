"""The query layer: one `search` the CLI and tests share.

A query is a text or an image; it is encoded with the model the collection was built with and
searched in the images index, the texts index, or both (`all`: merged by score). A path prefix
restricts results to files under it; the restriction runs inside FAISS (an id selector built from
a SQL prefix query), not by filtering rows in Python.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from index.store import IMAGE, TEXT
from retriever.collection import Collection
from retriever.encoders import ClipEncoder, Encoder
from retriever.errors import IndexNotFound, ModelMismatch, UsageError
from retriever.images import open_image
from retriever.models import ModelSpec, load_model

TARGETS = {"images": (IMAGE,), "texts": (TEXT,), "all": (IMAGE, TEXT)}


@dataclass(frozen=True)
class Query:
    text: str | None = None  # what to look for, in words
    image: Path | None = None  # or: an image to look for things like
    target: str = "all"  # "images", "texts" or "all"
    k: int = 10  # results wanted
    path_prefix: str | None = None  # only files whose absolute path starts with this

    def check(self) -> None:
        """Raise `UsageError` for a query that cannot run (before any model is loaded)."""
        if self.target not in TARGETS:
            raise UsageError(f"unknown target {self.target!r}: use images, texts or all")
        if self.k < 1:
            raise UsageError(f"-k must be at least 1, not {self.k}")
        if (self.text is None) == (self.image is None):
            raise UsageError("give either a text query or --image FILE, not both or neither")
        if self.image is not None and not self.image.is_file():
            raise UsageError(f"query image {self.image} does not exist: pass an image file")
        if self.text is not None and not self.text.strip():
            raise UsageError("the query text is empty: say what to look for")


@dataclass(frozen=True)
class Result:
    id: int  # store item id (= FAISS id)
    path: str
    score: float  # cosine similarity to the query
    kind: str  # "image" or "text"
    position: int  # passage number in its file (0 for images)
    passage: str | None  # the matching passage, for texts
    caption: str | None  # the sidecar caption, for images

    def to_json(self) -> dict:
        return asdict(self)


def open_encoder(
    collection: Collection, asked: ModelSpec | None = None, batch_size: int = 64
) -> Encoder:
    """The encoder the collection was built with; `asked` (from --model/--pretrained) must agree."""
    record = collection.model()
    if record is None:
        raise IndexNotFound(f"{collection.directory} holds no index yet: run `retriever index`")
    if asked is not None:
        for flag, value, recorded in (("--model", asked.model, record.name),
                                      ("--pretrained", asked.pretrained, record.pretrained)):
            if value is not None and not _same(value, recorded):
                raise ModelMismatch(
                    f"{flag} {value} differs from {recorded}, which {collection.directory} was "
                    f"built with: drop {flag} to use the index's model, or pass another --db"
                )
    return ClipEncoder(load_model(ModelSpec(record.name, record.pretrained)), batch_size)


def search(collection: Collection, encoder: Encoder, query: Query) -> list[Result]:
    query.check()
    vector = _embed(encoder, query)  # (1, dim)
    hits: list[tuple[float, int]] = []
    for kind in TARGETS[query.target]:
        allowed = None
        if query.path_prefix:
            allowed = collection.store.item_ids_under(os.path.abspath(query.path_prefix), kind)
        scores, ids = collection.vectors(kind).search(vector, query.k, allowed)
        hits += [(float(s), int(i)) for s, i in zip(scores[0], ids[0], strict=True)
                 if i >= 0]
    hits = sorted(hits, reverse=True)[: query.k]
    views = collection.store.items([i for _, i in hits])
    return [
        Result(i, v.path, score, v.kind, v.position, v.passage, v.caption)
        for score, i in hits
        if (v := views.get(i)) is not None
    ]


def _embed(encoder: Encoder, query: Query) -> np.ndarray:
    if query.image is not None:
        return encoder.encode_images([open_image(query.image)])
    return encoder.encode_texts([query.text or ""])


def _same(asked: str, recorded: str) -> bool:
    return asked == recorded or os.path.abspath(os.path.expanduser(asked)) == recorded
