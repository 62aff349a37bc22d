"""How far int8 image vectors move a trained model's rankings from fp32's.

    python -m bench.int8_quality [--seeds 0 1 2] [--test-images 300] [--model CONFIG]

Trains retriever-tiny (or --model, a model-config JSON or architecture trained from random
weights) on the generated shape scenes (`retriever demo`'s recipe, ~15 s on CPU) once per seed,
exports it to ONNX and quantizes the image tower (`retriever.encoding.ort_encoder.quantize`),
then encodes a held-out set of scenes (another seed: pictures the model never saw) with the
fp32 tower and the int8 one, at batch 1 and at batch 64. Every caption of the held-out set is a
text query (fp32 text tower: int8 changes only images). Reported: the cosine of each image's
int8 vector to its fp32 one, top-10 agreement (the share of fp32's 10 best images that int8's
10 best also hold, averaged over the queries) and held-out recall by `retrieval_metrics`.

The last line weighs int8 against the bar `auto` is held to (`retriever.encoding.backends`,
AUTO_FP32): a family whose int8 loses more than BAR points of held-out recall (any R@k, any
seed) stays fp32 under `auto`. retriever-tiny writes the "int8" section; another model writes
"int8-<family>" (`retriever.encoding.families.family_of`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.results import machine_line, write_section

K = 10
BATCHES = (1, 64)  # int8 batch sizes compared: dynamic activation scales are per call
BAR = 1.0  # recall points int8 may lose before `auto` keeps a family in fp32 (issue 25)
RECALLS = ("R@1", "R@5", "R@10")


def _trained_export(work: Path, seed: int, model: str) -> Path:
    from dataclasses import replace

    from retriever.demo import DEMO_IMAGES, demo_config
    from retriever.encoding.onnx_export import export
    from retriever.encoding.ort_encoder import quantize
    from retriever.encoding.specs import ModelSpec
    from retriever.training.loop import train
    from retriever.training.synthetic import write_captioned_images

    write_captioned_images(work / "train", DEMO_IMAGES, seed=seed)
    cfg = replace(demo_config(work / "train", work / "model.pt", seed),
                  model=ModelSpec(model, "none"))
    result = train(cfg, log=lambda _: None)
    folder = export(result.loaded, work / "onnx")
    quantize(folder)
    return folder


def _held_out(work: Path, n: int, seed: int) -> tuple[list[Path], list[str], np.ndarray]:
    """Held-out images, their captions (each a query) and each caption's image row."""
    from retriever.training.synthetic import write_captioned_images

    paths = write_captioned_images(work / "test", n, seed=seed + 1000)
    captions, rows = [], []
    for row, path in enumerate(paths):
        for caption in path.with_suffix(".txt").read_text().splitlines():
            captions.append(caption)
            rows.append(row)
    return paths, captions, np.array(rows)


def _top(queries: np.ndarray, images: np.ndarray) -> np.ndarray:
    """(q, K) indices of each query's K best images, best first (ties by index)."""
    scores = queries @ images.T  # (q, n)
    return np.argsort(-scores, axis=1, kind="stable")[:, :K]


def _row(name: str, fp32: np.ndarray, images: np.ndarray, texts: np.ndarray,
         rows: np.ndarray) -> dict:
    from retriever.training.evaluation import retrieval_metrics

    ours, theirs = _top(texts, images), _top(texts, fp32)
    agree = np.mean([len(set(a) & set(b)) / K for a, b in zip(ours, theirs, strict=True)])
    recall = retrieval_metrics(images, texts, rows)["text_to_image"]
    return {"name": name, "cos_min": float((images * fp32).sum(1).min()),
            "cos_mean": float((images * fp32).sum(1).mean()), "agree": float(agree),
            "top1": float(np.mean(ours[:, 0] == theirs[:, 0])),
            **{k: 100 * recall[k] for k in ("R@1", "R@5", "R@10")}}


def measure(seed: int, n: int, model: str = "retriever-tiny") -> tuple[list[dict], int, int]:
    from retriever.encoding.ort_encoder import OrtEncoder
    from retriever.encoding.pixels import load_pixels

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = _trained_export(work, seed, model)
        paths, captions, rows = _held_out(work, n, seed)
        fp32 = OrtEncoder(folder)
        pixels = np.stack([load_pixels(p, fp32.pixels).data for p in paths])
        texts, images = fp32.encode_texts(captions), fp32.encode_pixels(pixels)
        out = [_row(f"seed {seed}: fp32", images, images, texts, rows)]
        for batch in BATCHES:
            int8 = OrtEncoder(folder, batch_size=batch, int8=True).encode_pixels(pixels)
            out.append(_row(f"seed {seed}: int8, batch {batch}", images, int8, texts, rows))
    return out, len(paths), len(captions)


def loss(rows: list[dict]) -> float:
    """The most recall points any int8 row loses against its seed's fp32 row (any R@k)."""
    fp32 = {r["name"].split(":")[0]: r for r in rows if r["name"].endswith("fp32")}
    return max(fp32[r["name"].split(":")[0]][k] - r[k]
               for r in rows if "int8" in r["name"] for k in RECALLS)


def verdict(model: str, rows: list[dict]) -> str:
    """One line: does int8 hold the family of `model` within BAR points of recall?"""
    from retriever.encoding.families import family_of

    lost, family = loss(rows), family_of(model)
    keeps = "`auto` may use int8 for" if lost <= BAR else "`auto` keeps fp32 (AUTO_FP32) for"
    return (f"int8 loses at most {lost:.1f} recall points here (bar: {BAR:.1f}): {keeps} the "
            f"{family} family.")


def body(rows: list[dict], seeds: list[int], images: int, queries: int,
         model: str = "retriever-tiny") -> str:
    lines = [
        f"{model} trained on the shape scenes (`retriever demo`'s recipe, seeds "
        f"{', '.join(map(str, seeds))}), exported to ONNX; {images} held-out scenes (never "
        f"trained on), {queries} text queries "
        "(their captions, fp32 text tower). cos: image vector to its fp32 vector; top-10 agree: "
        "the share of fp32's 10 best images in the row's 10 best, mean over queries; top-1 same: "
        "queries whose best image is fp32's; R@k: held-out text->image recall in %.",
        "",
        "| image tower | cos min | cos mean | top-10 agree | top-1 same | R@1 | R@5 | R@10 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['name']} | {r['cos_min']:.5f} | {r['cos_mean']:.5f} | "
                     f"{r['agree']:.3f} | {r['top1']:.3f} | {r['R@1']:.1f} | {r['R@5']:.1f} | "
                     f"{r['R@10']:.1f} |")
    return "\n".join([*lines, "", verdict(model, rows)]) + "\n"


def main(argv: list[str] | None = None) -> None:
    from retriever.encoding.families import family_of

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--test-images", type=int, default=300)
    parser.add_argument("--model", default="retriever-tiny",
                        help="architecture or model-config JSON, trained from random weights")
    parser.add_argument("--dry-run", action="store_true", help="print, leave RESULTS.md alone")
    args = parser.parse_args(argv)
    rows: list[dict] = []
    for seed in args.seeds:
        more, images, queries = measure(seed, args.test_images, args.model)
        rows += more
    text = body(rows, args.seeds, images, queries, args.model)
    print(text)
    if not args.dry_run:
        command = "python -m bench.int8_quality " + " ".join(argv or sys.argv[1:])
        family = "" if args.model == "retriever-tiny" else family_of(args.model)
        write_section(f"int8-{family}" if family else "int8",
                      f"int8 image vectors on a trained model (CPU){family and ': ' + family}",
                      text, command.strip(), machine_line())


if __name__ == "__main__":
    main()
