"""Does indexing keep the encoder fed? The image encoder alone against the whole pipeline.

    python -m bench.pipeline --export DIR [--n 200] [--n-12mp 40] [--batches 1 8 16 32 64]
                             [--sizes large 12mp] [--readers 1]

DIR: an ONNX export (`retriever.encoding.onnx_export.export`, e.g. ViT-B-32 with random
weights: the computation is that of the real weights). For fp32 and int8: images/s of
`OrtEncoder.encode_pixels` on ready pixels at each batch size (one warm-up call, then `--n`
images; int8 runs one image per call whatever the batch, so only the plan's), then
`ingest_media` over generated JPEGs (bench/photos.py) of each size (1024x768: `--n`; 12 MP
phone photos: `--n-12mp`) into a fresh index with the settings `retriever.encoding.cpu.plan`
chooses, and again with each `--readers` count instead of the plan's (the plan's choice,
measured), and the single-thread cost per photo of decoding it to pixels (JPEG draft decoding
included). Every row records the 1-minute load average (other work shares the machine).
Issue 25's targets: end to end >= 95% of the encoder alone in fp32, >= 90% in int8.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.photos import SIZES, photo_folder
from bench.results import machine_line, write_section


def load() -> float:
    return os.getloadavg()[0]


def encoder_rate(export: Path, int8: bool, batch: int, n: int) -> float:
    from retriever.encoding.ort_encoder import OrtEncoder

    encoder = OrtEncoder(export, batch_size=batch, int8=int8)
    size = encoder.pixels.size
    pixels = np.random.default_rng(0).normal(0, 1, (n, 3, size, size)).astype(np.float32)
    encoder.encode_pixels(pixels[:batch])  # warm-up: session, prepacking
    start = time.perf_counter()
    encoder.encode_pixels(pixels)
    return n / (time.perf_counter() - start)


def pipeline_rate(export: Path, int8: bool, photos: Path, readers: int) -> float:
    from retriever.encoding.cpu import plan
    from retriever.encoding.ort_encoder import OrtEncoder
    from retriever.ingest.options import IngestOptions
    from retriever.ingest.pipeline import ingest_media
    from retriever.ingest.readers import LocalEngine
    from retriever.library.collection import Collection

    encoder = OrtEncoder(export, batch_size=plan().batch, int8=int8)
    encoder.encode_pixels(np.zeros((1, 3, encoder.pixels.size, encoder.pixels.size),
                                   np.float32))  # the session, as encoder_rate warms it
    options = IngestOptions((photos,))
    with tempfile.TemporaryDirectory() as db:
        collection = Collection.open(Path(db))
        try:
            start = time.perf_counter()
            report = ingest_media(collection, encoder, options, engine=LocalEngine(
                options.read_timeout, options.read_wall_timeout, workers=readers))
            seconds = time.perf_counter() - start
        finally:
            collection.close()
    return report.images / seconds


def decode_ms(export: Path, photos: Path) -> float:
    from retriever.encoding.ort_encoder import OrtEncoder
    from retriever.encoding.pixels import load_pixels

    config = OrtEncoder(export).pixels
    files = sorted(photos.glob("*.jpg"))[:50]
    start = time.perf_counter()
    for path in files:
        load_pixels(path, config)
    return 1000 * (time.perf_counter() - start) / len(files)


def folders(sizes: list[str], n: int, n_12mp: int) -> dict[str, Path]:
    return {size: photo_folder(size, n_12mp if size == "12mp" else n) for size in sizes}


def measure(export: Path, photos: dict[str, Path], batches: list[int], readers: list[int]
            ) -> str:
    from retriever.encoding.cpu import plan

    chosen = plan()
    costs = "; ".join(f"{'x'.join(map(str, SIZES[size]))}: {decode_ms(export, folder):.1f} ms"
                      for size, folder in photos.items())
    lines = [f"Plan: {chosen}. Decoding one photo to pixels, one thread: {costs} "
             f"(load {load():.1f}).", "",
             "| tower | what | photos | batch | readers | images/s | x encoder alone at the "
             "plan's batch | load |", "|---|---|---|---|---|---|---|---|"]
    for int8 in (False, True):
        tower = "int8" if int8 else "fp32"
        n = sum(1 for _ in next(iter(photos.values())).glob("*.jpg"))
        alone = {batch: (encoder_rate(export, int8, batch, n), load())
                 for batch in sorted({*batches, chosen.batch} if not int8 else {chosen.batch})}
        base = alone[chosen.batch][0]
        lines += [f"| {tower} | encoder alone | - | {batch} | - | {rate:.1f} | "
                  f"{rate / base:.2f} | {avg:.1f} |" for batch, (rate, avg) in alone.items()]
        for size, folder in photos.items():
            for count in sorted({chosen.reader_threads, *readers}):
                rate = pipeline_rate(export, int8, folder, count)
                lines.append(f"| {tower} | index, end to end | {'x'.join(map(str, SIZES[size]))}"
                             f" | {chosen.batch} | {count} | {rate:.1f} | {rate / base:.2f} | "
                             f"{load():.1f} |")
                print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--export", type=Path, required=True)
    parser.add_argument("--n", type=int, default=200, help="1024x768 photos (and 320x240)")
    parser.add_argument("--n-12mp", type=int, default=40, help="4032x3024 photos")
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=["large", "12mp"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16, 32, 64])
    parser.add_argument("--readers", type=int, nargs="*", default=[1],
                        help="reader thread counts measured beside the plan's")
    parser.add_argument("--dry-run", action="store_true", help="print, leave RESULTS.md alone")
    args = parser.parse_args(argv)
    photos = folders(args.sizes, args.n, args.n_12mp)
    text = measure(args.export, photos, args.batches, args.readers)
    print(text)
    if not args.dry_run:
        command = "python -m bench.pipeline " + " ".join(argv or sys.argv[1:])
        write_section("pipeline", "Encoder alone against indexing end to end (CPU)", text,
                      command, machine_line())


if __name__ == "__main__":
    main()
