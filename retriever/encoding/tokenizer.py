"""open_clip's CLIP tokenizer without torch: the same ids from Hugging Face `tokenizers`.

open_clip's `SimpleTokenizer` imports torch, which costs a cold text query seconds. The BPE
vocabulary and merges it uses are written once, at ONNX export
(`retriever.encoding.onnx_export`), as a
`tokenizer.json` that the Rust `tokenizers` library loads in milliseconds. Text is cleaned the
way open_clip cleans it (ftfy, HTML unescape twice, whitespace collapsed, lower case); tests
compare the ids with open_clip's on mixed text.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

# open_clip's SimpleTokenizer word pattern (it matches case-insensitively; text is lowered
# first)
WORDS = (r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
         r"""[^\s\p{L}\p{N}]+""")
END_OF_WORD = "</w>"


class ClipTokenizer:
    def __init__(self, path: Path, context_length: int) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(path))
        self.context_length = context_length
        self.sot: int = self._tokenizer.token_to_id("<start_of_text>")  # type: ignore[assignment]
        self.eot: int = self._tokenizer.token_to_id("<end_of_text>")  # type: ignore[assignment]

    def encode(self, text: str) -> list[int]:
        """BPE ids of `text`, without the start/end markers."""
        return self._tokenizer.encode(clean(text)).ids

    def __call__(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text as [sot, ids..., eot], cut to the context length like open_clip does."""
        keep = self.context_length - 2
        batch = self._tokenizer.encode_batch([clean(t) for t in texts])
        return [[self.sot, *e.ids[:keep], self.eot] for e in batch]


def clean(text: str) -> str:
    """open_clip's `_clean_lower`. ftfy (slow to import) only runs where it can change text."""
    if not (text.isascii() and text.isprintable()) or "&" in text:
        import ftfy

        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return " ".join(text.split()).strip().lower()


def tokenizer_json(vocab: dict[str, int], merges: Sequence[tuple[str, str]]) -> str:
    """The `tokenizers` definition of CLIP's byte-level BPE: words by open_clip's pattern,
    bytes mapped to printable characters, `</w>` closing each word's last symbol."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    bpe = models.BPE(vocab=dict(vocab), merges=list(merges), end_of_word_suffix=END_OF_WORD)
    tokenizer = Tokenizer(bpe)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([  # type: ignore[assignment]
        pre_tokenizers.Split(Regex(WORDS), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    return tokenizer.to_str()
