"""Which runtime encodes: torch, or the model exported to ONNX Runtime (fp32, or int8 images).

    auto       torch with fp16 autocast when a CUDA GPU is present; else ONNX Runtime, which
               encodes images 1.2x faster than torch eager on CPU, a 5-word query in ~12 ms
               (the text tower runs to the query's length only), and starts a text query
               without importing torch (bench/RESULTS.md)
    torch      open_clip in torch (`retriever.encoding.clip_encoder`)
    onnx       the towers exported to ONNX, fp32: vectors equal torch's (cosine >= 0.9999,
               tested)
    onnx-int8  the image tower with int8 matrix products (7-bit weights: the same vectors on
               every x86 kernel): 2.55x faster image encoding on a 2-core Xeon with VNNI;
               on a trained model, held-out recall within 0.1 point of fp32 and top-10
               agreement 0.993 (bench/RESULTS.md). `auto` does not pick it: an index does not
               record which precision made its vectors, so it would mix them (README, Speed)

Exports are cached per user, shared by every index, never in a media or index folder:
$XDG_CACHE_HOME/retriever/onnx/<key>/ (`retriever.userdirs`), where key hashes the model name,
the weights name and, for files, their size and mtime; a changed weights file gets a new export
and the old one for the same names is removed. A query on an index whose export exists loads
neither torch nor open_clip.

An export is checked before it is used (`ort_encoder.export_problem`: checksums, as index files
are); a damaged one is made again, with a note. When the cache cannot be written (read-only, a
file where its folder should be, a full disk), the model runs in torch this time, with a note:
the same vectors (cosine >= 0.9999), slower to start.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from retriever.encoding.encoders import Encoder
from retriever.encoding.ort_encoder import (
    FORMAT,
    META,
    MISSING,
    OrtEncoder,
    export_problem,
    quantize,
    quantized,
)
from retriever.encoding.specs import ModelId, ModelSpec
from retriever.encoding.weights import check_available
from retriever.errors import BadSetting, SmallFileError
from retriever.jsonfile import read_json
from retriever.progress import NullProgress, Progress

if TYPE_CHECKING:
    from retriever.encoding.models import LoadedModel
    from retriever.settings import Settings

BACKENDS = ("auto", "torch", "onnx", "onnx-int8")
EXPORTS_DIRNAME = "onnx"


def open_encoder(model: ModelSpec | ModelId, backend: str, exports: Path,
                 batch_size: int | None = None, quick_start: bool = False,
                 progress: Progress | None = None, gpu: bool = False) -> Encoder:
    """An encoder for `model` (what was asked, or what an index recorded) on `backend`.

    `exports`: the export cache (the user's: `user_exports`); `gpu`: this machine shows CUDA a
    GPU (`Settings.gpu`), where "auto" encodes in torch; `batch_size`: images or texts per
    call, None for this CPU's (`retriever.encoding.cpu.plan`; torch: 64); `quick_start`: a
    one-off query (see `OrtEncoder`); `progress` shows the export and quantization steps,
    which take seconds."""
    check_backend(backend)
    progress = progress or NullProgress()
    chosen = "torch" if backend == "auto" and gpu else backend
    folder = export_dir(exports, model) if isinstance(model, ModelId) else None
    if folder is not None and chosen != "torch" and export_problem(folder) is None:
        return _ort_encoder(folder, chosen, batch_size, quick_start, progress)
    # no sound export (or torch was asked for): the model is loaded in torch, unless its
    # weights cannot be had (offline), which is told before importing torch
    check_available(ModelSpec(model.name, model.pretrained) if isinstance(model, ModelId)
                    else model)
    from retriever.encoding.clip_encoder import ClipEncoder
    from retriever.encoding.models import load_model
    from retriever.encoding.onnx_export import supported

    with progress.task("loading the model in torch", None):
        loaded = load_model(ModelSpec(model.name, model.pretrained)
                            if isinstance(model, ModelId) else model)
    if chosen == "torch" or (chosen == "auto" and supported(loaded) is not None):
        return ClipEncoder(loaded, batch_size or 64)
    folder = export_dir(exports, loaded.model_id)
    if not _exported(loaded, folder, progress):
        return ClipEncoder(loaded, batch_size or 64)
    return _ort_encoder(folder, chosen, batch_size, quick_start, progress)


def _exported(loaded: LoadedModel, folder: Path, progress: Progress) -> bool:
    """Make `folder` a sound export of `loaded` (made again if damaged); False, with a note,
    when the cache cannot be written."""
    from retriever.encoding.onnx_export import export

    problem = export_problem(folder)
    if problem is None:
        return True
    try:
        with progress.task(f"exporting {loaded.model_id.name} to ONNX, once per model "
                           f"(~20 s for ViT-B-32)", None):
            export(loaded, folder)
    except OSError as err:
        note(f"cannot write the ONNX export {folder} ({_reason(err)}): encoding in torch "
             f"this time")
        return False
    if problem != MISSING:
        note(f"the ONNX export {folder} could not be used ({problem}): made again")
    _remove_stale_exports(folder)
    return True


def _ort_encoder(folder: Path, chosen: str, batch_size: int | None, quick_start: bool,
                 progress: Progress) -> OrtEncoder:
    int8 = chosen == "onnx-int8"
    if int8 and not quantized(folder):
        try:
            with progress.task("quantizing the image tower to int8 (once)", None):
                quantize(folder)
        except OSError as err:
            note(f"cannot write the int8 image tower in {folder} ({_reason(err)}): encoding "
                 f"images in fp32 this time")
            int8 = False
    return OrtEncoder(folder, batch_size, int8, quick_start)


def note(line: str) -> None:
    """One "note: ..." line on stderr (as `models.print_note`): what the user may not expect."""
    print(f"note: {line}", file=sys.stderr)


def _reason(err: OSError) -> str:
    return err.strerror or str(err) or type(err).__name__


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise BadSetting("backend", repr(backend), f"use one of {', '.join(BACKENDS)}")


def user_exports(settings: Settings) -> Path:
    """The user's export cache: $XDG_CACHE_HOME/retriever/onnx (`Settings.cache_dir`)."""
    return settings.cache_dir / EXPORTS_DIRNAME


def export_dir(exports: Path, model: ModelId) -> Path:
    """Where `model`'s export lives under `exports` (the user's: `user_exports`)."""
    return exports / cache_key(model)


def cache_key(model: ModelId) -> str:
    """Changes when the model's name or weights do (a file's size or mtime counts as weights)."""
    parts: list[object] = [FORMAT, model.name, model.pretrained]
    for value in (model.name, model.pretrained):
        try:
            stat = os.stat(value)
            parts += [stat.st_size, stat.st_mtime_ns]
        except (OSError, ValueError):
            pass  # a tag or hub id, not a file
    digest = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]
    return digest


def _remove_stale_exports(keep: Path) -> None:
    """Exports of the same model and weights names as `keep` (made before the weights file
    changed); other models' exports serve other indexes and stay."""
    names = _names(keep)
    try:
        others = list(keep.parent.iterdir())
    except OSError:
        return
    for other in others:
        if other != keep and other.is_dir() and not other.name.startswith(".") \
                and _names(other) == names:
            shutil.rmtree(other, ignore_errors=True)


def _names(folder: Path) -> tuple[str, str] | None:
    try:
        meta = read_json(folder / META)
        return meta["model"], meta["pretrained"]
    except (OSError, SmallFileError, KeyError, TypeError):
        return None
