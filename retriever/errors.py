"""Named errors. The library raises these; only the CLI turns them into one-line messages.

Most carry the fix in their message, so `str(err)` is what a user needs to read. Errors with
fields about a setting (`BadSetting`, `AskedModelDiffers`) name it as the library does; the CLI
turns the name into its flag and words the fix.
"""

from __future__ import annotations

from pathlib import Path


class RetrieverError(Exception):
    """Base for every expected failure: the CLI prints it as one line, no traceback."""

    exit_code = 1


class UsageError(RetrieverError):
    """A flag or argument is wrong (bad value, missing file, conflicting options)."""

    exit_code = 2


class FolderNotFound(UsageError):
    """A folder given on the command line does not exist."""


class ModelNotFound(UsageError):
    """`--model` names no open_clip architecture and no config file."""


class WeightsUnavailable(RetrieverError):
    """Pretrained weights are neither cached nor downloadable (offline, unknown tag)."""


class TextSourceUnavailable(WeightsUnavailable):
    """A model's Hugging Face tokenizer or text-model config (its config's text_cfg
    hf_tokenizer_name / hf_model_name) is neither a local folder nor cached, and cannot be
    fetched: `source` a hub id or folder, `role` "tokenizer" or "text model", `model` the
    architecture, `reason` why it cannot be fetched now."""

    def __init__(self, source: str, role: str, model: str, reason: str) -> None:
        super().__init__(source, role, model, reason)
        self.source, self.role, self.model, self.reason = source, role, model, reason

    def __str__(self) -> str:
        if self.reason == "missing folder":
            return (f"the {self.role} folder {self.source} of {self.model} does not exist: "
                    f"name an existing folder in the model config's text_cfg")
        return (f"the {self.role} {self.source} of {self.model} is not cached and "
                f"{self.reason}: on a connected machine run `hf download {self.source}` and "
                f"copy ~/.cache/huggingface here, or pass a model config whose text_cfg names "
                f"a local folder")


class CheckpointError(RetrieverError):
    """A checkpoint file cannot be read or does not fit the model."""


class BadSetting(UsageError):
    """A setting's value cannot be used. `setting` is its name in the library's config
    (`index_type`); the CLI shows it as its flag (--index-type)."""

    def __init__(self, setting: str, value: str, problem: str) -> None:
        super().__init__(setting, value, problem)
        self.setting = setting
        self.value = value  # as shown: 'btree', 7.0
        self.problem = problem  # what is wrong and what would do, e.g. "use one of flat, ivf"

    def __str__(self) -> str:
        return f"{self.setting} {self.value}: {self.problem}"


class UnknownTag(BadSetting):
    """`search --tag LABEL` where no image carries LABEL: `known` lists the labels that do."""

    def __init__(self, tag: str, known: tuple[str, ...]) -> None:
        listed = ", ".join(known) if known else "none yet: run `retriever tag LABEL...` first"
        super().__init__("tag", tag, f"no image is tagged so (known tags: {listed})")
        self.tag, self.known = tag, known


class ModelMismatch(RetrieverError):
    """The model asked for differs from the one an index or checkpoint was built with."""


class AskedModelDiffers(ModelMismatch):
    """A model or weights asked for (to search an index, or to add to it) are not the ones the
    index was built with. The CLI words the fix: drop the flag, or re-index."""

    def __init__(self, directory: Path, setting: str, asked: str, recorded: str,
                 purpose: str) -> None:
        super().__init__(directory, setting, asked, recorded, purpose)
        self.directory = directory  # the index
        self.setting = setting  # "model" or "pretrained": which part of the model differs
        self.asked, self.recorded = asked, recorded  # that part as asked, and as built
        self.purpose = purpose  # "index" (adding to the index) or "search"

    def __str__(self) -> str:
        return (f"{self.setting} {self.asked} differs from {self.recorded}, which "
                f"{self.directory} was built with")


class PrecisionMismatch(ModelMismatch):
    """The index's image vectors were made in `recorded` precision ("fp32", "int8", "fp16") and
    this command would encode in `made`, of the other kind (int8 against fp32/fp16: see
    `retriever.encoding.backends`), by `backend` as asked (None: not known where refused).
    `purpose`: "index" (adding to the index) or "search". Raised before anything is encoded."""

    exit_code = 2

    def __init__(self, directory: Path, recorded: str, made: str, backend: str | None,
                 purpose: str) -> None:
        super().__init__(directory, recorded, made, backend, purpose)
        self.directory, self.recorded, self.made = directory, recorded, made
        self.backend, self.purpose = backend, purpose

    def __str__(self) -> str:
        by = f"--backend {self.backend}" if self.backend else "this run"
        fix = (f"retriever index --reindex --backend {self.backend or 'auto'}"
               if self.purpose == "search" else "--reindex")
        return (f"{self.directory} holds {self.recorded} image vectors and {by} encodes "
                f"{self.made} ones, which would not match them: drop --backend (auto follows "
                f"the index), or re-encode everything with {fix}")


class SwitchPending(ModelMismatch):
    """`index --switch --model ASKED` while `directory`'s switch to `pending` (another model)
    is under way (retriever.ingest.switch): finish that one, or cancel it first."""

    exit_code = 2

    def __init__(self, directory: Path, pending: str, asked: str) -> None:
        super().__init__(directory, pending, asked)
        self.directory, self.pending, self.asked = directory, pending, asked

    def __str__(self) -> str:
        return (f"{self.directory} is switching to {self.pending}, not {self.asked}: run "
                f"`retriever index --switch` without --model to finish that switch, or pass "
                f"--switch-cancel to drop it first")


class IndexNotFound(RetrieverError):
    """No index where one was expected (`search`/`info` outside an indexed folder)."""


class IndexStillBuilding(IndexNotFound):
    """A search while the first `retriever index` run on `directory` has committed no file yet
    (its writer holds the lock): nothing is wrong with the query, there is nothing to find."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.directory = directory

    def __str__(self) -> str:
        return (f"the index {self.directory} is still being built: nothing committed yet; "
                f"search again once `retriever index` has stored its first files")


class ItemNotFound(UsageError):
    """An item id that is not in the index (a stale link, a typo)."""


class IndexBusy(RetrieverError):
    """Another process holds the index's write lock."""

    exit_code = 3


class DatasetError(UsageError):
    """Training or evaluation data cannot be read (missing columns, no pairs, bad paths)."""


class ImageError(RetrieverError):
    """One media file could not be decoded. Indexing reports it and goes on."""


class VideoError(RetrieverError):
    """A video file FFmpeg cannot open or decode (not a video, truncated, damaged). Indexing
    reports it and goes on."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class DocumentError(RetrieverError):
    """A document (PDF, DOCX, ODT, EPUB, HTML, RTF) that cannot be read: encrypted, damaged,
    too deep or too large unpacked. Indexing reports it and goes on."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(path, problem)  # args rebuild it when it crosses processes (Ray)
        self.path = path  # the file, as stored
        self.problem = problem  # e.g. "encrypted PDF (needs a password)"

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


class NoTextLayer(DocumentError):
    """A PDF whose pages are all scans (no text layer), indexed without --ocr. Not a lasting
    failure: a run with --ocr reads it."""

    def __init__(self, path: str, pages: str) -> None:
        super().__init__(path, pages)
        self.pages = pages  # "1-3, 5"
        self.problem = f"no text layer on pages {pages}; index with --ocr to read them"


class OcrUnavailable(UsageError):
    """`--ocr` was asked for and the Tesseract program cannot be run."""


class RayUnavailable(UsageError):
    """`--engine ray` was asked for, and Ray is not installed or no cluster answers at the
    address given."""


class TrainingDiverged(RetrieverError):
    """Training produced a non-finite loss or weights; the run stops and writes no checkpoint."""

    def __init__(self, step: int, epoch: int, lr: float, what: str) -> None:
        super().__init__(step, epoch, lr, what)  # args rebuild it when it crosses processes
        self.step, self.epoch, self.lr = step, epoch, lr
        self.what = what  # what went non-finite, e.g. "the loss is nan"

    def __str__(self) -> str:
        return (f"training diverged at step {self.step} (epoch {self.epoch}): {self.what}; "
                f"no checkpoint written: rerun with a lower --lr than {self.lr:g}, "
                f"e.g. {self.lr / 10:g}")


class NonFiniteVectors(RetrieverError):
    """A model gave vectors holding NaN or inf (diverged training, broken weights): nothing it
    encodes is stored, since every search over such a vector ranks nonsense."""

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.model = model  # "name (pretrained)"

    def __str__(self) -> str:
        return (f"{self.model} gives vectors with NaN or inf (diverged or damaged weights); "
                f"nothing was stored: index with a sound model")


class StoreError(RetrieverError):
    """The index's SQLite store cannot be opened or written (and none of the cases below)."""


class StoreDamaged(StoreError):
    """store.db is not a sound SQLite database (truncated, overwritten, corrupt pages)."""


class DiskFull(StoreError):
    """The disk holding the index is full (SQLite or a saved vector index could not write)."""


class IndexReadOnly(StoreError):
    """The index folder cannot be written: searching works, indexing does not."""


class BadStoreUrl(UsageError):
    """A store URL (RETRIEVER_STORE_URL) SQLAlchemy cannot parse, or whose driver is missing."""

    def __init__(self, message: str, url: str, reason: str) -> None:
        super().__init__(message)
        self.url, self.reason = url, reason


class SmallFileError(RetrieverError):
    """A small file retriever keeps (a registry, roots.json, an index file's JSON, an export's
    meta.json) is not what it should be: not a regular file, too big, not JSON, nested too
    deeply. `path` is the file, `problem` what is wrong with it."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(path, problem)
        self.path = path
        self.problem = problem  # e.g. "not a regular file", "over 1048576 bytes"

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


class RetrieverWarning(UserWarning):
    """Something done that the user should know of (a damaged registry kept aside and rebuilt);
    the CLI prints it as one `warning:` line."""
