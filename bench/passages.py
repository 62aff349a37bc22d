"""Do passages that keep sentences find more? The old splitter against the new one.

    python -m bench.passages [--notes 50] [--seed 0]   # writes its section of RESULTS.md

Trains retriever-tiny on the generated shape scenes (`retriever demo`'s recipe), then writes
`--notes` notes of a few paragraphs each: filler sentences with, somewhere in one paragraph,
one sentence that describes the note's own scene ("It shows a red circle on the left of the
frame."), a different scene per note. Each note is cut into passages by the splitter at
commit 3ad33d5 (words up to the budget, paragraph ends preferred) and by today's
(`retriever.media.passages.split_passages`: whole sentences, with and without overlap), the
passages are encoded, and two sets of queries rank them: text (a paraphrase of the scene's
sentence, "left side: red round shape") and image (the scene drawn, as the demo draws it). A
query is answered by a note when one of its passages ranks at the top (recall@1) or in the
first five notes (recall@5).
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.results import machine_line, write_section

FILLER = ("The weather that day was mild and dry.", "Tea was served at four, as usual.",
          "Nobody could remember who had brought the ladder.",
          "Later the meeting moved to the library upstairs.",
          "Several people asked about the train timetable.",
          "It was written down quickly, before the lights went out.",
          "The dog slept under the table the whole afternoon.",
          "Someone had left an umbrella by the door.",
          "This page was copied from an older notebook.",
          "The museum closes early on Sundays in winter.",
          "A postcard arrived from a cousin abroad.",
          "The kettle whistled twice and then went quiet.")
OLD = "3ad33d5:retriever/media/passages.py"  # the splitter before sentences

READING = (  # what the table shows, written into the section after it
    'Reading: keeping sentences whole helps both directions (+6 points R@1, +8 text R@5): '
    'the old splitter cut the scene sentence between two passages in 13 of the 50 notes '
    '(the new one in none). Overlap '
    'does not help here: at this 30-token budget a fifth (6 tokens) is shorter than any '
    'sentence, so the indexing default repeats nothing and equals no overlap; a third '
    'repeats one sentence and scores 2 queries lower (of 50: within noise). Each fact here '
    'is one sentence, so overlap has nothing to join; it stays at a fifth (15 tokens at '
    "ViT-B-32's 75) for facts told across two sentences, which this set does not measure.")


def _notes(n: int, seed: int) -> list[tuple[str, object]]:
    """`n` notes, each with the scene its one telling sentence describes."""
    from retriever.training.synthetic import ALL_SCENES

    rng = random.Random(seed)
    scenes = rng.sample(ALL_SCENES, n)
    notes = []
    for scene in scenes:
        paragraphs = [rng.sample(FILLER, rng.randrange(2, 6)) for _ in range(3)]
        telling = (f"It shows a {scene.colour} {scene.shape} on the {scene.place} "
                   "of the frame.")
        where = rng.choice(paragraphs)
        where.insert(rng.randrange(len(where) + 1), telling)
        notes.append(("\n\n".join(" ".join(p) for p in paragraphs), scene))
    return notes


def _old_splitter() -> Callable:
    source = subprocess.run(["git", "show", OLD], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).parent).stdout
    namespace: dict = {}
    exec(compile(source, OLD, "exec"), namespace)  # noqa: S102 (this repository's own file)
    return namespace["split_passages"]


def _recall(queries: np.ndarray, passages: np.ndarray, owner: list[int]) -> tuple[float, float]:
    """Recall@1 and @5 of notes: query i is answered by note i."""
    scores = queries @ passages.T  # (queries, passages)
    hits1 = hits5 = 0
    for i, row in enumerate(scores):
        ranked = list(dict.fromkeys(owner[j] for j in np.argsort(-row)))  # notes, best first
        hits1 += ranked[0] == i
        hits5 += i in ranked[:5]
    return hits1 / len(queries), hits5 / len(queries)


def _splitters(budget: int) -> dict[str, Callable]:
    from retriever.media.passages import OVERLAP_SHARE, split_passages

    old = _old_splitter()
    return {
        "old (3ad33d5): words to the budget": lambda t, c: old(t, c, budget),
        "new: whole sentences, no overlap": lambda t, c: split_passages(t, c, budget),
        f"new: sentences, overlap budget/{OVERLAP_SHARE} (indexing default)":
            lambda t, c: split_passages(t, c, budget, overlap=budget // OVERLAP_SHARE),
        "new: sentences, overlap budget/3":
            lambda t, c: split_passages(t, c, budget, overlap=budget // 3),
    }


def _measure(encoder, notes, splitter) -> tuple[int, float, float, float, float]:
    from retriever.training.synthetic import SHAPES, draw_scene

    texts, owner = [], []
    for number, (note, _) in enumerate(notes):
        for passage in splitter(note, encoder.count_tokens):
            texts.append(passage.text)
            owner.append(number)
    passages = encoder.encode_texts(texts)
    said = [f"{s.place} side: {s.colour} {SHAPES[s.shape]}" for _, s in notes]
    rng = random.Random(1)
    drawn = encoder.encode_images([draw_scene(s, 64, rng) for _, s in notes])
    return (len(texts), *_recall(encoder.encode_texts(said), passages, owner),
            *_recall(drawn, passages, owner))


def main(argv: list[str] | None = None) -> None:
    from retriever.demo import DEMO_IMAGES, demo_config
    from retriever.encoding.clip_encoder import ClipEncoder
    from retriever.training.loop import train
    from retriever.training.synthetic import write_captioned_images

    parser = argparse.ArgumentParser(prog="python -m bench.passages", description=__doc__)
    parser.add_argument("--notes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        write_captioned_images(Path(work) / "train", DEMO_IMAGES, seed=args.seed)
        result = train(demo_config(Path(work) / "train", Path(work) / "model.pt", args.seed),
                       log=lambda _: None)
    encoder = ClipEncoder(result.loaded)
    notes = _notes(args.notes, args.seed)
    rows = ["| splitter | passages | text->text R@1 | R@5 | image->text R@1 | R@5 |",
            "|---|---|---|---|---|---|"]
    for name, splitter in _splitters(encoder.text_budget).items():
        count, t1, t5, i1, i5 = _measure(encoder, notes, splitter)
        rows.append(f"| {name} | {count} | {t1:.2f} | {t5:.2f} | {i1:.2f} | {i5:.2f} |")
    table = "\n".join(rows)
    print(table)
    write_section("passages", "Passages that keep sentences: old splitter against new (CPU)",
                  f"retriever-tiny trained as `retriever demo` does (seed {args.seed}); "
                  f"{args.notes} notes, one scene sentence each among filler; budget "
                  f"{encoder.text_budget} tokens.\n\n{table}\n\n" + READING + "\n",
                  "python -m bench.passages " + " ".join(argv if argv is not None
                                                         else sys.argv[1:]),
                  machine_line())


if __name__ == "__main__":
    main()
