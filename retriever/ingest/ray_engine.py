"""`retriever index --engine ray`: the files to encode are read and encoded on a Ray cluster.

Scanning, the incremental diff and every store write stay in this process (the driver), as with
the local engine (`pipeline`); only the files that must be read go to Ray, in blocks of `size`
(--batch-size: files per transaction, as on the local engine) files:

    a block --a read task (one CPU)--> records and model input, or failures
        --an encoder actor (one model each; one GPU each when the cluster has GPUs)-->
        items --back to the driver--> stored, one transaction per block

Read tasks are Ray tasks and encoders Ray actors, not a Ray Data pipeline: Ray Data's executor
starts helper actors of its own (on a busy 2-core machine a do-nothing pipeline's first block
came after 6.7 s, plain tasks and an actor's after 0.8 s), and its blocks are Arrow tables
the files would be pickled into and out of. The driver keeps
blocks in flight up to `_Plan.window` (READ_AHEAD_BYTES of model input, or a few per CPU),
so reading goes on while the actors load their models, and a block read goes to the encoder
with the fewest blocks waiting. What a read task is given is only what reading takes
(`_for_tasks`): not the store's table of files, and no tokenizer until a text needs one.

Each actor builds the driver's model from its names (`ModelId`) on the driver's `--backend`,
with the encoder batch of its own machine's CPU plan (`retriever.encoding.cpu`), and refuses
to encode if its weights are not the driver's (another fingerprint: a weights file that
differs on that machine). A read task reads its files in threads, each within the per-file
limits as the local engine counts them (`readers._ReaderThreads`: the reading thread's CPU
time, and a wall-clock bound for a hung mount), started inside the task around the reads alone:
a task waiting for a CPU, starting or importing spends none of them, so a loaded machine slows
a run and changes none of its results. Blocks come back in any order and each is stored as it
arrives, so a killed driver or worker loses at most the blocks not yet stored; the next run
reads only those (its diff finds the rest stored).

Ray retries no read task: a task that dies (OOM-killed, a decoder's crash, its node gone) has
its files read again one a task, and a file whose task dies again, alone, is that file's
failure, once (`_died`); the rest are stored. A block read and lost with its node before an
encoder took it is read again; an encoder actor that dies is restarted (RESTARTS).

Without an address a local Ray is started for the run (no dashboard, this machine's CPUs and
GPUs) and stopped after it; one already running in this process is used. It binds to and is
named by 127.0.0.1 alone (`_loopback`; by default Ray listens on every interface), and Ray's
token authentication, on by default for a new cluster, is checked as well (the token is in
~/.ray/auth_token). Joining a cluster (--ray-address) first checks, within CONNECT_TIMEOUT,
that a Ray head answers there (`_answers`): Ray itself retries a silent address for minutes.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, cast

import numpy as np

from index.records import FailureRecord
from retriever.encoding.backends import mix, open_encoder, precision_of, user_exports
from retriever.encoding.encoders import Encoder
from retriever.encoding.specs import ModelId
from retriever.errors import ModelMismatch, RayUnavailable
from retriever.ingest.handlers import PreparedFile, encode_read
from retriever.ingest.options import DEFAULT_READ_WALL_TIMEOUT
from retriever.ingest.reader import Reader
from retriever.ingest.readers import read_files
from retriever.media.scan import TEXT, MediaFile, path_key, shown
from retriever.settings import Settings

INSTALL = "pip install 'retriever[ray]'"
READER_DIED = ("the reader process died reading it, twice (out of memory or a crash in a "
               "decoder); skipped until it changes")
CONNECT_TIMEOUT = 10.0  # seconds a cluster's address may take to answer
# HTTP/2's client preface and an empty SETTINGS frame: a gRPC server answers with its SETTINGS
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
LOOPBACK = "127.0.0.1"  # the address a Ray of this machine alone binds to and is named by
READ_THREADS = 2  # per read task (one CPU): reading waits on the disk as much as it decodes
# What one read task reserves: its worker with the reader loaded (~650 MB, measured) and a file
# decoding (a 100 MP photo takes 300 MB at its peak), so a node runs no more than fit
READ_MEMORY = 2**30
RESTARTS = 2  # an encoder actor whose process dies is started again and its blocks retried
# Model input read ahead of the encoders, at most: while the actors load their models (seconds
# of importing torch, more than reading a few hundred photos takes) reading goes on up to this
READ_AHEAD_BYTES = 256 * 2**20
# Ray runs its workers at nice 15, below every other process of the machine: on a busy 2-core
# one (load 5) an actor imported torch in 5.2 s at nice 15 and in 1.4-2.0 s at 0. A Ray started
# for this run alone runs this run's work, so its workers run at the user's priority, as the
# local engine's threads do; a cluster joined keeps its own setting (RAY_worker_niceness)
WORKER_NICENESS = 0


def check_ray() -> None:
    """Raise `RayUnavailable`, saying how to install it, when Ray cannot be imported."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise RayUnavailable(f"--engine ray needs Ray, which is not installed: {INSTALL}"
                             ) from None


class RayEngine:
    """A `readers.Engine` on Ray: see the module docstring."""

    def __init__(self, encoder: Encoder, backend: str, address: str | None,
                 limit: float, wall: float = DEFAULT_READ_WALL_TIMEOUT) -> None:
        self._model = _ModelCopy(encoder.model_id, encoder.fingerprint, backend,
                                 precision_of(encoder))
        self._address, self._limits = address, _Limits(limit, wall)
        self._started = False  # this engine started or joined a Ray: it stops or leaves it

    def __enter__(self) -> RayEngine:
        check_ray()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started:
            import ray

            ray.shutdown()

    def chunks(self, todo: list[MediaFile], read: Reader, size: int
               ) -> Iterator[list[PreparedFile]]:
        if not todo:
            return  # a run with nothing to encode never starts or joins a Ray
        import ray

        if not ray.is_initialized():
            _start(self._address)
            self._started = True
        side = read.spec.pixels.size
        plan = _plan(ray.cluster_resources(), size * 3 * side * side * 4)  # float32 pixels
        encoders: list[Any] = [ray.remote(_EncoderActor).options(
            num_cpus=plan.actor_cpus, num_gpus=plan.actor_gpus, max_restarts=RESTARTS,
            max_task_retries=RESTARTS).remote(self._model) for _ in range(plan.actors)]
        # no retries: a task that dies on a file would die again (and Ray's memory monitor
        # would retry one it killed for memory forever); `_stream` finds the file instead
        read_task = ray.remote(_read_block).options(
            num_cpus=1, memory=READ_MEMORY, num_returns=2, max_retries=0,
            retry_exceptions=False)
        reader = ray.put(_for_tasks(read))  # in the object store once, not once a task
        blocks = deque(_Block(todo[i : i + size]) for i in range(0, len(todo), size))
        try:
            yield from _stream(blocks, lambda files: cast(tuple[Any, Any], read_task.remote(
                reader, files, self._limits)), encoders, plan.window)
        finally:  # the driver may stop early: the actors' models are given back now all the same
            for actor in encoders if ray.is_initialized() else ():  # (else they went with it)
                ray.kill(actor)

    def read_now(self, read: Reader, media: MediaFile) -> PreparedFile:
        return read_files(read, [media], self._limits.cpu, 1, self._limits.wall)[0]


@dataclass(frozen=True)
class _Limits:
    """What one file's reading may take, as `readers._ReaderThreads` counts it."""

    cpu: float  # seconds of the reading thread's CPU
    wall: float  # seconds, CPU or not (a hung mount)


@dataclass(frozen=True)
class _Block:
    """Files read by one task."""

    files: list[MediaFile]
    deaths: int = 0  # times a read task holding these files died


def _stream(blocks: deque[_Block], read: Callable[[list[MediaFile]], tuple[Any, Any]],
            encoders: list[Any], window: int) -> Iterator[list[PreparedFile]]:
    """Each block read (`read(files)`: a read task's two ObjectRefs, a small one that says it
    ended and the files read), then encoded by the encoder with the fewest blocks waiting, and
    yielded as it comes back; at most `window` blocks in flight. A read task that died is
    `_died`'s to settle; a block lost with its node before it was encoded is read again."""
    import ray

    reading: dict[Any, tuple[_Block, Any]] = {}  # read task's first ref -> its block, files
    encoding: dict[Any, tuple[_Block, int]] = {}  # encode call's ref -> block, its encoder
    waiting = [0] * len(encoders)  # blocks each encoder has been given and not returned
    while blocks or reading or encoding:
        while blocks and len(reading) + len(encoding) < window:
            block = blocks.popleft()
            ended, files = read(block.files)
            reading[ended] = block, files
        [done], _ = ray.wait([*reading, *encoding], num_returns=1)
        if done in reading:
            block, files = reading.pop(done)
            try:
                ray.get(done)  # a few bytes: raises if the task died
            except ray.exceptions.RayTaskError:
                raise  # Python's own error in the task, not a file's: a bug, shown as one
            except ray.exceptions.RayError:  # the task's process or node died
                if failed := _died(block, blocks):
                    yield failed
                continue
            least = waiting.index(min(waiting))
            waiting[least] += 1
            encoding[encoders[least].encode.remote(files)] = block, least
            continue
        block, least = encoding.pop(done)
        waiting[least] -= 1
        try:
            files, refused = ray.get(done)
        except ray.exceptions.ObjectLostError:  # its node left before the encoder had it
            blocks.appendleft(block)
            continue
        if refused:
            raise ModelMismatch(refused)
        yield files


def _died(block: _Block, blocks: deque[_Block]) -> list[PreparedFile]:
    """A read task died (its process killed for memory, crashed, or its node gone): its files
    are read again one a task, and a file whose task dies again, alone, is a failure (returned:
    remembered with its size and mtime, so later runs skip it until it changes)."""
    if len(block.files) > 1 or block.deaths == 0:
        blocks.extendleft(_Block([media], block.deaths + 1) for media in block.files)
        return []
    media = block.files[0]
    key = path_key(media.path)
    return [PreparedFile(media, failure=FailureRecord(key, shown(
        f"{media.path}: {READER_DIED}"), media.size, media.mtime))]


@dataclass(frozen=True)
class _ModelCopy:
    """What an actor needs to build the driver's encoder, and to check it did."""

    model_id: ModelId  # the names the driver's model was built from
    fingerprint: str  # of the driver's config and weights: the actor's must equal it
    backend: str  # --backend as given ("auto": each actor picks for its own machine, ...
    precision: str  # ... in the precision of the driver's encoder, the index's (backends)


class _EncoderActor:
    """One model, loaded once; encodes block after block of read files (`encode_read`). One
    whose weights are not the driver's encodes nothing: it hands back why, which the driver
    raises as `ModelMismatch` (raised here, Ray would bury it in its own error)."""

    def __init__(self, model: _ModelCopy) -> None:
        # an actor's process, perhaps on another machine: its own export cache and GPU, read
        # from its own environment (an edge: tests/check_layout.py EDGES)
        here = Settings.from_environ(os.environ)
        # the encoder's batch: None, from this machine's CPU plan, as the driver's own
        self._encoder = open_encoder(model.model_id, model.backend, user_exports(here), None,
                                     gpu=here.gpu, recorded=model.precision)
        self._refusal = "" if self._encoder.fingerprint == model.fingerprint else (
            f"{model.model_id.name} ({model.model_id.pretrained}) on Ray worker "
            f"{os.uname().nodename} is not the driver's model (fingerprint "
            f"{self._encoder.fingerprint[:12]}, not {model.fingerprint[:12]}): give every "
            f"machine the same config and weights files")
        made = precision_of(self._encoder)  # fp32 where its int8 tower cannot be written
        if not self._refusal and not mix(made, model.precision):
            self._refusal = f"Ray worker {os.uname().nodename}: {made}, not {model.precision}"

    def encode(self, files: list[PreparedFile]) -> tuple[list[PreparedFile], str]:
        """The files with their items (`encoded`) and ""; or none, and why not."""
        if self._refusal:
            return [], self._refusal
        encode_read(files, self._encoder)
        return files, ""


def _read_block(read: Reader, files: list[MediaFile], limits: _Limits
                ) -> tuple[int, list[PreparedFile]]:
    """A read task: its files read in threads, each within `limits` (the file's own reading:
    the task's start, its imports and the tokenizer's loading are not counted); returns how
    many, and them."""
    from PIL import Image

    # a read task is this worker process's edge, as cli.main is the driver's: `--max-pixels`
    # alone decides, checked from each header (retriever.media.images), not PIL's own cap
    Image.MAX_IMAGE_PIXELS = None
    counter = read.spec.count_tokens
    if isinstance(counter, _Unpickled) and any(f.kind == TEXT for f in files):
        counter.load()  # imports torch (seconds): before the clocks start
    return len(files), read_files(read, files, limits.cpu, READ_THREADS, limits.wall)


def _for_tasks(read: Reader) -> Reader:
    """`read` as the read tasks get it (Ray puts it in its object store once; each task
    unpickles it): the stored hashes as `_KnownHashes` (8 MB a million files, read in place),
    not a set of strings (67 MB to unpickle in each task), and the token counter pickled, to
    be unpickled where a text is read (`_Unpickled`)."""
    spec = replace(read.spec, count_tokens=_Unpickled(pickle.dumps(read.spec.count_tokens)))
    known = _KnownHashes(cast(Iterable[str], read.known))  # `reader_for`: a frozenset
    return replace(read, spec=spec, known=known)


class _KnownHashes:
    """Content hashes (sha256, hex) by their first 64 bits: sorted uint64, 8 bytes a hash, read
    in place from the object store by each task (0.4 s to build for a million). Two hashes that
    share those bits make the reader skip decoding a file with new bytes; the driver then reads
    it again (`pipeline._index_chunk`): a second read, never another result."""

    def __init__(self, hashes: Iterable[str]) -> None:
        prefixes = bytes.fromhex("".join(h[:16] for h in hashes))
        self._prefixes = np.sort(np.frombuffer(prefixes, ">u8").astype(np.uint64))  # (n,)

    def __contains__(self, content_hash: object) -> bool:
        if not isinstance(content_hash, str) or not len(self._prefixes):
            return False
        prefix = np.frombuffer(bytes.fromhex(content_hash[:16]), ">u8").astype(np.uint64)[0]
        at = int(np.searchsorted(self._prefixes, prefix))
        return at < len(self._prefixes) and self._prefixes[at] == prefix


@dataclass(frozen=True)
class _Unpickled:
    """A token counter shipped as its pickle, unpickled on its first call in a worker process:
    open_clip's tokenizer is in it, and unpickling that imports torch (seconds of a core),
    which a read task with no text to cut never needs."""

    pickled: bytes

    def __call__(self, text: str) -> int:
        return cast(int, self.load()(text))

    def load(self) -> Any:
        return _unpickle(self.pickled)


@lru_cache(maxsize=2)
def _unpickle(pickled: bytes) -> Any:
    return pickle.loads(pickled)

@dataclass(frozen=True)
class _Plan:
    """How a run uses the cluster (`_plan`)."""

    actors: int  # encoder actors, each with one model
    actor_cpus: int  # CPUs each reserves (the rest run read tasks, one CPU each)
    actor_gpus: int  # GPUs each reserves: 1 on a cluster with GPUs
    window: int  # blocks in flight at once: being read, read, or being encoded


def _plan(resources: dict[str, float], block_bytes: int) -> _Plan:
    """A GPU an actor when the cluster has GPUs; else one actor per 4 CPUs (2 each on clusters
    of 4 or more), the rest of the CPUs left to the read tasks. In flight: as many blocks as
    READ_AHEAD_BYTES holds (`block_bytes`: one block's model input), and at least a block being
    read and one read for each CPU left to reading and two for each actor (one encoding, one
    waiting), so neither side waits on the other."""
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    actors, actor_cpus, actor_gpus = (gpus, 1, 1) if gpus else (
        max(1, cpus // 4), 2 if cpus >= 4 else 1, 0)
    readers = max(1, cpus - actors * actor_cpus)
    window = max(2 * readers + 2 * actors, READ_AHEAD_BYTES // max(1, block_bytes))
    return _Plan(actors, actor_cpus, actor_gpus, window)


def _start(address: str | None) -> None:
    import ray

    if address is None:  # a Ray of this machine alone, for this run (see the module docstring)
        start_local(len(os.sched_getaffinity(0)))
        return
    try:
        target, loopback = _dialled(address)
        _answers(target)  # Ray itself retries an address that never answers for minutes
        with _loopback() if loopback else nullcontext():
            ray.init(address=target, log_to_driver=False, logging_level=logging.WARNING,
                     _node_ip_address=LOOPBACK if loopback else None)
    except ray.exceptions.AuthenticationError as err:
        raise RayUnavailable(f"--ray-address {address}: the cluster refused this machine's "
                             f"token ({_first_line(err)}): put the head's token (`ray "
                             f"get-auth-token` there) in ~/.ray/auth_token or $RAY_AUTH_TOKEN"
                             ) from None
    except (OSError, ValueError, RuntimeError) as err:  # ConnectionError is an OSError
        raise RayUnavailable(f"--ray-address {address}: cannot join a Ray cluster there "
                             f"({_first_line(err)}): check the address (`ray start --head` "
                             f"prints it) and that this machine has the head's token (`ray "
                             f"get-auth-token`), or leave --ray-address out to run on this "
                             f"machine alone") from None


def start_local(cpus: int) -> None:
    """A new Ray of this machine alone in this process: `cpus` CPUs, on 127.0.0.1, workers at
    the user's priority, no dashboard (tests start theirs with this too)."""
    import ray

    with _loopback():
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING, _node_ip_address=LOOPBACK,
                 _system_config={"worker_niceness": WORKER_NICENESS})


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


@contextmanager
def _loopback() -> Iterator[None]:
    """Ray as this process starts or dials it binds to and names 127.0.0.1 (`_node_ip_address`
    alone is not enough: on Linux Ray turns a loopback address into the machine's own, and
    listens on every interface, unless it believes it runs outside a cluster)."""
    from unittest import mock

    from ray._private import ray_constants

    with mock.patch.object(ray_constants, "ENABLE_RAY_CLUSTER", False):
        yield


def _dialled(address: str) -> tuple[str, bool]:
    """Where ray.init is to dial `address` (HOST:PORT), and whether as loopback. Ray turns a
    loopback host into this machine's own address: right for a head listening everywhere (a
    plain `ray start --head`), unreachable for one bound to 127.0.0.1 (a Ray started by
    `_start`, or `ray start --head --node-ip-address 127.0.0.1` under `_loopback`'s setting),
    which is dialled as loopback. Other forms (auto, ray://) are left to Ray."""
    from ray._common.network_utils import is_localhost
    from ray._private.services import canonicalize_bootstrap_address

    given = _host_port(address)
    if given is None or not is_localhost(given[0]):
        return address, False
    own = canonicalize_bootstrap_address(address) or address
    try:
        socket.create_connection(_host_port(own) or given, timeout=CONNECT_TIMEOUT).close()
        return own, False
    except OSError:  # refused there: a head bound to loopback alone, or nothing at all
        return address, True


def _host_port(address: str) -> tuple[str, int] | None:
    """("host", port) of an address HOST:PORT ([v6]:PORT); None for Ray's other forms."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return None
    return host.strip("[]"), int(port)


def _answers(address: str) -> None:
    """Raise OSError unless what listens at `address` (HOST:PORT) answers as a Ray head's GCS
    (a gRPC server) does within CONNECT_TIMEOUT: a port that accepts and never answers, or
    answers HTTP/1, would have ray.init retry for minutes. Other forms are left to Ray."""
    host_port = _host_port(address)
    if host_port is None:
        return
    with socket.create_connection(host_port, timeout=CONNECT_TIMEOUT) as conn:
        conn.settimeout(CONNECT_TIMEOUT)
        conn.sendall(HTTP2_PREFACE)
        try:  # a frame header: length (3), type (1), flags (1), stream (4)
            head = conn.recv(9, socket.MSG_WAITALL)
        except TimeoutError:
            raise OSError(f"{address} accepted a connection and said nothing for "
                          f"{CONNECT_TIMEOUT:g} s") from None
    is_settings = len(head) == 9 and head[3] == 0x4  # gRPC's HTTP/2 server preface
    if not (is_settings or head[:1] in (b"\x15", b"\x16")):  # or TLS (a Ray with RAY_USE_TLS)
        raise OSError(f"{address} does not answer as a Ray cluster does (gRPC)")
