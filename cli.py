"""The `retriever` command line: parse arguments, call the library, print.

Expected failures arrive as `RetrieverError`s and are printed as one line with the fix;
everything else about how work is done lives in `retriever/` and `index/`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from typer.core import TyperGroup

from retriever import __version__
from retriever.encoding.families import FAMILIES
from retriever.errors import AskedModelDiffers, BadSetting, RetrieverError, RetrieverWarning
from retriever.media.images import DEFAULT_MAX_PIXELS
from retriever.media.ocr import check_tesseract
from retriever.media.passages import DEFAULT_MAX_TEXT_BYTES
from retriever.media.video import DEFAULT_EVERY, DEFAULT_MAX_FRAMES
from retriever.present.output import (
    unbounded,  # tables: never cut when piped
    visible,  # file text and error messages: shown, never read
)
from retriever.present.runs import PrintedWatch, not_indexed
from retriever.present.tables import (
    before_after,
    demo_results,
    duplicates_table,
    metrics_table,
)
from retriever.settings import (
    ENV_BACKEND,
    ENV_DB,
    ENV_MODEL,
    ENV_PRETRAINED,
    ENV_STORE_URL,
    Settings,
)

if TYPE_CHECKING:
    from retriever.ingest.options import IngestOptions
    from retriever.ingest.run import IngestOutcome, IngestRequest


# click's exceptions, or typer's copy of click (typer 0.28 vendors it)
CLICK = sys.modules[typer.BadParameter.__module__]
NO_ARGS_IS_HELP = getattr(CLICK, "NoArgsIsHelpError", ())  # click >= 8.2: shows the help
SHOW_WARNING = warnings.showwarning  # Python's, for warnings not ours


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
    rich_markup_mode=None,  # click's help: it wraps at $COLUMNS and never cuts a flag's name
)
stdout = Console(highlight=False, soft_wrap=True, emoji=False)
stderr = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)
F = TypeVar("F", bound=Callable[..., Any])

DbOpt = Annotated[Path | None, typer.Option(
    "--db", help=f"Index folder (default: <first folder>/.retriever, or ${ENV_DB}; search "
    "and info look upwards from the current folder, then in `retriever indexes`).",
    envvar=ENV_DB, show_envvar=True)]
StoreOpt = Annotated[str | None, typer.Option(
    "--store", help="Where the metadata and vectors are: a SQLAlchemy URL, e.g. "
    "postgresql+psycopg://user@host/dbname (default: store.db in the index folder).",
    envvar=ENV_STORE_URL, show_envvar=True)]
MODEL_HELP = "open_clip model name (ViT-B-32), hf-hub:org/repo, or a model-config JSON."
PRETRAINED_HELP = ("open_clip pretrained tag, hf-hub:org/repo, a weights/checkpoint file, or "
                   "'none' for random weights. Default: the model's default tag.")
ModelOpt = Annotated[str | None, typer.Option(
    "--model", help=MODEL_HELP, envvar=ENV_MODEL, show_envvar=True)]
PretrainedOpt = Annotated[str | None, typer.Option(
    "--pretrained", help=PRETRAINED_HELP, envvar=ENV_PRETRAINED, show_envvar=True)]
# search uses the index's own model; these only check that it is the one expected
SearchModelOpt = Annotated[str | None, typer.Option(
    "--model", help="Expect the index to be built with this model.")]
SearchPretrainedOpt = Annotated[str | None, typer.Option(
    "--pretrained", help="Expect the index to be built with these weights.")]
JsonOpt = Annotated[bool, typer.Option(
    "--json", help="JSON Lines: one JSON object per line (per result, for search).")]
BackendOpt = Annotated[str, typer.Option(
    "--backend", help="auto (a new index: torch fp16 on a CUDA GPU, else ONNX Runtime with "
    "int8 images; an existing index: the precision it recorded), torch, onnx (fp32), or "
    "onnx-int8 (faster image encoding, slightly different vectors).", envvar=ENV_BACKEND,
    show_envvar=True)]


def reports_errors(command: F) -> F:
    """Print a RetrieverError as one line on stderr and exit with its code; no traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except RetrieverError as error:
            stderr.print(f"error: {visible(worded(error))}", markup=False)
            raise typer.Exit(error.exit_code) from None

    return wrapper  # type: ignore[return-value]


def read_settings() -> Settings:
    """The environment variables a command reads (retriever.settings), read once, in the
    command (not at import: tests set them per test); the library gets the values."""
    return Settings.from_environ(os.environ)


def worded(error: RetrieverError) -> str:
    """The error's one line: a setting the library names by its field is named by its flag
    here, and a model that differs from the index's gets this command line's fix."""
    if isinstance(error, BadSetting):
        return f"{flag(error.setting)} {error.value}: {error.problem}"
    if isinstance(error, AskedModelDiffers):
        asked = flag(error.setting)
        fix = (f"pass --switch to build its vectors while searches keep the old ones, or "
               f"--reindex to start over with it, or drop {asked}"
               if error.purpose == "index"
               else f"drop {asked} to use the index's model, or pass another --db")
        return (f"{asked} {error.asked} differs from {error.recorded}, which {error.directory} "
                f"was built with: {fix}")
    return str(error)


def flag(setting: str) -> str:
    """The option that sets a library setting: batch_size -> --batch-size."""
    return "--" + setting.replace("_", "-")


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


# `index`'s options (IngestOptions, IngestRequest and AnnConfig settings)
FoldersArg = Annotated[list[Path], typer.Argument(help="Folders of images and text documents.")]
IndexBatchOpt = Annotated[int, typer.Option(
    help="Files per store commit, on either engine (a Ray read task's block too); the encoder "
         "splits them in batches sized for the CPU it runs on.")]
ExcludeOpt = Annotated[list[str] | None, typer.Option(
    "--exclude", help="Glob of paths to skip (repeatable), e.g. 'raw/*' or '*.md'.")]
MaxPixelsOpt = Annotated[int, typer.Option(
    help="Refuse images with more pixels (decompression bombs).")]
MaxTextBytesOpt = Annotated[int, typer.Option(help="Read text documents up to this many bytes.")]
FollowSymlinksOpt = Annotated[bool, typer.Option(
    help="Index symlinked files whose target is outside FOLDERS (skipped by default).")]
ReindexOpt = Annotated[bool, typer.Option(
    help="Drop everything indexed and re-encode with --model/--pretrained (tags are kept, "
    "on the same files).")]
SwitchOpt = Annotated[bool, typer.Option(
    "--switch", help="Build --model's vectors beside the index's while searches keep the old "
    "ones, then switch in one step (resumable: run it again after a stop).")]
SwitchCancelOpt = Annotated[bool, typer.Option(
    "--switch-cancel", help="Drop a pending --switch (the new model's vectors built so far).")]
WaitOpt = Annotated[bool, typer.Option(
    help="If another run is writing this index, wait for it instead of exiting.")]
IndexTypeOpt = Annotated[str, typer.Option(
    help="auto (exact up to 50k vectors, then IVF), flat, ivf or ivfpq.")]
RecallTargetOpt = Annotated[float, typer.Option(
    help="Recall@10 against exact search that IVF's nprobe is tuned to.")]
MemoryBudgetOpt = Annotated[int | None, typer.Option(
    "--memory-budget-mb", min=1, help="auto: use compressed IVF-PQ when vectors exceed this.")]
VideoEveryOpt = Annotated[float, typer.Option(
    help="Seconds: a video gets at least one frame this often (and one per scene).")]
VideoMaxFramesOpt = Annotated[int, typer.Option(
    help="Frames kept per video at most (evenly spaced past that).")]
OcrOpt = Annotated[bool, typer.Option(
    "--ocr", help="Read words in images with Tesseract; they are searched as texts.")]
EngineOpt = Annotated[str, typer.Option(
    "--engine", help="local (this process), or ray: read and encode on a Ray cluster "
    "(pip install 'retriever[ray]').")]
RayAddressOpt = Annotated[str | None, typer.Option(
    "--ray-address", help="With --engine ray: the cluster (HOST:6379, from `ray start --head`); "
    "default: a Ray of this machine for the run.")]


@app.command()
@reports_errors
def index(
    folders: FoldersArg, db: DbOpt = None, store: StoreOpt = None, model: ModelOpt = None,
    pretrained: PretrainedOpt = None, batch_size: IndexBatchOpt = 64, exclude: ExcludeOpt = None,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    max_text_bytes: MaxTextBytesOpt = DEFAULT_MAX_TEXT_BYTES,
    follow_symlinks_outside: FollowSymlinksOpt = False, reindex: ReindexOpt = False,
    wait: WaitOpt = False, index_type: IndexTypeOpt = "auto",
    recall_target: RecallTargetOpt = 0.95, memory_budget_mb: MemoryBudgetOpt = None,
    video_every: VideoEveryOpt = DEFAULT_EVERY,
    video_max_frames: VideoMaxFramesOpt = DEFAULT_MAX_FRAMES, ocr: OcrOpt = False,
    backend: BackendOpt = "auto", json_out: JsonOpt = False, engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None, switch: SwitchOpt = False,
    switch_cancel: SwitchCancelOpt = False,
) -> None:
    """Embed every image, video frame and text passage under FOLDERS; again, only what changed.

    Example: retriever index ~/Pictures ~/Notes --exclude 'tmp/*' --ocr --video-every 2
    """
    from retriever.encoding.specs import ModelSpec
    from retriever.ingest.pipeline import IngestOptions
    from retriever.ingest.run import ingest_folders
    from retriever.media.video import VideoOptions
    from retriever.progress import RichProgress

    request = _ingest_request(
        IngestOptions(tuple(folders), tuple(exclude or ()), batch_size, max_pixels,
                      max_text_bytes, follow_symlinks_outside,
                      video=VideoOptions(video_every, max_frames=video_max_frames), ocr=ocr),
        index_type, recall_target, memory_budget_mb)
    started = time.monotonic()
    outcome = ingest_folders(replace(request, index_dir=db, model=ModelSpec(model, pretrained),
                                     backend=backend, reindex=reindex, wait=wait,
                                     store_url=store, engine=engine, ray_address=ray_address,
                                     switch=switch, switch_cancel=switch_cancel),
                             RichProgress())
    if switch_cancel and not switch:  # nothing indexed: what was dropped
        stdout.print(visible("; ".join(outcome.report.notes)), markup=False)
        return
    _print_indexed(outcome, json_out, time.monotonic() - started)


def _ingest_request(options: IngestOptions, index_type: str, recall_target: float,
                    memory_budget_mb: int | None) -> IngestRequest:
    """What `index` and `watch` share: the options, the FAISS index's configuration and the
    settings (Tesseract checked before a model loads: one line saying how to install it)."""
    from index.ann import configured
    from retriever.ingest.run import IngestRequest

    if options.ocr:
        check_tesseract()
    env = read_settings()
    ann = configured(env, kind=index_type, recall_target=recall_target,
                     memory_budget=memory_budget_mb * 2**20 if memory_budget_mb else None)
    return IngestRequest(options, None, ann=ann, settings=env)


def _print_indexed(outcome: IngestOutcome, json_out: bool, seconds: float) -> None:
    from retriever.present.runs import indexed_summary, skipped_and_noted

    for line in skipped_and_noted(outcome.report):
        stderr.print(line, markup=False)
    if json_out:
        stdout.print(json.dumps({"directory": str(outcome.directory),
                                 **outcome.counts.__dict__, "run": outcome.report.to_json()}),
                     markup=False)
        return
    stdout.print(indexed_summary(outcome, seconds), markup=False)


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM ends `watch` as Ctrl-C does (a KeyboardInterrupt): committed batches stay."""
    raise KeyboardInterrupt


@app.command()
@reports_errors
def watch(
    folders: FoldersArg, db: DbOpt = None, store: StoreOpt = None, model: ModelOpt = None,
    pretrained: PretrainedOpt = None, batch_size: IndexBatchOpt = 64, exclude: ExcludeOpt = None,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    max_text_bytes: MaxTextBytesOpt = DEFAULT_MAX_TEXT_BYTES,
    follow_symlinks_outside: FollowSymlinksOpt = False, index_type: IndexTypeOpt = "auto",
    recall_target: RecallTargetOpt = 0.95, memory_budget_mb: MemoryBudgetOpt = None,
    video_every: VideoEveryOpt = DEFAULT_EVERY,
    video_max_frames: VideoMaxFramesOpt = DEFAULT_MAX_FRAMES, ocr: OcrOpt = False,
    backend: BackendOpt = "auto", nice: Annotated[int, typer.Option(
        min=0, max=19, help="Niceness added to the watcher: other programs go first.")] = 10,
) -> None:
    """Index FOLDERS as `index` does, then keep the index current as files change (Ctrl-C ends).

    Example: retriever watch ~/Pictures ~/Notes --exclude 'tmp/*'
    """
    import signal

    from retriever.encoding.specs import ModelSpec
    from retriever.ingest.options import IngestOptions
    from retriever.ingest.watch import WatchSettings, watch_folders
    from retriever.media.video import VideoOptions
    from retriever.progress import RichProgress

    request = _ingest_request(
        IngestOptions(tuple(folders), tuple(exclude or ()), batch_size, max_pixels,
                      max_text_bytes, follow_symlinks_outside,
                      video=VideoOptions(video_every, max_frames=video_max_frames), ocr=ocr),
        index_type, recall_target, memory_budget_mb)
    before = signal.signal(signal.SIGTERM, _interrupt)
    try:
        watch_folders(replace(request, index_dir=db, model=ModelSpec(model, pretrained),
                              backend=backend, store_url=store), PrintedWatch(stderr, worded),
                      WatchSettings(nice=nice), progress=RichProgress())
    except KeyboardInterrupt:
        stderr.print("stopped watching: every commit is kept", markup=False)
    finally:
        signal.signal(signal.SIGTERM, before)


QueryArg = Annotated[str | None, typer.Argument(help="What to look for, in words.")]
ImageOpt = Annotated[Path | None, typer.Option(
    "--image", help="Search with an image instead of words.")]
ItemOpt = Annotated[int | None, typer.Option(
    "--item", help="Search with an indexed item (an id from --json results).")]
AddOpt = Annotated[list[str] | None, typer.Option(
    "--add", help="More like this: words, an image file or item:ID, weight as W:... "
    "(repeatable).")]
SubOpt = Annotated[list[str] | None, typer.Option(
    "--sub", help="Less like this, same forms as --add (repeatable).")]
ToOpt = Annotated[str | None, typer.Option(
    "--to", help="images (the default, for words and images alike: an image finds more like "
    "it), texts (documents' passages; use it to find notes by a photo), videos, or all (images "
    "and passages, interleaved by rank in two sections).")]
WithVideosOpt = Annotated[bool, typer.Option(
    "--with-videos", help="With --to images: find video frames too.")]
TypeOpt = Annotated[str | None, typer.Option(
    "--type", help="image, text or video: the same as --to images / texts / videos.")]
KOpt = Annotated[int, typer.Option("-k", help="Number of results.")]
InOpt = Annotated[str | None, typer.Option("--in", help="Only results under this folder.")]
AfterOpt = Annotated[str | None, typer.Option(
    "--after", help="Only files taken (EXIF date, else modified) on/after YYYY-MM-DD.")]
BeforeOpt = Annotated[str | None, typer.Option(
    "--before", help="Only files taken (EXIF date, else modified) before YYYY-MM-DD.")]
MinScoreOpt = Annotated[float | None, typer.Option(
    "--min-score", help="Drop results scoring below this cosine similarity.")]
NoServerOpt = Annotated[bool, typer.Option(
    "--no-server", help="Search in this process even when `retriever serve` is running "
    "on the index.")]
PathsOnlyOpt = Annotated[bool, typer.Option("--paths-only", help="Print bare paths.")]
HtmlOpt = Annotated[Path | None, typer.Option(
    "--html", help="Also write a self-contained results page to this file.")]
PreviewOpt = Annotated[bool, typer.Option(
    "--preview", help="Show thumbnails inline (kitty or iTerm2 terminals).")]
MatchOpt = Annotated[str, typer.Option(
    "--match", help="hybrid (the default: words typed and meaning, fused), semantic (meaning "
    "only) or keyword (only results holding every word typed, e.g. INV-48213).")]


@app.command()
@reports_errors
def search(
    query: QueryArg = None, image: ImageOpt = None, item: ItemOpt = None, add: AddOpt = None,
    sub: SubOpt = None, to: ToOpt = None, kind: TypeOpt = None, k: KOpt = 10,
    under: InOpt = None, after: AfterOpt = None, before: BeforeOpt = None,
    min_score: MinScoreOpt = None, db: DbOpt = None, model: SearchModelOpt = None,
    pretrained: SearchPretrainedOpt = None, backend: BackendOpt = "auto",
    no_server: NoServerOpt = False, json_out: JsonOpt = False, paths_only: PathsOnlyOpt = False,
    html_file: HtmlOpt = None, preview: PreviewOpt = False, tag: TagFilterOpt = None,
    with_videos: WithVideosOpt = False, store: StoreOpt = None, match: MatchOpt = "hybrid",
) -> None:
    """Find images, video moments and text passages by words, by an image, or both, weighted.

    Examples: retriever search "beach" --add sunset --sub people --to images;
    retriever search --image photo.jpg --to texts --json;
    retriever search "receipt" --after 2024-01-01 --html results.html;
    retriever search INV-48213 --match keyword --to texts
    """
    from retriever.library.locations import find_index_dir
    from retriever.search.query import Query, parse_date, parse_term, resolve_target
    from retriever.server.remote import search_server

    request = Query(
        text=query, image=image, item=item, target=resolve_target(to, kind), k=k,
        path_prefix=under, add=tuple(parse_term(a, "--add") for a in add or ()),
        sub=tuple(parse_term(s, "--sub") for s in sub or ()),
        after=parse_date(after, "--after") if after else None,
        before=parse_date(before, "--before") if before else None, min_score=min_score,
        tag=tag, video_frames=with_videos, match=match)
    request.check()
    if html_file is not None:
        from retriever.present.html_page import check_target

        check_target(html_file)  # before the search: a bad --html wastes no model load
    if backend != "auto":  # checked before a server could answer and ignore it
        from retriever.encoding.backends import check_backend

        check_backend(backend)
    env = read_settings()
    index_dir = find_index_dir(db, store_url=store, data_dir=env.data_dir)
    # a running `retriever serve` has the model and index loaded; --model/--pretrained are
    # checked here only, so they search locally
    local = no_server or model is not None or pretrained is not None
    results = None if local else search_server(index_dir, request, env.xdg_runtime_dir)
    if results is None:
        results = _search_here(index_dir, request, model, pretrained, backend, store, env)
    if not results and tag is not None:  # a typo in --tag, not a filter excluding everything
        from retriever.library.tags import check_tag

        check_tag(_reading(index_dir, store, env), tag)
    if html_file is not None:
        from retriever.present.html_page import write_html

        title = f"retriever: {query or image or f'item {item}'}"
        written = write_html(results, html_file, title, _reading(index_dir, store, env))
        stderr.print(f"wrote {visible(str(written))}", markup=False)
    _print_results(results, json_out, paths_only,
                   _reading(index_dir, store, env) if preview else None, env)


def _reading(index_dir: Path, store: str | None, env: Settings) -> Any:
    """The index opened for reading: --html and --preview show its files, checked as the
    server checks them (a result from a server has the same ids)."""
    from index.ann import configured
    from retriever.library.collection import Collection

    return Collection.open(index_dir, configured(env), store, reading=True)


def _print_results(results: list[Any], json_out: bool, paths_only: bool,
                   preview: Any | None, env: Settings) -> None:
    """The results as JSON lines, paths, pictures of `preview`'s files (a Collection), or
    tables."""
    if not results:
        stderr.print("no results (a filter or --min-score may exclude them all)", markup=False)
    if json_out:
        for result in results:
            stdout.print(json.dumps(result.to_json()), markup=False)
    elif paths_only:  # one per line: a newline in a name is printed as \n (README, Output)
        for result in results:
            stdout.print(visible(result.path), markup=False)
    elif preview is not None:
        _print_previews(results, preview, env)
    else:
        from retriever.present.output import print_results

        print_results(stdout, results)


def _search_here(index_dir: Path, request: Any, model: str | None, pretrained: str | None,
                 backend: str, store: str | None, env: Settings) -> list[Any]:
    from retriever.encoding.specs import ModelSpec
    from retriever.progress import RichProgress
    from retriever.search.query import search_index

    asked = ModelSpec(model, pretrained) if model or pretrained else None
    return search_index(index_dir, request, asked, backend, store, RichProgress(),
                        settings=env)


def _print_previews(results: list[Any], collection: Any, env: Settings) -> None:
    from retriever.present.output import print_previews

    print_previews(stdout, stderr, results, collection, env.terminal)


def _opened(db: Path | None, store: str | None) -> tuple[Any, Settings]:
    """The index `db` names (or the one found from here: `find_index_dir`), opened, and the
    settings it was found and opened with."""
    from index.ann import configured
    from retriever.library.collection import Collection
    from retriever.library.locations import find_index_dir

    env = read_settings()
    directory = find_index_dir(db, store_url=store, data_dir=env.data_dir)
    return Collection.open(directory, configured(env), store), env


@app.command()
@reports_errors
def info(db: DbOpt = None, json_out: JsonOpt = False, store: StoreOpt = None) -> None:
    """Show what an index holds, which model built it, and what the last run did.

    Example: retriever info --json
    """
    from retriever.encoding.backends import made_by

    collection, env = _opened(db, store)
    summary, places = collection.summary(), collection.locations(env)
    vectors = made_by(summary.model.precision) if summary.model else None  # precision, backend
    measured = collection.reads.duplicate_threshold()  # `duplicates`' threshold, if measured
    if json_out:
        from dataclasses import asdict

        stdout.print(json.dumps({**summary.to_json(), "vectors": vectors, "locations": places,
                                 "duplicate_threshold": measured and asdict(measured)}),
                     markup=False)
        return
    record, run = summary.model, summary.last_run
    model = f"{record.name} ({record.pretrained}, {record.dim}-d)" if record else "none yet"
    lines = [f"index     {summary.directory}", f"model     {model}",
             f"files     {summary.files}", f"images    {summary.images}",
             f"texts     {summary.texts} passages"]
    if vectors:
        lines.append(f"vectors   {vectors['precision']}, made by {vectors['backend']}"
                     + ("" if vectors["recorded"] else " (not recorded: made before)"))
    if measured:
        from retriever.present.duplicates_page import measured_words

        lines.append(f"threshold {measured.threshold:.4f} for duplicates, "
                     f"{measured_words(measured)}")
    if run:
        done = {k: v for k, v in run.stats.items()
                if k not in ("failures", "not_indexed", "notes") and v}
        lines.append(f"last run  {run.status}: " + ", ".join(f"{k} {v}" for k, v in done.items()))
        lines += [f"noted     {note}" for note in run.stats.get("notes", [])]
        lines += not_indexed(run.stats.get("not_indexed", {}))
    lines += [f"{name:<9} {value}" for name, value in places.items()]
    # a failure's reason starts with its path (as `index` prints it)
    lines += [f"failed    {f.reason if f.reason.startswith(f.path) else f'{f.path}: {f.reason}'}"
              for f in summary.failures]
    stdout.print("\n".join(visible(line) for line in lines), markup=False)


@app.command()
@reports_errors
def check(db: DbOpt = None, store: StoreOpt = None, wait: Annotated[bool, typer.Option(
        help="If `retriever index` is writing the index, wait for it.")] = False) -> None:
    """Read every saved index file whole against its checksum; rebuild the damaged ones.

    One line per file found damaged, missing or stale; exit status 1 when it found (and
    rebuilt) any. Example: retriever check --db ~/Pictures
    """
    from retriever.library.check import check_saved

    collection, _ = _opened(db, store)
    report = check_saved(collection, wait)
    fix = "rebuilt from the store" if report.rebuilt else "run `retriever check` where the " \
        "index is writable to rebuild it"
    for finding in report.findings:
        stdout.print(visible(f"{finding.path}: {finding.problem}; {fix}"), markup=False)
    if report.sound:
        stdout.print(visible(f"{collection.directory}: every saved index file matches its "
                             f"checksum"), markup=False)
    collection.close()
    if not report.sound:
        raise typer.Exit(1)


ForgetOpt = Annotated[Path | None, typer.Option(
    "--forget", help="Drop this index folder from the list (its files stay).")]
PruneOpt = Annotated[bool, typer.Option(
    "--prune", help="Drop every listed index whose folder is gone.")]


@app.command()
@reports_errors
def indexes(json_out: JsonOpt = False, forget: ForgetOpt = None,
            prune: PruneOpt = False) -> None:
    """List the indexes this user made and the folders each covers (the registry).

    `search`, `info` and `serve` run inside any of these folders find their index.
    Example: retriever indexes --json; retriever indexes --prune
    """
    from retriever.library import locations
    from retriever.library.locations import registered, registry_path, still_there

    data_dir = read_settings().data_dir
    if forget is not None:  # the registry only: no index is deleted
        gone = locations.forget(forget, data_dir)
        stdout.print(visible(f"forgot {gone} (its files are untouched)"), markup=False)
    if prune:
        pruned = locations.prune(data_dir)
        for gone in pruned:
            stdout.print(visible(f"forgot {gone} (gone)"), markup=False)
        if not pruned:
            stderr.print("nothing to prune: every listed index is still there", markup=False)
    if forget is not None or prune:
        return
    known = registered(data_dir)
    for index_dir, roots in sorted(known.items()):
        here = still_there(index_dir)
        row = {"index": str(index_dir), "roots": [str(r) for r in roots], "exists": here}
        stdout.print(json.dumps(row) if json_out else visible(
            f"{index_dir}{'' if here else ' (gone)'}: " + ", ".join(map(str, roots))),
            markup=False)
    if not known:
        stderr.print(f"no indexes registered in {visible(str(registry_path(data_dir)))}: run "
                     f"`retriever index FOLDER`", markup=False)


FamilyOpt = Annotated[str | None, typer.Option(
    "--family", help=f"Only this family: {', '.join(FAMILIES)}.")]
CachedOpt = Annotated[bool, typer.Option(
    "--cached", help="Only the pretrained tags whose weights are on this machine.")]


@app.command()
@reports_errors
def models(json_out: JsonOpt = False, family: FamilyOpt = None,
           cached: CachedOpt = False) -> None:
    """List the model architectures by family, their pretrained tags (for --model and
    --pretrained), which are cached on this machine and their sizes. Offline; builds nothing.

    Example: retriever models --family mobileclip2; retriever models --cached --json
    """
    from retriever.encoding.catalogue import catalogue, default_caches, describe, summary

    caches = default_caches()
    entries = catalogue(caches, family, cached)
    for entry in entries:
        stdout.print(json.dumps(entry.to_json()) if json_out else visible(describe(entry)),
                     markup=False)
    stderr.print(visible(summary(entries, caches)), markup=False)


# `train`'s options, one per TrainConfig field of the same name
DataArg = Annotated[str, typer.Argument(
    help="Folder of images with sidecar captions (photo.jpg + photo.txt, one caption per "
    "line), a .csv/.tsv/.jsonl with filepath and caption columns, a COCO captions .json, "
    "or WebDataset tar shards (a .tar, a folder of them, shard-{000..099}.tar, a URL).")]
OutOpt = Annotated[Path, typer.Option("--out", help="Checkpoint to write.")]
ObjectiveOpt = Annotated[str, typer.Option(help="infonce (CLIP) or distance (margin).")]
DistanceWeightOpt = Annotated[float, typer.Option(
    help="infonce: add this x the squared distance of matching pairs.")]
MarginOpt = Annotated[float, typer.Option(help="distance: push negatives this far.")]
EpochsOpt = Annotated[int, typer.Option(help="Passes over the training images.")]
TrainBatchOpt = Annotated[int, typer.Option(
    help="Pairs per process per micro-batch; a step sees batch-size x grad-accum x "
    "nproc pairs.")]
LrOpt = Annotated[float | None, typer.Option(
    help="Peak learning rate (default 1e-3 from scratch, 1e-5 fine-tuning).")]
WarmupOpt = Annotated[float, typer.Option(
    help="Fraction of all steps spent ramping the learning rate up.")]
WeightDecayOpt = Annotated[float, typer.Option(help="AdamW weight decay.")]
ValFractionOpt = Annotated[float, typer.Option(help="Images held out for recall.")]
ValDataOpt = Annotated[Path | None, typer.Option(
    help="Held-out captioned images (any format above but shards) instead of a split.")]
ValClassesOpt = Annotated[Path | None, typer.Option(
    help="Also measure zero-shot classification accuracy at every validation on this folder "
    "of class folders (as `eval --task classification`).")]
ValEveryOpt = Annotated[int, typer.Option(
    help="Also measure held-out recall every N steps (0: before training and after "
    "each epoch only).")]
SeedOpt = Annotated[int, typer.Option(help="Seed for split, order and weights.")]
ImageColOpt = Annotated[str, typer.Option(help="Table column of image paths.")]
CaptionColOpt = Annotated[str, typer.Option(help="Table column of captions.")]
ImageRootOpt = Annotated[Path | None, typer.Option(
    help="COCO .json: folder its file_names are in (default: the JSON's folder).")]
SamplesPerEpochOpt = Annotated[int | None, typer.Option(
    help="Shards: pairs per epoch (default: sizes.json beside them, or counted).")]
AugmentOpt = Annotated[bool, typer.Option(
    "--augment", help="Train through open_clip's random-crop preprocessing.")]
NumWorkersOpt = Annotated[int, typer.Option(
    help="DataLoader workers decoding images, per process.")]
NprocOpt = Annotated[int, typer.Option(
    help="Train in N processes on this machine as one (DDP: one per GPU, or gloo on "
    "CPU). torchrun --nproc_per_node N -m cli train ... does the same.")]
GradAccumOpt = Annotated[int, typer.Option(
    help="Micro-batches per step: a batch N x larger in the same memory.")]
LockImageOpt = Annotated[bool, typer.Option(
    "--lock-image", help="LiT: freeze the image tower, train the text tower.")]
LockTextOpt = Annotated[bool, typer.Option(
    "--lock-text", help="Freeze the text tower, train the image tower.")]
GradCheckpointingOpt = Annotated[bool, typer.Option(
    "--grad-checkpointing", help="Recompute activations in backward: less memory.")]
PrecisionOpt = Annotated[str, typer.Option(
    help="fp32, bf16 or fp16 autocast (default: fp32 on CPU, bf16 or fp16 on GPU).")]
SaveEveryOpt = Annotated[int, typer.Option(
    help="Also save the resumable state (OUT stem + .resume.pt) every N steps; it is "
    "always saved after each epoch.")]
ResumeOpt = Annotated[Path | None, typer.Option(
    help="Continue an interrupted run from its .resume.pt (same settings).")]


@app.command()
@reports_errors
def train(
    data: DataArg, out: OutOpt, model: ModelOpt = None, pretrained: PretrainedOpt = None,
    objective: ObjectiveOpt = "infonce", distance_weight: DistanceWeightOpt = 0.0,
    margin: MarginOpt = 1.2, epochs: EpochsOpt = 10, batch_size: TrainBatchOpt = 32,
    lr: LrOpt = None, warmup: WarmupOpt = 0.1, weight_decay: WeightDecayOpt = 0.1,
    val_fraction: ValFractionOpt = 0.1, val_data: ValDataOpt = None, val_every: ValEveryOpt = 0,
    val_classes: ValClassesOpt = None, seed: SeedOpt = 0, image_col: ImageColOpt = "filepath",
    caption_col: CaptionColOpt = "caption",
    image_root: ImageRootOpt = None, samples_per_epoch: SamplesPerEpochOpt = None,
    augment: AugmentOpt = False, num_workers: NumWorkersOpt = 0, nproc: NprocOpt = 1,
    grad_accum: GradAccumOpt = 1, lock_image: LockImageOpt = False,
    lock_text: LockTextOpt = False, grad_checkpointing: GradCheckpointingOpt = False,
    precision: PrecisionOpt = "auto", save_every: SaveEveryOpt = 0, resume: ResumeOpt = None,
) -> None:
    """Train or fine-tune the shared image-text space on captioned images.

    Writes the checkpoint, and beside it OUT-stem.curve.csv and .curve.png (loss, temperature,
    learning rate, held-out recall per step; with --val-classes, classification accuracy).

    Example: retriever train photos/ --out tuned.pt --model ViT-B-32 --pretrained my.bin;
    then: retriever index photos/ --pretrained tuned.pt
    """
    settings = dict(locals())  # the parameters: each TrainConfig field but `model` is one
    from dataclasses import fields

    from retriever.encoding.models import ModelSpec
    from retriever.progress import RichProgress
    from retriever.training.loop import TrainConfig
    from retriever.training.loop import train as run_training

    settings["model"] = ModelSpec(model, pretrained)
    cfg = TrainConfig(**{f.name: settings[f.name] for f in fields(TrainConfig)})
    env = read_settings()  # under torchrun: this process's RANK, WORLD_SIZE, LOCAL_RANK
    bars = RichProgress()  # log lines go above the bars, never glued to one
    result = run_training(cfg, bars, lambda line: bars.log(visible(line)), env)
    if env.rank != 0:  # under torchrun every process runs this command; rank 0 reports
        return
    if result.before:
        unbounded(stdout).print(metrics_table(result.before, result.after, "untrained",
                                               "trained"))
        stdout.print(before_after(result.before, result.after), markup=False)
    else:  # --val-fraction 0 without --val-data: README's fine-tuning steps score it instead
        stdout.print(f"held-out: none (--val-fraction 0): score it before and after with "
                     f"`retriever eval HELD-OUT --pretrained {result.checkpoint}`", markup=False)
    stdout.print(f"checkpoint: {result.checkpoint} ({result.samples_per_s:.0f} samples/s); "
              f"use it with --pretrained {result.checkpoint}", markup=False)
    stdout.print(f"curves: {result.curve_csv} and {result.curve_png}", markup=False)


TaskOpt = Annotated[str, typer.Option(
    help="retrieval: recall both ways on captioned images; classification: zero-shot accuracy "
    "on a folder holding one folder of images per class (named by the folder, or by the lines "
    "of a classnames.txt in it).")]
TemplateOpt = Annotated[list[str] | None, typer.Option(
    "--template", help="classification: a prompt, {} standing for the class name; repeat it to "
    "average several (default: five of CLIP's, as `retriever tag`).")]
TiesOpt = Annotated[str, typer.Option(
    help="Exact ties: topk (as CLIP_benchmark's torch.topk on CUDA: the lower index first) or "
    "strict (every tied wrong candidate ranks ahead of the right one).")]


@app.command("eval")
@reports_errors
def evaluate(
    data: Annotated[Path, typer.Argument(
        help="Captioned images, as for `train` (not shards); with --task classification, a "
        "folder of class folders.")],
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    task: TaskOpt = "retrieval",
    template: TemplateOpt = None,
    ties: TiesOpt = "topk",
    image_col: ImageColOpt = "filepath",
    caption_col: CaptionColOpt = "caption",
    image_root: ImageRootOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Measure text->image and image->text recall (R@1/5/10, median rank) on captioned images,
    or zero-shot classification accuracy (top-1, top-5, mean per-class recall) by CLIP_benchmark's
    protocol.

    Example: retriever eval held-out/ --pretrained tuned.pt --json;
    retriever eval animals/ --task classification --template 'a photo of a {}.'
    """
    from retriever.encoding.clip_encoder import ClipEncoder
    from retriever.encoding.models import ModelSpec, load_model
    from retriever.encoding.prompts import DEFAULT_TEMPLATES
    from retriever.progress import RichProgress
    from retriever.training.classification import (
        check_templates,
        evaluate_classes,
        read_class_folder,
    )
    from retriever.training.evaluation import check_ties, evaluate_pairs
    from retriever.training.pairs import load_pairs

    tie_rule = check_ties(ties)  # every setting and the data checked before the model loads
    if task not in ("retrieval", "classification"):
        raise BadSetting("task", task, "use retrieval or classification")
    if template and task != "classification":
        raise BadSetting("template", repr(template[0]), "is for --task classification")
    if task == "classification":
        check_templates(template or DEFAULT_TEMPLATES)
        folder = read_class_folder(data)
        encoder = ClipEncoder(load_model(ModelSpec(model, pretrained)))
        metrics = evaluate_classes(encoder, folder, template or DEFAULT_TEMPLATES,
                                   RichProgress(), tie_rule)
    else:
        pairs = load_pairs(data, image_col, caption_col, image_root)
        encoder = ClipEncoder(load_model(ModelSpec(model, pretrained)))
        metrics = evaluate_pairs(encoder, pairs, RichProgress(), tie_rule)
    if json_out:
        stdout.print(json.dumps(metrics), markup=False)
    else:
        unbounded(stdout).print(metrics_table(metrics))


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

    bars = RichProgress()
    result = run_demo(DemoConfig(out_dir, images, epochs), bars,
                      lambda line: bars.log(visible(line)))
    stdout.print(visible(f"indexed {result.index.images} images and {result.index.passages} "
                         f"text passages from {result.media}"), markup=False)
    for label, results in result.searches:
        unbounded(stdout).print(demo_results(label, results))
    unbounded(stdout).print(metrics_table(result.training.before, result.training.after,
                                           "untrained", "trained", title="held-out recall"))
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
    store: StoreOpt = None,
    backend: BackendOpt = "auto",
    watch: Annotated[bool, typer.Option(
        "--watch", help="Also keep the index current as its folders change (as `retriever "
        "watch` with default options).")] = False,
) -> None:
    """Search in a browser: a local web page and JSON API over the index (see README, Web UI).

    Example: retriever serve --port 8765 --watch, then open http://127.0.0.1:8765
    """
    from retriever.library.pinned_encoder import pinned_encoder
    from retriever.progress import RichProgress
    from retriever.server.app import LOOPBACK_HOSTS, ServerSettings, create_app
    from retriever.server.lifecycle import check_port, listen, serve_forever

    check_port(port)
    collection, env = _opened(db, store)
    sock = listen(host, port)  # a port in use fails before the model loads
    encoder = pinned_encoder(collection, backend=backend, progress=RichProgress(), settings=env)
    app_ = create_app(collection, encoder, ServerSettings.for_host(host),
                      reload=lambda now: pinned_encoder(now, backend=backend, settings=env))
    if host not in LOOPBACK_HOSTS:
        stderr.print(f"warning: --host {host} serves your indexed files to the network",
                     markup=False)
    shown = f"[{host}]" if ":" in host else host  # an IPv6 address needs brackets in a URL
    port = sock.getsockname()[1]  # the one bound, for --port 0
    stderr.print(visible(f"serving {collection.directory} at http://{shown}:{port} (Ctrl-C "
                         f"stops)"), markup=False)
    watching = _watching(collection, store, backend, env, encoder) if watch else None
    try:
        serve_forever(app_, sock, announce_in=collection.directory,
                      runtime_dir=env.xdg_runtime_dir)
    finally:
        if watching is not None:
            watching.stop()


def _watching(collection: Any, store: str | None, backend: str, env: Settings,
              encoder: Any) -> Any:
    """`serve --watch`: the index's recorded folders watched on a thread beside the server."""
    from retriever.errors import UsageError
    from retriever.ingest.options import IngestOptions
    from retriever.ingest.run import IngestRequest
    from retriever.ingest.watch import Watching
    from retriever.library.locations import recorded_roots

    roots = recorded_roots(collection.directory)
    if not roots:
        raise UsageError(f"--watch: {collection.directory} records no folders: run "
                         f"`retriever watch FOLDERS --db {collection.directory}` instead")
    listener = PrintedWatch(stderr, worded)
    request = IngestRequest(IngestOptions(roots), collection.directory, backend=backend,
                            store_url=store, settings=env)
    return Watching(request, listener, listener.failed, encoder=encoder)


@app.command("mcp")
@reports_errors
def mcp_server(db: DbOpt = None, store: StoreOpt = None, backend: BackendOpt = "auto") -> None:
    """Let an AI assistant search the index: a Model Context Protocol server on stdin/stdout.

    Read-only tools (search, search_by_image, more_like, show_item, info, duplicates, tags);
    an assistant client starts it (see README, "Searching from an AI assistant (MCP)").
    Example: retriever mcp --db ~/Pictures/.retriever
    """
    from retriever.library.pinned_encoder import pinned_encoder
    from retriever.mcp.server import serve_stdio
    from retriever.progress import RichProgress

    collection, env = _opened(db, store)  # as `serve`: no writer lock is taken
    encoder = pinned_encoder(collection, backend=backend, progress=RichProgress(), settings=env)
    stderr.print(visible(f"retriever mcp: serving {collection.directory} on stdin/stdout"),
                 markup=False)
    serve_stdio(collection, encoder,
                reload=lambda now: pinned_encoder(now, backend=backend, settings=env))


ThresholdOpt = Annotated[float | None, typer.Option(
    "--threshold", help="Cosine at or above which two images are near-identical (default: "
    "measured on this index's model and photos, recorded, see README).")]
FolderOpt = Annotated[str | None, typer.Option("--in", help="Only images under this folder.")]
DuplicatesHtmlOpt = Annotated[Path | None, typer.Option(
    "--html", help="Write a self-contained page showing each group side by side.")]
DuplicatesPrecisionOpt = Annotated[float, typer.Option(
    "--precision", help="Share of the pairs found that should be true copies: the measured "
    "threshold is the lowest cosine that reaches it.")]
RecalibrateOpt = Annotated[bool, typer.Option(
    "--recalibrate", help="Measure the threshold again even if the recorded one still holds.")]


@app.command()
@reports_errors
def duplicates(threshold: ThresholdOpt = None, under: FolderOpt = None,
               html_file: DuplicatesHtmlOpt = None, json_out: JsonOpt = False,
               db: DbOpt = None, store: StoreOpt = None, precision: DuplicatesPrecisionOpt = 0.95,
               recalibrate: RecalibrateOpt = False, backend: BackendOpt = "auto") -> None:
    """List groups of near-identical images (best copy first); same bytes are marked.

    Nothing is deleted. Example: retriever duplicates --in ~/Pictures/2024 --html dups.html
    """
    from retriever.errors import UsageError
    from retriever.library.calibration import check_precision, duplicate_threshold
    from retriever.library.duplicates import DEFAULT_THRESHOLD, find_duplicates
    from retriever.library.pinned_encoder import pinned_encoder
    from retriever.present.duplicates_page import threshold_words

    if threshold is not None and not -1 <= threshold <= 1:  # NaN fails this too
        raise UsageError(f"--threshold {threshold} is not a cosine: pass one in [-1, 1]")
    check_precision(precision)
    if html_file is not None:
        from retriever.present.duplicates_page import write_duplicates_html
        from retriever.present.html_page import check_target

        check_target(html_file)  # before any work: a bad --html wastes nothing
    collection, env = _opened(db, store)
    measured = None if threshold is not None else duplicate_threshold(
        collection, lambda: pinned_encoder(collection, backend=backend, settings=env),
        precision, recalibrate)
    if threshold is None:  # fewer than two images: nothing to measure on, nor to group
        threshold = measured.threshold if measured else DEFAULT_THRESHOLD
    groups = find_duplicates(collection, threshold, os.path.abspath(under) if under else None)
    if html_file is not None:
        written = write_duplicates_html(groups, html_file, threshold, collection)
        stderr.print(f"wrote {visible(str(written))}", markup=False)
    if json_out:
        for group in groups:
            stdout.print(json.dumps(group.to_json()), markup=False)
        return
    _print_groups(groups, threshold_words(threshold, measured))


def _print_groups(groups: list[Any], threshold: str) -> None:
    unbounded(stdout).print(duplicates_table(groups))
    copies = sum(len(g.copies) - 1 for g in groups)
    stdout.print(f"{len(groups)} groups, {copies} copies beyond the best at {threshold}; "
                 f"nothing was deleted", markup=False)


PromptOpt = Annotated[list[str] | None, typer.Option(
    "--prompt", help="Prompt template with {} for the label (repeatable: averaged). Default: a "
    "small CLIP-style ensemble.")]
TagScoreOpt = Annotated[float | None, typer.Option(
    "--min-score", help="Leave an image untagged if its best label scores below this cosine.")]


@app.command()
@reports_errors
def tag(labels: Annotated[list[str], typer.Argument(help="Labels to choose among.")],
        prompt: PromptOpt = None, under: FolderOpt = None, min_score: TagScoreOpt = None,
        json_out: JsonOpt = False, db: DbOpt = None, store: StoreOpt = None,
        backend: BackendOpt = "auto", wait: Annotated[bool, typer.Option(
            help="If `retriever index` is writing the index, wait for it.")] = False,
        verbose: Annotated[bool, typer.Option(
            "--verbose", help="List each image with its label(s) and score.")] = False) -> None:
    """Tag each image with its best label(s) by zero-shot CLIP; search them with --tag.

    Tagging again with the same labels replaces those tags. Example: retriever tag receipt
    screenshot document photo --in ~/Pictures; then: retriever search "total" --tag receipt
    """
    from retriever.encoding.prompts import DEFAULT_TEMPLATES
    from retriever.library.pinned_encoder import pinned_encoder
    from retriever.library.tags import TagRequest, tag_images
    from retriever.progress import RichProgress

    request = TagRequest(tuple(labels), tuple(prompt or DEFAULT_TEMPLATES),
                         os.path.abspath(under) if under else None, min_score)
    request.check()
    collection, env = _opened(db, store)
    with collection.writing(wait):
        encoder = pinned_encoder(collection, backend=backend, progress=RichProgress(),
                                 settings=env)
        tagged = tag_images(collection, encoder, request)
    for t in tagged if json_out or verbose else ():
        stdout.print(json.dumps(t.to_json()) if json_out else visible(
            f"{', '.join(t.labels) or '-':<16} {t.score:.3f}  {t.path}"), markup=False)
    counts = {label.strip(): sum(label.strip() in t.labels for t in tagged) for label in labels}
    summary = stderr if json_out or verbose else stdout  # stdout: the summary is the output
    for label, count in counts.items():
        summary.print(visible(f"{label:<16} {count} image{'' if count == 1 else 's'}"),
                      markup=False)
    summary.print(f"tagged {sum(bool(t.labels) for t in tagged)} of {len(tagged)} images "
                  f"(--verbose lists each)", markup=False)


TagFilterOpt = Annotated[str | None, typer.Option(
    "--tag", help="Only images tagged with this label by `retriever tag`.")]


def main() -> None:
    logging.getLogger().setLevel(logging.ERROR)  # open_clip logs warnings on the root logger
    warnings.showwarning = _show_warning
    # PIL's own pixel cap (89 MP warns, 179 MP fails) would overrule --max-pixels: the guarded
    # opener (retriever.media.images.decode_image) checks every header against that instead
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    app()


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """The library's own warnings (a registry rebuilt) as one line; others as Python shows them."""
    if issubclass(category, RetrieverWarning):
        stderr.print(f"warning: {visible(str(message))}", markup=False)
    else:
        SHOW_WARNING(message, category, filename, lineno, file, line)


if __name__ == "__main__":
    main()
