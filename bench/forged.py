"""Issue 20's memory claim: a folder of good photos plus files whose headers claim huge sizes
indexes with a bounded peak RSS, each forged file one line, and a second run encodes nothing.

    python -m bench.forged                     # local engine, then --engine ray
    python -m bench.forged --engines local

The folder: 20 JPEGs at 640x480, a DNG whose JPEG preview claims 60000x60000, a DNG with a
400 MP preview, a HEIC, JPEG, PNG, GIF, TIFF and WebP forged to 60000x60000 and an AVI to
16000x16000 (the forgers of tests/test_decode_guard.py), in bench/.work/forged/. Each engine
indexes it twice into a fresh index with the real CLI under `/usr/bin/time -v` (retriever-tiny,
random weights, the default backend); printed: peak RSS (the CLI and the children it waited
for), files encoded and failed, and the failure lines. Nothing is written to RESULTS.md: the
figures go in the issue's note with the machine they ran on.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests import test_decode_guard as forge
from tests.helpers import write_photo

WORK = Path(__file__).resolve().parent / ".work" / "forged"
BIG = 60_000


def make_folder(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
    for i in range(20):
        write_photo(root / f"good{i:02}.jpg", (20 * i % 255, 200, 60), size=(640, 480))
    forge.forged_dng(root / "bomb-preview.dng", BIG, BIG)
    forge.forged_dng(root / "preview-400mp.dng", 20_000, 20_000)
    for suffix, forged in [("jpg", forge.forged_jpeg), ("png", forge.forged_png),
                           ("gif", forge.forged_gif), ("webp", forge.forged_webp),
                           ("tiff", forge.forged_tiff), ("heic", forge.forged_heic)]:
        forged(root / f"bomb.{suffix}", BIG, BIG)
    forge.forged_avi(root / "bomb.avi", 16_000, 16_000)


def index_once(folder: Path, index: Path, engine: str) -> str:
    """One `retriever index` under /usr/bin/time -v: a line of what it did and its peak RSS."""
    done = subprocess.run(
        ["/usr/bin/time", "-v", sys.executable, "-m", "cli", "index", str(folder), "--db",
         str(index), "--model", "retriever-tiny", "--pretrained", "none", "--engine", engine],
        capture_output=True, text=True, timeout=1800)
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    summary = done.stdout.splitlines()[0] if done.stdout else f"exit {done.returncode}"
    skipped = [line for line in done.stderr.splitlines() if line.startswith("skipped")]
    rss = f"{int(peak.group(1)) / 1024:.0f} MB" if peak else "?"
    return "\n".join([f"  peak RSS {rss}: {summary}", *(f"    {s}" for s in skipped)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", nargs="+", default=["local", "ray"])
    args = parser.parse_args()
    folder = WORK / "folder"
    make_folder(folder)
    for engine in args.engines:
        index = WORK / f"index-{engine}"
        shutil.rmtree(index, ignore_errors=True)
        for run in (1, 2):
            print(f"--engine {engine}, run {run}")
            print(index_once(folder, index, engine), flush=True)


if __name__ == "__main__":
    main()
