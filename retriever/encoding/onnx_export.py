"""Export an open_clip model's two towers to ONNX, for `retriever.encoding.ort_encoder`
(needs torch).

One export is a folder (see `retriever.encoding.backends` for where it lives):

    visual.onnx  + visual.onnx.data     image tower: (n, 3, S, S) float32 -> (n, dim)
    textual.onnx + textual.onnx.data    text tower:  (n, L) int64 token ids -> (n, dim)
    tokenizer.json                      the CLIP BPE for `retriever.encoding.tokenizer`, or a
                                        Hugging Face tokenizer's for `.hf_text`: no torch
    meta.json                           model id, dim, context length, pixel config, each file's
                                        CRC-32 and its own (`ort_encoder.export_problem`)
    verified.json                       when each file's checksum was last found right
    visual.int8-7bit.onnx               only once `--backend onnx-int8` asked for it (quantize)

Weights sit in `.data` files beside each graph: ONNX Runtime maps them instead of copying them
out of a protobuf, which makes a text-only session start in ~0.1 s instead of ~0.7 s and keeps
untouched rows of the 49k-token embedding table out of memory.

The text tower takes L = the longest text's length, not the full context. CLIP's text
transformer is causal and reads its output at the end-of-text token (the highest id), so the
positions after it never change the result; a 5-token query then costs 5/77 of a padded one.
Models without that structure are exported at full context length.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import open_clip
import torch

from index.checksums import checksum
from retriever.encoding.checkpoints import model_fingerprint
from retriever.encoding.hf_text import HF_KIND
from retriever.encoding.models import LoadedModel
from retriever.encoding.ort_encoder import (
    EXPORT_FILES,
    FORMAT,
    TEXTUAL,
    TOKENIZER,
    VISUAL,
    is_export,
    write_meta,
)
from retriever.encoding.pixels import PixelConfig
from retriever.encoding.tokenizer import tokenizer_json
from retriever.errors import UsageError

OPSET = 18


class _Visual(torch.nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)


class _Text(torch.nn.Module):
    """encode_text on (n, L) ids with L <= context: causal CLIP text towers only."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        m, length = self.model, ids.shape[1]
        x = m.token_embedding(ids) + m.positional_embedding[:length]  # (n, L, width)
        x = m.transformer(x, attn_mask=m.attn_mask[:length, :length])
        x = m.ln_final(x)
        x = x[torch.arange(x.shape[0]), ids.argmax(dim=-1)]  # at end-of-text: (n, width)
        return x @ m.text_projection


class _FullText(torch.nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(ids)


def supported(loaded: LoadedModel) -> str | None:
    """None when the model can be exported, else why not."""
    tokenizer = loaded.tokenizer
    if isinstance(tokenizer, open_clip.tokenizer.HFTokenizer):
        why = _hf_problem(tokenizer)
        if why is not None:
            return why
    elif not isinstance(tokenizer, open_clip.tokenizer.SimpleTokenizer):
        return f"its tokenizer is {type(tokenizer).__name__}, not CLIP's BPE nor a Hugging Face one"
    elif getattr(tokenizer, "reduction_fn", None) is not None or \
            getattr(tokenizer.clean_fn, "__name__", "") != "_clean_lower":
        return "its tokenizer cleans or reduces text differently from CLIP's"
    try:
        PixelConfig.from_open_clip(open_clip.get_model_preprocess_cfg(loaded.model))
    except (KeyError, ValueError) as err:
        return str(err)
    return None


def export(loaded: LoadedModel, directory: Path) -> Path:
    """Write the export folder `directory` (atomically: all of it or nothing) and return it;
    an unsound one there is replaced. OSError when the cache cannot be written (read-only,
    not a folder, full)."""
    why = supported(loaded)
    if why is not None:
        raise UsageError(f"{loaded.model_id.name} cannot run on ONNX Runtime ({why}): "
                         f"pass --backend torch")
    directory.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=directory.parent))
    training = loaded.model.training
    try:
        model = loaded.model.float().cpu().eval()
        pixels = PixelConfig.from_open_clip(open_clip.get_model_preprocess_cfg(model))
        context = loaded.context_length
        s = pixels.size
        _export(_Visual(model), torch.randn(2, 3, s, s), work / VISUAL)
        text, ids, variable = _text_tower(loaded.tokenizer, model)
        _export(text, ids, work / TEXTUAL, context if variable else None)
        framing = _write_tokenizer(loaded.tokenizer, work / TOKENIZER)
        meta = {"format": FORMAT, "model": loaded.model_id.name,
                "pretrained": loaded.model_id.pretrained, "dim": loaded.dim,
                "fingerprint": model_fingerprint(loaded),
                "context_length": context, "variable_length": variable,
                **({"tokenizer": framing} if framing else {}),
                "pixels": pixels.to_json(), "opset": OPSET,
                "torch": torch.__version__, "open_clip": open_clip.__version__,
                "files": {name: checksum(work / name) for name in EXPORT_FILES}}
        write_meta(work, meta)
        if directory.is_symlink() or (directory.exists() and not is_export(directory)):
            _remove(directory)  # an older format's leftovers, or a damaged export
        try:
            os.replace(work, directory)
        except OSError:  # another process exported the same model first: keep theirs
            if not is_export(directory):
                raise
    finally:  # the exporters leave the module in training mode: give it back as it came
        loaded.model.to(loaded.device).train(training)
        shutil.rmtree(work, ignore_errors=True)
    return directory


def _text_tower(tokenizer: Any, model: Any) -> tuple[torch.nn.Module, torch.Tensor, bool]:
    """The text tower to export, example ids (2, L), and whether L may vary (see the module
    docstring). A Hugging Face tokenizer's towers read every position (SigLIP pools the last,
    a transformers tower masks by the padding id): the full context, padded as open_clip pads."""
    if isinstance(tokenizer, open_clip.tokenizer.HFTokenizer):
        return _FullText(model), tokenizer(["a photo of a cat", "a"]), False
    variable = _causal_argmax(model)
    ids = torch.zeros(2, 8 if variable else tokenizer.context_length, dtype=torch.long)
    ids[:, 0], ids[:, 1:5], ids[:, 5] = tokenizer.sot_token_id, 320, tokenizer.eot_token_id  # "a"
    return (_Text(model) if variable else _FullText(model)), ids, variable


# open_clip's clean functions (`get_clean_fn`) by name -> hf_text.CLEANERS' names
_CLEAN_NAMES = {"_clean_canonicalize": "canonicalize", "_clean_lower": "lower",
                "_clean_whitespace": "whitespace"}


def _hf_problem(tokenizer: Any) -> str | None:
    """Why `retriever.encoding.hf_text` cannot tokenize as this HFTokenizer does, or None."""
    hf = tokenizer.tokenizer
    if tokenizer.tokenizer_mode:
        return f"its tokenizer mode {tokenizer.tokenizer_mode!r} frames texts its own way"
    if getattr(hf, "backend_tokenizer", None) is None:
        return f"its tokenizer {type(hf).__name__} has no fast (tokenizers) definition"
    if getattr(tokenizer.clean_fn, "__name__", "") not in _CLEAN_NAMES:
        return "its tokenizer cleans text in a way retriever does not know"
    if hf.pad_token_id is None or (hf.padding_side, hf.truncation_side) != ("right", "right"):
        return "its tokenizer pads or cuts texts other than at their end"
    return None


def _write_tokenizer(tokenizer: Any, path: Path) -> dict[str, Any] | None:
    """Write the tokenizer.json that `ort_encoder` reads; meta.json's "tokenizer" for a Hugging
    Face tokenizer (`retriever.encoding.hf_text`), None for CLIP's BPE."""
    if isinstance(tokenizer, open_clip.tokenizer.SimpleTokenizer):
        merges = [pair for pair, _ in sorted(tokenizer.bpe_ranks.items(), key=lambda kv: kv[1])]
        path.write_text(tokenizer_json(tokenizer.encoder, merges))
        return None
    hf = tokenizer.tokenizer
    path.write_text(hf.backend_tokenizer.to_str(), encoding="utf-8")
    return {"kind": HF_KIND, "clean": _CLEAN_NAMES[tokenizer.clean_fn.__name__],
            "pad_id": int(hf.pad_token_id),
            "strip_sep_id": hf.sep_token_id if tokenizer.strip_sep_token else None}


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _causal_argmax(model: Any) -> bool:
    return (isinstance(model, open_clip.CLIP) and getattr(model, "text_pool_type", "") == "argmax"
            and getattr(model, "attn_mask", None) is not None
            and getattr(model, "text_projection", None) is not None
            and not isinstance(model.text_projection, torch.nn.Linear))


def _export(module: torch.nn.Module, example: torch.Tensor, path: Path,
            max_tokens: int | None = None) -> None:
    """`path` + `path.data` (weights). The image tower goes through the TorchScript exporter
    (as rclip's converter does; its graph runs fastest in ONNX Runtime here); the text tower,
    whose length varies, through torch.export, which keeps the length symbolic where the
    TorchScript exporter bakes the traced length into attention's reshapes."""
    import onnx

    graph = path.with_suffix(".tmp.onnx")
    # With gradients on: under no_grad, nn.MultiheadAttention takes a fused fast path that the
    # TorchScript exporter cannot translate.
    with warnings.catch_warnings(), torch.inference_mode(False), torch.enable_grad(), \
            contextlib.redirect_stdout(io.StringIO()):  # torch.export's progress lines
        warnings.simplefilter("ignore")  # the exporters' deprecation notes
        if max_tokens:  # (n, L) ids, 2 <= L <= context
            dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("tokens", min=2,
                                                                     max=max_tokens)}
            torch.onnx.export(module, (example,), str(graph), input_names=["input"],
                              output_names=["output"], opset_version=OPSET, dynamo=True,
                              dynamic_shapes=(dims,), external_data=True)
        else:
            torch.onnx.export(module, (example,), str(graph), input_names=["input"],
                              output_names=["output"], opset_version=OPSET, dynamo=False,
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    proto = onnx.load(str(graph))  # reads graph.data too, if any
    for leftover in (graph, graph.with_name(graph.name + ".data")):
        leftover.unlink(missing_ok=True)
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)
