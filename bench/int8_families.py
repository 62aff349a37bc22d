"""int8 image vectors against fp32, per model family (issue 25).

    python -m bench.int8_families [--families clip,mobileclip,...] [--images 96] [--epochs 3]
                                  [--test-images 60] [--seed 0]      # writes its section

For each family, its tiny model (tests/families.py: the family's image tower and tokenizer,
shrunk) is trained from random weights on the generated shape scenes (`retriever demo`'s
recipe, shortened: --images, --epochs), exported to ONNX and its image tower quantized
(`ort_encoder.quantize`). Held-out scenes (another seed) are encoded by the fp32 tower and the
int8 one (one image per call, as `OrtEncoder` runs int8); every caption is a text query (fp32
text tower). Rows as bench/int8_quality.py's: cos of each int8 image vector to its fp32 one,
top-10 agreement, held-out text->image recall. A family whose int8 recall@k is more than one
point under fp32's is marked: `auto` should keep fp32 for it (the policy table is
retriever.encoding.backends').
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.int8_quality import _held_out, _row
from bench.results import machine_line, write_section

FAMILIES = ("clip", "siglip", "siglip2", "multilingual", "mobileclip", "mobileclip2", "eva")
RECALL_POINTS = 1.0  # int8 may lose at most this much recall@k (in points) for `auto`


def _trained(family: str, work: Path, images: int, epochs: int, seed: int) -> tuple[Path, str]:
    """The family's tiny model trained on `images` scenes, exported, int8 made; and its name."""
    from retriever.demo import demo_config
    from retriever.encoding.onnx_export import export
    from retriever.encoding.ort_encoder import quantize
    from retriever.training.loop import train
    from retriever.training.synthetic import write_captioned_images
    from tests.families import TINY_FAMILIES, tiny_family

    spec = tiny_family(family, work / "model")
    write_captioned_images(work / "train", images, seed=seed)
    cfg = replace(demo_config(work / "train", work / "model.pt", seed), model=spec,
                  epochs=epochs, val_fraction=0.0)
    result = train(cfg, log=lambda _: None)
    folder = export(result.loaded, work / "onnx")
    quantize(folder)
    return folder, TINY_FAMILIES[family][0]


def measure_family(family: str, images: int, epochs: int, n: int, seed: int) -> list[dict]:
    from retriever.encoding.ort_encoder import OrtEncoder
    from retriever.encoding.pixels import load_pixels

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        started = time.monotonic()
        folder, name = _trained(family, work, images, epochs, seed)
        paths, captions, rows = _held_out(work, n, seed)
        fp32 = OrtEncoder(folder)
        pixels = np.stack([load_pixels(p, fp32.pixels).data for p in paths])
        texts, vectors = fp32.encode_texts(captions), fp32.encode_pixels(pixels)
        int8 = OrtEncoder(folder, batch_size=1, int8=True).encode_pixels(pixels)
        out = [_row("fp32", vectors, vectors, texts, rows),
               _row("int8", vectors, int8, texts, rows)]
        for row in out:
            row.update(family=family, model=name, seconds=time.monotonic() - started)
    return out


def loses_recall(fp32: dict, int8: dict) -> bool:
    return any(fp32[k] - int8[k] > RECALL_POINTS for k in ("R@1", "R@5", "R@10"))


def body(rows: list[dict], args: argparse.Namespace, failed: dict[str, str]) -> str:
    lines = [
        f"Each family's tiny model (tests/families.py) trained from random weights on "
        f"{args.images} shape scenes for {args.epochs} epochs (seed {args.seed}), exported to "
        f"ONNX; {args.test_images} held-out scenes, each caption a text query (fp32 text "
        "tower). cos: int8 image vector to its fp32 one; top-10 agree: share of fp32's 10 best "
        "in int8's 10 best, mean over queries; R@k: held-out text->image recall in %. "
        f"auto: fp32 where int8 loses more than {RECALL_POINTS:g} recall point.",
        "",
        "| family | model | tower | cos min | cos mean | top-10 agree | R@1 | R@5 | R@10 | "
        "int8 loses > 1 pt |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for fp32, int8 in zip(rows[::2], rows[1::2], strict=True):
        for r in (fp32, int8):
            verdict = ("yes" if loses_recall(fp32, int8) else "no") if r is int8 else ""
            lines.append(f"| {r['family']} | {r['model']} | {r['name']} | {r['cos_min']:.5f} | "
                         f"{r['cos_mean']:.5f} | {r['agree']:.3f} | {r['R@1']:.1f} | "
                         f"{r['R@5']:.1f} | {r['R@10']:.1f} | {verdict} |")
    lines += [f"\n{family}: not measured ({why})" for family, why in failed.items()]
    lines.append(f"\nChance R@10 is {1000 / args.test_images:.1f}%: where fp32 is near it the "
                 "models have barely learned, their scores are close together, and the recall "
                 "and agreement columns measure ties, not int8; the cosines are the firm result.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--test-images", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dry-run", action="store_true", help="print, leave RESULTS.md alone")
    args = parser.parse_args(argv)
    rows: list[dict] = []
    failed: dict[str, str] = {}
    for family in args.families.split(","):
        try:
            rows += measure_family(family, args.images, args.epochs, args.test_images,
                                   args.seed)
        except Exception as err:  # a family the ONNX path cannot run yet is reported, not fatal
            failed[family] = f"{type(err).__name__}: {str(err)[:200]}"
        print(f"{family}: done", file=sys.stderr)
    text = body(rows, args, failed)
    print(text)
    if not args.dry_run:
        command = "python -m bench.int8_families " + " ".join(argv or sys.argv[1:])
        write_section("int8-families", "int8 image vectors per model family (CPU)", text,
                      command.strip(), machine_line())


if __name__ == "__main__":
    main()
