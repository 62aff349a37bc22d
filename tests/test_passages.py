"""Passages that keep sentences (retriever/media/passages.py): cuts between sentences, whole
sentences repeated across a cut (`overlap`), a section's heading in front of each passage, and
on any text (hostile too) every passage within the token budget, every word kept, in order."""

from __future__ import annotations

import pytest

from retriever.media.passages import HEADING_SHARE, split_passages

SENTENCES = ["Dr. Smith paid 3.5 euros for bread, e.g. a baguette.",
             "The red shoes were bought in Paris in May.",
             "Was the ferry to Oslo late again?",
             "Nobody at the station knew why!",
             "Mrs. Lee kept the receipt INV-48213 in a drawer."]
HOSTILE = {
    "empty": "",
    "whitespace": " \t\n\n \r\n ",
    "no spaces": "x" * 100_000,
    "one huge word among words": "a cat sat " + "y" * 5_000 + " on the mat.",
    "only punctuation": ".!?;,:" * 2_000,
    "1e5 newlines": "\n" * 100_000,
    "newlines and words": "one\n\n\n" * 2_000 + "two.",
    "mixed scripts": "Привет мир. 我们去公园。天气很好！ مرحبا بالعالم. 🚀🚀 ok? "
                     "नमस्ते दुनिया। ∑∫√ 東京タワー、高い！" * 20,
    "control characters": "a\x00b\x07c \ufffd\ufffd d\u200be. " * 300,
    "dots everywhere": "e.g. i.e. 3.5. 1. 2. A. B. ... ?! " * 200,
}


def check(passages, text, count, budget):
    """Every passage within budget, numbered in order, and with no overlap or heading, all the
    text's characters (less whitespace) in order."""
    assert [p.position for p in passages] == list(range(len(passages)))
    assert all(count(p.text) <= budget for p in passages)
    assert "".join("".join(p.text.split()) for p in passages) == "".join(text.split())


def covering(passages, whole: list[str], prefix: int = 0) -> None:
    """Each passage's words (less `prefix` heading words) are a run of `whole`, each run starts
    after the one before and no later than its end (no word skipped), repeating fewer than all
    of its words, and together the runs hold every word of `whole`. Repetitive text can place
    a passage in several places: every placement consistent so far is followed (for each count
    of words covered, the earliest start: it leaves the next passage the most room)."""
    states = {0: -1}  # words covered -> the earliest start of the last run that covers them
    last = 1  # the words of the passage before: a passage repeats fewer of them than that
    for p in passages:
        words = p.text.split()[prefix:]
        after: dict[int, int] = {}
        for covered, at in states.items():
            for s in range(max(at + 1, covered - last + 1), covered + 1):
                if whole[s:s + len(words)] == words:
                    reach = max(covered, s + len(words))
                    after[reach] = min(after.get(reach, s), s)
        assert after, f"passage {p.position} is not the next run of the text's words"
        states, last = after, len(words)
    assert len(whole) in states


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_text_fits_the_budget_and_keeps_every_character(name, tiny_encoder):
    count, budget = tiny_encoder.count_tokens, tiny_encoder.text_budget
    text = HOSTILE[name]
    plain = split_passages(text, count, budget)
    check(plain, text, count, budget)
    assert bool(plain) == bool(text.split())
    whole = [w for p in plain for w in p.text.split()]
    overlapped = split_passages(text, count, budget, overlap=budget // 3)
    assert all(count(p.text) <= budget for p in overlapped)
    covering(overlapped, whole)
    headed = split_passages(text, count, budget, overlap=6, heading="Chapter Two")
    assert all(p.text.startswith("Chapter Two: ") and count(p.text) <= budget for p in headed)


def test_a_sentence_is_never_cut_where_it_fits(tiny_encoder):
    """With room for the longest sentence, every passage is a run of whole sentences: no cut
    after "Dr.", "Mrs.", "e.g." or inside "3.5"."""
    count = tiny_encoder.count_tokens
    budget = max(count(s) for s in SENTENCES)
    runs = {" ".join(SENTENCES[i:j]) for i in range(5) for j in range(i + 1, 6)}
    passages = split_passages(" ".join(SENTENCES), count, budget)
    assert len(passages) >= 3 and all(p.text in runs for p in passages), passages


def test_sentences_share_passages_and_cuts_fall_between_them(tiny_encoder):
    count, budget = tiny_encoder.count_tokens, 40
    text = " ".join(SENTENCES * 6)
    passages = split_passages(text, count, budget)
    check(passages, text, count, budget)
    assert len(passages) < len(SENTENCES) * 6  # sentences were packed together
    for p in passages:
        assert p.text[-1] in ".?!" and p.text.split()[0] in {s.split()[0] for s in SENTENCES}


def test_cjk_sentences_end_at_their_full_stops(tiny_encoder):
    count = tiny_encoder.count_tokens
    sentences = ["我们明天去公园。", "天气很好！", "你呢？", "东京塔很高。"]
    budget = max(count(s) for s in sentences)
    passages = split_passages("".join(sentences), count, budget)
    assert len(passages) >= 2 and all(p.text[-1] in "。！？" for p in passages)
    assert "".join(p.text.replace(" ", "") for p in passages) == "".join(sentences)


def test_a_long_sentence_is_cut_into_even_pieces_not_a_stray_tail(tiny_encoder):
    count, budget = tiny_encoder.count_tokens, tiny_encoder.text_budget
    words = [f"w{i}" for i in range(3 * budget // count("w1") + 1)] + ["shoes."]
    passages = split_passages(" ".join(words), count, budget)
    check(passages, " ".join(words), count, budget)
    costs = [count(p.text) for p in passages]
    assert len(passages) >= 3 and min(costs) >= budget // 2, costs  # the tail is no "shoes."


def test_overlap_repeats_whole_sentences_within_the_paragraph(tiny_encoder):
    count, budget, overlap = tiny_encoder.count_tokens, 40, 14
    short = [f"Cat {i} purrs at dawn." for i in range(30)]
    text = " ".join(short) + "\n\n" + " ".join(short[:3])
    plain = split_passages(text, count, budget)
    passages = split_passages(text, count, budget, overlap=overlap)
    covering(passages, [w for p in plain for w in p.text.split()])
    repeated = 0
    for before, after in zip(passages, passages[1:], strict=False):
        shared = next(n for n in range(len(after.text), -1, -1)
                      if before.text.endswith(after.text[:n]))
        head = after.text[:shared].strip()
        assert head == "" or all(f"{s}." in short for s in head[:-1].split(". "))
        assert count(head) <= overlap
        repeated += bool(head)
    assert repeated >= len(passages) // 2  # inside the paragraph, passages overlap
    assert passages[-1].text == " ".join(short[:3])  # no overlap across a paragraph break


def test_heading_opens_every_passage_and_takes_at_most_its_share(tiny_encoder):
    count, budget = tiny_encoder.count_tokens, tiny_encoder.text_budget
    text = " ".join(SENTENCES * 4)
    passages = split_passages(text, count, budget, heading="Setup")
    assert len(passages) > 2 and all(p.text.startswith("Setup: ") for p in passages)
    covering(passages, [w for p in split_passages(text, count, budget - count("Setup:"))
                        for w in p.text.split()], prefix=1)
    huge = "Installing the retriever program on a fresh machine step by step " * 5
    for p in split_passages(text, count, budget, heading=huge):
        head = p.text.split(": ")[0] + ":"
        assert huge.startswith(head[:-1]) and count(head) <= budget // HEADING_SHARE
        assert count(p.text) <= budget
    endless = split_passages(text, count, budget, heading="z" * 10**6 + " and more")
    assert all(count(p.text) <= budget for p in endless)  # and soon: no BPE of 10^6 letters


def test_short_text_is_one_passage(tiny_encoder):
    passages = split_passages("shoes.", tiny_encoder.count_tokens, tiny_encoder.text_budget,
                              overlap=6, heading="Notes")
    assert [p.text for p in passages] == ["Notes: shoes."]
