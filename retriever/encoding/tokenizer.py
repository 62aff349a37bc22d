"""open_clip's CLIP tokenizer without torch, and without building its whole merge table.

open_clip's `SimpleTokenizer` imports torch, which costs a cold text query seconds. The BPE
vocabulary and merges it uses are written once, at ONNX export
(`retriever.encoding.onnx_export`), as a `tokenizer.json` in the format of Hugging Face
`tokenizers`. Loading that as a `tokenizers.Tokenizer` builds all 49k merges in Rust: ~100 ms
of a ~0.5 s one-off query. Instead, the words are split as that tokenizer splits them (its own
pre-tokenizer, `pre_tokenizer()`, the one `tokenizer_json` writes into the file), and each word
is merged in Python, lowest-ranked pair first as every BPE merges, with a dict lookup per pair.
The vocabulary and merges are read from `tokenizer.bpe`, a plain-text copy of the json's that
is written beside it on first use (~10 ms to read, against ~40 ms to parse the json).
Text is cleaned the way open_clip cleans it (ftfy, HTML unescape twice, whitespace collapsed,
lower case). A speed twin (README, Architecture): tests compare the ids with open_clip's
(tests/test_onnx.py) and with `tokenizers`' own (tests/test_tokenizer.py); bench/twins.py
measures what it saves.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from retriever.errors import SmallFileError
from retriever.jsonfile import read_small

if TYPE_CHECKING:
    from tokenizers.pre_tokenizers import PreTokenizer

# open_clip's SimpleTokenizer word pattern (it matches case-insensitively; text is lowered
# first)
WORDS = (r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
         r"""[^\s\p{L}\p{N}]+""")
END_OF_WORD = "</w>"
# tokenizer.bpe's first line: "retriever-bpe FORMAT <json bytes> <json mtime ns> <tokens>
# <merges> <crc32 hex of the rest>", then the tokens in id order and the merges ("a b") in rank
# order, one a line. Byte-level tokens hold no whitespace, so neither separator can occur in one.
# 2: the CRC-32 (a damaged copy is written again, not used)
BPE_FORMAT = 2
MAX_BPE_BYTES = 16 << 20  # CLIP's is ~0.9 MB
WORD_CACHE = 100_000  # words remembered with their ids (a corpus' vocabulary), then forgotten
# A text (a query, a tag label, a caption, a class name) is cut to this many characters per
# context token before tokenizing: a BPE token covers at least one character, so this keeps every
# token the model can see unless the text is mostly whitespace, and a 20 MB text costs what a
# page does (CLIP's BPE takes ~20 s over one 100,000-letter word).
CHARS_PER_TOKEN = 32


def cut_text(text: str, context_length: int) -> str:
    """`text` as far as a model reading `context_length` tokens can see it (CHARS_PER_TOKEN)."""
    return text[: CHARS_PER_TOKEN * context_length]


class ClipTokenizer:
    pad_id = 0  # what fills a row after the end-of-text id

    def __init__(self, path: Path, context_length: int) -> None:
        """`path`: an export's tokenizer.json."""
        self.path = path
        self.context_length = context_length
        tokens, merges = bpe_tables(path)
        self._ids = dict(zip(tokens, range(len(tokens)), strict=True))
        self._ranks = dict(zip(merges, range(len(merges)), strict=True))  # "a b" -> rank
        self._words = pre_tokenizer()
        self._known: dict[str, list[int]] = {}  # word -> its ids
        self.sot = self._ids["<start_of_text>"]
        self.eot = self._ids["<end_of_text>"]

    def __reduce__(self) -> tuple:
        """Pickled (to worker processes: `token_counter`) as its file, read again there."""
        return ClipTokenizer, (self.path, self.context_length)

    def encode(self, text: str) -> list[int]:
        """BPE ids of `text`, without the start/end markers."""
        return [i for word, _ in self._words.pre_tokenize_str(clean(text))
                for i in self._word_ids(word)]

    def __call__(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text as [sot, ids..., eot], cut to the context length like open_clip does."""
        keep = self.context_length - 2
        return [[self.sot, *self.encode(text)[:keep], self.eot] for text in texts]

    def _word_ids(self, word: str) -> list[int]:
        ids = self._known.get(word)
        if ids is None:
            if len(self._known) >= WORD_CACHE:
                self._known.clear()
            ids = self._known[word] = [self._ids[s] for s in merged(word, self._ranks)]
        return ids


def merged(word: str, ranks: dict[str, int]) -> list[str]:
    """The symbols of one pre-tokenized `word`: its characters, `</w>` closing the last, merged
    as BPE merges them: the adjacent pair of lowest rank, everywhere it occurs left to right,
    again until no adjacent pair has a rank."""
    symbols = [*word[:-1], word[-1] + END_OF_WORD]
    while len(symbols) > 1:
        rank, first, second = min((ranks.get(f"{a} {b}", math.inf), a, b)
                                  for a, b in zip(symbols, symbols[1:], strict=False))
        if rank == math.inf:
            break
        out, i = [], 0
        while i < len(symbols):
            if symbols[i] == first and i + 1 < len(symbols) and symbols[i + 1] == second:
                out.append(first + second)
                i += 2
            else:
                out.append(symbols[i])
                i += 1
        symbols = out
    return symbols


def clean(text: str) -> str:
    """open_clip's `_clean_lower`. ftfy (slow to import) only runs where it can change text."""
    if not (text.isascii() and text.isprintable()) or "&" in text:
        import ftfy

        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return " ".join(text.split()).strip().lower()


def pre_tokenizer() -> PreTokenizer:
    """CLIP's words: open_clip's pattern, each word's UTF-8 bytes mapped to printable
    characters (GPT-2's byte-level alphabet, as open_clip's `bytes_to_unicode`)."""
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(WORDS), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def tokenizer_json(vocab: dict[str, int], merges: Sequence[tuple[str, str]]) -> str:
    """The `tokenizers` definition of CLIP's byte-level BPE: words by `pre_tokenizer()`,
    `</w>` closing each word's last symbol."""
    from tokenizers import Tokenizer, models

    bpe = models.BPE(vocab=dict(vocab), merges=list(merges), end_of_word_suffix=END_OF_WORD)
    tokenizer = Tokenizer(bpe)
    tokenizer.pre_tokenizer = pre_tokenizer()  # type: ignore[assignment]
    return tokenizer.to_str()


def bpe_tables(path: Path) -> tuple[list[str], list[str]]:
    """The tokens in id order and the merges ("a b") in rank order of the tokenizer.json at
    `path`: read from tokenizer.bpe beside it, which is written first if missing or made from
    another json (if the folder is read-only, the json is parsed every time)."""
    copy = path.with_suffix(".bpe")
    stat = path.stat()
    stamp = f"retriever-bpe {BPE_FORMAT} {stat.st_size} {stat.st_mtime_ns}"
    try:
        head, _, body = read_small(copy, MAX_BPE_BYTES).partition(b"\n")
        *written, n_tokens, n_merges, crc = head.decode().split(" ")
        lines = body.decode().split("\n")  # bytes.decode: 2x read_text's speed
        if " ".join(written) == stamp and crc == f"{zlib.crc32(body):08x}" and \
                len(lines) == int(n_tokens) + int(n_merges):
            return lines[: int(n_tokens)], lines[int(n_tokens):]
    except (OSError, ValueError, SmallFileError):  # missing, or damaged: written again
        pass
    tokens, merges = _parse_json(path)
    body = "\n".join([*tokens, *merges]).encode("utf-8")
    tmp = copy.with_name(f".{copy.name}.{os.getpid()}")
    try:
        tmp.write_bytes(f"{stamp} {len(tokens)} {len(merges)} {zlib.crc32(body):08x}\n".encode()
                        + body)
        os.replace(tmp, copy)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return tokens, merges


def _parse_json(path: Path) -> tuple[list[str], list[str]]:
    model = json.loads(path.read_text(encoding="utf-8"))["model"]
    vocab: dict[str, int] = model["vocab"]
    tokens = [""] * len(vocab)
    for token, i in vocab.items():
        tokens[i] = token
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]  # old: "a b"
    if sorted(vocab.values()) != list(range(len(vocab))) or any(
            any(c.isspace() for c in t) for t in tokens) or any(m.count(" ") != 1
                                                                 for m in merges):
        raise ValueError(f"{path} is not CLIP's byte-level BPE (ids 0..n-1, no whitespace in "
                         f"a token): delete its folder to export the model again")
    return tokens, merges
