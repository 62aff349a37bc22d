"""`OrtEncoder`: an exported model (see `retriever.encoding.onnx_export`) run by ONNX Runtime
on CPU.

Imports neither torch nor open_clip, so a text query starts in a fraction of a second. Each
tower's session is created on first use: a text query never loads the image tower.

An export is checked like an index file before it is used (`export_problem`): meta.json holds
each file's CRC-32 (`index.checksums`) and the CRC-32 of its own fields. Summing ViT-B-32's
~600 MB took 0.6 to 1.1 s on a busy 2-core machine (cached in memory), more than a whole
one-off query, so a file is summed once: verified.json then records its size, mtime, ctime and
inode, and while those stay the same the file is trusted without summing (a few stat calls).
Any write to a file changes its ctime (which no program can set back), so truncated,
overwritten or replaced files are summed again and caught; what is not caught is bit rot
beneath the file system. In a read-only cache every open sums.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from index.checksums import checksum
from retriever.encoding.cpu import plan
from retriever.encoding.encoders import Encoder
from retriever.encoding.hf_text import HfTokenizer, spec_problem
from retriever.encoding.pixels import PixelConfig
from retriever.encoding.specs import ModelId
from retriever.encoding.tokenizer import ClipTokenizer
from retriever.errors import SmallFileError
from retriever.jsonfile import read_json

# The export folder's files (written by retriever.encoding.onnx_export)
# bump when the files change meaning: older exports are then made again. 2: meta.json has the
# model's fingerprint; 3: meta.json has each file's checksum and its own
FORMAT = 3
META, TOKENIZER, VERIFIED = "meta.json", "tokenizer.json", "verified.json"
# visual.int8-7bit.onnx: the name changed with the 7-bit weights, so an 8-bit file made by an
# older version is never used again
VISUAL, TEXTUAL, VISUAL_INT8 = "visual.onnx", "textual.onnx", "visual.int8-7bit.onnx"
# every export has these; VISUAL_INT8 joins them in meta.json once quantized
EXPORT_FILES = (VISUAL, VISUAL + ".data", TEXTUAL, TEXTUAL + ".data", TOKENIZER)
MISSING = "no export"  # export_problem's answer for a folder that holds none


def is_export(directory: Path) -> bool:
    """A complete, sound export of the current format (see `export_problem`)."""
    return export_problem(directory) is None


def export_problem(directory: Path) -> str | None:
    """None when `directory` holds a sound export of the current format; else what is wrong
    with it (MISSING when there is none): meta.json unreadable or not matching its checksum, a
    file missing, not a regular file, or not the bytes its checksum was taken of."""
    try:
        meta = read_meta(directory)
    except FileNotFoundError:  # exports appear whole: a folder without meta.json is damaged
        return f"{META}: missing" if os.path.lexists(directory) else MISSING
    except SmallFileError as err:
        return f"{META}: {err.problem}"
    stamps, seen = _verified(directory), {}
    for name, expected in meta["files"].items():
        path = directory / name
        try:
            info = os.stat(path)
            if not stat.S_ISREG(info.st_mode):
                return f"{name}: not a regular file"
            seen[name] = [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]
            found = expected if stamps.get(name) == seen[name] else checksum(path)
        except OSError as err:
            return f"{name}: {err.strerror or type(err).__name__}"
        if found != expected:
            return f"{name}: checksum {found}, written as {expected}"
    if seen != stamps:
        _write_json(directory / VERIFIED, seen)  # best effort: a read-only cache sums each time
    return None


def read_meta(directory: Path) -> dict[str, Any]:
    """`directory`'s meta.json, if it is of the current format and matches its own checksum.
    FileNotFoundError when absent; SmallFileError naming what is wrong otherwise."""
    path = directory / META
    meta = read_json(path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SmallFileError(path, f"not an export of format {FORMAT}")
    if meta.get("checksum") != meta_checksum(meta):
        raise SmallFileError(path, "its contents do not match their checksum")
    files = meta.get("files")
    if not isinstance(files, dict) or not set(EXPORT_FILES) <= set(files) <= {
            *EXPORT_FILES, VISUAL_INT8}:
        raise SmallFileError(path, "does not list the export's files")
    if "tokenizer" in meta and spec_problem(meta["tokenizer"]) is not None:
        raise SmallFileError(path, f"tokenizer: {spec_problem(meta['tokenizer'])}")
    return meta


def write_meta(directory: Path, meta: dict[str, Any]) -> None:
    """Write meta.json in `directory`, with the checksum of its fields (atomically)."""
    if not _write_json(directory / META, {**meta, "checksum": meta_checksum(meta)}):
        raise OSError(f"cannot write {directory / META}")


def meta_checksum(meta: dict[str, Any]) -> str:
    """CRC-32 of meta.json's fields but "checksum", as "crc32:<hex>" (index.checksums')."""
    fields = json.dumps({k: v for k, v in meta.items() if k != "checksum"}, sort_keys=True)
    return f"crc32:{zlib.crc32(fields.encode()):08x}"


def _verified(directory: Path) -> dict[str, Any]:
    """verified.json: {file: [size, mtime ns, ctime ns, inode]} when its checksum was last
    found right; {} when absent or unreadable (every file is summed)."""
    try:
        stamps = read_json(directory / VERIFIED)
    except (OSError, SmallFileError):
        return {}
    return stamps if isinstance(stamps, dict) else {}


def _write_json(path: Path, value: Any) -> bool:
    """Write `value` to `path` through a temp file and a rename; False if that cannot be done."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        tmp.write_text(json.dumps(value, indent=1))
        os.replace(tmp, path)
        return True
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False


class OrtEncoder(Encoder):
    def __init__(self, directory: Path, batch_size: int | None = None, int8: bool = False,
                 quick_start: bool = False) -> None:
        """`batch_size`: None, this CPU's (`retriever.encoding.cpu.plan`). `int8`: use the int8
        image tower (`quantize`). `quick_start`: for a one-off query, skip weight prepacking,
        and the text session's graph fusions (basic optimizations only): ViT-B-32's text
        session takes ~20 ms of CPU to create instead of ~170 ms (~40 ms with fusions), and
        each run is slower (~22 ms instead of ~12 ms for a 5-word query)."""
        meta = read_meta(directory)
        self.directory = directory
        self.model_id = ModelId(meta["model"], meta["pretrained"])
        self.dim = int(meta["dim"])
        self.fingerprint = str(meta["fingerprint"])
        self.context_length = int(meta["context_length"])
        self.variable_length = bool(meta["variable_length"])
        self.pixels = PixelConfig.from_json(meta["pixels"])
        self.batch_size = batch_size or plan().batch
        self.threads = plan().encoder_threads
        self.int8 = int8
        self.quick_start = quick_start
        self._sessions: dict[str, Any] = {}
        # absent: CLIP's BPE; else a Hugging Face tokenizer's framing (`hf_text`)
        self.tokenizer_spec: dict[str, Any] | None = meta.get("tokenizer")
        self._tokenizer: ClipTokenizer | HfTokenizer | None = None
        self._pool: ThreadPoolExecutor | None = None  # the int8 tower's side-by-side calls

    @property
    def tokenizer(self) -> ClipTokenizer | HfTokenizer:
        if self._tokenizer is None and self.tokenizer_spec is not None:
            self._tokenizer = HfTokenizer(self.directory / TOKENIZER, self.context_length,
                                          self.tokenizer_spec)
        elif self._tokenizer is None:
            self._tokenizer = ClipTokenizer(self.directory / TOKENIZER, self.context_length)
        return self._tokenizer

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        if self.int8:
            return self._encode_int8(pixels)
        session = self._session(VISUAL)
        out = np.empty((len(pixels), self.dim), dtype=np.float32)
        for start in range(0, len(pixels), self.batch_size):
            batch = np.ascontiguousarray(pixels[start : start + self.batch_size], np.float32)
            out[start : start + len(batch)] = session.run(None, {"input": batch})[0]
        return _normalized(out)

    def _encode_int8(self, pixels: np.ndarray) -> np.ndarray:
        """One image per call: the int8 tower quantises activations with a scale computed per
        call over the whole input, so a batch would make each image's vector depend on the
        others beside it (up to 5e-3 apart on retriever-tiny). The calls run side by side, one
        single-threaded session call per core, which is as fast as batches of 8 on all cores
        (bench/RESULTS.md, "Encoder alone against indexing end to end")."""
        session = self._session(VISUAL_INT8, threads=1)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="int8")
        rows = np.ascontiguousarray(pixels, np.float32)

        def one(i: int) -> np.ndarray:
            return session.run(None, {"input": rows[i : i + 1]})[0][0]

        out = np.array(list(self._pool.map(one, range(len(rows)))), np.float32).reshape(
            len(rows), self.dim)
        return _normalized(out)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        session = self._session(TEXTUAL)
        ids = self.tokenizer(self.cut_texts(texts))
        for start in range(0, len(ids), self.batch_size):
            batch = ids[start : start + self.batch_size]
            # (n, L) padded; L = longest in the batch when the export allows it
            width = max(map(len, batch)) if self.variable_length else self.context_length
            tokens = np.full((len(batch), width), self.tokenizer.pad_id, dtype=np.int64)
            for row, seq in enumerate(batch):
                tokens[row, : len(seq)] = seq
            out[start : start + len(batch)] = session.run(None, {"input": tokens})[0]
        return _normalized(out)

    def count_tokens(self, text: str) -> int:
        return _count_tokens(self.tokenizer, text)

    def token_counter(self) -> Callable[[str], int]:
        return partial(_count_tokens, self.tokenizer)

    def _session(self, name: str, threads: int | None = None) -> Any:
        """`threads`: intra-op threads, None for every core the plan gives the encoder."""
        if name not in self._sessions:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads or self.threads
            # idle threads sleep instead of spinning: image decoding runs beside the encoder
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            if self.quick_start:
                options.add_session_config_entry("session.disable_prepacking", "1")
            if self.quick_start and name == TEXTUAL:  # constant folding, no fusions: run once
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            self._sessions[name] = ort.InferenceSession(
                str(self.directory / name), options, providers=["CPUExecutionProvider"])
        return self._sessions[name]


def quantize(directory: Path) -> Path:
    """`directory`/visual.int8.onnx: the image tower with int8 weights and dynamically quantised
    uint8 activations in its matrix products (bench/RESULTS.md). Made once, atomically.

    Weights use 7 bits ([-64, 63], ONNX Runtime's `reduce_range`). Without VNNI (AVX2, plain
    AVX-512) ONNX Runtime multiplies u8 x s8 with VPMADDUBSW, which adds each pair of products
    into a saturating int16: 2 x 255 x 127 = 64770 overflows it, and 8-bit weights gave vectors
    at cosine 0.9865 of fp32 on an AVX2 CPU. 2 x 255 x 64 = 32640 fits, so every x86-64
    kernel computes the exact integer product; VNNI (VPDPBUSD, 32-bit sums) loses nothing
    either way. `max_pair_sum` checks the bound on a written file. Its checksum joins meta.json's;
    OSError when the folder cannot be written."""
    target = directory / VISUAL_INT8
    if quantized(directory):
        return target
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = directory / f".{VISUAL_INT8}.{os.getpid()}"
    try:
        quantize_dynamic(directory / VISUAL, tmp, weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=True, op_types_to_quantize=["MatMul", "Gemm"])
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    meta = read_meta(directory)
    write_meta(directory, {**meta, "files": {**meta["files"], VISUAL_INT8: checksum(target)}})
    return target


def quantized(directory: Path) -> bool:
    """Whether the export in `directory` records an int8 image tower (checked with the rest)."""
    try:
        return VISUAL_INT8 in read_meta(directory)["files"]
    except (OSError, SmallFileError):
        return False


def max_pair_sum(model_path: Path) -> int:
    """The largest |w[2i]| + |w[2i+1]| over adjacent int8 weights along the reduced axis of
    any quantised matrix product in `model_path`, times 255 (the largest uint8 activation):
    the largest pair sum VPMADDUBSW can meet. <= 32767: no x86-64 kernel saturates."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    weights = {init.name: init for init in model.graph.initializer}
    worst = 0
    for node in model.graph.node:
        if node.op_type != "MatMulInteger":
            continue
        w = numpy_helper.to_array(weights[node.input[1]]).astype(np.int32)  # (K, N) int8
        w = np.abs(w[: len(w) // 2 * 2])
        worst = max(worst, int((w[0::2] + w[1::2]).max()) * 255)
    return worst


def _count_tokens(tokenizer: ClipTokenizer | HfTokenizer, text: str) -> int:
    return len(tokenizer.encode(text))


def _normalized(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
