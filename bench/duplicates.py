"""Precision and recall of `retriever duplicates` per threshold, and the measured threshold.

    python -m bench.duplicates                # writes the duplicates section of bench/RESULTS.md
    python -m bench.duplicates --calibrated   # measured vs fixed 0.99: the duplicates-calibrated
                                              # section

`--calibrated`: the issue's case, 80 distinct photo-like pictures of which 10 are copied
(`CALIBRATED_KINDS`), indexed with a random-weight retriever-tiny and with one trained on the
shape scenes; groups found and their purity at the fixed 0.99 and at the threshold
`retriever duplicates` measures (retriever.library.calibration), per set of pictures.

Trains retriever-tiny on the generated shape scenes (`retriever demo`'s recipe, ~15 s on CPU), then
writes a folder of distinct pictures and, for some of them, variants of the kinds people keep by
accident (`VARIANTS`: resized, re-encoded at a low JPEG quality, cropped 5% off each side,
brighter, darker) plus one byte-identical copy each, indexes it with the real indexer and runs
`find_duplicates` at each threshold. A planted group is one original with its variants; precision
and recall count pairs of pictures put in one group (found pairs that are planted / all found
pairs; planted pairs found / all planted pairs). Two sets of distinct pictures: the shape scenes
the model was trained on (`scenes`: the same colour, shape and place drawn again with another
jitter and background noise is a distinct picture, the hard case) and photo-like pictures
(`photos`: bench/photos.py's gradients and shapes, which the model never saw).
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image, ImageEnhance

from bench.photos import photo
from bench.results import machine_line, write_section

THRESHOLDS = (0.95, 0.96, 0.97, 0.975, 0.98, 0.985, 0.99, 0.993, 0.995, 0.997)
SIDE = 256  # px: the pictures are written at this size (photos: 4:3, SIDE wide)


def _resized(im: Image.Image) -> Image.Image:
    return im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS)


def _cropped(im: Image.Image) -> Image.Image:
    dx, dy = round(im.width * 0.05), round(im.height * 0.05)
    return im.crop((dx, dy, im.width - dx, im.height - dy))


VARIANTS: dict[str, tuple[Callable[[Image.Image], Image.Image], int]] = {
    # name -> (how the picture changes, JPEG quality it is saved at)
    "resized-50%": (_resized, 90),
    "jpeg-q30": (lambda im: im, 30),
    "cropped-5%": (_cropped, 90),
    "brighter-15%": (lambda im: ImageEnhance.Brightness(im).enhance(1.15), 90),
    "darker-15%": (lambda im: ImageEnhance.Brightness(im).enhance(0.85), 90),
}


def scene_pictures(n: int, seed: int = 0) -> list[Image.Image]:
    """`n` distinct shape scenes (colour x shape x place cycled, redrawn with other noise)."""
    from retriever.training.synthetic import ALL_SCENES, draw_scene

    rng = random.Random(seed)
    return [draw_scene(ALL_SCENES[i % len(ALL_SCENES)], SIDE, rng) for i in range(n)]


def photo_pictures(n: int, seed: int = 0) -> list[Image.Image]:
    return [photo(SIDE, SIDE * 3 // 4, seed * 1_000_003 + i) for i in range(n)]


def plant(folder: Path, pictures: Sequence[Image.Image], with_variants: int,
          exact_copies: bool = True, kinds: Sequence[str] = tuple(VARIANTS)) -> list[list[Path]]:
    """Write `pictures` as JPEGs; the first `with_variants` also get the variants `kinds` (of
    VARIANTS) and (`exact_copies`) a byte-identical copy. Returns the planted groups, original
    first; the other pictures are alone."""
    folder.mkdir(parents=True, exist_ok=True)
    groups = []
    for i, picture in enumerate(pictures):
        original = folder / f"pic-{i:04d}.jpg"
        picture.save(original, quality=90)
        group = [original]
        if i < with_variants:
            for name in kinds:
                change, quality = VARIANTS[name]
                path = folder / f"pic-{i:04d}-{name}.jpg"
                change(picture).save(path, quality=quality)
                group.append(path)
            if exact_copies:
                copy = folder / "copies" / f"pic-{i:04d}.jpg"
                copy.parent.mkdir(exist_ok=True)
                copy.write_bytes(original.read_bytes())
                group.append(copy)
        groups.append(group)
    return groups


def pair_scores(found: Sequence[Sequence[str]], planted: Sequence[Sequence[Path]]
                ) -> tuple[float, float]:
    """(precision, recall) over pairs of paths put in one group."""
    def pairs(groups: Sequence[Sequence[str]]) -> set[frozenset[str]]:
        return {frozenset(p) for g in groups for p in itertools.combinations(g, 2)}

    got, want = pairs(found), pairs([[str(p) for p in g] for g in planted])
    right = len(got & want)
    return (right / len(got) if got else 1.0), (right / len(want) if want else 1.0)


def group_scores(found: Sequence[Sequence[str]], planted: Sequence[Sequence[Path]]
                 ) -> tuple[float, float]:
    """(share of planted groups found: two or more of its pictures in one reported group,
    share of reported groups that are pure: every member from one planted group)."""
    groups = [{str(p) for p in g} for g in planted if len(g) > 1]
    owner = {path: n for n, group in enumerate(groups) for path in group}
    pure = [len({owner.get(path, path) for path in g}) == 1 for g in found]
    hit = [any(len(group & set(g)) >= 2 for g in found) for group in groups]
    return sum(hit) / len(groups), (sum(pure) / len(found) if found else 1.0)


Row = tuple[float, float, float, int, list[float]]


def measure(collection, folder: Path, planted: Sequence[Sequence[Path]],  # noqa: ANN001
            thresholds: Sequence[float]) -> list[Row]:
    """(threshold, precision, recall, groups found, recall per kind of copy) per threshold;
    kinds: VARIANTS' order, then the byte-identical copy."""
    from retriever.library.duplicates import find_duplicates

    rows = []
    for threshold in thresholds:
        groups = find_duplicates(collection, threshold, str(folder.resolve()))
        found = [[c.path for c in g.copies] for g in groups]
        precision, recall = pair_scores(found, planted)
        group_of = {path: n for n, paths in enumerate(found) for path in paths}
        with_copies = [g for g in planted if len(g) > 1]
        per_kind = [sum(group_of.get(str(g[0]), -1) == group_of.get(str(g[k]), -2)
                        for g in with_copies) / len(with_copies)
                    for k in range(1, len(VARIANTS) + 2)]
        rows.append((threshold, precision, recall, len(groups), per_kind))
    return rows


def run_set(name: str, pictures: Sequence[Image.Image], with_variants: int, encoder,  # noqa: ANN001
            work: Path) -> list[Row]:
    from retriever.ingest.pipeline import IngestOptions, ingest_media
    from retriever.library.collection import Collection

    folder = work / name
    planted = plant(folder, pictures, with_variants)
    collection = Collection.open(work / f"{name}-index")
    ingest_media(collection, encoder, IngestOptions((folder,)))
    return measure(collection, folder, planted, THRESHOLDS)


def trained_encoder(work: Path, seed: int = 0):  # noqa: ANN201
    """retriever-tiny trained on the shape scenes with `retriever demo`'s settings."""
    from retriever.demo import DEMO_IMAGES, demo_config
    from retriever.encoding.clip_encoder import ClipEncoder
    from retriever.training.loop import train
    from retriever.training.synthetic import write_captioned_images

    write_captioned_images(work / "train", DEMO_IMAGES, seed=seed)
    result = train(demo_config(work / "train", work / "model.pt", seed), log=lambda _: None)
    return ClipEncoder(result.loaded)


CALIBRATED_KINDS = ("resized-50%", "jpeg-q30", "brighter-15%")  # the copies
CALIBRATED_HEADER = ("| model | pictures | threshold | cosine | groups | planted found | "
                     "pure | pair precision | pair recall | measuring s |\n"
                     "|---|---|---|---|---|---|---|---|---|---|")


def calibrated_rows(model: str, encoder, work: Path, seed: int) -> list[str]:  # noqa: ANN001
    """Fixed 0.99 and measured, on one set of 80 pictures (10 copied) indexed by `encoder`."""
    from retriever.ingest.pipeline import IngestOptions, ingest_media
    from retriever.library.calibration import DEFAULT_PRECISION, choose, measure
    from retriever.library.collection import Collection
    from retriever.library.duplicates import find_duplicates

    folder = work / f"calibrated-{model}-{seed}"
    planted = plant(folder, photo_pictures(80, seed=seed), 10, exact_copies=False,
                    kinds=CALIBRATED_KINDS)
    collection = Collection.open(work / f"calibrated-{model}-{seed}-index")
    ingest_media(collection, encoder, IngestOptions((folder,)))
    start = time.perf_counter()
    measured, _ = choose(measure(collection, encoder), DEFAULT_PRECISION)
    seconds = time.perf_counter() - start
    rows = []
    for label, threshold in (("fixed", 0.99), ("measured", measured)):
        groups = find_duplicates(collection, threshold, str(folder.resolve()))
        found = [[c.path for c in g.copies] for g in groups]
        share_found, share_pure = group_scores(found, planted)
        precision, recall = pair_scores(found, planted)
        took = f"{seconds:.1f}" if label == "measured" else ""
        rows.append(f"| {model} | seed {seed} | {label} | {threshold:.4f} | {len(groups)} | "
                    f"{share_found:.2f} | {share_pure:.2f} | {precision:.3f} | {recall:.3f} | "
                    f"{took} |")
    collection.close()
    return rows


def calibrated(seeds: Sequence[int]) -> str:
    from retriever.encoding.clip_encoder import ClipEncoder
    from retriever.encoding.models import load_model
    from retriever.encoding.specs import ModelSpec

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-duplicates-") as tmp:
        work = Path(tmp)
        encoders = {"random weights": ClipEncoder(load_model(ModelSpec("retriever-tiny",
                                                                       "none"))),
                    "trained": trained_encoder(work)}
        for model, encoder in encoders.items():
            rows += [row for seed in seeds for row in calibrated_rows(model, encoder, work, seed)]
    return (f"retriever-tiny with random weights (`--pretrained none`) and trained on the "
            f"shape scenes (`retriever demo`'s recipe, seed 0). Per set: 80 distinct "
            f"{SIDE}-px photo-like pictures (bench/photos.py), 10 of them copied "
            f"({', '.join(CALIBRATED_KINDS)}; no byte-identical copies): 10 planted groups of "
            f"{len(CALIBRATED_KINDS) + 1}. `planted found`: share of planted groups with two or "
            f"more pictures in one reported group; `pure`: share of reported groups whose "
            f"members all come from one planted group; pairs as in the section above. "
            f"`measured`: the threshold `retriever duplicates` chooses at its default precision "
            f"0.95 (64 pictures copied in memory), `measuring s` the time that took. Both rows "
            f"group without chaining (every copy within the threshold of its best copy).\n\n"
            + CALIBRATED_HEADER + "\n" + "\n".join(rows) + "\n")


def table(name: str, rows: list[Row]) -> str:
    kinds = [*VARIANTS, "same bytes"]
    lines = [f"**{name}**", "", "| threshold | precision | recall | groups | "
             + " | ".join(f"found: {k}" for k in kinds) + " |",
             "|---|---|---|---|" + "---|" * len(kinds)]
    for threshold, precision, recall, groups, per_kind in rows:
        lines.append(f"| {threshold:g} | {precision:.3f} | {recall:.3f} | {groups} | "
                     + " | ".join(f"{r:.2f}" for r in per_kind) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distinct", type=int, default=72, help="Distinct pictures per set "
                        "(72: every colour x shape x place scene once).")
    parser.add_argument("--with-variants", type=int, default=24,
                        help="Of those, how many get variants and a copy.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibrated", action="store_true",
                        help="Measured threshold vs fixed 0.99 (seeds 0-2).")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # the recipe's timing and sums, as in the tests
    command = "python -m bench.duplicates " + " ".join(sys.argv[1:])
    if args.calibrated:
        body = calibrated((0, 1, 2))
        print(body)
        write_section("duplicates-calibrated", "Duplicates: measured vs fixed threshold (CPU)",
                      body, command.strip(), machine_line())
        return
    with tempfile.TemporaryDirectory(prefix="bench-duplicates-") as tmp:
        work = Path(tmp)
        encoder = trained_encoder(work, args.seed)
        results = {
            "scenes": run_set("scenes", scene_pictures(args.distinct, args.seed),
                              args.with_variants, encoder, work),
            "photos": run_set("photos", photo_pictures(args.distinct, args.seed),
                              args.with_variants, encoder, work),
        }
    body = (f"retriever-tiny trained on the shape scenes (`retriever demo`'s recipe, seed "
            f"{args.seed}); per set {args.distinct} distinct {SIDE}-px pictures, "
            f"{args.with_variants} of them with {len(VARIANTS)} variants ("
            f"{', '.join(VARIANTS)}) and a byte-identical copy: "
            f"{args.with_variants} planted groups of {len(VARIANTS) + 2}. Precision and recall "
            f"over pairs of pictures put in one group; `found: KIND`: the share of planted "
            f"originals grouped with that copy.\n\n"
            + "\n".join(table(name, rows) for name, rows in results.items()))
    print(body)
    write_section("duplicates", "Duplicate threshold (CPU)", body, command.strip(),
                  machine_line())


if __name__ == "__main__":
    main()
