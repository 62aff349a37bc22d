"""Zero-shot prompts: a label as the text tower reads it, averaged over prompt templates.

Used by `retriever tag` (retriever.library.tags) and zero-shot classification
(retriever.training.classification) alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from retriever.encoding.encoders import Encoder

# A small CLIP-style ensemble (CLIP's ImageNet prompts are 80 of this kind).
DEFAULT_TEMPLATES = ("a photo of {}.", "a picture of {}.", "an image of {}.",
                     "a close-up photo of {}.", "a photo of the {}.")


def label_vectors(encoder: Encoder, labels: Sequence[str],
                  templates: Sequence[str]) -> np.ndarray:
    """(labels, dim) unit vectors: each label's prompt vectors averaged, renormalised. A label
    is cut as a query is (`cut_text`) before it goes into the templates."""
    cut = encoder.cut_texts(labels)
    prompts = [t.replace("{}", label) for label in cut for t in templates]
    vectors = encoder.encode_texts(prompts).reshape(len(labels), len(templates), -1)
    mean = vectors.astype(np.float64).mean(axis=1)  # (labels, dim)
    return (mean / np.linalg.norm(mean, axis=1, keepdims=True)).astype(np.float32)
