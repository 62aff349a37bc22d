"""The cold query and ingest benchmarks of two trees, in one run on one machine: the code before a
change (a worktree or `git archive` of it) against the code as it is now.

    python -m bench.before_after --before /tmp/base [--after .] [--runs 7] [--ingest-runs 3]
                                 [--images 300] [--texts 100]

Both trees run with this venv's python, each from its own folder (cwd and PYTHONPATH: its own
`cli`, `retriever` and `index` come first; checked before timing), each with its own export
cache and user registry under bench/.work/before-after/<before|after>/, modules compiled first
as an installed package's are. The media: `--images` generated 320x240 JPEGs (bench/photos.py)
and `--texts` generated notes of a few sentences, in one folder.

    search   a cold one-off `python -m cli search "a photo of a dog" --db IDX --paths-only -k 10`,
             a fresh process each run, on an index of the media that tree made first (untimed:
             it also makes the ONNX export); `--runs` runs per tree
    ingest   `python -m cli index MEDIA --db FRESH --model retriever-tiny --pretrained none`
             (default backend: ONNX Runtime on a CPU; the export already cached), a fresh index
             each run; `--ingest-runs` runs per tree

Each command runs once untimed per tree (page cache, byte-code; for ingest, making the index
searched), then the trees alternate, the first swapping each round. Prints a markdown table:
median wall seconds (spawn to exit) and CPU seconds of each tree, and after / before (below 1:
the change made it faster); then the commands, the CPU model and the load average before and
after. Writes nothing to RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from bench.fresh import cli_env, cpu_model, load_line, precompile, timed
from bench.photos import WORK, photo_folder

ROOT = Path(__file__).resolve().parent.parent
AB_WORK = WORK / "before-after"
QUERY = "a photo of a dog"
MODEL = ("--model", "retriever-tiny", "--pretrained", "none")
TREES = ("before", "after")
SENTENCES = ("the dog runs on a beach at sunset while children build a castle of sand near old "
             "boats, receipts from the market list apples bread coffee and a red bicycle lamp; "
             "minutes of the meeting note the budget, the roof repair and next year's garden")
WORDS = SENTENCES.split(" ")
# Prints where a tree's modules come from: each must be inside the tree.
WHERE = "import cli, retriever, index; print(cli.__file__, retriever.__file__, index.__file__)"


def media_folder(images: int, texts: int) -> Path:
    """bench/.work/before-after/media-I-T/: the photos (hard links into bench.photos' folder)
    and the notes; reused when complete."""
    folder = AB_WORK / f"media-{images}-{texts}"
    done = folder / ".complete"
    if done.is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for photo in sorted(photo_folder("small", images).glob("*.jpg")):
        try:
            (folder / photo.name).hardlink_to(photo)
        except OSError:
            shutil.copyfile(photo, folder / photo.name)
    rng = random.Random(0)
    for i in range(texts):
        sentences = [" ".join(rng.choices(WORDS, k=rng.randint(6, 18))).capitalize() + "."
                     for _ in range(rng.randint(2, 8))]
        (folder / f"note-{i:04d}.txt").write_text(" ".join(sentences) + "\n")
    done.write_text(f"{images} photos, {texts} notes\n")
    return folder


def check_tree(tree: Path, env: dict[str, str]) -> None:
    """Refuse a tree whose cli, retriever or index would be imported from elsewhere."""
    out = subprocess.run([sys.executable, "-c", WHERE], cwd=tree, env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    outside = [path for path in out if not Path(path).resolve().is_relative_to(tree.resolve())]
    if outside:
        raise SystemExit(f"{tree}: imports {' '.join(outside)} from outside the tree")


def first_run(command: list[str], tree: Path, env: dict[str, str], what: str) -> None:
    """The untimed run: it must succeed (and a search must print results)."""
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode != 0 or (what == "search" and not done.stdout.strip()):
        raise SystemExit(f"{tree}: {' '.join(command[1:])} failed ({done.returncode}):\n"
                         f"{done.stdout[-1000:]}{done.stderr[-2000:]}")


def alternate(commands: dict[str, list[str]], trees: dict[str, Path],
              envs: dict[str, dict[str, str]], runs: int, fresh: Path | None, what: str
              ) -> dict[str, list[tuple[float, float]]]:
    """(wall s, CPU s) of `runs` timed runs per tree. `fresh`: a folder removed after each run
    (the new index of an ingest)."""
    if fresh is None:  # an ingest's first run was the index its tree searches (main)
        for label in trees:
            first_run(commands[label], trees[label], envs[label], what)
    times: dict[str, list[tuple[float, float]]] = {label: [] for label in trees}
    for r in range(runs):
        for label in TREES if r % 2 == 0 else TREES[::-1]:
            took = timed(commands[label], trees[label], envs[label])
            times[label].append(took)
            if fresh is not None:
                shutil.rmtree(fresh, ignore_errors=True)
            print(f"{what} {r + 1}/{runs} {label:>6}: {took[0]:6.2f} s wall, {took[1]:6.2f} s "
                  f"CPU ({load_line()})", file=sys.stderr, flush=True)
    return times


def row(what: str, times: dict[str, list[tuple[float, float]]]) -> str:
    wall = {label: statistics.median(t[0] for t in times[label]) for label in TREES}
    cpu = {label: statistics.median(t[1] for t in times[label]) for label in TREES}
    return (f"| {what} | {len(times['before'])} | {wall['before']:.3f} | {wall['after']:.3f} | "
            f"{wall['after'] / wall['before']:.3f} | {cpu['before']:.3f} | {cpu['after']:.3f} | "
            f"{cpu['after'] / cpu['before']:.3f} |")


def revision(tree: Path) -> str:
    done = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--", "cli.py",
                            "retriever", "index"], capture_output=True, text=True).stdout
    if done.returncode != 0:
        return "not a git tree"
    return done.stdout.strip() + (" with uncommitted changes" if dirty.strip() else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="The tree before the change.")
    parser.add_argument("--after", type=Path, default=ROOT, help="The tree after (this one).")
    parser.add_argument("--runs", type=int, default=7, help="Cold searches per tree (0: none).")
    parser.add_argument("--ingest-runs", type=int, default=3, help="Ingests per tree (0: none).")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--texts", type=int, default=100)
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    media = media_folder(args.images, args.texts)
    envs = {label: cli_env(AB_WORK / label, trees[label]) for label in TREES}
    indexes = {label: AB_WORK / label / "index" for label in TREES}
    for label in TREES:
        check_tree(trees[label], envs[label])
        precompile(trees[label])
        shutil.rmtree(indexes[label], ignore_errors=True)  # made by this tree, below
    fresh = AB_WORK / "fresh-index"
    ingest = {label: [sys.executable, "-m", "cli", "index", str(media), "--db", str(fresh),
                      *MODEL] for label in TREES}
    search = {label: [sys.executable, "-m", "cli", "search", QUERY, "--db", str(indexes[label]),
                      "--paths-only", "-k", "10"] for label in TREES}
    for label in TREES:  # the index each tree searches, and its ONNX export
        first_run([sys.executable, "-m", "cli", "index", str(media), "--db",
                   str(indexes[label]), *MODEL], trees[label], envs[label], "index")
    before_load = load_line()
    searched = alternate(search, trees, envs, args.runs, None, "search")
    ingested = alternate(ingest, trees, envs, args.ingest_runs, fresh, "ingest")
    print("| benchmark | runs | before s | after s | after / before | before CPU s | "
          "after CPU s | after / before (CPU) |")
    print("|---|---|---|---|---|---|---|---|")
    if args.runs:
        print(row(f"cold search, {args.images} images + {args.texts} texts", searched))
    if args.ingest_runs:
        print(row(f"ingest {args.images} images + {args.texts} texts, fresh index", ingested))
    print(f"\nCommand: `python -m bench.before_after {' '.join(sys.argv[1:])}`; before: "
          f"{trees['before']} ({revision(trees['before'])}), after: {trees['after']} "
          f"({revision(trees['after'])}).")
    print(f"search: `python -m cli {shlex.join(search['after'][3:])}`; ingest: "
          f"`python -m cli {shlex.join(ingest['after'][3:])}`.")
    print(f"CPU: {cpu_model()} ({len(os.sched_getaffinity(0))} usable cores); "
          f"{before_load} before, {load_line()} after. Medians; wall from spawn to exit, CPU "
          f"of all threads.")


if __name__ == "__main__":
    main()
