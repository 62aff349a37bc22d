"""Long text where a short one is expected: a tag label, a training or evaluation caption, a
class name of 100,000 letters is cut as a query is (CHARS_PER_TOKEN characters per context
token) before it reaches the tokenizer. Proved by counting what the tokenizer receives."""

from __future__ import annotations

import json

import pytest
from open_clip.tokenizer import SimpleTokenizer

from retriever.encoding.prompts import DEFAULT_TEMPLATES
from retriever.search.query import CHARS_PER_TOKEN  # queries are cut to the same
from retriever.training.synthetic import write_captioned_images

from .helpers import write_colour_folders, write_photo

TINY_ARGS = ("--model", "retriever-tiny", "--pretrained", "none")
CONTEXT = 32  # retriever-tiny's context length
CUT = CHARS_PER_TOKEN * CONTEXT
# 100,000 letters in words of ten: the tokenizer stays quick on today's code, so the failing
# run shows the count, not a minutes-long wait (one 100,000-letter word takes ~20 s of BPE)
LONG = " ".join(["abcdefghij"] * 10_000)
PROMPT_EXTRA = max(len(t) - 2 for t in DEFAULT_TEMPLATES)  # a template around a label


@pytest.fixture
def tokenized(monkeypatch) -> list[int]:
    """The length of every text open_clip's tokenizer is given from now on."""
    seen: list[int] = []
    original = SimpleTokenizer.__call__

    def spy(self, texts, context_length=None):
        texts = [texts] if isinstance(texts, str) else list(texts)
        seen.extend(len(text) for text in texts)
        return original(self, texts, context_length)

    monkeypatch.setattr(SimpleTokenizer, "__call__", spy)
    return seen


def test_a_long_tag_label_is_cut_before_tokenizing(tmp_path, media_folder, cli, tokenized):
    db = tmp_path / "db"
    assert cli("index", media_folder, "--db", db, *TINY_ARGS).exit_code == 0
    tokenized.clear()
    got = cli("tag", "red", LONG, "--db", db, "--json")
    assert got.exit_code == 0, got.output
    assert len(tokenized) == 2 * len(DEFAULT_TEMPLATES)  # every prompt of both labels
    assert CUT <= max(tokenized) <= CUT + PROMPT_EXTRA
    assert {len(json.loads(line)["labels"]) for line in got.stdout.splitlines()} == {1}


def test_a_long_class_name_is_cut_before_tokenizing(tmp_path, cli, tokenized):
    root = write_colour_folders(tmp_path / "colours", {"red": 2, "blue": 2})
    (root / "classnames.txt").write_text(f"{LONG}\nblue\n")
    got = cli("eval", root, "--task", "classification", *TINY_ARGS, "--json")
    assert got.exit_code == 0, got.output
    assert CUT <= max(tokenized) <= CUT + PROMPT_EXTRA


def test_a_long_evaluation_caption_is_cut_before_tokenizing(tmp_path, cli, tokenized):
    for i, colour in enumerate([(200, 0, 0), (0, 0, 200), (0, 200, 0)]):
        write_photo(tmp_path / "pairs" / f"{i}.jpg", colour)
        (tmp_path / "pairs" / f"{i}.txt").write_text(LONG if i == 0 else f"photo {i}")
    got = cli("eval", tmp_path / "pairs", *TINY_ARGS, "--json")
    assert got.exit_code == 0, got.output
    assert json.loads(got.stdout)["captions"] == 3
    assert max(tokenized) == CUT


def test_a_long_training_caption_is_cut_before_tokenizing(tmp_path, cli, tokenized,
                                                         one_torch_thread):
    scenes = tmp_path / "scenes"
    write_captioned_images(scenes, 8, seed=1)
    for sidecar in sorted(scenes.rglob("*.txt")):  # every caption, the held-out ones too
        sidecar.write_text(LONG)
    got = cli("train", scenes, "--out", tmp_path / "m.pt", *TINY_ARGS, "--epochs", "1",
              "--batch-size", "4", "--val-fraction", "0.25")
    assert got.exit_code == 0, got.output
    assert tokenized and set(tokenized) == {CUT}  # training batches and validation alike
