"""Hugging Face tokenizers (SigLIP, SigLIP 2, multilingual text towers) without torch or
transformers: open_clip's `HFTokenizer`, twinned on the `tokenizers` library.

open_clip tokenizes these families through transformers' AutoTokenizer, which imports torch. An
ONNX export (`retriever.encoding.onnx_export`) saves the fast tokenizer's definition as its
tokenizer.json, and how open_clip framed it in meta.json's "tokenizer" (HF_FIELDS):

    {"kind": "hf", "clean": "canonicalize" | "lower" | "whitespace", "pad_id": int,
     "strip_sep_id": int | null}

`HfTokenizer` then gives the ids `HFTokenizer` gives: text cleaned as open_clip cleans it,
the tokenizer's own special tokens (its post-processor, saved in the json), cut to the context
length and padded to it with the padding id (these towers read every position: SigLIP pools the
last one, a transformers tower masks by the padding id). tests/test_families_text.py compares
the ids with open_clip's.
"""

from __future__ import annotations

import html
import string
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

HF_KIND = "hf"
HF_FIELDS = ("kind", "clean", "pad_id", "strip_sep_id")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def basic_clean(text: str) -> str:
    """open_clip's `basic_clean`; ftfy (slow to import) only runs where it can change text."""
    if not (text.isascii() and text.isprintable()) or "&" in text:
        import ftfy

        text = ftfy.fix_text(text)
    return html.unescape(html.unescape(text)).strip()


def _whitespace(text: str) -> str:
    return " ".join(basic_clean(text).split())


def _lower(text: str) -> str:
    return _whitespace(text).lower()


def _canonicalize(text: str) -> str:
    """big_vision's (open_clip's `canonicalize_text`): no punctuation, lower case."""
    text = basic_clean(text).replace("_", " ").translate(_PUNCTUATION).lower()
    return " ".join(text.split())


# open_clip's clean function names (`get_clean_fn`) -> the same cleaning here
CLEANERS: dict[str, Callable[[str], str]] = {
    "canonicalize": _canonicalize, "lower": _lower, "whitespace": _whitespace}


class HfTokenizer:
    def __init__(self, path: Path, context_length: int, spec: dict[str, Any]) -> None:
        """`path`: an export's tokenizer.json; `spec`: its meta.json "tokenizer" (above)."""
        from tokenizers import Tokenizer

        self.path = path
        self.context_length = context_length
        self.spec = dict(spec)
        self.pad_id = int(spec["pad_id"])
        self._clean = CLEANERS[spec["clean"]]
        self._strip = spec.get("strip_sep_id")
        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_padding()  # the rows are padded here, to the context length
        self._tokenizer.enable_truncation(max_length=context_length)
        self._counter: Any = None

    def __reduce__(self) -> tuple:
        """Pickled (to worker processes: `token_counter`) as its file, read again there."""
        return HfTokenizer, (self.path, self.context_length, self.spec)

    def encode(self, text: str) -> list[int]:
        """The ids of `text` without the special tokens, uncut (what `count_tokens` counts)."""
        if self._counter is None:  # a second instance: truncation is a tokenizer's setting
            self._counter = uncut(self._tokenizer)
        return list(self._counter.encode(self._clean(text), add_special_tokens=False).ids)

    def __call__(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text as open_clip's HFTokenizer gives it: (context length) ids, padded."""
        rows = []
        for found in self._tokenizer.encode_batch([self._clean(t) for t in texts]):
            ids = list(found.ids)
            if self._strip is not None:
                ids = [0 if i == self._strip else i for i in ids]
            rows.append(ids + [self.pad_id] * (self.context_length - len(ids)))
        return rows


def uncut(backend: Any) -> Any:
    """A copy of the `tokenizers.Tokenizer` `backend` that neither cuts nor pads. Its own copy:
    truncation is a tokenizer's state, which transformers sets on each call, so a thread
    counting tokens on the tokenizer another thread encodes with would change its cut."""
    from tokenizers import Tokenizer

    own = Tokenizer.from_str(backend.to_str())
    own.no_truncation()
    own.no_padding()
    return own


def token_counter(backend: Any, clean: Callable[[str], str]) -> Callable[[str], int]:
    """Tokens of a text cleaned by `clean`, without special tokens, on an `uncut` copy of
    `backend` (a fast tokenizer's `backend_tokenizer`). Picklable: worker processes count too."""
    return partial(_count, uncut(backend), clean)


def _count(tokenizer: Any, clean: Callable[[str], str], text: str) -> int:
    return len(tokenizer.encode(clean(text), add_special_tokens=False).ids)


def spec_problem(spec: Any) -> str | None:
    """Why a meta.json "tokenizer" field cannot be used, or None."""
    if not isinstance(spec, dict) or spec.get("kind") != HF_KIND:
        return "not a Hugging Face tokenizer's description"
    if spec.get("clean") not in CLEANERS or not isinstance(spec.get("pad_id"), int):
        return "its cleaning or padding id is unknown"
    strip = spec.get("strip_sep_id")
    return None if strip is None or isinstance(strip, int) else "its separator id is not a number"
