"""The speed twins: what each hand-written second copy of a library's work saves a cold command.

    python -m bench.twins [--runs 5] [--write]

A speed twin does what a library already does, kept because the library costs a cold command
time (mostly its imports: torch, FAISS, SQLAlchemy). For each twin, two small programs do the
same job, one through the twin and one through the original, each in a fresh process
(`python -c`, modules compiled first as an installed package's are), alternated, `--runs`
times; the table gives the median wall and CPU milliseconds of each and what the twin saves.
The ONNX Runtime encoder is measured as a whole cold `retriever search` on a retriever-tiny
index with `--backend onnx` against `--backend torch` (a lower bound: ViT-B-32 also builds a
larger model in torch). A twin is worth keeping when it saves more than ~50 ms (issue 21).
The parity test named in each row checks the twin against its original.

`--write` also replaces the "twins" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.fresh import cli_env, cpu_model, load_line, precompile, timed
from bench.photos import WORK, photo_folder
from bench.results import machine_line, write_section

ROOT = Path(__file__).resolve().parent.parent
TWINS_WORK = WORK / "twins"
TEXT = "a photo of a dog"  # the query text of every program that encodes one
KEEP_MS = 50.0  # issue 21: a twin stays where it saves a cold command more than this
# the framing an export records for a SigLIP tokenizer (retriever.encoding.hf_text, HF_FIELDS)
HF_SPEC = {"kind": "hf", "clean": "canonicalize", "pad_id": 0, "strip_sep_id": None}


@dataclass(frozen=True)
class Twin:
    name: str
    where: str  # the twin's module
    twin: str  # a program doing the job through the twin (python -c, or a CLI argument list)
    original: str  # the same job through the library the twin copies
    parity: str  # the test that holds the twin equal to its original


def prepare(env: dict[str, str]) -> dict[str, Path]:
    """The files the programs read: a retriever-tiny index of 20 photos (its ONNX export in the
    cache), the export's tokenizer.json twice (with its plain-text copy, and in a folder where
    that copy cannot be written), and a 20,000 x 512 flat FAISS index with its numpy mirror."""
    import numpy as np

    TWINS_WORK.mkdir(parents=True, exist_ok=True)
    photos = photo_folder("small", 20)
    db = TWINS_WORK / "index"
    if not (db / "store.db").is_file():
        shutil.rmtree(db, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "cli", "index", str(photos), "--db", str(db),
                        "--model", "retriever-tiny", "--pretrained", "none"], cwd=ROOT, env=env,
                       check=True, stdout=subprocess.DEVNULL)
    tokenizer = next(Path(env["XDG_CACHE_HOME"]).glob("retriever/onnx/*/tokenizer.json"))
    blocked = TWINS_WORK / "no-copy"
    blocked.mkdir(exist_ok=True)
    shutil.copyfile(tokenizer, blocked / "tokenizer.json")
    (blocked / "tokenizer.bpe").mkdir(exist_ok=True)  # the copy cannot be written there
    flat = TWINS_WORK / "flat" / "images.faiss"
    if not flat.is_file():
        import faiss

        from index.exact import save_mirror

        rng = np.random.default_rng(0)
        vectors = rng.normal(size=(20_000, 512)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ids = np.arange(20_000, dtype=np.int64)
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(512))
        index.add_with_ids(vectors, ids)
        flat.parent.mkdir(exist_ok=True)
        faiss.write_index(index, str(flat))
        save_mirror(flat, ids, vectors)
    return {"db": db, "photo": next(photos.glob("*.jpg")), "tokenizer": tokenizer,
            "blocked": blocked / "tokenizer.json", "flat": flat, "hf": hf_tokenizer()}


def hf_tokenizer() -> Path:
    """A SentencePiece-like Hugging Face tokenizer folder, as the tests' tiny SigLIP has
    (tests/families.py: trained here with `tokenizers`, no download)."""
    folder = TWINS_WORK / "hf-tokenizer"
    if not (folder / "tokenizer.json").is_file():
        from tests.families import unigram_tokenizer

        unigram_tokenizer(folder, ["<pad>", "</s>", "<unk>"], "$A </s>")
    return folder


def tokenizer_twins(paths: dict[str, Path]) -> list[Twin]:
    """The Python BPE against what it replaced and against open_clip's; its plain-text copy;
    the Hugging Face tokenizer's framing on `tokenizers` against open_clip's HFTokenizer."""
    ours = ("from pathlib import Path; from retriever.encoding.tokenizer import ClipTokenizer; "
            "ClipTokenizer(Path({!r}), 77)([{!r}])")
    tokenizer, hf = str(paths["tokenizer"]), str(paths["hf"])
    return [
        Twin("BPE merged in Python, against `tokenizers`' Rust BPE", "encoding/tokenizer.py",
             ours.format(tokenizer, TEXT),
             f"from tokenizers import Tokenizer; from retriever.encoding.tokenizer import clean; "
             f"Tokenizer.from_file({tokenizer!r}).encode(clean({TEXT!r}))",
             "tests/test_tokenizer.py::test_ids_equal_the_tokenizers_bpe_on_varied_texts"),
        Twin("the same tokenizer, against open_clip's (imports torch)", "encoding/tokenizer.py",
             ours.format(tokenizer, TEXT),
             f"import open_clip; open_clip.get_tokenizer('ViT-B-32')([{TEXT!r}])",
             "tests/test_onnx.py::test_tokenizer_gives_open_clip_ids"),
        Twin("tokenizer.bpe, a plain-text copy of tokenizer.json", "encoding/tokenizer.py",
             ours.format(tokenizer, TEXT),
             ours.format(str(paths["blocked"]), TEXT),
             "tests/test_tokenizer.py::test_a_copy_that_cannot_be_written_leaves_the_json_"
             "parsed_each_time"),
        Twin("a Hugging Face tokenizer (SigLIP's), against open_clip's HFTokenizer (imports "
             "torch and transformers)", "encoding/hf_text.py",
             f"from pathlib import Path; from retriever.encoding.hf_text import HfTokenizer; "
             f"HfTokenizer(Path({hf + '/tokenizer.json'!r}), 16, {HF_SPEC!r})([{TEXT!r}])",
             f"from open_clip.tokenizer import HFTokenizer; "
             f"HFTokenizer({hf!r}, context_length=16, clean='canonicalize')([{TEXT!r}])",
             "tests/test_families_text.py::test_tokenizer_twin_gives_open_clips_ids"),
    ]


def twins(paths: dict[str, Path]) -> list[Twin]:
    db, photo, flat = (str(paths[k]) for k in ("db", "photo", "flat"))
    store = str(paths["db"] / "store.db")
    sql = "SELECT id, path FROM files ORDER BY id LIMIT 10"
    search = ["-m", "cli", "search", TEXT, "--db", db, "--paths-only", "--backend"]
    query = "np.random.default_rng(0).normal(size=(1, 512)).astype(np.float32)"
    return [
        Twin("store reads through sqlite3 (a one-off search)", "index/connection.py",
             f"import sqlite3; c = sqlite3.connect('file:{store}?mode=ro', uri=True); "
             f"c.execute({sql!r}).fetchall()",
             f"import sqlalchemy as sa; e = sa.create_engine('sqlite:///{store}'); "
             f"c = e.connect(); c.execute(sa.text({sql!r})).all()",
             "tests/test_store_reader.py::test_every_read_a_search_makes_equals_sqlalchemys"),
        *tokenizer_twins(paths),
        Twin("pretrained_tags.json, a copy of open_clip's tag registry", "encoding/weights.py",
             "from retriever.encoding.weights import known_tags; known_tags()",
             "from retriever.encoding.weights import registry; registry()",
             "tests/test_models.py::test_the_shipped_tag_registry_is_open_clips"),
        Twin("open_clip's model configs read as files (`retriever models`)",
             "encoding/catalogue.py",
             "from retriever.encoding.catalogue import model_configs; model_configs()",
             "import open_clip; "
             "{n: open_clip.get_model_config(n) for n in open_clip.list_models()}",
             "tests/test_models_command.py::test_the_configs_read_as_files_are_open_clips"),
        Twin("exact search in numpy over a flat index's mirror (20,000 x 512)", "index/exact.py",
             f"import numpy as np; from pathlib import Path; from index.exact import ExactIndex; "
             f"ExactIndex.load(Path({flat!r})).search({query}, 10)",
             f"import numpy as np, faiss; faiss.read_index({flat!r}).search({query}, 10)",
             "tests/test_onnx.py::test_exact_search_equals_faiss_flat"),
        Twin("input pixels in PIL + numpy", "encoding/pixels.py",
             f"from PIL import Image; from retriever.encoding.pixels import PixelConfig; "
             f"PixelConfig(224).preprocess(Image.open({photo!r}).convert('RGB'))",
             f"from PIL import Image; from open_clip.transform import image_transform; "
             f"image_transform(224, is_train=False)(Image.open({photo!r}).convert('RGB'))",
             "tests/test_onnx.py::test_pixels_equal_open_clip_preprocessing"),
        Twin("GPU detection from /dev (gpu_visible)", "retriever/devices.py",
             "import os; from retriever.devices import gpu_visible; "
             "gpu_visible(os.environ.get('CUDA_VISIBLE_DEVICES'))",
             "import faiss; faiss.get_num_gpus() > 0",
             "tests/test_twins.py::test_gpu_visible_agrees_with_faiss"),
        Twin("ONNX Runtime encoder: a cold `retriever search` (retriever-tiny)",
             "encoding/ort_encoder.py", "\0".join([*search, "onnx"]),
             "\0".join([*search, "torch"]),
             "tests/test_onnx.py::test_onnx_text_vectors_equal_torch_at_every_length"),
    ]


def command(program: str) -> list[str]:
    """A program of `twins` as a command: CLI arguments (NUL-separated) or `python -c` code."""
    if "\0" in program:
        return [sys.executable, *program.split("\0")]
    return [sys.executable, "-c", program]


def measure(rows: list[Twin], runs: int, env: dict[str, str]) -> list[dict[str, float]]:
    """Per twin, median wall and CPU ms of each side; one untimed run of each first."""
    samples: list[dict[str, list[tuple[float, float]]]] = [{"twin": [], "original": []}
                                                           for _ in rows]
    for attempt in range(runs + 1):
        for row, got in zip(rows, samples, strict=True):
            for side in ("twin", "original"):
                took = timed(command(getattr(row, side)), ROOT, env)
                if attempt:
                    got[side].append(took)
        print(f"run {attempt}/{runs} done ({load_line()})", file=sys.stderr, flush=True)
    return [{f"{side}_{what}": 1000 * statistics.median(t[i] for t in got[side])
             for side in ("twin", "original") for i, what in enumerate(("wall", "cpu"))}
            for got in samples]


def table(rows: list[Twin], medians: list[dict[str, float]]) -> str:
    lines = ["| twin | module | twin ms (CPU) | original ms (CPU) | saves ms (CPU) | keep | "
             "parity test |", "|---|---|---|---|---|---|---|"]
    for row, m in zip(rows, medians, strict=True):
        saved = m["original_wall"] - m["twin_wall"]
        saved_cpu = m["original_cpu"] - m["twin_cpu"]
        keep = "yes" if saved_cpu > KEEP_MS else "no"
        lines.append(f"| {row.name} | {row.where} | {m['twin_wall']:.0f} ({m['twin_cpu']:.0f}) "
                     f"| {m['original_wall']:.0f} ({m['original_cpu']:.0f}) | {saved:.0f} "
                     f"({saved_cpu:.0f}) | {keep} | `{row.parity}` |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="Replace bench/RESULTS.md's section.")
    args = parser.parse_args()
    env = cli_env(TWINS_WORK / "cache")
    precompile(ROOT)
    rows = twins(prepare(env))
    before = load_line()
    medians = measure(rows, args.runs, env)
    note = (f"CPU: {cpu_model()}; {before} before, {load_line()} after. Each program runs in "
            f"a fresh process, twin and original alternated, median of {args.runs} runs; ms "
            f"from spawn to exit, CPU ms of all its threads in parentheses. keep: saves more "
            f"than {KEEP_MS:.0f} CPU ms (on a shared machine the steadier measure; on an idle "
            f"one wall time is about CPU time).\n")
    body = note + "\n" + table(rows, medians) + "\n"
    print(body)
    if args.write:
        write_section("twins", "Speed twins: what each saves a cold command (CPU)", body,
                      "python -m bench.twins " + " ".join(sys.argv[1:]), machine_line())


if __name__ == "__main__":
    main()
