"""Encoders: images and texts in, L2-normalised float32 vectors of one shared space out.

`Encoder` is the whole interface the rest of retriever relies on, and imports no torch.
`retriever.encoding.clip_encoder.ClipEncoder` runs an open_clip model in torch (the GPU path, and
training); `retriever.encoding.ort_encoder.OrtEncoder` runs the same model exported to ONNX
Runtime (the
CPU path, no torch import). `retriever.encoding.backends` picks one. Both take the same preprocessed
pixels (`retriever.encoding.pixels`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from retriever.encoding.pixels import PixelConfig
from retriever.encoding.specs import ModelId
from retriever.encoding.tokenizer import cut_text


@dataclass(frozen=True)
class InputSpec:
    """What making an encoder's input from files takes, without the model: its pixels and how
    it counts tokens (passages are cut to fit). Picklable: readers in other processes (the Ray
    engine's read tasks) are given one."""

    pixels: PixelConfig
    count_tokens: Callable[[str], int]  # a text's tokens, without the start/end markers
    text_budget: int  # tokens one passage may hold


class Encoder(ABC):
    """Maps images and texts into one space. Vectors are (n, dim) float32 with unit L2 norm."""

    model_id: ModelId
    dim: int
    fingerprint: str  # sha256 of config + weights (encoding.checkpoints.model_fingerprint)
    context_length: int  # tokens a text may have, start and end markers included
    pixels: PixelConfig  # how images become the model's input

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(n, 3, S, S) float32 from `self.pixels` -> (n, dim)."""
        raise NotImplementedError(f"{type(self).__name__} encodes PIL images only")

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.encode_pixels(self.pixels.batch(list(images)))

    @abstractmethod
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (n, dim); each is cut first (`cut_texts`), then to the context's tokens."""

    def cut_texts(self, texts: Sequence[str]) -> list[str]:
        return [cut_text(text, self.context_length) for text in texts]

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes, without the start/end markers the encoder adds."""

    def token_counter(self) -> Callable[[str], int]:
        """`count_tokens` holding the tokenizer but not the model, to pickle (`input_spec`)."""
        return self.count_tokens

    def input_spec(self) -> InputSpec:
        return InputSpec(self.pixels, self.token_counter(), self.text_budget)

    @property
    def text_budget(self) -> int:
        """Tokens one passage may hold: the context less the start and end markers."""
        return self.context_length - 2
