"""The CLIP tokenizer of the ONNX path merges each word in Python from tokenizer.bpe: its ids
equal those of `tokenizers`' own BPE built from the same tokenizer.json (what it replaced),
on a few hundred varied texts, and its plain-text copy is written, reused and remade."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import pytest
from open_clip.tokenizer import SimpleTokenizer
from tokenizers import Tokenizer

from retriever.encoding.tokenizer import ClipTokenizer, bpe_tables, clean, tokenizer_json

CONTEXT = 77
FIXED = [
    "", " ", "\n\t", "a", "A", "a photo of a dog", "Hello, World! It's 3:45pm",
    "naïve café résumé — “quoted” ‘single’", "emoji 🐶🐱 and 中文 日本語 한국어",
    "we'll they've I'm you'd SHE'S", "&amp; &lt;b&gt; entities &#169; &nbsp;x",
    "  lots   of\n\nwhite\tspace ", "numbers 1234567 3.14 ½ ² Ⅻ ١٢٣", "word " * 100,
    "supercalifragilisticexpialidocious" * 5, "<start_of_text> inside <end_of_text>",
    "!!!???...;;;---___", "e\u0301 combining, ﬁ ligature, ｆｕｌｌｗｉｄｔｈ", "zero\u200bwidth",
    "Ελληνικά Русский עברית العربية हिन्दी ไทย", "C:\\path\\to\\file.txt /usr/bin/env",
    "x" * 2000, "aaaa bbbb aaaa", "\x00\x01 control \x7f",
]
ALPHABET = ("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 .,;:!?'\"-_()[]&#@/\\\n\t"
            "éüßçñøåæœ—–…“”‘’€£¥©®™°±×÷αβγδεπλΩжщыюя中文日本語한국어🐶🐱🌍👍🏽\u0301\u200d")


def varied(count: int, seed: int = 0) -> list[str]:
    """Random texts over letters of many scripts, digits, punctuation, emoji and whitespace,
    0 to 300 characters, and random words of the CLIP vocabulary's own pieces."""
    rng = random.Random(seed)
    texts = ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 300)))
             for _ in range(count)]
    return texts + ["".join(rng.choice(["the", "photo", "ing", "un", "believ", "able", " ",
                                        "'s", "dog", "sun", "set", "2024"])
                            for _ in range(rng.randint(1, 40))) for _ in range(count // 2)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """CLIP's own vocabulary and merges (open_clip's bundled file), as an export writes them."""
    simple = SimpleTokenizer()
    merges = [pair for pair, _ in sorted(simple.bpe_ranks.items(), key=lambda kv: kv[1])]
    path = tmp_path_factory.mktemp("export") / "tokenizer.json"
    path.write_text(tokenizer_json(simple.encoder, merges))
    return path


def test_ids_equal_the_tokenizers_bpe_on_varied_texts(exported):
    reference = Tokenizer.from_file(str(exported))
    ours = ClipTokenizer(exported, CONTEXT)
    texts = FIXED + varied(300)
    for text, row in zip(texts, ours(texts), strict=True):
        ids = reference.encode(clean(text)).ids
        assert ours.encode(text) == ids, repr(text)
        assert row == [ours.sot, *ids[: CONTEXT - 2], ours.eot], repr(text)
    assert (ours.sot, ours.eot) == (reference.token_to_id("<start_of_text>"),
                                    reference.token_to_id("<end_of_text>"))


def test_the_plain_text_copy_is_written_once_and_remade_when_stale(exported):
    copy = exported.with_suffix(".bpe")
    copy.unlink(missing_ok=True)
    tables = bpe_tables(exported)
    assert copy.is_file() and len(tables[0]) == 49408 and len(tables[1]) == 48894
    written = copy.stat().st_mtime_ns
    assert bpe_tables(exported) == tables and copy.stat().st_mtime_ns == written  # reused
    copy.write_text(copy.read_text()[: 5000])  # cut short: remade
    assert bpe_tables(exported) == tables and len(copy.read_text()) > 5000
    os.utime(exported, ns=(1, 1))  # another json than the copy was made from: remade
    assert bpe_tables(exported) == tables and copy.read_text().split("\n")[0].split()[3] == "1"


def test_a_copy_that_cannot_be_written_leaves_the_json_parsed_each_time(exported, tmp_path):
    """As in an export folder this user may not write (a directory in the copy's place stands
    for that, which root could write)."""
    path = tmp_path / "tokenizer.json"
    path.write_bytes(exported.read_bytes())
    path.with_suffix(".bpe").mkdir()
    assert ClipTokenizer(path, CONTEXT)(FIXED) == ClipTokenizer(exported, CONTEXT)(FIXED)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.bpe", "tokenizer.json"]


def test_a_pickled_tokenizer_is_its_file(exported):
    ours = ClipTokenizer(exported, CONTEXT)
    copied = pickle.loads(pickle.dumps(ours))
    assert len(pickle.dumps(ours)) < 1000
    assert copied(["a red disc"]) == ours(["a red disc"])
