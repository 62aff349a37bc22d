"""`retriever index --engine ray`: the files to encode are read and encoded on a Ray cluster.

Scanning, the incremental diff and every store write stay in this process (the driver), as with
the local engine (`indexer`); only the files that must be read go to Ray, in blocks of `size`
(--batch-size) files:

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
and refuses to encode if its weights are not the driver's (another fingerprint: a weights file
that differs on that machine). A read task reads its files in threads, each within the per-file
time limit as the local engine does: a file still reading after it is a failure. Blocks come
back in any order and each is stored as it arrives, so a killed driver or worker loses at most
the blocks not yet stored; the next run reads only those (its diff finds the rest stored).

Without an address a local Ray is started for the run (no dashboard, this machine's CPUs and
GPUs) and stopped after it; one already running in this process is used. Ray offers no
loopback-only mode: its processes listen on every interface whatever node address is given
(Ray 2.60, checked with `ss -ltn`), so Ray's token authentication, on by default for a new
cluster, is what keeps others out (the token is in ~/.ray/auth_token).
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, cast

import numpy as np

from retriever.encoding.backends import open_encoder
from retriever.encoding.encoders import Encoder
from retriever.encoding.specs import ModelId
from retriever.errors import ModelMismatch, RayUnavailable
from retriever.library.indexer import PreparedFile, Reader, encode_read, read_files
from retriever.media.scan import MediaFile

INSTALL = "pip install 'retriever[ray]'"
CONNECT_TIMEOUT = 10.0  # seconds a cluster's address may take to answer
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
    """An `indexer.Engine` on Ray: see the module docstring."""

    def __init__(self, encoder: Encoder, backend: str, address: str | None,
                 limit: float) -> None:
        self._model = _ModelCopy(encoder.model_id, encoder.fingerprint, backend)
        self._address, self._limit = address, limit
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
            max_task_retries=RESTARTS).remote(self._model, size) for _ in range(plan.actors)]
        read_task = ray.remote(_read_block).options(num_cpus=1, memory=READ_MEMORY)
        reader = ray.put(_for_tasks(read))  # in the object store once, not once a task
        blocks = deque(todo[i : i + size] for i in range(0, len(todo), size))
        try:
            yield from _stream(blocks, lambda block: read_task.remote(reader, block, self._limit),
                               encoders, plan.window)
        finally:  # the driver may stop early: the actors' models are given back now all the same
            for actor in encoders if ray.is_initialized() else ():  # (else they went with it)
                ray.kill(actor)

    def read_now(self, read: Reader, media: MediaFile) -> PreparedFile:
        return read_files(read, [media], self._limit, 1)[0]


def _stream(blocks: deque[list[MediaFile]], read: Callable[[list[MediaFile]], Any],
            encoders: list[Any], window: int) -> Iterator[list[PreparedFile]]:
    """Each block read (`read(block)`: a read task's ObjectRef), then encoded by the encoder with
    the fewest blocks waiting, and yielded as it comes back; at most `window` blocks in flight."""
    import ray

    reading: set[Any] = set()  # ObjectRefs of read tasks
    encoding: dict[Any, int] = {}  # ObjectRef of an encode call -> index of its encoder
    waiting = [0] * len(encoders)  # blocks each encoder has been given and not returned
    while blocks or reading or encoding:
        while blocks and len(reading) + len(encoding) < window:
            reading.add(read(blocks.popleft()))
        [done], _ = ray.wait([*reading, *encoding], num_returns=1)
        if done in reading:
            reading.remove(done)
            least = waiting.index(min(waiting))
            waiting[least] += 1
            encoding[encoders[least].encode.remote(done)] = least
            continue
        waiting[encoding.pop(done)] -= 1
        files, refused = ray.get(done)
        if refused:
            raise ModelMismatch(refused)
        yield files


@dataclass(frozen=True)
class _ModelCopy:
    """What an actor needs to build the driver's encoder, and to check it did."""

    model_id: ModelId  # the names the driver's model was built from
    fingerprint: str  # of the driver's config and weights: the actor's must equal it
    backend: str  # --backend as given ("auto": each actor picks for its own machine)


class _EncoderActor:
    """One model, loaded once; encodes block after block of read files (`encode_read`). One
    whose weights are not the driver's encodes nothing: it hands back why, which the driver
    raises as `ModelMismatch` (raised here, Ray would bury it in its own error)."""

    def __init__(self, model: _ModelCopy, batch_size: int) -> None:
        self._encoder = open_encoder(model.model_id, model.backend, None, batch_size)
        self._refusal = "" if self._encoder.fingerprint == model.fingerprint else (
            f"{model.model_id.name} ({model.model_id.pretrained}) on Ray worker "
            f"{os.uname().nodename} is not the driver's model (fingerprint "
            f"{self._encoder.fingerprint[:12]}, not {model.fingerprint[:12]}): give every "
            f"machine the same config and weights files")

    def encode(self, files: list[PreparedFile]) -> tuple[list[PreparedFile], str]:
        """The files with their items (`encoded`) and ""; or none, and why not."""
        if self._refusal:
            return [], self._refusal
        encode_read(files, self._encoder)
        return files, ""


def _read_block(read: Reader, files: list[MediaFile], limit: float) -> list[PreparedFile]:
    """A read task: its files read in threads, each within `limit` seconds."""
    return read_files(read, files, limit, READ_THREADS)


def _for_tasks(read: Reader) -> Reader:
    """`read` as the read tasks get it (Ray puts it in its object store once; each task
    unpickles it): the stored hashes as `_KnownHashes` (8 MB a million files, read in place),
    not a set of strings (67 MB to unpickle in each task), and the token counter pickled, to
    be unpickled where a text is read (`_Unpickled`)."""
    spec = replace(read.spec, count_tokens=_Unpickled(pickle.dumps(read.spec.count_tokens)))
    known = _KnownHashes(cast(Iterable[str], read.known))  # `indexer._reader`: a frozenset
    return replace(read, spec=spec, known=known)


class _KnownHashes:
    """Content hashes (sha256, hex) by their first 64 bits: sorted uint64, 8 bytes a hash, read
    in place from the object store by each task (0.4 s to build for a million). Two hashes that
    share those bits make the reader skip decoding a file with new bytes; the driver then reads
    it again (`indexer`'s `_index_chunk`): a second read, never another result."""

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
        return cast(int, _unpickle(self.pickled)(text))


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
        ray.init(address="local", num_cpus=len(os.sched_getaffinity(0)),
                 include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                 _system_config={"worker_niceness": WORKER_NICENESS})
        return
    try:
        _reachable(address)  # Ray itself retries an address that never answers for minutes
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except (OSError, ValueError, RuntimeError) as err:  # ConnectionError is an OSError
        raise RayUnavailable(f"--ray-address {address}: no Ray cluster answers there ({err}): "
                             f"start one with `ray start --head`, or leave --ray-address out "
                             f"to run on this machine alone") from None


def _reachable(address: str) -> None:
    """Raise OSError unless something listens at `address` (HOST:PORT); other forms (auto,
    ray://) are left to Ray."""
    host, _, port = address.rpartition(":")
    if host and port.isdigit() and "://" not in address:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT).close()
