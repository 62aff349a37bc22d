"""Vector search at scale: QPS and recall@10 of the auto-chosen index against exact search.

    python -m bench.vector_search [--sizes 10000 100000 1000000] [--dim 512]

Vectors are unit-normalised draws around 2,000 random centres with per-coordinate noise 1.35x
the centres' scale: clustered like real embeddings but overlapping (a top-10 neighbour is at
cosine ~0.4), where IVF must probe several lists. Uniform random vectors have no structure and
no ANN method beats exact search on them; well-separated clusters make IVF look perfect.
Queries are fresh draws from the same distribution. Each index answers the same batch of
queries; QPS is queries / wall time on this machine's cores.
"""

from __future__ import annotations

import argparse
import os
import time

import faiss
import numpy as np

from bench.results import machine_line, write_section
from index.ann import AnnConfig, recall_at
from index.vectors import VectorIndex

QUERIES = 1000


CENTRES, SPREAD = 2000, 1.35


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """(n, dim) unit vectors around CENTRES fixed centres; `seed` picks the draws."""
    centres = np.random.default_rng(0).normal(size=(CENTRES, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    x = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):  # in slices: bounded temporaries at 1M x 512
        m = min(100_000, n - start)
        part = centres[rng.integers(0, CENTRES, m)]
        part += rng.normal(scale=SPREAD, size=(m, dim)).astype(np.float32)
        x[start : start + m] = part / np.linalg.norm(part, axis=1, keepdims=True)
    return x


def timed_search(index: VectorIndex, queries: np.ndarray) -> tuple[np.ndarray, float]:
    index.search(queries[:10], 10)  # warm-up
    start = time.perf_counter()
    _, ids = index.search(queries, 10)
    return ids, len(queries) / (time.perf_counter() - start)


def measure(n: int, dim: int) -> dict:
    vectors = clustered(n, dim, seed=1)
    ids = np.arange(n, dtype=np.int64)
    queries = clustered(QUERIES, dim, seed=2)
    exact = VectorIndex.from_vectors(dim, ids, vectors)
    truth, exact_qps = timed_search(exact, queries)
    start = time.perf_counter()
    auto = VectorIndex.from_vectors(dim, ids, vectors, AnnConfig())
    build_s = time.perf_counter() - start
    found, qps = timed_search(auto, queries)
    return {"n": n, "type": auto.kind, "nprobe": getattr(auto.faiss_index, "nprobe", "-"),
            "nlist": getattr(auto.faiss_index, "nlist", "-"), "build_s": build_s,
            "recall": recall_at(truth, found), "qps": qps, "exact_qps": exact_qps}


def table(rows: list[dict], dim: int) -> str:
    lines = [f"Clustered unit vectors of dimension {dim} (see bench/vector_search.py), "
             f"{QUERIES} queries in one batch, recall@10 against exact search (IndexFlatIP); "
             "nprobe tuned by the index itself for recall 0.95.", "",
             "| vectors | index (auto) | nlist | nprobe | build s | recall@10 | QPS | exact QPS "
             "| speed-up |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['n']:,} | {r['type']} | {r['nlist']} | {r['nprobe']} | "
                     f"{r['build_s']:.1f} | {r['recall']:.3f} | {r['qps']:,.0f} | "
                     f"{r['exact_qps']:,.0f} | {r['qps'] / r['exact_qps']:.1f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        rows.append(measure(n, args.dim))
        print(rows[-1], flush=True)
    body = table(rows, args.dim)
    command = "python -m bench.vector_search " + " ".join(
        ["--sizes", *map(str, args.sizes), "--dim", str(args.dim)])
    load = os.getloadavg()[0]
    write_section("vector-search", "Vector search (CPU)", body, command,
                  f"{machine_line()}; faiss {faiss.__version__}, "
                  f"{faiss.omp_get_max_threads()} threads; load average {load:.1f} at the end")


if __name__ == "__main__":
    main()
