"""Which runtime encodes: torch, or the model exported to ONNX Runtime (fp32, or int8 images).

    auto       a new index: torch with fp16 autocast when a CUDA GPU is present (precision
               "fp16"); else ONNX Runtime with the int8 image tower ("int8"), or fp32 ("fp32")
               for a family in AUTO_FP32 and for a model ONNX cannot run (then torch). An
               existing index: the precision it recorded (`choose`), so its vectors never mix
    torch      open_clip in torch (`retriever.encoding.clip_encoder`): fp32, fp16 on CUDA
    onnx       the towers exported to ONNX, fp32: vectors equal torch's (cosine >= 0.9999,
               tested)
    onnx-int8  the image tower with int8 matrix products (7-bit weights: the same vectors on
               every x86 kernel): 2.55x faster image encoding on a 2-core Xeon with VNNI;
               on trained models (3 seeds), held-out recall within 0.3 point of fp32 and
               top-10 agreement 0.989-0.991 (bench/RESULTS.md, "int8 image vectors on a
               trained model")

Texts are encoded in fp32 (or fp16 on CUDA) whatever the precision: int8 is the image tower's
alone. An index records the precision that made its vectors (`precision_of`; a store made
before it was recorded holds fp32 ones). int8 vectors and float ones (fp32, fp16) are not
mixed: a backend of the other kind on an existing index is refused (`PrecisionMismatch`,
whose fix is --reindex), and an image query is encoded as the index's images were, so a photo
finds itself. fp16 and fp32 vectors are one kind, within rounding of each other (bench/gpu.py
measures the cosine), so an index made on a GPU is kept current on a CPU and back.

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
from retriever.encoding.families import family_of
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
from retriever.errors import BadSetting, PrecisionMismatch, SmallFileError
from retriever.jsonfile import read_json
from retriever.progress import NullProgress, Progress

if TYPE_CHECKING:
    from retriever.encoding.models import LoadedModel
    from retriever.settings import Settings

BACKENDS = ("auto", "torch", "onnx", "onnx-int8")
EXPORTS_DIRNAME = "onnx"
PRECISIONS = ("fp32", "int8", "fp16")  # what an index records (index.records.ModelRecord)
# The policy hook: families (`family_of`) for which `auto` makes a new index's vectors in fp32
# on a CPU, not int8, because int8 image vectors cost them more than one point of held-out
# recall (bench/int8_quality.py; its table in bench/RESULTS.md). family -> the measurement.
# "clip" is measured and stays int8: retriever-tiny trained on 3 seeds loses at most 0.3 point
# (R@5, seed 0), top-10 agreement >= 0.989. A family not measured yet is not listed: add it
# with its number once it is (`python -m bench.int8_quality --model CONFIG`).
AUTO_FP32: dict[str, str] = {}


def open_encoder(model: ModelSpec | ModelId, backend: str, exports: Path,
                 batch_size: int | None = None, quick_start: bool = False,
                 progress: Progress | None = None, gpu: bool = False,
                 recorded: str | None = None) -> Encoder:
    """An encoder for `model` (what was asked, or what an index recorded) on `backend`.

    `exports`: the export cache (the user's: `user_exports`); `gpu`: this machine shows CUDA a
    GPU (`Settings.gpu`); `recorded`: the precision of the index's vectors, which "auto"
    keeps (None: a new index, "auto" picks by `auto_precision`; see `choose`); `batch_size`:
    images or texts per call, None for this CPU's (`retriever.encoding.cpu.plan`; torch: 64);
    `quick_start`: a one-off query (see `OrtEncoder`); `progress` shows the export and
    quantization steps, which take seconds."""
    check_backend(backend)
    progress = progress or NullProgress()
    if isinstance(model, ModelId):
        chosen = choose(backend, model.name, gpu, recorded)
        folder = export_dir(exports, model)
        if chosen != "torch" and export_problem(folder) is None:
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
    chosen = choose(backend, loaded.model_id.name, gpu, recorded)
    # "auto" runs a model ONNX cannot (another tokenizer) in torch, fp32
    if chosen == "torch" or (backend == "auto" and supported(loaded) is not None):
        return ClipEncoder(loaded, batch_size or 64)
    folder = export_dir(exports, loaded.model_id)
    if not _exported(loaded, folder, progress):
        return ClipEncoder(loaded, batch_size or 64)
    return _ort_encoder(folder, chosen, batch_size, quick_start, progress)


def choose(backend: str, name: str, gpu: bool, recorded: str | None) -> str:
    """What runs `backend` for the model architecture `name`: "torch", "onnx" or "onnx-int8".
    "auto" keeps the `recorded` precision of an index (int8: ONNX int8; fp32 or fp16: torch
    on a GPU, else ONNX fp32), and for a new index (`recorded` None) makes
    `auto_precision`'s."""
    if backend != "auto":
        return backend
    precision = recorded or auto_precision(name, gpu)
    if precision == "int8":
        return "onnx-int8"
    return "torch" if gpu else "onnx"


def auto_precision(name: str, gpu: bool) -> str:
    """The precision "auto" makes a new index's vectors in: fp16 on a GPU (torch autocast);
    on a CPU, int8 unless the model's family is in AUTO_FP32."""
    if gpu:
        return "fp16"
    return "fp32" if family_of(name) in AUTO_FP32 else "int8"


def backend_precision(backend: str, gpu: bool) -> str | None:
    """The precision `backend` encodes images in; None for "auto" (it follows the index)."""
    return {"torch": "fp16" if gpu else "fp32", "onnx": "fp32", "onnx-int8": "int8"}.get(backend)


def mix(a: str, b: str) -> bool:
    """Whether vectors of precisions `a` and `b` may share an index: int8 with int8, and the
    float ones (fp32, fp16) with each other."""
    return (a == "int8") == (b == "int8")


def check_precision(directory: Path, backend: str, gpu: bool, recorded: str,
                    purpose: str) -> None:
    """Refuse (`PrecisionMismatch`), before a model loads, an explicit `backend` whose
    vectors would not mix with the index's `recorded` ones; `purpose`: "index" or "search"."""
    check_backend(backend)
    made = backend_precision(backend, gpu)
    if made is not None:
        check_mix(directory, recorded, made, backend, purpose)


def check_mix(directory: Path, recorded: str, made: str, backend: str | None = None,
              purpose: str = "index") -> None:
    """`PrecisionMismatch` when vectors `made` would not mix with the index's `recorded` ones
    (`mix`): the index's last line of defence, whatever chose the encoder."""
    if not mix(made, recorded):
        raise PrecisionMismatch(directory, recorded, made, backend, purpose)


def precision_of(encoder: Encoder) -> str:
    """The precision `encoder` makes image vectors in, what an index records: "int8" (the
    ONNX int8 image tower), "fp16" (torch on CUDA, autocast) or "fp32" (the rest)."""
    if isinstance(encoder, OrtEncoder):
        return "int8" if encoder.int8 else "fp32"
    if "retriever.encoding.clip_encoder" in sys.modules:  # else no ClipEncoder exists
        from retriever.encoding.clip_encoder import ClipEncoder

        if isinstance(encoder, ClipEncoder) and encoder.loaded.device.type == "cuda":
            return "fp16"
    return "fp32"


def made_by(recorded: str | None) -> dict[str, str | bool]:
    """What `retriever info` shows of an index's vectors: their precision (fp32 for a store
    made before it was recorded: `recorded` False), and the backend that makes such vectors."""
    backend = {"int8": "onnx-int8", "fp16": "torch on a CUDA GPU"}.get(
        recorded or "fp32", "onnx or torch")
    return {"precision": recorded or "fp32", "backend": backend, "recorded": bool(recorded)}


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
