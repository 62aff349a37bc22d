"""What a CUDA GPU does for retriever, measured where one is lent (CI's machines have none):

    python -m bench.gpu [--dry-run]    # a few minutes on an H100; writes the "gpu" section

1. Encoding: images/s of the image tower in torch with fp16 autocast (`ClipEncoder`: what
   `--backend auto` runs on a GPU, recorded as "fp16"), on ready (n, 3, S, S) pixels, for
   retriever-tiny and ViT-B-32 with random weights; and the cosine of each image's fp16 vector
   to its fp32 one (the same model on the CPU): why fp16 and fp32 vectors may share an index
   (`retriever.encoding.backends.mix`).
2. FAISS: queries/s over 1M random 512-d unit vectors, exact (flat, inner product) and IVF
   (IVF_LISTS lists, nprobe NPROBE), on the GPU and on this machine's CPU, with the GPU's
   recall@10 against the exact answer. Only where faiss was built with GPU support; else one
   row says it was not.
3. Training: samples/s of `retriever.training.loop.train` (what `retriever train` runs) on the
   shape scenes: DDP over NCCL in 2 processes (`launch`) when 2 GPUs are seen, else one process
   (world_size 1: no process group), then NCCL's all-reduce in a group of one, which proves
   the library works on this card.

With no CUDA device it prints "no CUDA device: nothing measured", exits 0 and writes nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.results import machine_line, write_section

NO_CUDA = "no CUDA device: nothing measured"
ENCODE_MODELS = ("retriever-tiny", "ViT-B-32")  # random weights ("none"): speed, not quality
ENCODE_BATCH = 256  # images per forward pass
ENCODE_SECONDS = 5.0  # timed per model, after one warm-up batch
COSINE_IMAGES = 64  # images whose fp16 and fp32 vectors are compared
VECTORS, DIM, K = 1_000_000, 512, 10
GPU_QUERIES, CPU_QUERIES = 10_000, 1_000  # the CPU is timed on fewer: flat takes seconds
IVF_LISTS, NPROBE = 1024, 16
IVF_TRAIN = 100_000  # vectors k-means sees (faiss asks >= 39 per list)
TRAIN_EPOCHS = 3  # of the demo recipe (240 scenes): enough steps for a steady rate


def _timed(run: Callable[[], Any], seconds: float) -> tuple[int, float]:
    """Calls of `run` (each synchronised) until `seconds` pass: (calls, seconds taken)."""
    import torch

    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run()
        torch.cuda.synchronize()
        calls += 1
    return calls, time.perf_counter() - start


def encoding_rows() -> list[str]:
    """One row per model: fp16 images/s on the GPU, and fp16 vectors' cosine to fp32's."""
    import torch

    from retriever.encoding.architectures import register_bundled_configs

    register_bundled_configs()
    rows = []
    for name in ENCODE_MODELS:
        rows.append(_encoding_row(name))
        torch.cuda.empty_cache()
    return rows


def _encoding_row(name: str) -> str:
    from dataclasses import replace

    import torch

    from retriever.encoding.clip_encoder import ClipEncoder
    from retriever.encoding.models import load_model
    from retriever.encoding.specs import ModelSpec

    loaded = load_model(ModelSpec(name, "none"))  # on the GPU (models.default_device)
    gpu = ClipEncoder(loaded, ENCODE_BATCH)
    size = gpu.pixels.size
    pixels = np.random.default_rng(0).normal(0, 1, (ENCODE_BATCH, 3, size, size)).astype(
        np.float32)  # (B, 3, S, S), in host memory as decoded images are
    gpu.encode_pixels(pixels)  # warm-up: kernels chosen, memory taken
    calls, seconds = _timed(lambda: gpu.encode_pixels(pixels), ENCODE_SECONDS)
    fp16 = gpu.encode_pixels(pixels[:COSINE_IMAGES])
    # the same weights on the CPU, in fp32 (moved from the GPU: it is measured already)
    cpu = ClipEncoder(replace(loaded, model=loaded.model.float().cpu(),
                              device=torch.device("cpu")), ENCODE_BATCH)
    fp32 = cpu.encode_pixels(pixels[:COSINE_IMAGES])
    cos = (fp16 * fp32).sum(1)  # unit vectors: the dot product is the cosine
    return (f"| {name} | {size} | {ENCODE_BATCH} | {calls * ENCODE_BATCH / seconds:,.0f} | "
            f"{cos.min():.5f} | {cos.mean():.5f} |")


def _qps(index: Any, queries: np.ndarray) -> tuple[float, np.ndarray]:
    """Queries/s of one search call over `queries` (after a warm-up), and its ids (q, K)."""
    index.search(queries[:16], K)
    start = time.perf_counter()
    _, ids = index.search(queries, K)
    return len(queries) / (time.perf_counter() - start), ids


def _recall(ids: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / K for a, b in zip(ids, exact, strict=True)]))


def faiss_rows() -> list[str]:
    """Flat and IVF: GPU and CPU queries/s over the same vectors, and recall@10 to exact."""
    import faiss

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        return ["| faiss without GPU support here | - | - | - | - |"]
    rng = np.random.default_rng(0)
    base = rng.standard_normal((VECTORS, DIM), dtype=np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)  # (N, D) unit rows
    queries = base[rng.choice(VECTORS, GPU_QUERIES, replace=False)] + rng.normal(
        0, 0.05, (GPU_QUERIES, DIM)).astype(np.float32)  # near a stored vector each
    resources = faiss.StandardGpuResources()
    flat_cpu = faiss.IndexFlatIP(DIM)
    flat_cpu.add(base)
    flat_gpu = faiss.index_cpu_to_gpu(resources, 0, flat_cpu)
    gpu_qps, exact = _qps(flat_gpu, queries)
    cpu_qps, _ = _qps(flat_cpu, queries[:CPU_QUERIES])
    rows = [f"| flat (exact) | {gpu_qps:,.0f} | {cpu_qps:,.0f} | {gpu_qps / cpu_qps:.1f}x | "
            f"1.000 |"]
    ivf_gpu = faiss.index_cpu_to_gpu(resources, 0, faiss.IndexIVFFlat(
        faiss.IndexFlatIP(DIM), DIM, IVF_LISTS, faiss.METRIC_INNER_PRODUCT))
    ivf_gpu.train(base[:IVF_TRAIN])
    ivf_gpu.add(base)
    ivf_gpu.nprobe = NPROBE
    gpu_qps, ids = _qps(ivf_gpu, queries)
    ivf_cpu = faiss.index_gpu_to_cpu(ivf_gpu)
    ivf_cpu.nprobe = NPROBE
    cpu_qps, _ = _qps(ivf_cpu, queries[:CPU_QUERIES])
    rows.append(f"| IVF{IVF_LISTS}, nprobe {NPROBE} | {gpu_qps:,.0f} | {cpu_qps:,.0f} | "
                f"{gpu_qps / cpu_qps:.1f}x | {_recall(ids, exact):.3f} |")
    return rows


def training_rows(gpus: int) -> list[str]:
    """samples/s of the demo recipe trained TRAIN_EPOCHS epochs, in min(gpus, 2) processes."""
    from dataclasses import replace

    from retriever.demo import DEMO_IMAGES, demo_config
    from retriever.training.loop import train
    from retriever.training.synthetic import write_captioned_images

    nproc = 2 if gpus >= 2 else 1
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_captioned_images(work / "scenes", DEMO_IMAGES, seed=0)
        cfg = replace(demo_config(work / "scenes", work / "model.pt"), epochs=TRAIN_EPOCHS,
                      nproc=nproc)
        start = time.perf_counter()
        result = train(cfg, log=lambda _: None)
        seconds = time.perf_counter() - start
    how = "DDP over NCCL, 2 processes" if nproc == 2 else "1 process (world_size 1)"
    rows = [f"| train, retriever-tiny, demo recipe | {how} | {result.samples_per_s:,.0f} "
            f"samples/s | {seconds:.1f} s for {TRAIN_EPOCHS} epochs |"]
    if nproc == 1:
        rows.append(f"| NCCL all-reduce, 256 MB | group of one | {_nccl_one():,.1f} GB/s | - |")
    return rows


def _nccl_one() -> float:
    """GB/s of an all-reduce over NCCL in a process group of one: the library on this card."""
    import torch
    import torch.distributed as dist

    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("nccl", init_method=f"file://{tmp}/rendezvous", rank=0,
                                world_size=1)
        try:
            x = torch.ones(64 * 2**20, device="cuda")  # 256 MB of float32
            dist.all_reduce(x)
            calls, seconds = _timed(lambda: dist.all_reduce(x), 1.0)
        finally:
            dist.destroy_process_group()
    return calls * x.numel() * 4 / seconds / 1e9


def body(card: str, gpus: int) -> str:
    encode = encoding_rows()
    search = faiss_rows()
    training = training_rows(gpus)
    return "\n".join([
        f"{gpus} x {card}. Encoding: the image tower in torch with fp16 autocast (`--backend "
        f"auto` on a GPU), random weights, ready pixels, {ENCODE_SECONDS:.0f} s timed after a "
        f"warm-up batch; cos: fp16 vector to the fp32 one (CPU) of the same input.", "",
        "| model | pixels | batch | images/s | cos min | cos mean |", "|---|---|---|---|---|---|",
        *encode, "",
        f"FAISS: {VECTORS:,} random {DIM}-d unit vectors, k={K}, queries near stored vectors; "
        f"GPU {GPU_QUERIES:,} queries in one call, CPU {CPU_QUERIES:,} (all its cores); "
        "recall@10 of the GPU's answer against exact search.", "",
        "| index | GPU queries/s | CPU queries/s | GPU/CPU | recall@10 |", "|---|---|---|---|---|",
        *search, "",
        "| training | processes | rate | time |", "|---|---|---|---|", *training,
    ]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print, leave RESULTS.md alone")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    card, gpus = torch.cuda.get_device_name(0), torch.cuda.device_count()
    text = body(card, gpus)
    print(text)
    if not args.dry_run:
        command = "python -m bench.gpu " + " ".join(argv if argv is not None else sys.argv[1:])
        write_section("gpu", f"A CUDA GPU ({card}): encoding, FAISS, training", text,
                      command.strip(), f"{gpus} x {card}; host {machine_line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
