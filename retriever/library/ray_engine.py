"""`retriever index --engine ray`: the files to encode are read and encoded on a Ray cluster.

Scanning, the incremental diff and every store write stay in this process (the driver), as with
the local engine (`indexer`); only the files that must be read go to Ray, as one Ray Data
pipeline:

    files to read --read tasks (CPU)--> records and model input, or failures
        --a pool of encoder actors (one model each; one GPU each when the cluster has GPUs)-->
        items --streamed back in batches--> stored by the driver, one transaction per batch

Each actor builds the driver's model from its names (`ModelId`) on the driver's `--backend`,
and refuses to encode if its weights are not the driver's (another fingerprint: a weights file
that differs on that machine). A read task reads its files in threads, each within the per-file
time limit as the local engine does: a file still reading after it is a failure. Batches come
back in any order and each is stored as it arrives, so a killed driver or worker loses at most
the batches not yet stored; the next run reads only those (its diff finds the rest stored).

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
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

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
# decoding (a 100 MP photo takes 300 MB at its peak). Asking for it also keeps the reads their
# own tasks: Ray Data fuses a step into the next when their resources are equal, and the actors
# would then read too.
READ_MEMORY = 2**30


def check_ray() -> None:
    """Raise `RayUnavailable`, saying how to install it, when Ray Data cannot be imported."""
    try:
        import ray.data  # noqa: F401
    except ImportError:
        raise RayUnavailable(f"--engine ray needs Ray, which is not installed: {INSTALL}"
                             ) from None


class RayEngine:
    """An `indexer.Engine` on Ray: see the module docstring."""

    def __init__(self, encoder: Encoder, backend: str, address: str | None,
                 limit: float) -> None:
        self._model = _ModelCopy(encoder.model_id, encoder.fingerprint, backend)
        self._address, self._limit = address, limit
        self._started = False  # a Ray this engine started, and stops

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
        import ray.data

        if not ray.is_initialized():
            _start(self._address)
            self._started = True
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the driver's own bar counts the batches stored
        context.issue_detectors_config.detectors = []  # advice on stderr, in Ray's words
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # its notes; errors are raised
        actors, cpus, gpus = _actor_pool(ray.cluster_resources())
        files = ray.data.from_items([{"file": pickle.dumps(m)} for m in todo],
                                    override_num_blocks=-(-len(todo) // size))
        encoded = files.map_batches(
            partial(_read_batch, read=read, limit=self._limit), batch_size=size, num_cpus=1,
            memory=READ_MEMORY,
        ).map_batches(
            _EncoderActor, fn_constructor_args=(self._model, size), batch_size=size,
            compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus, num_gpus=gpus,
        )
        for batch in encoded.iter_batches(batch_size=size, batch_format="numpy"):
            if refused := next((str(r) for r in batch["refused"] if r), None):
                raise ModelMismatch(refused)
            yield [pickle.loads(b) for b in batch["file"]]

    def read_now(self, read: Reader, media: MediaFile) -> PreparedFile:
        return read_files(read, [media], self._limit, 1)[0]


@dataclass(frozen=True)
class _ModelCopy:
    """What an actor needs to build the driver's encoder, and to check it did."""

    model_id: ModelId  # the names the driver's model was built from
    fingerprint: str  # of the driver's config and weights: the actor's must equal it
    backend: str  # --backend as given ("auto": each actor picks for its own machine)


class _EncoderActor:
    """One model, loaded once; encodes batch after batch of read files (`encode_read`). One
    whose weights are not the driver's encodes nothing: it hands back why (`refused`), which
    the driver raises as `ModelMismatch` (raised here, Ray would bury it in its own error)."""

    def __init__(self, model: _ModelCopy, batch_size: int) -> None:
        self._encoder = open_encoder(model.model_id, model.backend, None, batch_size)
        self._refusal = "" if self._encoder.fingerprint == model.fingerprint else (
            f"{model.model_id.name} ({model.model_id.pretrained}) on Ray worker "
            f"{os.uname().nodename} is not the driver's model (fingerprint "
            f"{self._encoder.fingerprint[:12]}, not {model.fingerprint[:12]}): give every "
            f"machine the same config and weights files")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._refusal:
            return {"file": _pickled([None]), "refused": np.array([self._refusal])}
        files = [pickle.loads(b) for b in batch["file"]]
        encode_read(files, self._encoder)
        return {"file": _pickled(files), "refused": np.array([""] * len(files))}


def _read_batch(batch: dict[str, np.ndarray], read: Reader, limit: float
                ) -> dict[str, np.ndarray]:
    """A read task: its files read in threads, each within `limit` seconds."""
    files = [pickle.loads(b) for b in batch["file"]]
    return {"file": _pickled(read_files(read, files, limit, READ_THREADS))}


def _pickled(files: list[Any]) -> np.ndarray:
    out = np.empty(len(files), dtype=object)  # (n,) bytes: Ray Data stores them as binary
    out[:] = [pickle.dumps(f) for f in files]
    return out


def _actor_pool(resources: dict[str, float]) -> tuple[int, int, int]:
    """How many encoder actors, and the CPUs and GPUs each takes: a GPU each when the cluster
    has GPUs; else one per 4 CPUs (2 each on clusters of 4 or more), the rest left to the read
    tasks."""
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    if gpus:
        return gpus, 1, 1
    return max(1, cpus // 4), 2 if cpus >= 4 else 1, 0


def _start(address: str | None) -> None:
    import ray

    if address is None:  # a Ray of this machine alone, for this run (see the module docstring)
        ray.init(address="local", num_cpus=len(os.sched_getaffinity(0)),
                 include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
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
