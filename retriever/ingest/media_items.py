"""Items beyond one per image and passages per text: the frames of a video (kind `video`, each at
its moment) and the words read in an image (kind `image-text`, items of that image's file).

The `read_*` functions run in the reader threads (`readers`), under the per-file time limit
(decoding, OCR: the slow parts); the `*_items` functions encode what they read, on the encoder's
path.
"""

from __future__ import annotations

from dataclasses import replace
from typing import BinaryIO

import numpy as np

from index.kinds import IMAGE_TEXT, VIDEO
from index.records import FileRecord, ItemRecord
from retriever.encoding.encoders import Encoder, InputSpec
from retriever.encoding.pixels import PixelConfig
from retriever.errors import ImageError
from retriever.media.formats import name_of
from retriever.media.images import DEFAULT_MAX_PIXELS, open_image
from retriever.media.ocr import read_words
from retriever.media.passages import Passage, split_passages
from retriever.media.video import VideoOptions, sample_frames

Frames = list[tuple[float, np.ndarray]]  # (seconds, (3, S, S) float32 model input)
# OCR passages follow the image's own item (position 0) in their file
FIRST_WORDS_POSITION = 1


def read_video(fh: BinaryIO, record: FileRecord, pixels: PixelConfig, options: VideoOptions,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[FileRecord, Frames]:
    """The sampled frames of a video as model input, and its record with the video's size
    (as shown: a portrait phone video is taller than wide)."""
    video = sample_frames(fh, options, pixels.size, max_pixels)
    frames = [(frame.time, pixels.preprocess(frame.image)) for frame in video.frames]
    return replace(record, width=video.width, height=video.height), frames


def video_items(frames: Frames, encoder: Encoder) -> list[ItemRecord]:
    vectors = encoder.encode_pixels(np.stack([p for _, p in frames]))  # (n frames, dim)
    return [ItemRecord(VIDEO, i, None, vector, time)
            for i, ((time, _), vector) in enumerate(zip(frames, vectors, strict=True))]


def read_image_words(fh: BinaryIO, spec: InputSpec, max_pixels: int) -> list[Passage]:
    """The words Tesseract reads in the image, cut into passages the text encoder takes."""
    fh.seek(0)
    try:
        words = read_words(open_image(fh, max_pixels))
    except ImageError as err:  # Tesseract failed on it: name the file
        raise ImageError(f"{name_of(fh)}: {err}") from None
    return split_passages(words, spec.count_tokens, spec.text_budget) if words else []


def word_items(passages: list[Passage], encoder: Encoder) -> list[ItemRecord]:
    if not passages:
        return []
    vectors = encoder.encode_texts([p.text for p in passages])  # (n passages, dim)
    return [ItemRecord(IMAGE_TEXT, FIRST_WORDS_POSITION + p.position, p.text, vector)
            for p, vector in zip(passages, vectors, strict=True)]
