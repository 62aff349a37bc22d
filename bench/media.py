"""Issue 14's two measured claims: photo-only indexing is as fast as before media support, and
the default of `--video-every`.

    python -m bench.media photos                  # A/B: the tree before media support vs this one
    python -m bench.media photos --rounds 5 --before 8bd3257
    python -m bench.media video-every             # items, seconds and scene coverage per setting
    python -m bench.media video-every --every 1 2 3 5 10 --model retriever-tiny

`photos`: 200 JPEGs at 1024x768 (bench/photos.py) indexed by the real CLI, `python -m cli index
FOLDER --db FRESH --model retriever-tiny --pretrained none --backend torch`, once from the tree
before media support (`git archive BEFORE`, run from its own folder with this venv: its own
`cli` and `retriever` come first on sys.path) and once from the working tree, alternating, in
several rounds, after one untimed warm-up run each (byte-code, page cache). Each run is a fresh
process and a fresh index. A small runner around the CLI times `ingest_media` (the indexing
itself, without start-up and model load) and the encoder's calls; a second run per round
replaces the forward pass by stand-in unit vectors (`model-free`: scan, read, decode, pixels,
hash, store, FAISS save). The 1-minute load average is read before each run.

`video-every`: three 60 s videos at 640x360, 25 fps, H.264 (PyAV), generated once into
bench/.work/videos/: still shots joined by hard cuts (2-20 s), still shots joined by 1 s
cross-dissolves (no cut to detect: only the `--video-every` ceiling samples the next shot), and
three slow pans (64, 128, 256 px/s) across panoramas with landmarks, each fully in view for 8, 4
or 2 s. Each setting indexes the folder with the real CLI; a scene is covered when a kept frame's
time falls in the span where it is fully shown (`Scene`).

Both write their section of bench/RESULTS.md (`media-photos`, `media-video`); --dry-run prints.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.photos import WORK, mean_kb, photo, photo_folder
from bench.results import machine_line, write_section

ROOT = Path(__file__).resolve().parent.parent
MEDIA_COMMIT = "9af8a52"  # HEIC, RAW, video scenes, OCR (issue 14) came in this commit
PYTHON = sys.executable

# Runs `python -m cli ARGS` after wrapping `ingest_media` and the encoders' `encode_pixels` with
# timers; writes {"index_s", "encode_s", "first_s", "images", "module"} to OUT at exit. Mode
# "model-free" returns stand-in unit vectors instead of running the model. Trees before 9f099b1
# have the same modules one folder up.
RUNNER = r'''
import atexit, json, runpy, sys, time
out, mode, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
import importlib
import numpy as np
import retriever

def module(name):  # retriever/<job>/<name>.py, or retriever/<name>.py before 9f099b1
    for job in ("library.", "encoding.", ""):
        try:
            return importlib.import_module(f"retriever.{job}{name}")
        except ImportError:
            pass
    return None

indexer = module("indexer")
spent = {"index_s": 0.0, "encode_s": 0.0, "first_s": None, "images": 0,
         "module": retriever.__file__}

def timed_index(*args, _real=indexer.ingest_media, **kwargs):
    start = time.perf_counter()
    try:
        return _real(*args, **kwargs)
    finally:
        spent["index_s"] += time.perf_counter() - start

def wrap(cls):
    real = cls.encode_pixels
    def encode_pixels(self, pixels):
        start = time.perf_counter()
        if mode == "model-free":
            rng = np.random.default_rng(spent["images"])
            vectors = rng.standard_normal((len(pixels), self.dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        else:
            vectors = real(self, pixels)
        took = time.perf_counter() - start
        spent["encode_s"] += took
        if spent["first_s"] is None:
            spent["first_s"] = took
        spent["images"] += len(pixels)
        return vectors
    cls.encode_pixels = encode_pixels

indexer.ingest_media = timed_index
wrap(module("clip_encoder").ClipEncoder)
ort = module("ort_encoder")  # None without onnxruntime
if ort is not None:
    wrap(ort.OrtEncoder)
atexit.register(lambda: open(out, "w").write(json.dumps(spent)))
sys.argv = ["cli", *argv]
runpy.run_module("cli", run_name="__main__", alter_sys=True)
'''


@dataclass(frozen=True)
class Run:
    wall_s: float  # the whole command: interpreter start, imports, model, indexing, exit
    index_s: float  # inside ingest_media
    encode_s: float  # inside the encoder's encode_pixels
    first_s: float  # of which its first call (the indexer's probe: the model's one-off start)
    images: int  # images (and frames) given to the encoder
    load: float  # 1-minute load average just before the run


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def clean_env(work: Path) -> dict[str, str]:
    """This environment without RETRIEVER_* settings (a store URL would send the run elsewhere)
    and with the per-user folders (index registry, export cache) inside `work`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRIEVER_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # both trees compile once, in the warm-up
    env.update(XDG_DATA_HOME=str(work / "data"), XDG_CACHE_HOME=str(work / "cache"))
    return env


def run_cli(tree: Path, args: Sequence[str], mode: str, work: Path) -> Run:
    """`python -m cli ARGS` from `tree`, through RUNNER; raises on failure or a wrong tree."""
    out = work / "runner.json"
    out.unlink(missing_ok=True)
    load, start = load_average(), time.perf_counter()
    done = subprocess.run([PYTHON, "-c", RUNNER, str(out), mode, *args], cwd=tree,
                          env=clean_env(work), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0 or not out.is_file():
        raise SystemExit(f"{tree}: cli {' '.join(args)} failed ({done.returncode}):\n"
                         f"{done.stdout}{done.stderr}")
    spent = json.loads(out.read_text())
    if not Path(spent["module"]).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"{tree}: the run imported retriever from {spent['module']}")
    return Run(wall, spent["index_s"], spent["encode_s"], spent["first_s"] or 0.0,
               spent["images"], load)


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()


def before_tree(rev: str, work: Path) -> Path:
    """`git archive REV` unpacked under `work`."""
    tree = work / f"tree-{rev}"
    tree.mkdir()
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


# ---- photos: before and after media support -------------------------------------------------

MODEL_ARGS = ("--model", "retriever-tiny", "--pretrained", "none", "--backend", "torch")


def photo_runs(trees: dict[str, Path], folder: Path, rounds: int, work: Path
               ) -> dict[tuple[str, str], list[Run]]:
    """(tree label, mode) -> runs; trees alternate, the first of a round swapping each round."""
    runs: dict[tuple[str, str], list[Run]] = {}
    counter = iter(range(10**6))

    def one(label: str, mode: str) -> Run:
        db = work / f"db-{next(counter)}"
        run = run_cli(trees[label], ["index", str(folder), "--db", str(db), *MODEL_ARGS],
                      mode, work)
        shutil.rmtree(db)
        return run

    for label in trees:
        one(label, "full")  # warm-up: byte-code compiled, files and libraries in the page cache
    labels = list(trees)
    for r in range(rounds):
        for label in labels if r % 2 == 0 else labels[::-1]:
            for mode in ("full", "model-free"):
                run = one(label, mode)
                runs.setdefault((label, mode), []).append(run)
                print(f"round {r + 1} {label:>6} {mode:>10}: {run.wall_s:5.2f} s whole, "
                      f"{run.index_s:5.2f} s indexing, {run.encode_s:5.2f} s encoding, "
                      f"load {run.load:.2f}", file=sys.stderr)
    return runs


def spread(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def photo_table(runs: dict[tuple[str, str], list[Run]], names: dict[str, str], n: int) -> str:
    head = ("| tree | runs | whole command s | indexing s | photos/s (indexing) | encoder s "
            "| model-free indexing s | load avg (1 min) |\n|---|---|---|---|---|---|---|---|\n")
    rows = []
    for label, name in names.items():
        full, free = runs[(label, "full")], runs[(label, "model-free")]
        loads = [r.load for r in full + free]
        rows.append(f"| {name} | {len(full)} + {len(free)} | {spread([r.wall_s for r in full])} "
                    f"| {spread([r.index_s for r in full])} "
                    f"| {n / statistics.median([r.index_s for r in full]):.0f} "
                    f"| {statistics.median([r.encode_s for r in full]):.2f} "
                    f"| {spread([r.index_s for r in free])} "
                    f"| {min(loads):.2f}-{max(loads):.2f} |")
    before, after = list(names)

    def ratio(mode: str, field: str) -> str:
        def med(label: str) -> float:
            return statistics.median(getattr(r, field) for r in runs[(label, mode)])
        return f"{med(after) / med(before):.2f}x"

    rows.append(f"| after / before (medians) | | {ratio('full', 'wall_s')} "
                f"| {ratio('full', 'index_s')} | | | {ratio('model-free', 'index_s')} | |")
    return head + "\n".join(rows) + "\n"


def photos(args: argparse.Namespace) -> tuple[str, str]:
    """(section body, command) of the photo A/B."""
    rev = args.before or git("rev-parse", "--short", f"{MEDIA_COMMIT}^")
    folder = photo_folder("large", args.n)
    head = git("rev-parse", "--short", "HEAD")
    local = " + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") \
        else ""
    with tempfile.TemporaryDirectory(prefix="bench-media-") as tmp:
        work = Path(tmp)
        trees = {"before": before_tree(rev, work), "after": ROOT}
        parent = "" if args.before else f", the parent of {MEDIA_COMMIT}"
        names = {"before": f"before ({rev}{parent})",
                 "after": f"after (working tree, HEAD {head}{local})"}
        runs = photo_runs(trees, folder, args.rounds, work)
    body = (f"The issue's benchmark row: indexing a folder of photos, without videos or `--ocr`, "
            f"is unchanged. {args.n} JPEGs at 1024x768 (`python -m bench.photos --size large "
            f"--n {args.n}`, {mean_kb(folder):.0f} KB each), each run "
            f"`python -m cli index FOLDER --db FRESH {' '.join(MODEL_ARGS)}` in a fresh process "
            "(retriever-tiny: a small model, so reading, decoding, hashing and storing, where "
            "media support could cost, weigh the most). Trees alternate, the order swapped each "
            f"round, {args.rounds} rounds after a warm-up run each. whole command: the process "
            "from start to exit; indexing: inside `ingest_media` (no start-up or model load); "
            "encoder: inside `encode_pixels`; model-free: indexing with stand-in vectors for "
            "the forward pass. Median (min-max); load avg: the 1-minute load average before "
            "each run, lowest-highest.\n\n" + photo_table(runs, names, args.n)
            + "\nWhat media support adds per photo is a suffix test in the scan and in "
            "`decode_image`; pillow-heif, rawpy, PyAV and pytesseract are imported only when a "
            "HEIC, RAW or video file or `--ocr` meets them. Per run it adds the saving of two "
            "more (empty) FAISS files, `videos.faiss` and `image-texts.faiss`. "
            f"{MEDIA_COMMIT}, which brought media support, brought other work too (see its "
            "message), so a difference here is not media support's alone.\n")
    command = f"python -m bench.media photos --rounds {args.rounds} --n {args.n}" + (
        f" --before {args.before}" if args.before else "")
    return body, command


# ---- video-every: what each sampling ceiling keeps and costs ---------------------------------

FPS = 25
WIDTH, HEIGHT = 640, 360
NOISE_FRAMES = 5  # sensor-like noise cycles through this many patterns (std NOISE)
NOISE = 2.0
# Shot lengths in seconds, irregular so that kept moments (multiples of --video-every after a
# kept frame) fall at varied places in them
CUT_SHOTS = (2.2, 3.4, 19.6, 2.6, 3.0, 10.4, 2.8, 2.4, 13.6)  # hard cuts between: 60 s
DISSOLVE_SHOTS = (2.2, 2.9, 8.4, 2.4, 2.6, 2.1, 2.8, 17.6, 2.3, 3.0, 2.5, 2.7, 2.0, 2.6)  # fully
# shown; DISSOLVE between each two: 69.1 s
DISSOLVE = 1.0
SHORT = 4.0  # s: shots under this are counted apart from the long ones
PAN_SPEEDS = (64, 128, 256)  # px/s; a landmark is fully in view (WIDTH - LANDMARK) / speed s
PAN_SECONDS = 20
LANDMARK = 128  # px, square
LANDMARK_GAP = 250  # px between landmarks' left edges (not a multiple of a speed)
VIDEO_DIR = WORK / "videos"
DONE = ".complete"  # holds RECIPE: videos made from other settings are made again
RECIPE = (f"{WIDTH}x{HEIGHT} {FPS} fps noise {NOISE}; cuts {CUT_SHOTS}; dissolves "
          f"{DISSOLVE_SHOTS} {DISSOLVE}; pans {PAN_SPEEDS} {PAN_SECONDS} {LANDMARK} "
          f"{LANDMARK_GAP}\n")
SECONDS = {"cuts.mp4": sum(CUT_SHOTS),
           "dissolves.mp4": sum(DISSOLVE_SHOTS) + DISSOLVE * (len(DISSOLVE_SHOTS) - 1),
           "pans.mp4": float(PAN_SECONDS * len(PAN_SPEEDS))}


@dataclass(frozen=True)
class Scene:
    video: str  # file name
    group: str  # the table column it counts in
    start: float  # seconds: a kept frame in [start, end) shows this scene fully
    end: float

    def shows(self, time: float) -> bool:
        """Whether the frame at `time` lies in the scene; the bounds are moved half a frame
        back, so sums of shot lengths off in their last bits still meet frame times."""
        return self.start - 0.5 / FPS <= time < self.end - 0.5 / FPS


def noisy(picture: np.ndarray, n: int, noise: list[np.ndarray]) -> np.ndarray:
    return np.clip(picture + noise[n % len(noise)], 0, 255).astype(np.uint8)


def shot(seed: int, width: int = WIDTH) -> np.ndarray:
    return np.asarray(photo(width, HEIGHT, seed), dtype=np.int16)  # (HEIGHT, width, 3)


def shot_group(kind: str, shots: Sequence[float], length: float) -> str:
    """'cut 2.2-3.4 s': the shots of `shots` on the same side of SHORT as `length`."""
    alike = [s for s in shots if (s < SHORT) == (length < SHORT)]
    return f"{kind} {min(alike):g}-{max(alike):g} s"


def cut_frames(noise: list[np.ndarray]) -> tuple[Iterator[np.ndarray], list[Scene]]:
    scenes, start = [], 0.0
    for length in CUT_SHOTS:
        group = shot_group("cut", CUT_SHOTS, length)
        scenes.append(Scene("cuts.mp4", group, start, start + length))
        start += length

    def frames() -> Iterator[np.ndarray]:
        for i, length in enumerate(CUT_SHOTS):
            picture = shot(100 + i)
            for n in range(round(length * FPS)):
                yield noisy(picture, n, noise)
    return frames(), scenes


def dissolve_frames(noise: list[np.ndarray]) -> tuple[Iterator[np.ndarray], list[Scene]]:
    scenes, start = [], 0.0
    for length in DISSOLVE_SHOTS:
        group = shot_group("dissolve", DISSOLVE_SHOTS, length)
        # the shot is most of the picture from half-way through the dissolve in to half-way
        # through the one out (a frame there is what a search for it would find)
        half = DISSOLVE / 2
        scenes.append(Scene("dissolves.mp4", group, max(0.0, start - half), start + length + half))
        start += length + DISSOLVE

    def frames() -> Iterator[np.ndarray]:
        pictures = [shot(200 + i) for i in range(len(DISSOLVE_SHOTS))]
        for i, length in enumerate(DISSOLVE_SHOTS):
            for n in range(round(length * FPS)):
                yield noisy(pictures[i], n, noise)
            if i + 1 < len(pictures):
                for n in range(int(DISSOLVE * FPS)):
                    w = (n + 0.5) / (DISSOLVE * FPS)
                    yield noisy((1 - w) * pictures[i] + w * pictures[i + 1], n, noise)
    return frames(), scenes


def panorama(speed: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """A (HEIGHT, WIDTH + speed * PAN_SECONDS, 3) picture and its landmarks' left edges: only
    those fully in view for their whole (WIDTH - LANDMARK) / speed s within the pan."""
    width = WIDTH + speed * PAN_SECONDS
    picture = shot(seed, width)
    lefts = list(range(WIDTH - LANDMARK, speed * PAN_SECONDS + 1, LANDMARK_GAP))
    rng = np.random.default_rng(seed)
    top = (HEIGHT - LANDMARK) // 2
    for left in lefts:
        colour = rng.integers(0, 256, 3)
        picture[top:top + LANDMARK, left:left + LANDMARK] = colour
        inner = LANDMARK // 4  # a second colour inside, so landmarks differ in shape too
        picture[top + inner:top + 3 * inner, left + inner:left + 3 * inner] = 255 - colour
    return picture, lefts


def pan_frames(noise: list[np.ndarray]) -> tuple[Iterator[np.ndarray], list[Scene]]:
    scenes = []
    pans = [panorama(speed, 300 + i) for i, speed in enumerate(PAN_SPEEDS)]
    for i, (speed, (_, lefts)) in enumerate(zip(PAN_SPEEDS, pans, strict=True)):
        seen = (WIDTH - LANDMARK) / speed
        for left in lefts:  # in full view while the offset speed*t is in [left+L-W, left]
            t0 = i * PAN_SECONDS + (left + LANDMARK - WIDTH) / speed
            scenes.append(Scene("pans.mp4", f"pan, {seen:g} s in view", t0, t0 + seen))

    def frames() -> Iterator[np.ndarray]:
        for speed, (picture, _) in zip(PAN_SPEEDS, pans, strict=True):
            for n in range(PAN_SECONDS * FPS):
                offset = round(speed * n / FPS)
                yield noisy(picture[:, offset:offset + WIDTH], n, noise)
    return frames(), scenes


def write_video(path: Path, frames: Iterator[np.ndarray]) -> None:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS, options={"preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for n, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = n
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def bench_videos(folder: Path = VIDEO_DIR) -> tuple[Path, list[Scene]]:
    """The three videos (written once; remade unless DONE holds RECIPE) and their scenes."""
    rng = np.random.default_rng(0)
    noise = [rng.normal(0, NOISE, (HEIGHT, WIDTH, 3)).astype(np.float32)
             for _ in range(NOISE_FRAMES)]
    made = [(name, *build(noise)) for name, build in
            (("cuts.mp4", cut_frames), ("dissolves.mp4", dissolve_frames),
             ("pans.mp4", pan_frames))]
    done = folder / DONE
    if not (done.is_file() and done.read_text() == RECIPE):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for name, frames, _ in made:
            write_video(folder / name, frames)
        done.write_text(RECIPE)
    return folder, [scene for _, _, scenes in made for scene in scenes]


def kept_times(db: Path) -> dict[str, list[float]]:
    """Video file name -> the times of its stored frames."""
    from index.kinds import VIDEO
    from retriever.library.collection import Collection

    collection = Collection.open(db)
    try:
        items = collection.reads.items(collection.reads.item_ids_where(VIDEO).tolist()).values()
        times: dict[str, list[float]] = {}
        for item in items:
            times.setdefault(Path(item.path).name, []).append(float(item.time or 0.0))
        return times
    finally:
        collection.close()


@dataclass(frozen=True)
class EveryResult:
    every: float
    run: Run
    items: dict[str, int]  # video name -> frames kept
    covered: dict[str, tuple[int, int]]  # scene group -> (covered, scenes)


def measure_every(every: float, folder: Path, scenes: list[Scene], model: Sequence[str],
                  work: Path) -> EveryResult:
    db = work / f"db-every-{every:g}"
    run = run_cli(ROOT, ["index", str(folder), "--db", str(db), *model, "--video-every",
                         f"{every:g}"], "full", work)
    times = kept_times(db)
    shutil.rmtree(db)
    covered: dict[str, tuple[int, int]] = {}
    for scene in scenes:
        hit = any(scene.shows(t) for t in times.get(scene.video, []))
        got, total = covered.get(scene.group, (0, 0))
        covered[scene.group] = (got + hit, total + 1)
    return EveryResult(every, run, {name: len(ts) for name, ts in sorted(times.items())},
                       covered)


def every_table(results: list[EveryResult]) -> str:
    groups, names = list(results[0].covered), list(SECONDS)
    minutes = sum(SECONDS.values()) / 60
    head = (f"| --video-every s | items/min: {' / '.join(n.removesuffix('.mp4') for n in names)} "
            "| items/min, all | indexing s per min of video | encoder s per min "
            + "".join(f"| covered: {g} " for g in groups) + "| all scenes |\n"
            + "|---" * (5 + len(groups)) + "|\n")
    rows = []
    for result in results:
        per_min = " / ".join(f"{result.items.get(n, 0) / SECONDS[n] * 60:.1f}" for n in names)
        cells = "".join(f"| {got}/{total} " for got, total in result.covered.values())
        got = sum(g for g, _ in result.covered.values())
        total = sum(t for _, t in result.covered.values())
        run = result.run
        rows.append(f"| {result.every:g} | {per_min} | {sum(result.items.values()) / minutes:.1f} "
                    f"| {(run.index_s - run.first_s) / minutes:.2f} "
                    f"| {(run.encode_s - run.first_s) / minutes:.2f} {cells}| {got / total:.0%} |")
    return head + "\n".join(rows) + "\n"


def verdict(results: list[EveryResult]) -> str:
    """The largest setting that covered every scene, against the default in the code."""
    from retriever.media.video import DEFAULT_EVERY

    full = [r.every for r in results if all(g == t for g, t in r.covered.values())]
    best = f"{max(full):g} s" if full else "none of these"
    return (f"Largest setting that covered every scene: {best}; the default "
            f"(`DEFAULT_EVERY` in retriever/media/video.py) is {DEFAULT_EVERY:g} s.\n")


def video_every(args: argparse.Namespace) -> tuple[str, str]:
    """(section body, command) of the --video-every sweep."""
    folder, scenes = bench_videos()
    model = ("--model", args.model, "--pretrained", "none", "--backend", args.backend)
    loads = [load_average()]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-media-") as tmp:
        run_cli(ROOT, ["index", str(folder), "--db", str(Path(tmp) / "warm"), *model],
                "full", Path(tmp))  # warm-up: byte-code, page cache
        for every in args.every:
            results.append(measure_every(every, folder, scenes, model, Path(tmp)))
            loads.append(load_average())
            print(f"--video-every {every:g}: {results[-1].items}, "
                  f"{results[-1].run.index_s:.1f} s, load {loads[-1]:.2f}", file=sys.stderr)
    lengths = ", ".join(f"{s:g}" for s in SECONDS.values())
    body = (f"Three videos ({lengths} s) at {WIDTH}x{HEIGHT}, {FPS} fps, H.264 (bench/media.py "
            f"writes them with PyAV): **cuts**, still shots of {', '.join(map(str, CUT_SHOTS))} s "
            f"joined by hard cuts; **dissolves**, still shots fully shown for "
            f"{', '.join(map(str, DISSOLVE_SHOTS))} s joined by {DISSOLVE:g} s cross-dissolves "
            f"(no cut to detect); **pans**, three {PAN_SECONDS} s pans at "
            f"{', '.join(map(str, PAN_SPEEDS))} px/s across panoramas with {LANDMARK} px "
            f"landmarks every {LANDMARK_GAP} px, each landmark fully in view for "
            f"{', '.join(f'{(WIDTH - LANDMARK) / s:g}' for s in PAN_SPEEDS)} s. Light noise "
            f"on every frame. Indexed with `python -m cli index VIDEOS --db FRESH "
            f"{' '.join(model)} --video-every E` (other video settings at their defaults). "
            "A scene is covered when a kept frame falls where it is shown: a cut shot from its "
            "first frame to its last, a dissolved shot from half-way through the dissolve in to "
            "half-way through the one out, a landmark while it is wholly in the frame. Items "
            "and coverage are deterministic; times depend on the machine: indexing is seconds "
            "inside `ingest_media` per minute of video (every frame decoded for its signature, "
            "the kept ones encoded), encoder the part in `encode_pixels`, both without the "
            "model's first call (the indexer's one-image probe, which pays the model's one-off "
            f"start). Load average (1 min) {min(loads):.2f}-{max(loads):.2f} over the runs."
            "\n\n" + every_table(results) + "\n" + verdict(results))
    command = (f"python -m bench.media video-every --every {' '.join(f'{e:g}' for e in args.every)}"
               f" --model {args.model} --backend {args.backend}")
    return body, command


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.media", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parts = parser.add_subparsers(dest="part", required=True)
    one = parts.add_parser("photos", help="photo-only indexing before and after media support")
    one.add_argument("--rounds", type=int, default=5)
    one.add_argument("--n", type=int, default=200, help="photos (1024x768 JPEGs)")
    one.add_argument("--before", help=f"the tree to compare (default: {MEDIA_COMMIT}^)")
    two = parts.add_parser("video-every", help="what each --video-every keeps and costs")
    two.add_argument("--every", type=float, nargs="+", default=[1, 2, 3, 5, 10])
    two.add_argument("--model", default="ViT-B-32", help="architecture, random weights")
    two.add_argument("--backend", default="onnx", help="onnx: what auto picks on a CPU")
    for sub in (one, two):
        sub.add_argument("--dry-run", action="store_true", help="print; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    if args.part == "photos":
        body, command = photos(args)
        name, title = "media-photos", "Photos only, before and after media support (CPU)"
    else:
        body, command = video_every(args)
        name, title = "media-video", "--video-every: frames kept, time, scenes covered (CPU)"
    machine = f"{machine_line()}; load average now {load_average():.2f}"
    print(f"{title}\n{machine}\nCommand: {command}\n\n{body}")
    if not args.dry_run:
        write_section(name, title, body, command, machine)


if __name__ == "__main__":
    main()
