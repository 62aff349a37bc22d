"""Parity with open_clip's own trainer: held-out recall and training throughput, same budget.

    python -m bench.parity [--seeds 0 1 2] [--epochs 3 10] [--batch-size 64] [--threads 1]
                           [--no-write]   (print the tables, leave bench/RESULTS.md alone)

Both trainers get the same generated data (a TSV of 4,608 captioned images, one caption
each), the same architecture (bundled retriever-tiny, registered with open_clip.add_model_config),
the same initial weights per seed (a state dict both load with --pretrained), batch size, peak
learning rate, warmup steps, cosine schedule, AdamW settings, epochs, augmentation (open_clip's
random crop), fp32, seeds, DataLoader workers and torch threads, on this machine's CPU:

  ours   retriever train train.tsv --augment --val-fraction 0 ...
  theirs open_clip_train.main.main(["--dataset-type", "csv", "--csv-img-key", "filepath",
         "--csv-caption-key", "caption", ...])

Both checkpoints are then scored by `retriever eval` on 288 held-out images (every scene
once, two captions each). Samples/s is pairs trained / seconds of the training call (model
build, data setup, training and the final checkpoint), measured in the training process.
The trainers alternate within each seed (ours first on even seeds), so load from other work on
the machine falls on both alike; the load average is recorded around every run. Each budget in
--epochs gets its own table: a short one, where recall is still climbing and differences show,
and a full one. The final epoch's mean training loss is listed as a check that both trainers
follow the same curve.

Scenes: colour x shape x place x size x background (288 combinations); a caption names all
five, so retrieval among the held-out images has one right answer per caption.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from bench.results import machine_line, write_section

MODEL = "retriever-tiny"
CONFIGS = Path(__file__).parents[1] / "retriever" / "model_configs"
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220),
           "yellow": (235, 210, 20), "purple": (140, 40, 170), "black": (20, 20, 20)}
SHAPES = {"circle": "round shape", "square": "boxy shape", "triangle": "pointed shape"}
PLACES = {"left": (0.28, 0.5), "right": (0.72, 0.5), "top": (0.5, 0.28), "bottom": (0.5, 0.72)}
SIZES = {"small": 0.22, "large": 0.4}  # shape width / image width
BACKGROUNDS = {"light": (200, 240), "dark": (70, 110)}  # grey level range
SCENES = list(itertools.product(COLOURS, SHAPES, PLACES, SIZES, BACKGROUNDS))
TRAIN_PER_SCENE = 16  # 4,608 training images
IMAGE_SIZE = 64
LR, WEIGHT_DECAY, WARMUP = 1e-3, 0.1, 0.1  # the from-scratch defaults of `retriever train`


# --- data -------------------------------------------------------------------------------------


def captions(scene: tuple[str, ...]) -> tuple[str, str]:
    colour, shape, place, size, background = scene
    return (f"a {size} {colour} {shape} on the {place}, {background} background",
            f"{place} side: {size} {colour} {SHAPES[shape]} over {background} grey")


def draw(scene: tuple[str, ...], rng: random.Random) -> Image.Image:
    colour, shape, place, size, background = scene
    grey = rng.uniform(*BACKGROUNDS[background])
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, 12, (IMAGE_SIZE, IMAGE_SIZE, 1))
    image = Image.fromarray(np.clip(grey + noise, 0, 255).astype(np.uint8).repeat(3, axis=2))
    cx, cy = PLACES[place]
    jitter = 0.04 * IMAGE_SIZE
    x = cx * IMAGE_SIZE + rng.uniform(-jitter, jitter)
    y = cy * IMAGE_SIZE + rng.uniform(-jitter, jitter)
    r = SIZES[size] * IMAGE_SIZE / 2
    pen, fill = ImageDraw.Draw(image), COLOURS[colour]
    if shape == "circle":
        pen.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif shape == "square":
        pen.rectangle((x - r, y - r, x + r, y + r), fill=fill)
    else:
        pen.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
    return image


def write_data(work: Path) -> tuple[Path, Path]:
    """train.tsv (absolute paths, one caption per image) and held-out/ (sidecars, both
    captions); written once per work folder."""
    table, held_out = work / "train.tsv", work / "held-out"
    if table.exists() and held_out.exists():
        return table, held_out
    rng = random.Random(0)
    rows = ["filepath\tcaption"]
    for i, scene in enumerate(SCENES * TRAIN_PER_SCENE):
        path = work / "train" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        draw(scene, rng).save(path, quality=95)
        rows.append(f"{path.resolve()}\t{rng.choice(captions(scene))}")
    held_out.mkdir(parents=True, exist_ok=True)
    for i, scene in enumerate(SCENES):
        draw(scene, rng).save(held_out / f"{i:03d}.jpg", quality=95)
        (held_out / f"{i:03d}.txt").write_text("\n".join(captions(scene)) + "\n")
    table.write_text("\n".join(rows) + "\n")
    return table, held_out


def write_init(work: Path, seed: int) -> Path:
    """The seed's initial weights, as a plain open_clip state dict both trainers load."""
    import open_clip
    import torch

    path = work / f"init-{seed}.pt"
    if not path.exists():
        open_clip.add_model_config(CONFIGS)
        torch.manual_seed(seed)
        torch.save(open_clip.create_model(MODEL).state_dict(), path)
    return path


# --- one training run, in its own process -----------------------------------------------------


def ours_final_loss(checkpoint: Path, epochs: int) -> float:
    with checkpoint.with_name("ours.curve.csv").open() as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)
                  if r["loss"] and int(r["epoch"]) == epochs]
    return statistics.mean(losses)


def theirs_final_loss(checkpoint: Path) -> float:
    """The running mean open_clip_train logs at the end of the last epoch: `loss: x (mean)`."""
    log = (checkpoint.parents[1] / "out.log").read_text()
    return float(re.findall(r"Contrastive_loss: [\d.]+ \(([\d.]+)\)", log)[-1])


def run_ours(args: argparse.Namespace, out: Path) -> Path:
    from typer.testing import CliRunner

    from cli import app

    argv = ["train", str(args.table), "--out", str(out / "ours.pt"), "--model", MODEL,
            "--pretrained", str(args.init), "--epochs", str(args.epochs),
            "--batch-size", str(args.batch_size), "--lr", str(LR), "--warmup", str(WARMUP),
            "--weight-decay", str(WEIGHT_DECAY), "--val-fraction", "0", "--seed", str(args.seed),
            "--augment", "--num-workers", str(args.workers), "--precision", "fp32"]
    result = CliRunner().invoke(app, argv)
    if result.exit_code:
        raise SystemExit(f"retriever train failed: {result.output}")
    return out / "ours.pt"


def run_theirs(args: argparse.Namespace, out: Path) -> Path:
    import open_clip
    from open_clip_train.main import main

    open_clip.add_model_config(CONFIGS)
    shutil.rmtree(out / "theirs", ignore_errors=True)  # it refuses to reuse an experiment name
    steps = args.epochs * (args.samples // args.batch_size)
    main(["--train-data", str(args.table), "--dataset-type", "csv", "--csv-separator", "\t",
          "--csv-img-key", "filepath", "--csv-caption-key", "caption", "--model", MODEL,
          "--pretrained", str(args.init), "--batch-size", str(args.batch_size),
          "--epochs", str(args.epochs), "--lr", str(LR), "--wd", str(WEIGHT_DECAY),
          "--warmup", str(round(WARMUP * steps)), "--beta1", "0.9", "--beta2", "0.98",
          "--eps", "1e-6", "--seed", str(args.seed), "--workers", str(args.workers),
          "--precision", "fp32", "--save-frequency", "0", "--logs", str(out),
          "--name", "theirs", "--log-every-n-steps", "1000000"])
    return out / "theirs" / "checkpoints" / f"epoch_{args.epochs}.pt"


def worker(args: argparse.Namespace) -> None:
    """`--worker ours|theirs`: train once, print {"checkpoint", "seconds", "final_loss"}."""
    import torch

    torch.set_num_threads(args.threads)
    out = args.work / f"epochs-{args.epochs}-seed-{args.seed}"
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    checkpoint = (run_ours if args.worker == "ours" else run_theirs)(args, out)
    seconds = time.perf_counter() - start
    final_loss = (ours_final_loss(checkpoint, args.epochs) if args.worker == "ours"
                  else theirs_final_loss(checkpoint))
    print(json.dumps({"checkpoint": str(checkpoint), "seconds": seconds,
                      "final_loss": final_loss}))


# --- orchestration ----------------------------------------------------------------------------


def train_once(who: str, seed: int, epochs: int, init: Path, table: Path,
               args: argparse.Namespace) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    command = [sys.executable, "-m", "bench.parity", "--worker", who, "--seed", str(seed),
               "--init", str(init), "--table", str(table), "--work", str(args.work),
               "--epochs", str(epochs), "--batch-size", str(args.batch_size),
               "--threads", str(args.threads), "--workers", str(args.workers)]
    load_before = os.getloadavg()[0]
    done = subprocess.run(command, capture_output=True, text=True, env=env,
                          cwd=Path(__file__).parents[1])
    if done.returncode:
        raise SystemExit(f"{who} seed {seed} failed:\n{done.stderr[-3000:]}")
    run = json.loads(done.stdout.strip().splitlines()[-1])
    run["load"] = (load_before, os.getloadavg()[0])
    return run


def recall(checkpoint: str, held_out: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "cli", "eval", str(held_out), "--model", MODEL,
                           "--pretrained", checkpoint, "--json"], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"retriever eval {checkpoint} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def row(metrics: dict) -> list[float]:
    return [100 * metrics[d][f"R@{k}"] for d in ("text_to_image", "image_to_text")
            for k in (1, 5, 10)]


def table_text(results: dict[str, list[dict]], seeds: list[int]) -> str:
    head = ("| trainer | seed | t2i R@1 | t2i R@5 | t2i R@10 | i2t R@1 | i2t R@5 | i2t R@10 "
            "| samples/s | final-epoch loss | load avg before/after |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines, means = [], {}
    for who, runs in results.items():
        for seed, run in zip(seeds, runs, strict=True):
            cells = " | ".join(f"{v:.1f}" for v in row(run["metrics"]))
            lines.append(f"| {who} | {seed} | {cells} | {run['samples_per_s']:.0f} | "
                         f"{run['final_loss']:.3f} | {run['load'][0]:.2f} / "
                         f"{run['load'][1]:.2f} |")
        columns = list(zip(*(row(r["metrics"]) for r in runs), strict=True))
        speeds = [r["samples_per_s"] for r in runs]
        losses = [r["final_loss"] for r in runs]
        means[who] = [statistics.mean(c) for c in columns] + [statistics.mean(speeds)]
        spread = [statistics.stdev(c) if len(c) > 1 else 0.0 for c in columns]
        cells = " | ".join(f"**{m:.1f}** ± {s:.1f}" for m, s in zip(means[who], spread,
                                                                    strict=False))
        lines.append(f"| {who} | mean ± sd | {cells} | **{means[who][-1]:.0f}** | "
                     f"{statistics.mean(losses):.3f} | |")
    ours, theirs = means["retriever"], means["open_clip_train"]
    gaps = " | ".join(f"{a - b:+.1f}" for a, b in zip(ours[:-1], theirs[:-1], strict=True))
    lines.append(f"| ours - theirs | | {gaps} | {ours[-1] / theirs[-1]:.2f}x | | |")
    return head + "\n".join(lines)


def run_budget(epochs: int, table: Path, held_out: Path, args: argparse.Namespace) -> str:
    results: dict[str, list[dict]] = {"retriever": [], "open_clip_train": []}
    for seed in args.seeds:
        init = write_init(args.work, seed)
        order = ["ours", "theirs"] if seed % 2 == 0 else ["theirs", "ours"]
        for who in order:
            run = train_once(who, seed, epochs, init, table, args)
            run["metrics"] = recall(run["checkpoint"], held_out)
            run["samples_per_s"] = epochs * args.samples / run["seconds"]
            results["retriever" if who == "ours" else "open_clip_train"].append(run)
            print(f"{epochs} epochs, seed {seed}, {who}: {run['samples_per_s']:.0f} samples/s, "
                  f"t2i R@1 {run['metrics']['text_to_image']['R@1']:.3f}, load {run['load']}",
                  flush=True)
    return f"**{epochs} epochs** ({epochs * args.samples // args.batch_size} steps)\n\n" + (
        table_text(results, args.seeds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, nargs="+", default=[3, 10], help="budgets")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per trainer")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers")
    parser.add_argument("--work", type=Path, default=Path("/tmp/retriever-parity"))
    parser.add_argument("--no-write", action="store_true", help="print, leave RESULTS.md alone")
    parser.add_argument("--worker", choices=["ours", "theirs"], help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--init", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--table", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.samples = len(SCENES) * TRAIN_PER_SCENE
    if args.worker:
        args.epochs = args.epochs[0]
        return worker(args)

    import open_clip
    import torch

    table, held_out = write_data(args.work)
    tables = [run_budget(epochs, table, held_out, args) for epochs in args.epochs]
    body = (f"{args.samples} training pairs, {len(SCENES)} held-out images x 2 captions; "
            f"retriever-tiny from the same random init per seed; batch {args.batch_size}, "
            f"peak LR {LR}, {WARMUP:.0%} warmup then cosine, AdamW (0.9, 0.98, 1e-6, wd "
            f"{WEIGHT_DECAY}), random-crop augmentation, fp32; {args.threads} torch thread(s) "
            f"and {args.workers} DataLoader worker(s) each. Recall in % by `retriever eval` on "
            f"both checkpoints; samples/s = pairs trained / seconds of the training call (model "
            f"build, data setup, steps, final checkpoint); load avg = 1-minute load average "
            f"before / after the run. torch {torch.__version__}, open_clip "
            f"{open_clip.__version__}.\n\n" + "\n\n".join(tables) + "\n")
    command = "python -m bench.parity " + " ".join(sys.argv[1:])
    if not args.no_write:
        write_section("parity", "Training parity with open_clip_train (CPU)", body,
                      command.strip(), machine_line())
    print(body)


if __name__ == "__main__":
    main()
