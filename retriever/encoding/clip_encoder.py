"""`ClipEncoder`: an open_clip model run by torch (CUDA with fp16 autocast, or CPU)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import numpy as np
import open_clip
import torch

from retriever.encoding.checkpoints import model_fingerprint
from retriever.encoding.encoders import Encoder
from retriever.encoding.hf_text import token_counter
from retriever.encoding.models import LoadedModel
from retriever.encoding.pixels import PixelConfig


class ClipEncoder(Encoder):
    def __init__(self, loaded: LoadedModel, batch_size: int = 64) -> None:
        self.loaded = loaded
        self.model_id = loaded.model_id
        self.dim = loaded.dim
        self.context_length = loaded.context_length
        self.batch_size = batch_size
        self._hf_counter: Callable[[str], int] | None = None
        self.batches_run = 0  # forward passes so far; tests count batching with it
        self.pixels = PixelConfig.from_open_clip(open_clip.get_model_preprocess_cfg(loaded.model))

    @property
    def fingerprint(self) -> str:  # type: ignore[override]
        """Of the weights as they are now (training changes them): computed on each call."""
        return model_fingerprint(self.loaded)

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self._encode(list(torch.from_numpy(pixels)), self.loaded.model.encode_image)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        tokens = list(self.loaded.tokenizer(self.cut_texts(texts))) if texts else []
        return self._encode(tokens, self.loaded.model.encode_text)

    def count_tokens(self, text: str) -> int:
        return self.token_counter()(text)

    def token_counter(self) -> Callable[[str], int]:
        tokenizer = self.loaded.tokenizer
        if hasattr(tokenizer, "encode"):  # open_clip's SimpleTokenizer: BPE ids without markers
            return partial(_count_tokens, tokenizer)
        if self._hf_counter is None:  # HF: on a copy of its own (hf_text.token_counter)
            self._hf_counter = token_counter(tokenizer.tokenizer.backend_tokenizer,
                                             tokenizer.clean_fn)
        return self._hf_counter

    def _encode(self, inputs: list[torch.Tensor], forward) -> np.ndarray:
        out = np.empty((len(inputs), self.dim), dtype=np.float32)
        for start, batch in _batches(inputs, self.batch_size):
            x = torch.stack(batch).to(self.loaded.device, non_blocking=True)
            with torch.inference_mode(), _autocast(self.loaded.device):
                features = forward(x)
            features = torch.nn.functional.normalize(features.float(), dim=-1)
            out[start : start + len(batch)] = features.cpu().numpy()
            self.batches_run += 1
        return out


def _count_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer.encode(text))


def _batches(items: list, size: int) -> Iterator[tuple[int, list]]:
    for start in range(0, len(items), size):
        yield start, items[start : start + size]


def _autocast(device: torch.device):
    """Mixed precision on CUDA (roughly 2x encode throughput); plain fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()
