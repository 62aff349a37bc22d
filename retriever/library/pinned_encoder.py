"""The encoder an existing index was built with (`retriever.encoding.backends.open_encoder`
opens one for any model spec; this one opens the model the index recorded)."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import TYPE_CHECKING

from retriever.encoding.specs import ModelId, ModelSpec
from retriever.errors import AskedModelDiffers, IndexNotFound

if TYPE_CHECKING:
    from retriever.encoding.encoders import Encoder
    from retriever.library.collection import Collection
    from retriever.progress import Progress
    from retriever.settings import Settings


def pinned_encoder(
    collection: Collection,
    asked: ModelSpec | None = None,
    backend: str = "auto",
    batch_size: int | None = None,
    quick_start: bool = False,
    purpose: str = "search",
    progress: Progress | None = None,
    *,
    settings: Settings,
) -> Encoder:
    """The encoder `collection` was built with, on `backend`, in the precision its vectors
    were made in; `asked` (a model or weights the caller expects) must agree, else
    `AskedModelDiffers` for `purpose` ("search" or "index"), and an explicit `backend` of
    another precision is `PrecisionMismatch`. `settings`: this machine's export cache and GPU."""
    record = collection.reads.model()
    if record is None:
        raise IndexNotFound(f"{collection.directory} holds no index yet: run `retriever index`")
    if asked is not None:
        for setting, value, recorded in (("model", asked.model, record.name),
                                         ("pretrained", asked.pretrained, record.pretrained)):
            if value is not None and not _same(value, recorded):
                raise AskedModelDiffers(collection.directory, setting, value, recorded, purpose)
    from retriever.encoding.backends import check_precision, open_encoder, user_exports

    # the precision of the index's vectors (a store made before it was recorded: fp32): an
    # explicit backend of the other kind is refused; "auto" keeps it (an image query too)
    recorded = record.precision or "fp32"
    check_precision(collection.directory, backend, settings.gpu, recorded, purpose)
    encoder = open_encoder(ModelId(record.name, record.pretrained), backend,
                           user_exports(settings), batch_size, quick_start, progress,
                           settings.gpu, recorded)
    # the files behind the recorded names may have changed since: same names, another model
    collection.check_model(replace(record, dim=encoder.dim, fingerprint=encoder.fingerprint))
    return encoder


def _same(asked: str, recorded: str) -> bool:
    return asked == recorded or os.path.abspath(os.path.expanduser(asked)) == recorded
