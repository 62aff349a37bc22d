"""`retriever index --model NEW --switch`: the new model's vectors are built beside the old
ones while searches keep answering with the old; when every file is done, the index switches
in one step and the old vectors are gone.

Design: a staged collection, a whole index of its own, in the index folder:

    <index>/switch/     store.db (always SQLite, also beside a PostgreSQL store), the FAISS
                        files and crash journal of the new model, made by `ingest_media`

Items depend on the model (a text is cut into passages by its tokenizer's budget), so the new
side is indexed from the files themselves, not from the live rows. `ingest_media` commits each
batch to the staged store, so a switch killed at any point keeps what it committed and the next
`index --switch` goes on from there, incremental as any run: files changed, added or removed
meanwhile (also by `retriever index` or `watch` on the live side, with the old model) are
caught by its scan, which runs on every `--switch` run, just before the swap. Searches read the
live store only, untouched until the swap.

The swap (`Collection.take_over`) is ONE transaction of the live store: every file, item,
vector and failure is replaced by the staged ones (new ids), the new model is recorded, tags go
back on the items at their places and the generation is bumped, so the FAISS files are built
again, now from the new vectors. A search that opened the store before it answers with the old
model; one after, with the new. Then the staged folder is removed. A switch killed after the
swap committed but before that leaves a staged model equal to the live one: dropped at the next
`--switch`.

One switch at a time: `--switch --model THIRD` while a switch to another model is pending is
refused (`SwitchPending`): finish it (`--switch` alone), or `--switch-cancel` it, which
removes the staged folder under the writer's lock. A plain `index` or `watch` run meanwhile
writes the live side with the old model, as always; the staged side catches up at its next run.
The whole switch holds the writer's lock, as any indexing run does.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from index.records import ModelRecord
from retriever.encoding.backends import open_encoder, user_exports
from retriever.encoding.encoders import Encoder
from retriever.errors import AskedModelDiffers, SwitchPending, UsageError
from retriever.ingest.options import IngestOptions, IngestReport
from retriever.ingest.pipeline import ingest_media
from retriever.ingest.readers import Engine
from retriever.library.collection import Collection
from retriever.library.locations import STORE_FILE
from retriever.library.pinned_encoder import pinned_encoder
from retriever.progress import Progress

if TYPE_CHECKING:
    from retriever.ingest.run import IngestRequest

SWITCH_DIRNAME = "switch"  # <index>/switch/: the staged collection of the model switched to


def switch_model(live: Collection, request: IngestRequest, options: IngestOptions,
                 progress: Progress | None,
                 engine_for: Callable[[Encoder], Engine | None]) -> IngestReport:
    """Build (or go on building) `request.model`'s collection of `options.roots` in the staged
    folder, then make it `live`'s in one transaction (see the module docstring). The caller
    holds `live.writing()`. Returns the staged run's report."""
    recorded = live.reads.model()
    if recorded is None:
        raise UsageError(f"{live.directory} holds no index yet: run `retriever index` without "
                         f"--switch to build one")
    folder = staging_folder(live)
    _drop_leftover(folder, recorded)
    staged = _open_staged(folder, live)
    try:
        encoder = _staged_encoder(live, staged, request, recorded, progress)
        report = ingest_media(staged, encoder, options, progress, engine_for(encoder))
        live.take_over(staged)
    except BaseException:
        staged.close()
        _drop_leftover(folder, recorded)  # a switch refused or stopped before staging a file
        raise
    staged.close()
    shutil.rmtree(folder, ignore_errors=True)
    return report


def cancel_switch(live: Collection) -> str | None:
    """Drop `live`'s pending switch (its staged folder); the model it was switching to, or
    None when there was none. The caller holds `live.writing()`."""
    folder = staging_folder(live)
    pending = _pending_model(folder)
    shutil.rmtree(folder, ignore_errors=True)
    return pending.name if pending else None


def staging_folder(live: Collection) -> Path:
    return live.directory / SWITCH_DIRNAME


def _staged_encoder(live: Collection, staged: Collection, request: IngestRequest,
                    recorded: ModelRecord, progress: Progress | None) -> Encoder:
    """The pending switch's model (`request.model` must agree), or a new switch's."""
    pending = staged.reads.model()
    if pending is not None:
        try:
            return pinned_encoder(staged, request.model, request.backend, purpose="index",
                                  progress=progress, settings=request.settings)
        except AskedModelDiffers as err:
            raise SwitchPending(live.directory, pending.name, err.asked) from None
    if request.model.model is None:
        raise UsageError("--switch needs --model: the model to switch the index to")
    encoder = open_encoder(request.model, request.backend, user_exports(request.settings),
                           None, progress=progress, gpu=request.settings.gpu)
    if (encoder.model_id.name, encoder.model_id.pretrained) == (recorded.name,
                                                                recorded.pretrained):
        raise UsageError(f"{live.directory} is built with {recorded.name} "
                         f"({recorded.pretrained}) already: nothing to switch (--reindex "
                         f"re-encodes everything with it)")
    return encoder


def _drop_leftover(folder: Path, recorded: ModelRecord) -> None:
    """Remove a staged folder that is no pending switch: one holding no file yet (a model
    that would not load, a kill before the first batch), or one whose model the live index
    has already (killed between the swap and the folder's removal)."""
    if not folder.is_dir():
        return
    staged = _open_staged(folder)
    try:
        model, files = staged.reads.model(), staged.reads.counts().files
    finally:
        staged.close()
    if files == 0 or model is None or (model.name, model.pretrained) == (recorded.name,
                                                                         recorded.pretrained):
        shutil.rmtree(folder, ignore_errors=True)


def _open_staged(folder: Path, live: Collection | None = None) -> Collection:
    """The staged collection: SQLite in `folder` whatever the live store is (a PostgreSQL
    store's database holds the live rows only)."""
    return Collection.open(folder, live.ann if live else None,
                           f"sqlite:///{folder / STORE_FILE}")


def _pending_model(folder: Path) -> ModelRecord | None:
    if not (folder / STORE_FILE).is_file():
        return None
    staged = _open_staged(folder)
    try:
        return staged.reads.model()
    finally:
        staged.close()
