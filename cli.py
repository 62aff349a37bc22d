"""The `retriever` command line: parse arguments, call the library, print.

Expected failures arrive as `RetrieverError`s and are printed as one line with the fix;
everything else about how work is done lives in `retriever/` and `index/`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from retriever import __version__
from retriever.errors import RetrieverError
from retriever.media.images import DEFAULT_MAX_PIXELS
from retriever.media.passages import DEFAULT_MAX_TEXT_BYTES

# Text from files (paths, captions, passages) and from error messages is shown, never
# interpreted: C0/C1 controls, DEL and Unicode line/bidi controls become escapes (\n, \x1b).
CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def visible(text: str) -> str:
    """`text` on one line with every control character written as an escape."""
    return CONTROLS.sub(lambda m: SHORT_ESCAPES.get(m[0]) or ascii(m[0])[1:-1], text)


# click's exceptions, or typer's copy of click (typer 0.28 vendors it)
CLICK = sys.modules[typer.BadParameter.__module__]
NO_ARGS_IS_HELP = getattr(CLICK, "NoArgsIsHelpError", ())  # click >= 8.2: shows the help


class OneLineErrors(TyperGroup):
    """Click's own usage errors (a bad flag, a value of the wrong type) as one line, like ours."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             windows_expand_args: bool = True, **extra: Any) -> Any:
        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args,
                                **extra)
        except NO_ARGS_IS_HELP as error:
            error.show()
            code = error.exit_code
        except CLICK.ClickException as error:
            hint = f" (see {error.ctx.command_path} --help)" if getattr(error, "ctx", None) else ""
            stderr.print(f"error: {visible(error.format_message())}{hint}", markup=False)
            code = error.exit_code
        except typer.Abort:
            stderr.print("aborted", markup=False)
            code = 1
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="retriever",
    help="Search your own photos and documents by text or by image.\n\n"
    "Example: retriever index ~/Pictures && retriever search 'dog on a beach'",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=OneLineErrors,
)
stdout = Console(highlight=False, soft_wrap=True, emoji=False)
stderr = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)
F = TypeVar("F", bound=Callable[..., Any])

DbOpt = Annotated[Path | None, typer.Option(
    "--db", help="Index folder (default: <first folder>/.retriever, or $RETRIEVER_DB; search "
    "and info look upwards from the current folder).", envvar="RETRIEVER_DB", show_envvar=True)]
MODEL_HELP = "open_clip model name (ViT-B-32), hf-hub:org/repo, or a model-config JSON."
PRETRAINED_HELP = ("open_clip pretrained tag, hf-hub:org/repo, a weights/checkpoint file, or "
                   "'none' for random weights. Default: the model's default tag.")
ModelOpt = Annotated[str | None, typer.Option(
    "--model", help=MODEL_HELP, envvar="RETRIEVER_MODEL", show_envvar=True)]
PretrainedOpt = Annotated[str | None, typer.Option(
    "--pretrained", help=PRETRAINED_HELP, envvar="RETRIEVER_PRETRAINED", show_envvar=True)]
# search uses the index's own model; these only check that it is the one expected
SearchModelOpt = Annotated[str | None, typer.Option(
    "--model", help="Expect the index to be built with this model.")]
SearchPretrainedOpt = Annotated[str | None, typer.Option(
    "--pretrained", help="Expect the index to be built with these weights.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]
BackendOpt = Annotated[str, typer.Option(
    "--backend", help="auto (torch on a CUDA GPU, else ONNX Runtime), torch, onnx, or onnx-int8 "
    "(faster image encoding, slightly different vectors).", envvar="RETRIEVER_BACKEND",
    show_envvar=True)]


def reports_errors(command: F) -> F:
    """Print a RetrieverError as one line on stderr and exit with its code; no traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except RetrieverError as error:
            stderr.print(f"error: {visible(str(error))}", markup=False)
            raise typer.Exit(error.exit_code) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        stdout.print(f"retriever {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Search your own photos and documents by text or by image."""


@app.command()
@reports_errors
def index(
    folders: Annotated[list[Path], typer.Argument(help="Folders of images and text documents.")],
    db: DbOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    batch_size: Annotated[int, typer.Option(help="Files per batch (encoder and store).")] = 64,
    exclude: Annotated[list[str] | None, typer.Option(
        "--exclude", help="Glob of paths to skip (repeatable), e.g. 'raw/*' or '*.md'.")] = None,
    max_pixels: Annotated[int, typer.Option(
        help="Refuse images with more pixels (decompression bombs).")] = DEFAULT_MAX_PIXELS,
    max_text_bytes: Annotated[int, typer.Option(
        help="Read text documents up to this many bytes.")] = DEFAULT_MAX_TEXT_BYTES,
    follow_symlinks_outside: Annotated[bool, typer.Option(
        help="Index symlinked files whose target is outside FOLDERS (skipped by default).")
    ] = False,
    reindex: Annotated[bool, typer.Option(
        help="Drop everything indexed and re-encode with --model/--pretrained.")] = False,
    wait: Annotated[bool, typer.Option(
        help="If another run is writing this index, wait for it instead of exiting.")] = False,
    index_type: Annotated[str, typer.Option(
        help="auto (exact up to 50k vectors, then IVF), flat, ivf or ivfpq.")] = "auto",
    recall_target: Annotated[float, typer.Option(
        help="Recall@10 against exact search that IVF's nprobe is tuned to.")] = 0.95,
    memory_budget_mb: Annotated[int | None, typer.Option(
        "--memory-budget-mb", min=1,
        help="auto: use compressed IVF-PQ when vectors exceed this.")] = None,
    backend: BackendOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Embed every image and text passage under FOLDERS; again, only what changed.

    Example: retriever index ~/Pictures ~/Notes --exclude 'tmp/*'
    """
    from index.ann import TYPES, AnnConfig
    from retriever.encoding.backends import open_encoder as open_backend
    from retriever.encoding.encoders import Encoder
    from retriever.encoding.specs import ModelSpec
    from retriever.errors import UsageError
    from retriever.library.collection import Collection
    from retriever.library.indexer import IndexOptions, index_media
    from retriever.library.locations import index_dir_for
    from retriever.media.scan import check_roots
    from retriever.progress import RichProgress
    from retriever.search.query import INDEX_FIX, open_encoder

    roots = check_roots(folders)
    options = IndexOptions(tuple(roots), tuple(exclude or ()), batch_size, max_pixels,
                           max_text_bytes, follow_symlinks_outside)
    if index_type not in TYPES:
        raise UsageError(f"--index-type {index_type!r}: use one of {', '.join(TYPES)}")
    if not 0 < recall_target <= 1:  # NaN fails this too
        raise UsageError(f"--recall-target {recall_target} is not a recall: pass one in (0, 1]")
    budget = memory_budget_mb * 2**20 if memory_budget_mb else None
    collection = Collection.open(index_dir_for(roots, db),
                                 AnnConfig(index_type, recall_target, budget))
    asked = ModelSpec(model, pretrained)
    with collection.writing(wait):
        if reindex:
            collection.reset()
        encoder: Encoder
        if collection.model() is None:
            encoder = open_backend(asked, backend, collection.directory, batch_size)
        else:  # an existing index keeps its model; a different --model is refused before loading
            encoder = open_encoder(collection, asked, batch_size, INDEX_FIX, backend)
        report = index_media(collection, encoder, options, RichProgress())
    for failure in report.failures:
        stderr.print(f"skipped {visible(failure.reason)}", markup=False)
    counts = collection.counts()
    if json_out:
        stdout.print(json.dumps({"directory": str(collection.directory), **counts.__dict__,
                                 "run": report.to_json()}), markup=False)
        return
    stdout.print(
        f"encoded {report.images} images and {report.texts} text files ({report.passages} "
        f"passages); reused {report.reused}, touched {report.touched}, unchanged "
        f"{report.unchanged}, removed {report.removed}, failed {len(report.failures)}"
        + (f" (+{report.known_failures} known, unchanged)" if report.known_failures else "")
        + f"\n{visible(str(collection.directory))}: {counts.images} images, {counts.texts} "
        f"passages in {counts.files} files", markup=False)


@app.command()
@reports_errors
def search(
    query: Annotated[str | None, typer.Argument(help="What to look for, in words.")] = None,
    image: Annotated[Path | None, typer.Option(
        "--image", help="Search with an image instead of words.")] = None,
    item: Annotated[int | None, typer.Option(
        "--item", help="Search with an indexed item (an id from --json results).")] = None,
    add: Annotated[list[str] | None, typer.Option(
        "--add", help="More like this: words, an image file or item:ID, weight as W:... "
        "(repeatable).")] = None,
    sub: Annotated[list[str] | None, typer.Option(
        "--sub", help="Less like this, same forms as --add (repeatable).")] = None,
    to: Annotated[str, typer.Option("--to", help="images, texts or all.")] = "all",
    kind: Annotated[str | None, typer.Option(
        "--type", help="image or text: the same as --to images / --to texts.")] = None,
    k: Annotated[int, typer.Option("-k", help="Number of results.")] = 10,
    under: Annotated[str | None, typer.Option(
        "--in", help="Only results under this folder.")] = None,
    after: Annotated[str | None, typer.Option(
        "--after", help="Only files taken (EXIF date, else modified) on/after YYYY-MM-DD.")] = None,
    before: Annotated[str | None, typer.Option(
        "--before", help="Only files taken (EXIF date, else modified) before YYYY-MM-DD.")] = None,
    min_score: Annotated[float | None, typer.Option(
        "--min-score", help="Drop results scoring below this cosine similarity.")] = None,
    db: DbOpt = None,
    model: SearchModelOpt = None,
    pretrained: SearchPretrainedOpt = None,
    backend: BackendOpt = "auto",
    no_server: Annotated[bool, typer.Option(
        "--no-server", help="Search in this process even when `retriever serve` is running "
        "on the index.")] = False,
    json_out: JsonOpt = False,
    paths_only: Annotated[bool, typer.Option("--paths-only", help="Print bare paths.")] = False,
    html_file: Annotated[Path | None, typer.Option(
        "--html", help="Also write a self-contained results page to this file.")] = None,
    preview: Annotated[bool, typer.Option(
        "--preview", help="Show thumbnails inline (kitty or iTerm2 terminals).")] = False,
) -> None:
    """Find images and text passages by words, by an image, or by both, weighted.

    Examples: retriever search "beach" --add sunset --sub people --to images;
    retriever search --image photo.jpg --to texts --json;
    retriever search "receipt" --after 2024-01-01 --html results.html
    """
    from retriever.library.locations import find_index_dir
    from retriever.search.query import Query, parse_date, parse_term

    target = {"image": "images", "text": "texts"}.get(kind or "", kind or to)
    request = Query(
        text=query, image=image, item=item, target=target, k=k, path_prefix=under,
        add=tuple(parse_term(a) for a in add or ()), sub=tuple(parse_term(s) for s in sub or ()),
        after=parse_date(after, "--after") if after else None,
        before=parse_date(before, "--before") if before else None, min_score=min_score)
    request.check()
    if html_file is not None:
        from retriever.search.html_page import check_target

        check_target(html_file)  # before the search: a bad --html wastes no model load
    if backend != "auto":  # checked before a server could answer and ignore it
        from retriever.encoding.backends import check_backend

        check_backend(backend)
    index_dir = find_index_dir(db)
    # a running `retriever serve` has the model and index loaded; --model/--pretrained are
    # checked here only, so they search locally
    local = no_server or model is not None or pretrained is not None
    results = None if local else _search_server(index_dir, request)
    if results is None:
        results = _search_here(index_dir, request, model, pretrained, backend)
    if html_file is not None:
        from retriever.search.html_page import write_html

        title = f"retriever: {query or image or f'item {item}'}"
        stderr.print(f"wrote {visible(str(write_html(results, html_file, title)))}",
                     markup=False)
    if json_out:
        for result in results:
            stdout.print(json.dumps(result.to_json()), markup=False)
    elif paths_only:  # one per line: a newline in a name is printed as \n (README, Output)
        for result in results:
            stdout.print(visible(result.path), markup=False)
    elif preview:
        _print_previews(results)
    else:
        stdout.print(_results_table(results))


def _search_server(index_dir: Path, request: Any) -> list[Any] | None:
    """Results from the server announced in `index_dir`, or None when none answers."""
    from retriever.search.remote import ServerUnavailable, find_server, remote_search, request_for

    url = find_server(index_dir)
    if url is None:
        return None
    from retriever.search.query import Result

    try:
        fields, upload = request_for(request)
        return [Result(**row) for row in remote_search(url, fields, upload)]
    except ServerUnavailable:
        return None


def _search_here(index_dir: Path, request: Any, model: str | None, pretrained: str | None,
                 backend: str) -> list[Any]:
    from retriever.encoding.specs import ModelSpec
    from retriever.library.collection import Collection
    from retriever.search.query import open_encoder, search

    collection = Collection.open(index_dir)
    asked = ModelSpec(model, pretrained) if model or pretrained else None
    return search(collection, open_encoder(collection, asked, backend=backend, quick_start=True),
                  request)


def _results_table(results: list[Any]) -> Table:
    table = Table("score", "kind", "path", "caption / passage")
    for r in results:
        where = r.path if r.kind == "image" else f"{r.path} #{r.position}"
        table.add_row(f"{r.score:.3f}", r.kind, _plain(where), _plain(r.caption or r.passage))
    return table


def _plain(text: str | None) -> Text:
    """A table cell of text from a file: never read as markup, controls made visible."""
    return Text(visible(text or ""))


def _print_previews(results: list[Any]) -> None:
    from retriever.errors import ImageError
    from retriever.media.images import thumbnail_bytes
    from retriever.search.preview import inline_image, terminal_protocol

    protocol = terminal_protocol()
    if protocol is None or not stdout.is_terminal:
        stderr.print("--preview needs a kitty or iTerm2 terminal on stdout; showing the table",
                     markup=False)
        stdout.print(_results_table(results))
        return
    for r in results:
        if r.kind == "image":
            with contextlib.suppress(ImageError, OSError):  # the row still prints below
                sys.stdout.write(inline_image(thumbnail_bytes(Path(r.path), 160, "PNG"),
                                              protocol) + "\n")
        text = r.caption if r.kind == "image" else f"#{r.position}: {r.passage}"
        stdout.print(visible(f"{r.score:.3f}  {r.path}  {text or ''}"), markup=False)


@app.command()
@reports_errors
def info(db: DbOpt = None, json_out: JsonOpt = False) -> None:
    """Show what an index holds, which model built it, and what the last run did.

    Example: retriever info --json
    """
    from retriever.library.collection import Collection
    from retriever.library.locations import find_index_dir

    summary = Collection.open(find_index_dir(db)).summary()
    if json_out:
        stdout.print(json.dumps(summary.to_json()), markup=False)
        return
    record, run = summary.model, summary.last_run
    model = f"{record.name} ({record.pretrained}, {record.dim}-d)" if record else "none yet"
    lines = [f"index     {summary.directory}", f"model     {model}",
             f"files     {summary.files}", f"images    {summary.images}",
             f"texts     {summary.texts} passages"]
    if run:
        done = {k: v for k, v in run.stats.items() if k != "failures" and v}
        lines.append(f"last run  {run.status}: " + ", ".join(f"{k} {v}" for k, v in done.items()))
    lines += [f"failed    {f.path}: {f.reason}" for f in summary.failures]
    stdout.print("\n".join(visible(line) for line in lines), markup=False)


@app.command()
@reports_errors
def train(
    data: Annotated[str, typer.Argument(
        help="Folder of images with sidecar captions (photo.jpg + photo.txt, one caption per "
        "line), a .csv/.tsv/.jsonl with filepath and caption columns, a COCO captions .json, "
        "or WebDataset tar shards (a .tar, a folder of them, shard-{000..099}.tar, a URL).")],
    out: Annotated[Path, typer.Option("--out", help="Checkpoint to write.")],
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    objective: Annotated[str, typer.Option(help="infonce (CLIP) or distance (margin).")] = (
        "infonce"),
    distance_weight: Annotated[float, typer.Option(
        help="infonce: add this x the squared distance of matching pairs.")] = 0.0,
    margin: Annotated[float, typer.Option(help="distance: push negatives this far.")] = 1.2,
    epochs: Annotated[int, typer.Option(help="Passes over the training images.")] = 10,
    batch_size: Annotated[int, typer.Option(
        help="Pairs per process per micro-batch; a step sees batch-size x grad-accum x "
        "nproc pairs.")] = 32,
    lr: Annotated[float | None, typer.Option(
        help="Peak learning rate (default 1e-3 from scratch, 1e-5 fine-tuning).")] = None,
    warmup: Annotated[float, typer.Option(
        help="Fraction of all steps spent ramping the learning rate up.")] = 0.1,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.1,
    val_fraction: Annotated[float, typer.Option(help="Images held out for recall.")] = 0.1,
    val_data: Annotated[Path | None, typer.Option(
        help="Held-out captioned images (any format above but shards) instead of a split.")
    ] = None,
    val_every: Annotated[int, typer.Option(
        help="Also measure held-out recall every N steps (0: before training and after "
        "each epoch only).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed for split, order and weights.")] = 0,
    image_col: Annotated[str, typer.Option(help="Table column of image paths.")] = "filepath",
    caption_col: Annotated[str, typer.Option(help="Table column of captions.")] = "caption",
    image_root: Annotated[Path | None, typer.Option(
        help="COCO .json: folder its file_names are in (default: the JSON's folder).")] = None,
    samples_per_epoch: Annotated[int | None, typer.Option(
        help="Shards: pairs per epoch (default: sizes.json beside them, or counted).")] = None,
    augment: Annotated[bool, typer.Option(
        "--augment", help="Train through open_clip's random-crop preprocessing.")] = False,
    num_workers: Annotated[int, typer.Option(
        help="DataLoader workers decoding images, per process.")] = 0,
    nproc: Annotated[int, typer.Option(
        help="Train in N processes on this machine as one (DDP: one per GPU, or gloo on "
        "CPU). torchrun --nproc_per_node N -m cli train ... does the same.")] = 1,
    grad_accum: Annotated[int, typer.Option(
        help="Micro-batches per step: a batch N x larger in the same memory.")] = 1,
    lock_image: Annotated[bool, typer.Option(
        "--lock-image", help="LiT: freeze the image tower, train the text tower.")] = False,
    lock_text: Annotated[bool, typer.Option(
        "--lock-text", help="Freeze the text tower, train the image tower.")] = False,
    grad_checkpointing: Annotated[bool, typer.Option(
        "--grad-checkpointing", help="Recompute activations in backward: less memory.")
    ] = False,
    precision: Annotated[str, typer.Option(
        help="fp32, bf16 or fp16 autocast (default: fp32 on CPU, bf16 or fp16 on GPU).")
    ] = "auto",
    save_every: Annotated[int, typer.Option(
        help="Also save the resumable state (OUT stem + .resume.pt) every N steps; it is "
        "always saved after each epoch.")] = 0,
    resume: Annotated[Path | None, typer.Option(
        help="Continue an interrupted run from its .resume.pt (same settings).")] = None,
) -> None:
    """Train or fine-tune the shared image-text space on captioned images.

    Writes the checkpoint, and beside it OUT-stem.curve.csv and .curve.png (loss, temperature,
    learning rate, held-out recall per step).

    Example: retriever train photos/ --out tuned.pt --model ViT-B-32 --pretrained my.bin;
    then: retriever index photos/ --pretrained tuned.pt
    """
    from retriever.encoding.models import ModelSpec
    from retriever.progress import RichProgress
    from retriever.training.distributed import env_rank
    from retriever.training.loop import TrainConfig
    from retriever.training.loop import train as run_training

    cfg = TrainConfig(data=data, out=out, model=ModelSpec(model, pretrained),
                      objective=objective, distance_weight=distance_weight,  # type: ignore[arg-type]
                      margin=margin, epochs=epochs, batch_size=batch_size, lr=lr,
                      warmup=warmup, weight_decay=weight_decay, val_fraction=val_fraction,
                      seed=seed, image_col=image_col, caption_col=caption_col,
                      augment=augment, num_workers=num_workers, grad_accum=grad_accum,
                      lock_image=lock_image, lock_text=lock_text,
                      grad_checkpointing=grad_checkpointing,
                      precision=precision,  # type: ignore[arg-type]
                      val_data=val_data, image_root=image_root,
                      samples_per_epoch=samples_per_epoch, val_every=val_every,
                      save_every=save_every, resume=resume, nproc=nproc)
    result = run_training(cfg, RichProgress(),
                          lambda line: stderr.print(visible(line), markup=False))
    if env_rank() != 0:  # under torchrun every process runs this command; rank 0 reports
        return
    if result.before:
        stdout.print(_metrics_table(result.before, result.after, "untrained", "trained"))
    stdout.print(f"checkpoint: {result.checkpoint} ({result.samples_per_s:.0f} samples/s); "
              f"use it with --pretrained {result.checkpoint}", markup=False)
    stdout.print(f"curves: {result.curve_csv} and {result.curve_png}", markup=False)


@app.command("eval")
@reports_errors
def evaluate(
    data: Annotated[Path, typer.Argument(help="Captioned images, as for `train` (not shards).")],
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    image_col: Annotated[str, typer.Option(help="Table column of image paths.")] = "filepath",
    caption_col: Annotated[str, typer.Option(help="Table column of captions.")] = "caption",
    image_root: Annotated[Path | None, typer.Option(
        help="COCO .json: folder its file_names are in (default: the JSON's folder).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Measure text->image and image->text recall (R@1/5/10, median rank) on captioned images.

    Example: retriever eval held-out/ --pretrained tuned.pt --json
    """
    from retriever.encoding.clip_encoder import ClipEncoder
    from retriever.encoding.models import ModelSpec, load_model
    from retriever.progress import RichProgress
    from retriever.training.evaluation import evaluate_pairs
    from retriever.training.pairs import load_pairs

    pairs = load_pairs(data, image_col, caption_col, image_root)
    encoder = ClipEncoder(load_model(ModelSpec(model, pretrained)))
    metrics = evaluate_pairs(encoder, pairs, RichProgress())
    if json_out:
        stdout.print(json.dumps(metrics), markup=False)
    else:
        stdout.print(_metrics_table(metrics))


@app.command()
@reports_errors
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Where to write the demo.")] = Path(
        "retriever-demo"),
    images: Annotated[int, typer.Option(min=10, help="Captioned images to generate.")] = 240,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = 30,
) -> None:
    """Generate media, train a tiny model, index and search it: offline, on CPU, ~1 minute.

    Example: retriever demo --out /tmp/retriever-demo
    """
    from retriever.demo import DemoConfig, run_demo
    from retriever.errors import UsageError
    from retriever.progress import RichProgress

    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file: pass a folder to write the demo in")

    result = run_demo(DemoConfig(out_dir, images, epochs), RichProgress(),
                      lambda line: stderr.print(visible(line), markup=False))
    stdout.print(visible(f"indexed {result.index.images} images and {result.index.passages} "
                         f"text passages from {result.media}"), markup=False)
    for label, results in result.searches:
        table = Table("score", "path", "caption / passage", title=label)
        for r in results:
            table.add_row(f"{r.score:.3f}", _plain(Path(r.path).name),
                          _plain(r.caption or r.passage))
        stdout.print(table)
    stdout.print(_metrics_table(result.training.before, result.training.after, "untrained",
                             "trained", title="held-out recall"))
    stdout.print(visible(f"try: cd {result.media} && retriever search 'a green square on the "
                         f"right'"), markup=False)


@app.command()
@reports_errors
def serve(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8765,
    host: Annotated[str, typer.Option(
        help="Address to listen on. The default keeps it to this machine; another address "
        "(0.0.0.0) shows your indexed files to anyone who can reach it.")] = "127.0.0.1",
    db: DbOpt = None,
    backend: BackendOpt = "auto",
) -> None:
    """Search in a browser: a local web page and JSON API over the index (see README, Web UI).

    Example: retriever serve --port 8765, then open http://127.0.0.1:8765
    """
    from retriever.library.collection import Collection
    from retriever.library.locations import find_index_dir
    from retriever.search.query import open_encoder
    from retriever.search.server import (
        LOOPBACK_HOSTS,
        ServerSettings,
        check_port,
        create_app,
        listen,
        serve_forever,
    )

    check_port(port)
    collection = Collection.open(find_index_dir(db))
    sock = listen(host, port)  # a port in use fails before the model loads
    app_ = create_app(collection, open_encoder(collection, backend=backend),
                      ServerSettings.for_host(host))
    if host not in LOOPBACK_HOSTS:
        stderr.print(f"warning: --host {host} serves your indexed files to the network",
                     markup=False)
    shown = f"[{host}]" if ":" in host else host  # an IPv6 address needs brackets in a URL
    port = sock.getsockname()[1]  # the one bound, for --port 0
    stderr.print(visible(f"serving {collection.directory} at http://{shown}:{port} (Ctrl-C "
                         f"stops)"), markup=False)
    serve_forever(app_, sock, announce_in=collection.directory)


def _metrics_table(first: dict, second: dict | None = None, *names: str, title: str = "") -> Table:
    columns = names or ("value",)
    table = Table("direction", "metric", *columns, title=title or None)
    for direction in ("text_to_image", "image_to_text"):
        for metric in ("R@1", "R@5", "R@10", "median_rank"):
            values = [m[direction][metric] for m in (first, second) if m]
            shown = [f"{v:.0f}" if metric == "median_rank" else f"{100 * v:.1f}%" for v in values]
            table.add_row(direction.replace("_to_", "->"), metric, *shown)
    return table


def main() -> None:
    logging.getLogger().setLevel(logging.ERROR)  # open_clip logs warnings on the root logger
    app()


if __name__ == "__main__":
    main()
